/*
 * server/metrics.c — Prometheus text-format metrics (GET /metrics).
 *
 * Counters: requests by endpoint and status, prompt and generated tokens,
 * cancelled requests. Histograms: time to first token and inter-token
 * latency (seconds). Gauges: running and queued requests (read from the
 * scheduler when rendering) and the decode rate of the last finished
 * sequence. One mutex guards everything; updates are a few additions.
 */
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

#define MET_MAX_SERIES 64
static const double g_ttft_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double g_itl_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
#define N_TTFT ((int)(sizeof g_ttft_buckets / sizeof g_ttft_buckets[0]))
#define N_ITL ((int)(sizeof g_itl_buckets / sizeof g_itl_buckets[0]))

typedef struct {
    const double *bounds;
    int           n;
    uint64_t      counts[16];  /* cumulative counts are computed when rendering */
    uint64_t      total;
    double        sum;
} histogram;

struct srv_metrics {
    pthread_mutex_t mu;
    struct { char endpoint[40]; int status; uint64_t n; } series[MET_MAX_SERIES];
    int       n_series;
    uint64_t  prompt_tokens, gen_tokens, cancelled;
    histogram ttft, itl;
    double    decode_rate;
};

srv_metrics *metrics_new(void) {
    srv_metrics *m = pg_xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->ttft.bounds = g_ttft_buckets;
    m->ttft.n = N_TTFT;
    m->itl.bounds = g_itl_buckets;
    m->itl.n = N_ITL;
    return m;
}

void metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void metrics_request(srv_metrics *m, const char *endpoint, int status) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    int i;
    for (i = 0; i < m->n_series; i++)
        if (m->series[i].status == status && !strcmp(m->series[i].endpoint, endpoint)) break;
    if (i == m->n_series && m->n_series < MET_MAX_SERIES) {
        snprintf(m->series[i].endpoint, sizeof m->series[i].endpoint, "%s", endpoint);
        m->series[i].status = status;
        m->n_series++;
    }
    if (i < m->n_series) m->series[i].n++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_tokens(srv_metrics *m, int prompt, int generated) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += (uint64_t)(prompt > 0 ? prompt : 0);
    m->gen_tokens += (uint64_t)(generated > 0 ? generated : 0);
    pthread_mutex_unlock(&m->mu);
}

static void hist_add(histogram *h, double v) {
    int b = 0;
    while (b < h->n && v > h->bounds[b]) b++;
    h->counts[b]++;  /* b == n: the +Inf bucket */
    h->total++;
    h->sum += v;
}

void metrics_ttft(srv_metrics *m, double s) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    hist_add(&m->ttft, s);
    pthread_mutex_unlock(&m->mu);
}

void metrics_itl(srv_metrics *m, double s) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    hist_add(&m->itl, s);
    pthread_mutex_unlock(&m->mu);
}

void metrics_cancelled(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->cancelled++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_decode_rate(srv_metrics *m, double r) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->decode_rate = r;
    pthread_mutex_unlock(&m->mu);
}

static void hist_render(const histogram *h, const char *name, const char *help, sbuf *out) {
    sbuf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < h->n; b++) {
        cum += h->counts[b];
        sbuf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[b], (unsigned long long)cum);
    }
    sbuf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                (unsigned long long)h->total, name, h->sum, name, (unsigned long long)h->total);
}

void metrics_render(srv_metrics *m, metrics_gauges_fn gauges, void *ctx, sbuf *out) {
    /* Snapshot first, gauges second: see server_internal.h. The copy lets
     * the gauges be read without m's mutex held, so the scheduler's lock
     * (taken by sched_counts) never nests inside it. */
    srv_metrics *c = pg_xmalloc(sizeof *c);
    pthread_mutex_lock(&m->mu);
    memcpy(c, m, sizeof *c);
    pthread_mutex_unlock(&m->mu);
    int running = 0, queued = 0;
    if (gauges) gauges(ctx, &running, &queued);
    sbuf_puts(out, "# HELP peregrine_requests_total HTTP requests answered, by endpoint and status.\n"
                   "# TYPE peregrine_requests_total counter\n");
    for (int i = 0; i < c->n_series; i++)
        sbuf_printf(out, "peregrine_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", c->series[i].endpoint,
                    c->series[i].status, (unsigned long long)c->series[i].n);
    sbuf_printf(out, "# HELP peregrine_prompt_tokens_total Prompt tokens processed.\n"
                     "# TYPE peregrine_prompt_tokens_total counter\nperegrine_prompt_tokens_total %llu\n",
                (unsigned long long)c->prompt_tokens);
    sbuf_printf(out, "# HELP peregrine_generation_tokens_total Tokens generated.\n"
                     "# TYPE peregrine_generation_tokens_total counter\nperegrine_generation_tokens_total %llu\n",
                (unsigned long long)c->gen_tokens);
    sbuf_printf(out, "# HELP peregrine_requests_cancelled_total Requests cancelled (client gone, shutdown).\n"
                     "# TYPE peregrine_requests_cancelled_total counter\nperegrine_requests_cancelled_total %llu\n",
                (unsigned long long)c->cancelled);
    hist_render(&c->ttft, "peregrine_time_to_first_token_seconds", "Time from request arrival to its first token.", out);
    hist_render(&c->itl, "peregrine_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.", out);
    sbuf_printf(out, "# HELP peregrine_requests_running Requests holding a slot.\n"
                     "# TYPE peregrine_requests_running gauge\nperegrine_requests_running %d\n", running);
    sbuf_printf(out, "# HELP peregrine_requests_queued Requests waiting for a slot.\n"
                     "# TYPE peregrine_requests_queued gauge\nperegrine_requests_queued %d\n", queued);
    sbuf_printf(out, "# HELP peregrine_decode_tokens_per_second Decode rate of the last finished sequence.\n"
                     "# TYPE peregrine_decode_tokens_per_second gauge\nperegrine_decode_tokens_per_second %.3f\n",
                c->decode_rate);
    free(c);
}
