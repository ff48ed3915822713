/*
 * kernels/cuda/sample.cu — token sampling on the device, one block per row,
 * following model/sampler.h step by step so the CPU and GPU samplers agree:
 *   raw logprobs (+ top-N, ties -> lower id) -> logit bias -> repetition /
 *   presence / frequency penalties -> greedy argmax, or softmax at
 *   temperature T -> top-k -> top-p -> min-p -> walk the candidates in
 *   descending probability (ties -> lower id) until the cumulative mass
 *   passes u * total.
 * Top-k, top-p and min-p become one probability threshold T (kept = p >= T),
 * each found by a binary search over the float bit patterns with block-wide
 * sums (no sort); the descending walk is the largest p* whose mass
 * {p >= p*} exceeds u * total, ties at p* taken in id order. Sums are fp32
 * (the CPU sums in double), so a pick can differ only when u lands within
 * rounding of a boundary; top-k ties at the k-th value keep all tied ids.
 * Only token ids and requested logprobs leave the device.
 */
#include "kc_util.cuh"

#define SAMPLE_THREADS 1024

struct SampleShared {
    float red[32];
    int   ired[32];
};

__device__ __forceinline__ void block_argmax(float v, int id, float *rv, int *ri, float &ov, int &oi)
{
    // (value desc, id asc); NaN-free inputs assumed (masked entries are -inf)
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, id, o);
        if (v2 > v || (v2 == v && i2 < id)) { v = v2; id = i2; }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) { rv[w] = v; ri[w] = id; }
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = lane < nw ? rv[lane] : -INFINITY;
    id = lane < nw ? ri[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        int i2 = __shfl_xor_sync(0xffffffffu, id, o);
        if (v2 > v || (v2 == v && i2 < id)) { v = v2; id = i2; }
    }
    ov = v; oi = id;
}

// This thread's (largest value, its lowest id) over a row, for block_argmax:
// each thread visits its ids in ascending order, so a strict > keeps the
// lowest id of a tie. 16-byte loads when vocab is a multiple of 4 (rows then
// start 16-byte aligned: they come from cudaMalloc at multiples of vocab).
__device__ __forceinline__ void thread_argmax(const float *row, int vocab, float &v, int &id)
{
    v = -INFINITY; id = 0x7fffffff;
    if ((vocab & 3) == 0) {
        const float4 *r4 = (const float4 *)row;
        for (int i = threadIdx.x; i < vocab / 4; i += blockDim.x) {
            const float4 a = r4[i];
            const float e[4] = { a.x, a.y, a.z, a.w };
#pragma unroll
            for (int k = 0; k < 4; k++)
                if (e[k] > v) { v = e[k]; id = 4 * i + k; }
        }
    } else {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            if (row[i] > v) { v = row[i]; id = i; }
    }
}

// Sum over kept ids (p >= v and p >= floor) of p (or of 1 when count).
__device__ float mass_ge(const float *w, int vocab, float v, float floor_, bool count, float *red)
{
    float acc = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float p = w[i];
        if (p >= v && p >= floor_) acc += count ? 1.f : p;
    }
    return kc_block_sum(acc, red);
}

// Largest v in [lo, hi] (non-negative floats, searched over their bit
// patterns, which order like the values) with pred(v) true; pred(lo) must
// hold and pred must be monotone (true below some point, false above).
template <class F>
__device__ float largest_true(float lo, float hi, F pred)
{
    uint32_t a = __float_as_uint(lo), b = __float_as_uint(hi);
    while (a < b) {
        uint32_t mid = a + (b - a + 1) / 2;
        if (pred(__uint_as_float(mid))) a = mid; else b = mid - 1;
    }
    return __uint_as_float(a);
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(const float *logits, int vocab, const int32_t *slots,
              const float *us, const int32_t *do_sample,
              kc_sampler_state st, kc_sample_out *out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    __shared__ SampleShared sh;
    __shared__ int s_tok;
    const int b = blockIdx.x;
    if (!do_sample[b]) return;
    const int slot = slots[b];
    const kc_sampler_params &P = st.params[slot];
    const float *raw = logits + (size_t)b * vocab;
    float *w = st.work + (size_t)b * vocab;
    int32_t *gen = st.gen_count + (size_t)slot * vocab;
    uint8_t *seen = st.seen + (size_t)slot * vocab;
    const int tid = threadIdx.x;

    // 2-3: bias (serially: ids may repeat), then penalties, on a copy.
    // Plain greedy (temperature 0, no bias, no penalties: every decode step
    // of `bench`) needs no copy: the argmax reads the raw row once.
    const bool rep = P.rep_pen != 1.f, pf = P.pres_pen != 0.f || P.freq_pen != 0.f;
    const bool plain = P.temperature == 0.f && P.n_bias == 0 && !rep && !pf;
    const float *src = raw;
    if (!plain) {
        for (int i = tid; i < vocab; i += blockDim.x) w[i] = raw[i];
        __syncthreads();
        if (tid == 0)
            for (int j = 0; j < P.n_bias; j++) w[P.bias_ids[j]] += P.bias_vals[j];
        __syncthreads();
        if (rep || pf) {
            for (int i = tid; i < vocab; i += blockDim.x) {
                if (!seen[i]) continue;
                float l = w[i];
                if (rep) l = l > 0.f ? l / P.rep_pen : l * P.rep_pen;
                if (pf && gen[i] > 0) l -= P.pres_pen + P.freq_pen * (float)gen[i];
                w[i] = l;
            }
            __syncthreads();
        }
        src = w;
    }

    // 4: greedy (the sampling below runs on w: temperature > 0 is never plain)
    float bv; int bi;
    {
        float v; int id;
        thread_argmax(src, vocab, v, id);
        block_argmax(v, id, sh.red, sh.ired, bv, bi);
    }
    if (P.temperature == 0.f) {
        if (tid == 0) s_tok = bi;
    } else {
        // 5: p = exp(l/T - max/T): the top token has p = 1
        const float inv_t = 1.f / P.temperature, mx = bv * inv_t;
        for (int i = tid; i < vocab; i += blockDim.x) w[i] = expf(w[i] * inv_t - mx);
        __syncthreads();
        // 6-8 as probability thresholds: kept = {p >= T}
        float T = 0.f;
        if (P.top_k > 0 && P.top_k < vocab) {   // k-th largest p
            const float k = (float)P.top_k;
            T = largest_true(0.f, 1.f, [&](float v) { return mass_ge(w, vocab, v, 0.f, true, sh.red) >= k; });
        }
        if (P.top_p < 1.f) {   // smallest sorted prefix whose mass reaches top_p
            const float need = P.top_p * mass_ge(w, vocab, T, 0.f, false, sh.red);
            const float T0 = T;
            T = largest_true(T0, 1.f, [&](float v) { return mass_ge(w, vocab, v, T0, false, sh.red) >= need; });
        }
        if (P.min_p > 0.f) T = fmaxf(T, P.min_p);   // p_max is 1
        // 9: walk in descending p: the pick has the largest p* with
        // mass{p >= p*} > u * total; ties at p* go in id order
        const float total = mass_ge(w, vocab, T, 0.f, false, sh.red);
        const float target = us[b] * total;
        const float ps = largest_true(T, 1.f, [&](float v) { return mass_ge(w, vocab, v, T, false, sh.red) > target; });
        const float above = mass_ge(w, vocab, __uint_as_float(__float_as_uint(ps) + 1), T, false, sh.red);
        const float nties = mass_ge(w, vocab, ps, T, true, sh.red) - mass_ge(w, vocab, __uint_as_float(__float_as_uint(ps) + 1), T, true, sh.red);
        if (nties <= 1.5f) {
            if (tid == 0) s_tok = 0x7fffffff;
            __syncthreads();
            for (int i = tid; i < vocab; i += blockDim.x)
                if (w[i] == ps) atomicMin(&s_tok, i);
        } else if (tid == 0) {   // rare: several ids share p*; walk them in id order
            float c = above;
            int tok = -1, last = 0;
            for (int i = 0; i < vocab; i++) {
                if (w[i] != ps) continue;
                last = i;
                c += ps;
                if (c > target) { tok = i; break; }
            }
            s_tok = tok >= 0 ? tok : last;
        }
    }
    __syncthreads();
    // defensive: a pick outside the vocabulary would be our bug; never index with it
    const int tok = (s_tok >= 0 && s_tok < vocab) ? s_tok : bi;

    // 1: logprobs of the raw logits
    kc_sample_out *o = out + b;
    if (P.logprobs || P.top_logprobs > 0) {
        float v; int id;
        thread_argmax(raw, vocab, v, id);
        float mv; int mi;
        block_argmax(v, id, sh.red, sh.ired, mv, mi);
        float s = 0.f;
        for (int i = tid; i < vocab; i += blockDim.x) s += expf(raw[i] - mv);
        s = kc_block_sum(s, sh.red);
        const float lse = mv + logf(s);
        int ntop = min(P.top_logprobs, 20);
        ntop = min(ntop, vocab);
        float pv = mv; int pi = mi;
        for (int k = 0; k < ntop; k++) {
            if (k > 0) {
                float v2 = -INFINITY; int id2 = 0x7fffffff;
                for (int i = tid; i < vocab; i += blockDim.x) {
                    float r = raw[i];
                    bool after = r < pv || (r == pv && i > pi);
                    if (after && (r > v2 || (r == v2 && i < id2))) { v2 = r; id2 = i; }
                }
                block_argmax(v2, id2, sh.red, sh.ired, pv, pi);
            }
            if (tid == 0) { o->top_ids[k] = pi; o->top_logprobs[k] = pv - lse; }
        }
        if (tid == 0) { o->n_top = ntop; o->logprob = raw[tok] - lse; }
    } else if (tid == 0) {
        o->n_top = 0; o->logprob = 0.f;
    }
    if (tid == 0) {
        o->token = tok;
        gen[tok] += 1;
        seen[tok] = 1;
    }
}

extern "C" void k_sample(const float *logits, int vocab, int n, const int32_t *slot,
                         const float *u, const int32_t *do_sample, kc_sampler_state st,
                         kc_sample_out *out, cudaStream_t s)
{
    if (n <= 0) return;
    kc_launch(sample_kernel, dim3(n), dim3(SAMPLE_THREADS), 0, s, logits, vocab, slot, u, do_sample, st, out);
    KC_LAUNCH_CHECK();
}
