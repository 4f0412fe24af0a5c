/* bench_attention.c: one decode step's attention over a long f16 KV cache,
 * one core (not a test).
 *
 * Times the attention of one new token against CTX cached positions in every
 * layer of a model's shape, two ways over the same caches: once per query
 * head (each head reads its KV head's keys and values: four times the bytes at
 * Llama's groups of four), and grouped (vec.h's _heads helpers: each KV head's
 * cache read once for its group, in blocks that stay in L1). Each KV head's
 * rows are one run, as in the engine's KV blocks (backend.h). The layers'
 * caches together are larger than the L3 cache, as a real model's are, so
 * the bytes come from memory. Thread CPU time, best of the rounds, so other
 * load on the machine mostly washes out.
 *
 * Usage: bench_attention [ctx [rounds]] (default 4000 positions, 5 rounds). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../kernels/cpu/fp16.h"
#include "../kernels/cpu/quants.h"
#include "../kernels/cpu/vec.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    const char *name;
    int n_layer, n_head, n_head_kv, head_dim;
} shape;

static volatile float sink;

/* One token's attention in every layer; grouped or one head at a time. */
static double step(const shape *s, int ctx, uint16_t **k, uint16_t **v, const float *q, float *scores, float *out,
                   int grouped)
{
    const int hd = s->head_dim, group = s->n_head / s->n_head_kv;
    const size_t kv_stride = (size_t)hd; /* each KV head's rows one run, as in the engine's KV blocks */
    double t0 = now();
    for (int l = 0; l < s->n_layer; l++) {
        for (int kvh = 0; kvh < s->n_head_kv; kvh++) {
            const uint16_t *kh = k[l] + (size_t)kvh * ctx * hd, *vh = v[l] + (size_t)kvh * ctx * hd;
            const float *qh = q + (size_t)kvh * group * hd;
            float *oh = out + (size_t)kvh * group * hd;
            if (grouped) {
                exo__vec_dots_f16_heads(hd, group, qh, (size_t)hd, kh, kv_stride, ctx, scores, (size_t)ctx);
                for (int g = 0; g < group; g++) exo__vec_softmax_f32(ctx, 0.125f, scores + (size_t)g * ctx);
                exo__vec_wsum_f16_heads(hd, group, scores, (size_t)ctx, vh, kv_stride, ctx, oh, (size_t)hd);
            } else {
                for (int g = 0; g < group; g++) {
                    exo__vec_dots_f16(hd, qh + (size_t)g * hd, kh, kv_stride, ctx, scores);
                    exo__vec_softmax_f32(ctx, 0.125f, scores);
                    exo__vec_wsum_f16(hd, scores, vh, kv_stride, ctx, oh + (size_t)g * hd);
                }
            }
        }
    }
    sink = out[0];
    return now() - t0;
}

int main(int argc, char **argv)
{
    const int ctx = argc > 1 ? atoi(argv[1]) : 4000, rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (ctx < 1 || rounds < 1) {
        fprintf(stderr, "usage: bench_attention [ctx [rounds]]\n");
        return 2;
    }
    exo__quants_init();
    static const shape shapes[] = {{"llama-3.2-1b", 16, 32, 8, 64}, {"llama-3.1-8b", 32, 32, 8, 128},
                                   {"smollm2-135m", 30, 9, 3, 64}};
    printf("one token's attention after %d positions, one core (%s helpers), best of %d\n", ctx,
           exo__vec_have_avx2() ? "AVX2" : "scalar", rounds);
    printf("%-14s %10s %14s %14s %8s\n", "shape", "KV MiB", "per head ms", "grouped ms", "speedup");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *s = &shapes[si];
        const size_t cache = (size_t)ctx * s->n_head_kv * s->head_dim;
        uint16_t **k = malloc(sizeof *k * (size_t)s->n_layer), **v = malloc(sizeof *v * (size_t)s->n_layer);
        for (int l = 0; l < s->n_layer; l++) {
            k[l] = malloc(cache * sizeof(uint16_t)), v[l] = malloc(cache * sizeof(uint16_t));
            for (size_t i = 0; i < cache; i++)
                k[l][i] = exo__float_to_half((float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f),
                v[l][i] = exo__float_to_half((float)((i * 40503u) % 1999) / 1000.0f - 1.0f);
        }
        float *q = malloc(sizeof(float) * (size_t)s->n_head * s->head_dim);
        float *out = malloc(sizeof(float) * (size_t)s->n_head * s->head_dim);
        float *scores = malloc(sizeof(float) * (size_t)ctx * (size_t)(s->n_head / s->n_head_kv));
        for (int i = 0; i < s->n_head * s->head_dim; i++) q[i] = (float)(i % 17) / 17.0f - 0.5f;
        double best[2] = {1e30, 1e30};
        for (int r = 0; r < rounds; r++)
            for (int grouped = 0; grouped < 2; grouped++) {
                double t = step(s, ctx, k, v, q, scores, out, grouped);
                if (t < best[grouped]) best[grouped] = t;
            }
        printf("%-14s %10.1f %14.2f %14.2f %7.2fx\n", s->name,
               2.0 * (double)cache * sizeof(uint16_t) * s->n_layer / (1 << 20), best[0] * 1e3, best[1] * 1e3,
               best[0] / best[1]);
        for (int l = 0; l < s->n_layer; l++) free(k[l]), free(v[l]);
        free(k), free(v), free(q), free(out), free(scores);
    }
    return 0;
}
