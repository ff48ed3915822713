/*
 * model/loader.h — private to the model file readers (config.c, gguf.c,
 * safetensors.c, model.c). Nothing outside model/ includes it.
 *
 * What it holds:
 *   - model_mapping: everything a loaded model owns besides its tokenizer and
 *     chat template — read-only file mappings (weights point into them) and
 *     owned heap blocks (tensor names, random weights, aligned copies).
 *   - The weight-slot table shared by every reader: each file format maps its
 *     tensor names to a (kind, layer) slot; model_place_tensor() checks dtype
 *     and shape against the config in one place, model_finish_weights() checks
 *     that every required tensor arrived and resolves tied embeddings.
 * Thread safety: used only while one thread loads a model.
 */
#ifndef PG_MODEL_LOADER_H
#define PG_MODEL_LOADER_H

#include "model.h"

/* ---------------------------------------------------------------- mapping */
typedef struct {
    void  *addr;
    size_t len;
} mm_region;

struct model_mapping {
    mm_region *maps;  int n_maps, cap_maps;   /* munmap'ed by mm_free */
    void     **bufs;  int n_bufs, cap_bufs;   /* free'd by mm_free */
};

/* Map a whole file read-only. Empty files and files that cannot be opened are
 * errors naming the path (PG_EIO). The mapping lives until mm_free. */
int   mm_map_file(model_mapping *mm, const char *path, const uint8_t **data, size_t *size,
                  pg_err *err);
/* Owned heap block (freed by mm_free); NULL when the allocation fails. */
void *mm_alloc(model_mapping *mm, size_t n);
/* NUL-terminated owned copy of n bytes (aborts only on allocator failure of a
 * small, already bounds-checked size). */
char *mm_strndup(model_mapping *mm, const char *s, size_t n);
void  mm_free(model_mapping *mm);

/* ---------------------------------------------------------------- weight slots */
/* Kinds in model_tensor() order: three global tensors, then nine per layer. */
enum {
    MW_TOK_EMBD = 0, MW_OUT_NORM, MW_LM_HEAD,
    MW_ATTN_NORM, MW_WQ, MW_WK, MW_WV, MW_WO, MW_FFN_NORM, MW_GATE, MW_UP, MW_DOWN,
    MW_KIND_COUNT
};
#define MW_N_GLOBAL    3
#define MW_N_PER_LAYER 9

/* Expected (rows, cols) of a kind under cfg; 1-D tensors have rows = 1. */
void model_expected_shape(const model_config *cfg, int kind, int64_t *rows, int64_t *cols);
/* 1 for the norm vectors (stored 1-D). */
int  model_kind_is_vector(int kind);
/* Slot of (kind, layer); layer is ignored for global kinds. */
tensor *model_slot(model *m, int kind, int layer);
/* Allocate m->w.layers for cfg.n_layers (cfg must be validated). */
void model_alloc_layers(model *m);

/*
 * Validate and store one tensor read from `path`: the slot must be empty
 * (duplicates are errors), quantized dtypes are only allowed for matrices,
 * (rows, cols) must equal model_expected_shape(), and nbytes must equal
 * rows * row_bytes(cols). `name` must outlive the model (mm_strndup it).
 */
int model_place_tensor(model *m, int kind, int layer, pg_dtype dt, int64_t rows, int64_t cols,
                       const void *data, size_t nbytes, const char *name, const char *path,
                       pg_err *err);
/* Every required tensor present? lm_head absent or cfg.tie_embeddings =>
 * lm_head = tok_embd and tie_embeddings = 1. Messages name the file and the
 * missing tensor under `style` names (GGUF or HF). */
typedef enum { MW_NAMES_GGUF, MW_NAMES_HF } mw_name_style;
int model_finish_weights(model *m, const char *path, mw_name_style style, pg_err *err);
/* The file name of a slot in a given naming style, e.g. "blk.3.attn_q.weight". */
void model_slot_name(int kind, int layer, mw_name_style style, char *out, size_t cap);
/* Recognise a weight name (n bytes, not NUL-terminated): 1 and (kind, layer)
 * for a weight we use, 0 for anything else. layer is not range-checked here
 * (model_place_tensor does it) but is at most 999999. */
int  model_slot_parse(const char *name, size_t n, mw_name_style style, int *kind, int *layer);
/* Release everything m owns (mapping, tokenizer, template, layers) and zero
 * it; m itself is not freed. */
void model_release(model *m);
/* After a tokenizer is attached: fill bos/eos/add_bos gaps from it. */
void model_sync_tokenizer(model *m);

/* ---------------------------------------------------------------- readers */
/* want_tok = 0 skips building the file's tokenizer (an override follows). */
int gguf_load(const char *path, model *m, int want_tok, pg_err *err);
int st_load(const char *path_or_dir, model *m, int want_tok, pg_err *err);
/* The tokenizer (and template, bos/eos) of a GGUF file with no tensors;
 * sets cfg.vocab_size to its token count. */
int gguf_load_vocab(const char *path, model *m, pg_err *err);
/* The metadata entries of a GGUF file in memory: their count and the byte
 * span [*begin, *end) they occupy (after the 24-byte header). */
int gguf_metadata_span(const char *path, const uint8_t *p, size_t n, uint64_t *n_kv, size_t *begin,
                       size_t *end, pg_err *err);

/* Read and parse an HF config.json file. */
int config_parse_json_file(const char *path, model_config *cfg, pg_err *err);
/* eos_token_id value (an integer or a list of integers): appends new ids to
 * cfg->eos_ids (config.json, generation_config.json). */
struct cJSON;
int config_add_eos_json(const struct cJSON *v, const char *path, model_config *cfg, pg_err *err);

/* Printable copy of possibly hostile bytes for messages (at most cap-1 chars,
 * non-printable bytes as '?', "..." when cut). */
void model_printable(const void *s, size_t n, char *out, size_t cap);

#endif
