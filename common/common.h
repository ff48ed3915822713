/*
 * common/ — status codes, error messages, logging, asserts, small helpers.
 *
 * Every folder may include this header; it includes nothing from the project.
 * Contract:
 *   - Functions that can fail on input return a pg_status (PG_OK == 0) and, when
 *     given a non-NULL pg_err*, fill it with a one-line message naming the thing
 *     that was wrong (file, tensor, field). pg_errf() formats and returns the code
 *     so callers can write `return pg_errf(err, PG_EFORMAT, "...")`.
 *   - Programmer errors (broken invariants) use PG_ASSERT / PG_DIE, which print
 *     file:line and abort. They are never used for bad user input.
 *   - The only global mutable state is the log level/format, set once at start-up.
 * Thread safety: everything here is thread-safe except pg_log_set_*, which is
 * called once before threads start.
 */
#ifndef PG_COMMON_H
#define PG_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status */
typedef enum {
    PG_OK = 0,
    PG_EINVAL,       /* bad argument / bad request field */
    PG_EIO,          /* file missing, unreadable, short read */
    PG_EFORMAT,      /* file content malformed, truncated, inconsistent */
    PG_EUNSUPPORTED, /* well-formed but not supported (dtype, arch, ...) */
    PG_ENOMEM,       /* allocation failed or does not fit */
    PG_ERANGE,       /* value out of range (e.g. prompt longer than context) */
    PG_EBUSY,        /* queue full, no free slot */
    PG_ECANCELLED,   /* request cancelled */
    PG_EDEVICE,      /* CUDA / NCCL failure that is not a programmer error */
    PG_EINTERNAL     /* our own bug, reported instead of crashing a server */
} pg_status;

#define PG_ERR_LEN 512
typedef struct {
    int code;               /* pg_status */
    char msg[PG_ERR_LEN];   /* one line, no trailing newline */
} pg_err;

const char *pg_status_name(int code);
/* Fill err (if non-NULL) with a printf-formatted message; returns code. */
int pg_errf(pg_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------- logging */
typedef enum { PG_LOG_DEBUG, PG_LOG_INFO, PG_LOG_WARN, PG_LOG_ERROR } pg_log_level;
void pg_log_set_level(pg_log_level lvl);
void pg_log_set_json(int json);      /* 1: one JSON object per line */
int  pg_log_is_json(void);
void pg_log(pg_log_level lvl, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define LOG_DEBUG(...) pg_log(PG_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_INFO(...)  pg_log(PG_LOG_INFO,  __FILE__, __LINE__, __VA_ARGS__)
#define LOG_WARN(...)  pg_log(PG_LOG_WARN,  __FILE__, __LINE__, __VA_ARGS__)
#define LOG_ERROR(...) pg_log(PG_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)

/* ---------------------------------------------------------------- asserts */
_Noreturn void pg_die(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define PG_DIE(...) pg_die(__FILE__, __LINE__, __VA_ARGS__)
#define PG_ASSERT(e) do { if (!(e)) pg_die(__FILE__, __LINE__, "assertion failed: %s", #e); } while (0)
/* Propagate a non-zero status. */
#define PG_TRY(x) do { int pg_try_rc_ = (x); if (pg_try_rc_ != PG_OK) return pg_try_rc_; } while (0)

/* Allocation that aborts on failure (for sizes we control, not sizes from input). */
void *pg_xmalloc(size_t n);
void *pg_xcalloc(size_t n, size_t size);
void *pg_xrealloc(void *p, size_t n);
char *pg_xstrdup(const char *s);

/* Overflow-checked size arithmetic: returns 0 and sets *out, or 1 on overflow. */
int pg_mul_overflow(size_t a, size_t b, size_t *out);
int pg_add_overflow(size_t a, size_t b, size_t *out);

/* Monotonic time in seconds. */
double pg_now(void);

/* A switch from the environment (start-up configuration): dflt when the
 * variable is unset or empty, 0 when it is "0", 1 for any other value. */
int pg_env_flag(const char *name, int dflt);

/* Read a whole file into a NUL-terminated malloc'd buffer. */
int pg_read_file(const char *path, char **data, size_t *len, pg_err *err);

/* ---------------------------------------------------------------- dtypes */
/*
 * Storage types of tensors. Quantized types are GGUF block formats
 * (32 elements per block along the row / input dimension):
 *   Q8_0: { f16 d; int8 q[32]; }            x = d*q                (34 bytes)
 *   Q4_0: { f16 d; u8 qs[16]; }             x = d*(q-8), q in 0..15 (18 bytes)
 *   Q4_1: { f16 d; f16 m; u8 qs[16]; }      x = d*q + m            (20 bytes)
 * Q4 nibbles: element j (0..15) is qs[j] & 15, element j+16 is qs[j] >> 4.
 *
 * Peregrine's own weight-only formats (model/quant.h has the full contract):
 * the quantized values and the per-group f16 parameters live in separate
 * arrays (tensor.data, tensor.qscale, tensor.qmin), the group size is per
 * tensor (tensor.group), so these dtypes describe only tensor.data:
 *   QI8: int8 q[rows][cols]                     x = s*q
 *   QI4: u8 q[rows][cols/2], element c in byte c/2, low nibble for even c
 *                                               x = s*q + m, q in 0..15
 */
typedef enum {
    PG_F32 = 0, PG_F16, PG_BF16, PG_Q8_0, PG_Q4_0, PG_Q4_1, PG_I8, PG_I32,
    PG_QI8, PG_QI4,
    PG_DTYPE_COUNT
} pg_dtype;

const char *pg_dtype_name(pg_dtype t);
int    pg_dtype_block(pg_dtype t);        /* elements per block (1 for plain types) */
size_t pg_dtype_block_bytes(pg_dtype t);  /* bytes per block */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t pg_dtype_row_bytes(pg_dtype t, int64_t n);

float    pg_f16_to_f32(uint16_t h);
uint16_t pg_f32_to_f16(float f);
float    pg_bf16_to_f32(uint16_t h);
uint16_t pg_f32_to_bf16(float f);  /* round to nearest even */

/* ---------------------------------------------------------------- rng */
/* Small deterministic RNG (splitmix64 seeding + xoshiro256**). Not thread-shared. */
typedef struct { uint64_t s[4]; } pg_rng;
void     pg_rng_seed(pg_rng *r, uint64_t seed);
uint64_t pg_rng_u64(pg_rng *r);
float    pg_rng_uniform(pg_rng *r);   /* [0, 1) */
float    pg_rng_normal(pg_rng *r);    /* N(0, 1) */

#ifdef __cplusplus
}
#endif
#endif
