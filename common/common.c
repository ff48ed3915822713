/* common/common.c — status strings, logging, allocation, dtype tables, RNG. */
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- status */
const char *pg_status_name(int code) {
    switch (code) {
    case PG_OK: return "ok";
    case PG_EINVAL: return "invalid argument";
    case PG_EIO: return "i/o error";
    case PG_EFORMAT: return "bad format";
    case PG_EUNSUPPORTED: return "unsupported";
    case PG_ENOMEM: return "out of memory";
    case PG_ERANGE: return "out of range";
    case PG_EBUSY: return "busy";
    case PG_ECANCELLED: return "cancelled";
    case PG_EDEVICE: return "device error";
    case PG_EINTERNAL: return "internal error";
    default: return "unknown error";
    }
}

int pg_errf(pg_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        for (char *p = err->msg; *p; p++)  /* keep it one line */
            if (*p == '\n' || *p == '\r') *p = ' ';
        err->code = code;
    }
    return code;
}

/* ---------------------------------------------------------------- logging */
/* Start-up configuration: written once before threads start. */
static pg_log_level g_log_level = PG_LOG_INFO;
static int g_log_json = 0;

void pg_log_set_level(pg_log_level lvl) { g_log_level = lvl; }
void pg_log_set_json(int json) { g_log_json = json; }
int  pg_log_is_json(void) { return g_log_json; }

void pg_log(pg_log_level lvl, const char *file, int line, const char *fmt, ...) {
    if (lvl < g_log_level) return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (g_log_json) {
        /* escape the message for JSON */
        char esc[4200];
        size_t o = 0;
        for (const char *p = msg; *p && o + 7 < sizeof esc; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '"' || c == '\\') { esc[o++] = '\\'; esc[o++] = (char)c; }
            else if (c < 0x20) o += (size_t)snprintf(esc + o, sizeof esc - o, "\\u%04x", c);
            else esc[o++] = (char)c;
        }
        esc[o] = 0;
        fprintf(stderr, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"src\":\"%s:%d\",\"msg\":\"%s\"}\n",
                when, ts.tv_nsec / 1000000, names[lvl], base, line, esc);
    } else {
        fprintf(stderr, "%s.%03ldZ %-5s %s\n", when, ts.tv_nsec / 1000000, names[lvl], msg);
    }
}

_Noreturn void pg_die(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fatal: %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ---------------------------------------------------------------- memory */
void *pg_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) PG_DIE("out of memory allocating %zu bytes", n);
    return p;
}
void *pg_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) PG_DIE("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}
void *pg_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) PG_DIE("out of memory reallocating %zu bytes", n);
    return q;
}
char *pg_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = pg_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

int pg_mul_overflow(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
int pg_add_overflow(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

double pg_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int pg_env_flag(const char *name, int dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    return strcmp(v, "0") != 0;
}

int pg_read_file(const char *path, char **data, size_t *len, pg_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = pg_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) { cap *= 2; buf = pg_xrealloc(buf, cap); }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return pg_errf(err, PG_EIO, "%s: read error", path); }
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return PG_OK;
}

/* ---------------------------------------------------------------- dtypes */
static const struct { const char *name; int block; size_t bytes; } g_dtypes[PG_DTYPE_COUNT] = {
    [PG_F32] = {"F32", 1, 4},   [PG_F16] = {"F16", 1, 2},   [PG_BF16] = {"BF16", 1, 2},
    [PG_Q8_0] = {"Q8_0", 32, 34}, [PG_Q4_0] = {"Q4_0", 32, 18}, [PG_Q4_1] = {"Q4_1", 32, 20},
    [PG_I8] = {"I8", 1, 1},     [PG_I32] = {"I32", 1, 4},
    [PG_QI8] = {"QI8", 1, 1},   [PG_QI4] = {"QI4", 2, 1},   /* q bytes only; see model/quant.h */
};

const char *pg_dtype_name(pg_dtype t) { return (unsigned)t < PG_DTYPE_COUNT ? g_dtypes[t].name : "?"; }
int pg_dtype_block(pg_dtype t) { return (unsigned)t < PG_DTYPE_COUNT ? g_dtypes[t].block : 0; }
size_t pg_dtype_block_bytes(pg_dtype t) { return (unsigned)t < PG_DTYPE_COUNT ? g_dtypes[t].bytes : 0; }
size_t pg_dtype_row_bytes(pg_dtype t, int64_t n) {
    if ((unsigned)t >= PG_DTYPE_COUNT || n < 0) return 0;
    int b = g_dtypes[t].block;
    if (n % b) return 0;
    return (size_t)(n / b) * g_dtypes[t].bytes;
}

float pg_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t pg_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  /* may carry into exponent: correct */
    return (uint16_t)h;
}

float pg_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t pg_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ---------------------------------------------------------------- rng */
static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
void pg_rng_seed(pg_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
uint64_t pg_rng_u64(pg_rng *r) {
    uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return res;
}
float pg_rng_uniform(pg_rng *r) { return (float)(pg_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }
float pg_rng_normal(pg_rng *r) {
    float u1 = pg_rng_uniform(r), u2 = pg_rng_uniform(r);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}
