/*
 * model/ — everything about a model that is independent of the device:
 * its configuration, its weights as stored in the file (memory-mapped), its
 * tokenizer and chat template, and the file readers (HF safetensors, GGUF).
 *
 * Invariants:
 *   - A weight tensor keeps its stored dtype (F32/F16/BF16/Q8_0/Q4_0/Q4_1, or
 *     QI8/QI4 with their f16 parameters from a `peregrine quantize`
 *     checkpoint, model/quant.h); kernels dequantize on the fly. `data` points into a read-only mapping
 *     (or an owned buffer for --random-weights) that lives as long as the model.
 *   - Matrices are row-major [rows = out_features][cols = in_features]
 *     (HF nn.Linear layout; GGUF ne[0] = cols, ne[1] = rows). Quantized blocks
 *     run along cols, so cols % 32 == 0 for quantized tensors.
 *   - Every offset, size, dtype and shape was validated against the config at
 *     load time: downstream code may trust tensor->nbytes == rows * row_bytes.
 *     Norm vectors are never quantized (F32/F16/BF16). `data` is aligned to
 *     its element size (2 or 4 bytes; quantized: 2). It is NULL only for
 *     random weights made with random_on_device.
 *   - GGUF llama files store wq/wk rows permuted for the "interleaved pairs"
 *     RoPE convention (llama.cpp); cfg.rope_interleaved says which convention
 *     the weights expect: 0 = HF rotate_half (pairs i, i+head_dim/2),
 *     1 = adjacent pairs (2i, 2i+1).
 * Thread safety: a loaded model is read-only and may be shared by threads.
 */
#ifndef PG_MODEL_H
#define PG_MODEL_H

#include "../common/common.h"
#include "../tokenizer/tokenizer.h"

#define MODEL_MAX_EOS 8

typedef struct {
    char  arch[32];          /* "llama" (LlamaForCausalLM, MistralForCausalLM) */
    int   dim;               /* hidden_size, e.g. 4096 */
    int   hidden_dim;        /* intermediate_size, e.g. 11008 */
    int   n_layers;          /* num_hidden_layers */
    int   n_heads;           /* num_attention_heads */
    int   n_kv_heads;        /* num_key_value_heads (== n_heads for MHA) */
    int   head_dim;          /* head_dim, default dim / n_heads */
    int   vocab_size;
    int   max_pos;           /* max_position_embeddings (context length) */
    float norm_eps;          /* rms_norm_eps */
    float rope_theta;
    int   rope_interleaved;  /* see header comment */
    /* rope_scaling {"rope_type": "llama3", ...} as in Llama 3.1; 0 = none */
    int   rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int   rope_orig_max_pos;
    int   tie_embeddings;    /* lm_head shares tok_embd */
    int   bos_id;            /* -1 if none */
    int   add_bos;           /* tokenizer adds BOS when encoding a prompt */
    int   n_eos;
    int   eos_ids[MODEL_MAX_EOS];
} model_config;

/* Fill derived fields (head_dim, n_kv_heads defaults) and check consistency. */
int model_config_validate(model_config *cfg, const char *what, pg_err *err);
/* Parse an HF config.json text (LlamaForCausalLM / MistralForCausalLM). */
int model_config_from_hf_json(const char *json, size_t len, const char *path,
                              model_config *cfg, pg_err *err);
/* Load a named preset from configs/<name>.json (searched in PEREGRINE_CONFIGS,
 * ./configs, and the install dir) or a path to a config.json. */
int model_config_preset(const char *name_or_path, model_config *cfg, pg_err *err);

typedef struct {
    pg_dtype    dtype;
    int64_t     rows, cols;   /* 1-D tensors: rows = 1, cols = n */
    const void *data;         /* stored bytes, row-major, rows * row_bytes */
    size_t      nbytes;       /* bytes of data (for QI8/QI4: of q only) */
    const char *name;         /* name in the file, for messages */
    /* PG_QI8 / PG_QI4 only (model/quant.h): elements per quantization group
     * along cols (cols for int8 per output channel), and the f16 parameters
     * [rows][cols/group]: scale s and (QI4) minimum m. NULL otherwise. */
    int             group;
    const uint16_t *qscale;
    const uint16_t *qmin;
} tensor;

typedef struct {
    tensor attn_norm;   /* (dim) */
    tensor wq;          /* (n_heads*head_dim, dim) */
    tensor wk;          /* (n_kv_heads*head_dim, dim) */
    tensor wv;          /* (n_kv_heads*head_dim, dim) */
    tensor wo;          /* (dim, n_heads*head_dim) */
    tensor ffn_norm;    /* (dim) */
    tensor w_gate;      /* (hidden_dim, dim)   HF gate_proj, GGUF ffn_gate */
    tensor w_up;        /* (hidden_dim, dim)   HF up_proj,   GGUF ffn_up */
    tensor w_down;      /* (dim, hidden_dim)   HF down_proj, GGUF ffn_down */
} layer_weights;

typedef struct {
    tensor tok_embd;        /* (vocab, dim) */
    tensor out_norm;        /* (dim) */
    tensor lm_head;         /* (vocab, dim); == tok_embd when tied */
    layer_weights *layers;  /* n_layers entries */
} model_weights;

/* Chat template families we render (server/ formats them). */
typedef enum {
    CHAT_TEMPLATE_UNKNOWN = 0, CHAT_TEMPLATE_CHATML, CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_LLAMA3, CHAT_TEMPLATE_MISTRAL, CHAT_TEMPLATE_ZEPHYR
} chat_template_kind;

typedef struct model_mapping model_mapping;  /* opaque: mmaps and owned buffers */

typedef struct model {
    model_config   cfg;
    model_weights  w;
    tok_tokenizer *tok;            /* NULL for --random-weights without a tokenizer */
    char          *chat_template;  /* Jinja text from the file, or NULL */
    char           path[1024];     /* what was loaded ("random:PRESET" for random weights) */
    char           name[128];      /* short name served as the model id */
    int            is_random;      /* weights are random (normal, std 0.02) */
    uint64_t       random_seed;
    model_mapping *mapping;
} model;

typedef struct {
    const char *path;          /* GGUF file, safetensors file, or HF directory; "default" */
    const char *random_preset; /* non-NULL: random weights for this preset, no file */
    uint64_t    seed;          /* for random weights */
    pg_dtype    random_dtype;  /* dtype of random weights (PG_F32 or PG_BF16) */
    const char *tokenizer_path;/* optional override: tokenizer.model, tokenizer.json or a .gguf */
    int         random_on_device; /* 1: leave random tensors' data NULL; the CUDA
                                     engine draws them on the GPU from (seed, tensor index) */
} model_load_opts;

/* Resolve "default"/NULL to the cached default GGUF path (PEREGRINE_CACHE or
 * ~/.cache/peregrine). Fails with a hint to run `make model` if it is missing. */
int  model_default_path(char *out, size_t cap, pg_err *err);
/*
 * Load a model: random weights when opts->random_preset is set; otherwise
 * opts->path (NULL or "default": the default GGUF) is dispatched on what it
 * is: a folder -> HF checkpoint (config.json + model.safetensors or
 * model.safetensors.index.json); a file starting with "GGUF" -> GGUF; a
 * .safetensors / .index.json / config.json path -> the HF checkpoint it
 * belongs to. Then opts->tokenizer_path, if set, replaces the tokenizer.
 * On failure *out is NULL and err names the file and the tensor or field.
 * The model is read-only afterwards; release it with model_free (NULL ok).
 */
int  model_load(const model_load_opts *opts, model **out, pg_err *err);
void model_free(model *m);
/* Bytes the weights occupy as stored. */
size_t model_weight_bytes(const model *m);
/* Human-readable summary for `peregrine info`: config, tensor dtypes with counts
 * and bytes, memory needed (weights + KV per token at f32/bf16/int8). */
void   model_print_info(const model *m, FILE *f);

/*
 * Weight tensors in one fixed order, for code that walks all of them (device
 * upload, the on-device random fill):
 *   0 tok_embd, 1 out_norm, 2 lm_head,
 *   3 + 9*layer + j for j = attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down.
 * When cfg.tie_embeddings, index 2 is a copy of index 0 (same data): skip it.
 * Random weights: tensor i is drawn from pg_rng seeded with
 * seed ^ ((i + 1) * 0x9e3779b97f4a7c15); matrices ~ N(0, 0.02), norm weights
 * ~ 1 + N(0, 0.02).
 */
int     model_n_tensors(const model *m);   /* 3 + 9 * n_layers */
tensor *model_tensor(model *m, int i);

/* Attach a tokenizer from a file, replacing the model's: tokenizer.model
 * (sentencepiece), tokenizer.json (HF), or another .gguf file's vocabulary.
 * Fills cfg.bos_id / eos_ids when the model had none, and cfg.add_bos. */
int model_load_tokenizer(model *m, const char *path, pg_err *err);

/* File readers (model/gguf.c, model/safetensors.c). Each validates everything
 * and fills cfg, weights, tokenizer and template into a zeroed *m (not
 * name/path: model_load sets those). On failure *m is released and zeroed.
 * model_load() is the usual entry; these are for callers that own *m. */
int model_load_gguf(const char *path, model *m, pg_err *err);
int model_load_safetensors(const char *path_or_dir, model *m, pg_err *err);
/* Random weights for a preset (model_config_preset). dtype PG_F32 or PG_BF16;
 * on_device = 1 leaves every tensor's data NULL (shapes and nbytes are set).
 * On failure *m is released and zeroed, as for the readers. */
int model_init_random(const char *preset, uint64_t seed, pg_dtype dtype, int on_device,
                      model *m, pg_err *err);

#endif
