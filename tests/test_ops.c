/* test_ops.c: the CPU backend's operations against naive implementations.
 *
 * Each operation is recomputed here the slow, obvious way in double precision
 * (RMSNorm, RoPE in both rotation styles, causal grouped-query attention
 * with its softmax and sliding window, SwiGLU and GeGLU, matrix products in every weight format through
 * both the integer and the GEMM path) and compared with a normalised error;
 * packed weights against the file's layout; and the pool's loop splitting. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/quants.h"
#include "../native/backend.h"
#include "../native/error.h"
#include "check.h"

static uint64_t rng = 12345;
static float frand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng >> 40) / (double)(1ULL << 24)) * 2.0f - 1.0f;
}

static double nmse(const float *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

static void test_rmsnorm(exo_backend *be)
{
    enum { T = 3, D = 96 };
    float x[T * D], w[D], y[T * D];
    double ref[T * D];
    for (int i = 0; i < T * D; i++) x[i] = frand() * 3;
    for (int i = 0; i < D; i++) w[i] = 1 + frand() * 0.5f;
    be->rmsnorm(be, x, w, y, T, D, 1e-5f);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < D; i++) ss += (double)x[t * D + i] * x[t * D + i];
        double inv = 1 / sqrt(ss / D + 1e-5);
        for (int i = 0; i < D; i++) ref[t * D + i] = x[t * D + i] * inv * w[i];
    }
    CHECK(nmse(y, ref, T * D) < 1e-12);
}

static void test_rope(exo_backend *be, int style)
{
    enum { T = 4, H = 3, HD = 16, ROT = 12 }; /* partial rotation: last 4 dims untouched */
    float x[T * H * HD], cosv[T * ROT / 2], sinv[T * ROT / 2];
    double ref[T * H * HD];
    int pos0 = 5;
    for (int i = 0; i < T * H * HD; i++) x[i] = frand();
    for (int t = 0; t < T; t++)
        for (int i = 0; i < ROT / 2; i++) {
            double theta = (pos0 + t) * pow(10000.0, -2.0 * i / ROT);
            cosv[t * ROT / 2 + i] = (float)cos(theta);
            sinv[t * ROT / 2 + i] = (float)sin(theta);
        }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            const float *v = x + (t * H + h) * HD;
            double *r = ref + (t * H + h) * HD;
            for (int i = 0; i < HD; i++) r[i] = v[i];
            for (int i = 0; i < ROT / 2; i++) {
                double theta = (pos0 + t) * pow(10000.0, -2.0 * i / ROT);
                int a = style == EXO_ROPE_NEOX ? i : 2 * i, b = style == EXO_ROPE_NEOX ? i + ROT / 2 : 2 * i + 1;
                r[a] = v[a] * cos(theta) - v[b] * sin(theta);
                r[b] = v[a] * sin(theta) + v[b] * cos(theta);
            }
        }
    exo_rope_table rope = {.cos = cosv, .sin = sinv, .rope_dim = ROT, .style = style};
    be->rope(be, x, T, H, HD, &rope);
    CHECK_MSG(nmse(x, ref, T * H * HD) < 1e-12, "rope style %d", style);
}

/* T queries at the end of a cache of CTX positions; T >= 32 takes the
 * blocked sgemm path (EXO_GEMM_MIN_TOKENS is set to 32 in main). */
/* window: a query at p sees keys (p - window, p]; 0 = all. */
/* HKV 1 with one query leaves fewer groups than threads: the backend then
 * splits the group into runs of heads. */
static void test_attention(exo_backend *be, int T, int window, int HKV)
{
    enum { CTX = 80, H = 6, HKV_MAX = 2, HD = 8, TMAX = 64 };
    int pos0 = CTX - T;
    static float q[TMAX * H * HD], k[CTX * HKV_MAX * HD], v[CTX * HKV_MAX * HD], out[TMAX * H * HD];
    static uint16_t k16[CTX * HKV_MAX * HD], v16[CTX * HKV_MAX * HD];
    static double ref[TMAX * H * HD];
    for (int i = 0; i < T * H * HD; i++) q[i] = frand();
    for (int i = 0; i < CTX * HKV * HD; i++) k[i] = frand(), v[i] = frand();
    /* the cache holds f16: the reference uses the same rounded keys and values */
    be->to_f16(be, k, k16, CTX * HKV * HD);
    be->to_f16(be, v, v16, CTX * HKV * HD);
    for (int i = 0; i < CTX * HKV * HD; i++) k[i] = exo__half_to_float(k16[i]), v[i] = exo__half_to_float(v16[i]);
    float scale = 1 / sqrtf(HD);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / HKV), n = pos0 + t + 1, first = window && n > window ? n - window : 0;
            double s[CTX], max = -1e300, sum = 0;
            for (int p = first; p < n; p++) {
                double d = 0;
                for (int i = 0; i < HD; i++) d += (double)q[(t * H + h) * HD + i] * k[(p * HKV + kvh) * HD + i];
                s[p] = d * scale;
                if (s[p] > max) max = s[p];
            }
            for (int p = first; p < n; p++) sum += s[p] = exp(s[p] - max);
            for (int i = 0; i < HD; i++) {
                double acc = 0;
                for (int p = first; p < n; p++) acc += s[p] / sum * v[(p * HKV + kvh) * HD + i];
                ref[(t * H + h) * HD + i] = acc;
            }
        }
    exo_attention_args a = {.q = q, .k_cache = k16, .v_cache = v16, .out = out, .n_tokens = T, .pos0 = pos0,
                            .n_head = H, .n_head_kv = HKV, .head_dim = HD, .scale = scale, .window = window};
    be->attention(be, &a);
    CHECK_MSG(nmse(out, ref, (size_t)T * H * HD) < 1e-10, "attention of %d queries, window %d, %d KV heads: nmse %g", T,
              window, HKV, nmse(out, ref, (size_t)T * H * HD));
}

static double act_ref(int act, double g)
{
    if (act == EXO_FFN_GELU_TANH) return 0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
    return g / (1 + exp(-g));
}

/* Gated activations through matmul_glu with identity weights (f32: exact
 * products), so gate and up are the input itself: out = act(x) * x. */
static void test_glu(exo_backend *be, int act)
{
    enum { N = 64, T = 3 };
    static float w[N * N], x[T * N], gate[T * N], up[T * N];
    double ref[T * N];
    for (int i = 0; i < N; i++) w[i * N + i] = 1;
    for (int i = 0; i < T * N; i++) x[i] = frand() * 6, ref[i] = act_ref(act, x[i]) * x[i];
    exo_tensor wt;
    int64_t ne[2] = {N, N};
    CHECK(exo__tensor_view(&wt, EXO_DTYPE_F32, 2, ne, w) == 0);
    CHECK(be->matmul_glu(be, &wt, &wt, x, T, gate, up, act) == 0);
    /* GELU goes through f16 as llama.cpp's does (relative error <= 2^-11 on
     * input and output): nmse well under 1e-6; SiLU is exact to float. */
    double bound = act == EXO_FFN_GELU_TANH ? 1e-6 : 1e-12;
    CHECK_MSG(nmse(gate, ref, T * N) < bound, "glu activation %d: nmse %g", act, nmse(gate, ref, T * N));
}

/* Matmul in one dtype, n_tokens rows, against the dequantized weights in double. */
static void test_matmul(exo_backend *be, int dtype, int n_tokens)
{
    enum { K = 512, N = 80 };
    const exo_type_traits *tr = exo__type_traits_get(dtype);
    size_t row = exo__dtype_row_size(dtype, K);
    float *wf = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * K * n_tokens);
    float *y = malloc(sizeof(float) * N * n_tokens), *deq = malloc(sizeof(float) * K);
    double *ref = malloc(sizeof(double) * N * n_tokens);
    char *w = malloc(row * N);
    for (int i = 0; i < K * N; i++) wf[i] = frand();
    for (int i = 0; i < K * n_tokens; i++) x[i] = frand();
    for (int r = 0; r < N; r++) tr->from_float_ref(wf + r * K, w + r * row, K);
    for (int r = 0; r < N; r++) {
        tr->to_float_ref(w + r * row, deq, K);
        for (int t = 0; t < n_tokens; t++) {
            double acc = 0;
            for (int i = 0; i < K; i++) acc += (double)deq[i] * x[t * K + i];
            ref[t * N + r] = acc;
        }
    }
    exo_tensor wt;
    int64_t ne[2] = {K, N};
    CHECK(exo__tensor_view(&wt, dtype, 2, ne, w) == 0);
    CHECK(be->matmul(be, &wt, x, n_tokens, y, N) == 0);
    /* 8-bit activations cost about 1e-4 of nmse; f32 paths far less. */
    double e = nmse(y, ref, (size_t)N * n_tokens);
    CHECK_MSG(e < 5e-4, "matmul %s x %d tokens: nmse %g", tr->name, n_tokens, e);
    /* The backend's packed copy, where it makes one: the same outputs bit
     * for bit (in a multi-output call too, which mixes packed and not). */
    size_t packed_bytes = be->packed_size(be, &wt);
    if (packed_bytes) {
        exo_tensor packed = wt;
        void *buf = malloc(packed_bytes);
        be->pack(be, &packed, buf);
        CHECK(packed.packed == buf);
        float *yp = malloc(sizeof(float) * N * n_tokens * 2);
        CHECK(be->matmul(be, &packed, x, n_tokens, yp, N) == 0);
        CHECK_MSG(memcmp(yp, y, sizeof(float) * N * n_tokens) == 0, "packed matmul %s x %d tokens differs",
                  tr->name, n_tokens);
        /* two outputs, one packed and one not (run one by one), then both
         * packed (one loop whose items span the two outputs) */
        exo_matmul_out outs[2] = {{&packed, yp, 2 * N}, {&wt, yp + N, 2 * N}};
        for (int both = 0; both < 2; both++) {
            if (both) outs[1].w = &packed;
            memset(yp, 0, sizeof(float) * N * n_tokens * 2);
            CHECK(be->matmul_multi(be, outs, 2, x, n_tokens) == 0);
            for (int t = 0; t < n_tokens; t++)
                CHECK_MSG(memcmp(yp + (size_t)t * 2 * N, y + (size_t)t * N, sizeof(float) * N) == 0 &&
                              memcmp(yp + (size_t)t * 2 * N + N, y + (size_t)t * N, sizeof(float) * N) == 0,
                          "multi-output matmul %s x %d tokens (%s) differs", tr->name, n_tokens,
                          both ? "both packed" : "one packed");
        }
        free(yp);
        free(buf);
    }
    /* The fused SwiGLU products (gate and up both these weights): bit for bit
     * the two products and swiglu one after the other, on every path, with
     * packed weights (the fused loop) and without. */
    for (int use_packed = 0; use_packed <= (packed_bytes > 0); use_packed++) {
        exo_tensor w1 = wt, w2 = wt;
        void *buf1 = use_packed ? malloc(packed_bytes) : NULL, *buf2 = use_packed ? malloc(packed_bytes) : NULL;
        if (use_packed) {
            be->pack(be, &w1, buf1);
            be->pack(be, &w2, buf2);
        }
        float *gate = malloc(sizeof(float) * N * n_tokens), *up = malloc(sizeof(float) * N * n_tokens);
        float *want = malloc(sizeof(float) * N * n_tokens);
        double *want_ref = malloc(sizeof(double) * N * n_tokens);
        for (int i = 0; i < N * n_tokens; i++) want_ref[i] = act_ref(EXO_FFN_SILU, y[i]) * y[i];
        /* The file layout's result, against the products above... */
        CHECK(be->matmul_glu(be, &wt, &wt, x, n_tokens, want, up, EXO_FFN_SILU) == 0);
        CHECK_MSG(nmse(want, want_ref, (size_t)N * n_tokens) < 1e-10, "matmul_glu %s x %d tokens: nmse %g", tr->name,
                  n_tokens, nmse(want, want_ref, (size_t)N * n_tokens));
        /* ...and the fused loop over packed weights bit for bit against it. */
        CHECK(be->matmul_glu(be, &w1, &w2, x, n_tokens, gate, up, EXO_FFN_SILU) == 0);
        CHECK_MSG(memcmp(gate, want, sizeof(float) * N * n_tokens) == 0, "matmul_glu %s x %d tokens (%s) differs",
                  tr->name, n_tokens, use_packed ? "packed" : "file layout");
        free(want_ref);
        free(gate); free(up); free(want); free(buf1); free(buf2);
    }
    free(wf);
    free(x);
    free(y);
    free(deq);
    free(ref);
    free(w);
}

/* The pool's loops: every item exactly once, chunks no smaller than the
 * grain but at the end, for every shape of loop (one item, fewer items than
 * threads, many, and one too big for a single claim word). */
#include "../native/pool.h"

enum { MAX_RANGES = 4096 };
static struct { int64_t begin, end; } ranges[MAX_RANGES];
static _Atomic int n_ranges;

static void record_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)ctx;
    (void)thread;
    int i = atomic_fetch_add(&n_ranges, 1);
    if (i < MAX_RANGES) ranges[i].begin = begin, ranges[i].end = end;
}

static int by_begin(const void *a, const void *b)
{
    int64_t x = ((const int64_t *)a)[0], y = ((const int64_t *)b)[0];
    return (x > y) - (x < y);
}

static void test_pool(void)
{
    exo_pool *pool = NULL;
    CHECK(exo__pool_new(3, &pool) == 0);
    const int64_t cases[][2] = {{1, 1}, {2, 1}, {9, 1}, {960, 4}, {49152, 16}, {((int64_t)1 << 33) + 5, (int64_t)1 << 28}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t n = cases[c][0], grain = cases[c][1];
        for (int rep = 0; rep < 20; rep++) {
            atomic_store(&n_ranges, 0);
            exo__pool_for(pool, n, grain, record_range, NULL);
            int k = atomic_load(&n_ranges);
            CHECK_MSG(k <= MAX_RANGES, "pool: %d chunks", k);
            if (k > MAX_RANGES) break;
            qsort(ranges, (size_t)k, sizeof ranges[0], by_begin);
            int64_t next = 0;
            int small = 0;
            for (int i = 0; i < k; i++) {
                CHECK_MSG(ranges[i].begin == next && ranges[i].end > ranges[i].begin,
                          "pool n=%lld: chunk [%lld, %lld) after %lld", (long long)n, (long long)ranges[i].begin,
                          (long long)ranges[i].end, (long long)next);
                small += ranges[i].end - ranges[i].begin < grain;
                next = ranges[i].end;
            }
            CHECK_MSG(next == n, "pool n=%lld: covered up to %lld", (long long)n, (long long)next);
            /* only where the two ends meet can a chunk be short (one per claim word) */
            CHECK_MSG(small <= (int)(n / ((int64_t)UINT32_MAX) + 1), "pool n=%lld: %d chunks under the grain",
                      (long long)n, small);
        }
    }
    exo__pool_free(pool);
}

int main(void)
{
    test_pool();
    /* Both paths: batch-invariant integer products below 32 tokens, sgemm
     * from 32 (the backend reads the setting when first made). */
    setenv("EXO_GEMM_MIN_TOKENS", "32", 1);
    exo_backend *be = exo__backend_cpu();
    exo__quants_init();
    CHECK(be->reserve(be, 64, 512, 128) == 0);
    CHECK(be->prepare(be) == 0);
    test_rmsnorm(be);
    test_rope(be, EXO_ROPE_NORM);
    test_rope(be, EXO_ROPE_NEOX);
    for (int window = 0; window <= 7; window += 7) {
        test_attention(be, 5, window, 2);
        test_attention(be, 40, window, 2);
        test_attention(be, 1, window, 1);
    }
    test_glu(be, EXO_FFN_SILU);
    test_glu(be, EXO_FFN_GELU_TANH);
    const int dtypes[] = {EXO_DTYPE_F32,  EXO_DTYPE_F16,  EXO_DTYPE_BF16, EXO_DTYPE_Q8_0, EXO_DTYPE_Q4_0,
                          EXO_DTYPE_Q4_1, EXO_DTYPE_Q5_0, EXO_DTYPE_Q5_1, EXO_DTYPE_IQ4_NL, EXO_DTYPE_Q2_K,
                          EXO_DTYPE_Q3_K, EXO_DTYPE_Q4_K, EXO_DTYPE_Q5_K, EXO_DTYPE_Q6_K, EXO_DTYPE_IQ4_XS};
    const int token_counts[] = {1, 3, 40}; /* 40 is over the GEMM threshold */
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++)
        for (size_t t = 0; t < sizeof token_counts / sizeof token_counts[0]; t++) test_matmul(be, dtypes[d], token_counts[t]);
    CHECK_DONE();
}
