/*
 * tokenizer/spm_shim.h — the C face of spm_shim.cc, the only C++ in tokenizer/.
 * It wraps sentencepiece::SentencePieceProcessor: load a serialized ModelProto,
 * report its special ids, encode bytes to ids. No function throws; failures
 * return NULL / -1 with a one-line message in errbuf.
 * Thread safety: a loaded handle is read-only; spm_shim_encode may run on many
 * threads at once (sentencepiece's Encode is const).
 */
#ifndef PG_SPM_SHIM_H
#define PG_SPM_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void *spm_shim_load(const void *proto, size_t len, char *errbuf, size_t errcap);
void  spm_shim_free(void *h);   /* NULL is fine */
int   spm_shim_piece_size(const void *h);
/* ids[0..3] = unk, bos, eos, pad as the library resolves them (-1 if undefined). */
void  spm_shim_special_ids(const void *h, int ids[4]);
/* Appends the ids of s[0, n) to *ids (malloc'd / realloc'd; *n_ids used of *cap).
 * Returns 0, or -1 with errbuf set (the arrays stay valid and owned by the caller). */
int   spm_shim_encode(const void *h, const char *s, size_t n, int32_t **ids, int *n_ids,
                      int *cap, char *errbuf, size_t errcap);

#ifdef __cplusplus
}
#endif
#endif
