/* server/util.c — growable byte buffer and UTF-8 helpers for the server. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

/* ---------------------------------------------------------------- sbuf */
static void sbuf_grow(sbuf *b, size_t extra) {
    size_t need;
    if (pg_add_overflow(b->n, extra + 1, &need)) PG_DIE("sbuf size overflow");
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    b->p = pg_xrealloc(b->p, cap);
    b->cap = cap;
}

void sbuf_put(sbuf *b, const void *s, size_t n) {
    sbuf_grow(b, n);
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;  /* always NUL-terminated for convenience (not counted) */
}

void sbuf_puts(sbuf *b, const char *s) { sbuf_put(b, s, strlen(s)); }

void sbuf_putc(sbuf *b, char c) { sbuf_put(b, &c, 1); }

void sbuf_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0) return;
    sbuf_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

void sbuf_free(sbuf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* ---------------------------------------------------------------- UTF-8 */
/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 if s starts a
 * maximal invalid subpart (Unicode 3.9 table 3-7). *sub gets the length of
 * that invalid subpart (>= 1) when 0 is returned. */
static int utf8_seq(const unsigned char *s, size_t n, size_t *sub) {
    unsigned c = s[0];
    *sub = 1;
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c == 0xe0) { len = 3; lo = 0xa0; }
    else if (c == 0xed) { len = 3; hi = 0x9f; }
    else if (c >= 0xe1 && c <= 0xef) len = 3;
    else if (c == 0xf0) { len = 4; lo = 0x90; }
    else if (c == 0xf4) { len = 4; hi = 0x8f; }
    else if (c >= 0xf1 && c <= 0xf3) len = 4;
    else return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) { *sub = (size_t)i; return 0; }
        unsigned d = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xbf;
        if (d < l || d > h) { *sub = (size_t)i; return 0; }
    }
    return len;
}

int srv_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, sub;
    while (i < n) {
        if (p[i] < 0x80) { i++; continue; }
        int k = utf8_seq(p + i, n - i, &sub);
        if (!k) return 0;
        i += (size_t)k;
    }
    return 1;
}

char *srv_utf8_sanitize(const char *s, size_t n) {
    sbuf b = {0};
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, sub;
    while (i < n) {
        int k = utf8_seq(p + i, n - i, &sub);
        if (k) {
            sbuf_put(&b, p + i, (size_t)k);
            i += (size_t)k;
        } else {
            sbuf_put(&b, "\xef\xbf\xbd", 3);
            i += sub;
        }
    }
    sbuf_put(&b, "", 0);
    return b.p;
}
