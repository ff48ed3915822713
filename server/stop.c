/*
 * server/stop.c — stop strings matched across token boundaries.
 *
 * Text arrives in pieces (one per token, from the incremental detokenizer).
 * A stop string may span pieces, so the matcher holds back the longest
 * suffix of what it has seen that is a proper prefix of some stop string;
 * everything before it is safe to emit. When a stop string appears, the
 * text before its first occurrence is emitted and the rest is dropped.
 * Held text always starts at a UTF-8 character boundary (it equals the start
 * of a valid UTF-8 stop string), so emitted text never splits a character.
 */
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

void stop_init(stop_matcher *m, char *const *stops, int n_stop) {
    memset(m, 0, sizeof *m);
    for (int i = 0; i < n_stop && m->n_stop < STOP_MAX; i++) {
        if (!stops[i] || !stops[i][0]) continue;  /* empty stop strings never match */
        m->stop[m->n_stop] = pg_xstrdup(stops[i]);
        m->len[m->n_stop] = strlen(stops[i]);
        m->n_stop++;
    }
}

void stop_free(stop_matcher *m) {
    for (int i = 0; i < m->n_stop; i++) free(m->stop[i]);
    sbuf_free(&m->held);
    memset(m, 0, sizeof *m);
}

int stop_feed(stop_matcher *m, const char *text, size_t n, sbuf *out) {
    if (m->stopped) return 1;
    if (m->n_stop == 0) {
        sbuf_put(out, text, n);
        return 0;
    }
    sbuf_put(&m->held, text, n);
    const char *h = m->held.p;
    size_t hn = m->held.n;
    /* Earliest occurrence of any stop string. memmem handles NULs in text. */
    size_t best = hn;
    for (int i = 0; i < m->n_stop; i++) {
        const char *f = memmem(h, hn, m->stop[i], m->len[i]);
        if (f && (size_t)(f - h) < best) best = (size_t)(f - h);
    }
    if (best < hn) {
        sbuf_put(out, h, best);
        m->stopped = 1;
        m->held.n = 0;
        return 1;
    }
    /* Longest suffix of held that is a proper prefix of a stop string. */
    size_t keep = 0;
    for (int i = 0; i < m->n_stop; i++) {
        size_t maxk = m->len[i] - 1 < hn ? m->len[i] - 1 : hn;
        for (size_t k = maxk; k > keep; k--)
            if (!memcmp(h + hn - k, m->stop[i], k)) { keep = k; break; }
    }
    sbuf_put(out, h, hn - keep);
    memmove(m->held.p, h + hn - keep, keep);
    m->held.n = keep;
    return 0;
}

void stop_flush(stop_matcher *m, sbuf *out) {
    if (!m->stopped && m->held.n) sbuf_put(out, m->held.p, m->held.n);
    m->held.n = 0;
}
