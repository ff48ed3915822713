/*
 * model/engine.h — the only interface between serving (server/, tools/) and
 * compute. An engine owns one device (CPU threads or a CUDA GPU; one engine per
 * rank under tensor parallelism), the static KV cache and the per-slot sampler
 * state. It is driven by exactly one thread (the engine thread); no function
 * here is thread-safe except engine_info().
 *
 * Vocabulary:
 *   slot      — a row of the static KV cache, [layer][slot][kv_head][max_seq][head_dim].
 *               A request owns one slot from admission to completion; slots are
 *               reset (engine_slot_reset), never freed.
 *   position  — index of a token in its slot's sequence (0-based). The KV cache
 *               of a slot is valid for positions [0, pos) before a step that
 *               writes tokens at pos, pos+1, ...
 *   row       — one entry of a batch: a slot and the tokens to run for it this
 *               step (a prefill chunk, one decode token, or k+1 tokens to verify).
 *
 * engine_step() runs the forward for all rows, writes their K/V at the given
 * positions, and for rows with sample=1 samples one token from the logits of
 * the row's last token with the slot's sampler (greedy when temperature == 0),
 * returning the id and requested logprobs. Sampling happens on the device;
 * only ids and logprobs come back. The sampled token is NOT fed back
 * automatically: the caller passes it as the next decode row, so the caller
 * (scheduler, speculative decoder) decides what is committed.
 */
#ifndef PG_ENGINE_H
#define PG_ENGINE_H

#include "../common/common.h"
#include "model.h"

typedef enum { ENGINE_DEVICE_CPU = 0, ENGINE_DEVICE_CUDA = 1 } engine_device;
typedef enum { KV_AUTO = -1, KV_F32 = 0, KV_BF16, KV_INT8 } kv_dtype;
/* Weight format the engine holds (model/quant.h):
 *   NONE  as stored in the file (GGUF Q8_0/Q4_0/Q4_1 become QI8/QI4 group 32
 *         exactly, on devices that want our layouts; F32/F16/BF16 stay plain
 *         on the CPU, bf16 on CUDA)
 *   BF16  every matrix converted to bf16 (the "unquantized" speed baseline)
 *   INT8  per-output-channel symmetric int8 (QI8, group = cols)
 *   INT4  group-wise asymmetric int4 (QI4, group_size 32/64/128)
 * INT8/INT4 re-quantize from the weights as loaded (dequantized exactly). */
typedef enum { WQUANT_NONE = 0, WQUANT_BF16, WQUANT_INT8, WQUANT_INT4 } weight_quant;

/* Where a forward pass hands the inputs of its matrices to an observer
 * (engine_opts.observe, for calibrated quantization): the normed input of
 * wq/wk/wv, the attention output (input of wo), the normed input of
 * w_gate/w_up, and silu(gate) * up (input of w_down). */
typedef enum { ENGINE_SITE_QKV = 0, ENGINE_SITE_O, ENGINE_SITE_GATE_UP, ENGINE_SITE_DOWN, ENGINE_SITES } engine_site;
/* x: n token rows of `cols` f32 each (row-major), valid during the call only. */
typedef void (*engine_observe_fn)(void *ctx, int layer, engine_site site, const float *x, int n, int cols);

typedef struct {
    engine_device device;
    int      max_slots;     /* KV cache rows; 1 until batching lands */
    int      max_seq_len;   /* tokens per slot; <= cfg.max_pos; 0 = min(cfg.max_pos, 4096) */
    int      n_threads;     /* CPU: worker threads; 0 = number of cores */
    kv_dtype kv;            /* KV_AUTO (default): KV_F32 on the CPU, KV_BF16 on CUDA */
    weight_quant quant;     /* re-quantize weights at load (model/quant.h) */
    int      group_size;    /* int4 group size: 32, 64 or 128 (default 32) */
    int      quant_lm_head; /* -1 (default, "auto"): the LM head gets the --quant
                               format when it is stored as F32/F16/BF16 and keeps
                               an already-quantized stored format
                               (quant_lm_head_auto, model/quant.h); 1: always the
                               --quant format; 0: the stored format (bf16 on CUDA).
                               engine_create resolves -1 to 0 or 1. The embedding
                               table always keeps its stored format (one row is
                               read per token). */
    int      use_graphs;    /* CUDA: capture decode in CUDA graphs (default 1) */
    int      gpu_id;
    /* CPU only (NULL: off): called from the engine's thread for every layer
     * and site of every forward chunk, in layer order, with the f32 inputs
     * of the weights as the engine holds them (`peregrine quantize --calib`). */
    engine_observe_fn observe;
    void    *observe_ctx;
} engine_opts;

void engine_opts_default(engine_opts *o);
/* Parse the user-facing names shared by generate, bench and serve:
 * quant "none|bf16|int8|int4" (NULL = none), kv "auto|f32|bf16|int8"
 * (NULL = auto), group_size (checked for int4: 32, 64, 128). */
int  engine_opts_parse_formats(engine_opts *o, const char *quant, int group_size,
                               const char *kv, pg_err *err);
const char *engine_quant_name(weight_quant q);
const char *engine_kv_name(kv_dtype k);
/* 1 if this build has CUDA and a GPU is visible (cudaGetDeviceCount > 0). */
int  engine_cuda_available(void);

#define SAMPLER_MAX_TOP_LOGPROBS 20

typedef struct {
    float    temperature;         /* 0 = greedy (argmax) */
    int      top_k;               /* 0 = off */
    float    top_p;               /* 1 = off */
    float    min_p;               /* 0 = off */
    uint64_t seed;
    float    repetition_penalty;  /* 1 = off; over prompt + generated (vLLM/HF) */
    float    presence_penalty;    /* 0 = off; over generated tokens (OpenAI) */
    float    frequency_penalty;   /* 0 = off; over generated tokens (OpenAI) */
    int      n_logit_bias;
    const int32_t *logit_bias_ids;   /* copied by engine_slot_reset */
    const float   *logit_bias_vals;
    int      logprobs;            /* 1: return logprob of the sampled token */
    int      top_logprobs;        /* 0..SAMPLER_MAX_TOP_LOGPROBS alternatives */
} sampler_params;

void sampler_params_default(sampler_params *p);

typedef struct {
    int            slot;
    const int32_t *tokens;
    int            n_tokens;   /* >= 1 */
    int            pos;        /* position of tokens[0]; pos + n_tokens <= max_seq_len */
    int            sample;     /* sample after the last token of this row */
    int            count_prompt; /* add these tokens to the repetition-penalty history */
} engine_row;

typedef struct {
    int32_t token;                 /* sampled id (rows with sample=1) */
    float   logprob;               /* log softmax of the sampled id (raw logits, before penalties) */
    int     n_top;
    int32_t top_ids[SAMPLER_MAX_TOP_LOGPROBS];
    float   top_logprobs[SAMPLER_MAX_TOP_LOGPROBS];
} engine_result;

typedef struct engine engine;

typedef struct {
    const char *device_name;   /* "cpu (2 threads, avx2)" / "NVIDIA H100 80GB HBM3" */
    int    max_slots, max_seq_len, vocab_size;
    size_t weight_bytes;       /* bytes of weights as held on the device */
    size_t kv_bytes;           /* bytes of the whole KV cache */
    size_t kv_bytes_per_token; /* KV bytes written per token position (all layers) */
    size_t step_weight_bytes;  /* weight bytes one decode step reads (every matrix with its
                                  scales/mins, norms, the LM head; the embedding table only
                                  when it is the LM head); 0 = not reported by the backend */
    weight_quant quant;        /* the weight format asked for (--quant) */
    int    group_size;         /* its int4 group (matrices too narrow for it take a smaller one) */
    int    quant_lm_head;      /* 1: the LM head has that format too (resolved, never -1) */
    kv_dtype kv;               /* the KV cache format in use (never KV_AUTO) */
} engine_info_t;

int  engine_create(const model *m, const engine_opts *opts, engine **out, pg_err *err);
void engine_free(engine *e);
void engine_info(const engine *e, engine_info_t *info);
/* The weight formats an engine holds, for logs and reports: "as stored",
 * "bf16", "int8" or "int4 g64", then ", LM head as stored" when --quant left
 * the LM head in its stored format. */
void engine_weights_desc(const engine_info_t *info, char *buf, size_t cap);

/* Reset a slot for a new sequence: clears its sampler state (seed, penalty
 * history, logit bias). Returns PG_EINVAL for a bad slot or parameters. */
int  engine_slot_reset(engine *e, int slot, const sampler_params *p, pg_err *err);

/* Run one step; results[i] belongs to rows[i]. Returns PG_ERANGE if a row
 * would run past max_seq_len, PG_EINVAL for bad ids/slots. */
int  engine_step(engine *e, const engine_row *rows, int n_rows,
                 engine_result *results, pg_err *err);

/* Copy the logits (vocab_size floats, raw, before penalties) of the last token
 * of row i of the most recent step. For tests and perplexity. */
int  engine_get_logits(engine *e, int row, float *out, pg_err *err);
/* Ask the next step to keep logits of every token of row 0 (perplexity, tests);
 * engine_get_logits_at then reads position j of that row. */
void engine_keep_all_logits(engine *e, int on);
int  engine_get_logits_at(engine *e, int j, float *out, pg_err *err);

#endif
