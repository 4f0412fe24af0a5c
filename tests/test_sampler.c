/* test_sampler.c: sampling primitives against a naive full-sort version.
 *
 * For random logits over several vocabulary sizes and many settings of
 * temperature, top-k, top-p and min-p, the candidate list must equal what a
 * plain "softmax, sort everything, cut, renormalise" computes. Penalties and
 * argmax are checked on hand-made cases, and the JSON grammar's recogniser on
 * valid and invalid texts (tests/lua/test_json_grammar.lua samples with it). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../native/error.h"
#include "../native/exo.h"
#include "check.h"

static uint64_t rng = 99;
static double urand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng >> 11) / (double)(1ULL << 53);
}

typedef struct { double p; int id; } cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

/* The obvious implementation. */
static int naive(const float *logits, int n, float temp, int top_k, float top_p, float min_p, cand *out)
{
    double max = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) max = logits[i] > max ? logits[i] : max;
    for (int i = 0; i < n; i++) {
        out[i].p = exp((logits[i] - max) / temp);
        out[i].id = i;
        sum += out[i].p;
    }
    qsort(out, (size_t)n, sizeof *out, cand_cmp);
    int k = top_k > 0 && top_k < n ? top_k : n;
    if (k < n) {
        sum = 0;
        for (int i = 0; i < k; i++) sum += out[i].p;
    }
    for (int i = 0; i < k; i++) out[i].p /= sum;
    int m = 0;
    double cum = 0;
    for (int i = 0; i < k; i++) {
        if (m > 0 && out[i].p < min_p * out[0].p) break;
        cum += out[i].p;
        m++;
        if (cum >= top_p) break;
    }
    double kept = 0;
    for (int i = 0; i < m; i++) kept += out[i].p;
    for (int i = 0; i < m; i++) out[i].p /= kept;
    return m;
}

static void test_candidates(void)
{
    const int sizes[] = {8, 100, 5000, 49152};
    const float temps[] = {0.3f, 1.0f, 1.7f};
    const int top_ks[] = {0, 1, 5, 40, 100000};
    const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.999f};
    const float min_ps[] = {0.0f, 0.05f};
    int checked = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int n = sizes[si];
        float *logits = malloc(sizeof(float) * n);
        cand *ref = malloc(sizeof(cand) * n);
        int32_t *ids = malloc(sizeof(int32_t) * n);
        float *probs = malloc(sizeof(float) * n);
        /* Peaked logits, like a language model's: a few large, a long tail. */
        for (int i = 0; i < n; i++) logits[i] = (float)(urand() * 4 + (urand() < 0.01 ? 10 * urand() : 0));
        for (size_t a = 0; a < sizeof temps / sizeof *temps; a++)
            for (size_t b = 0; b < sizeof top_ks / sizeof *top_ks; b++)
                for (size_t c = 0; c < sizeof top_ps / sizeof *top_ps; c++)
                    for (size_t d = 0; d < sizeof min_ps / sizeof *min_ps; d++) {
                        int m_ref = naive(logits, n, temps[a], top_ks[b], top_ps[c], min_ps[d], ref);
                        int m = -1;
                        int rc = exo_sample_candidates(logits, n, temps[a], top_ks[b], top_ps[c], min_ps[d], ids,
                                                       probs, n, &m);
                        CHECK(rc == 0);
                        CHECK_MSG(m == m_ref, "n %d t %g k %d p %g minp %g: %d vs %d candidates", n, temps[a],
                                  top_ks[b], top_ps[c], min_ps[d], m, m_ref);
                        if (m != m_ref) continue;
                        double sum = 0;
                        for (int i = 0; i < m; i++) {
                            CHECK(ids[i] == ref[i].id);
                            CHECK_NEAR(probs[i], ref[i].p, 1e-5);
                            sum += probs[i];
                        }
                        CHECK_NEAR(sum, 1.0, 1e-5);
                        checked++;
                    }
        free(logits);
        free(ref);
        free(ids);
        free(probs);
    }
    CHECK(checked > 400);
}

static void test_penalties_and_argmax(void)
{
    float l[6] = {2.0f, -2.0f, 1.0f, 0.5f, 3.0f, 3.0f};
    int32_t recent[5] = {0, 1, 0, 9999, -3}; /* out-of-range ids are ignored */
    CHECK(exo_sample_penalties(l, 6, recent, 5, 2.0f, 0.5f, 0.25f) == 0);
    CHECK_NEAR(l[0], 2.0 / 2 - 0.5 - 0.25 * 2, 1e-6); /* seen twice */
    CHECK_NEAR(l[1], -2.0 * 2 - 0.5 - 0.25, 1e-6);
    CHECK_NEAR(l[2], 1.0, 1e-6);
    CHECK(exo_sample_argmax(l, 6) == 4); /* tie between 4 and 5: the lower index */
    float same[3] = {1, 1, 1};
    CHECK(exo_sample_penalties(same, 3, recent, 2, 1.0f, 0.0f, 0.0f) == 0 && same[0] == 1 && same[1] == 1);
    float ls[3] = {0, 0, 0}, out[3];
    CHECK(exo_sample_log_softmax(ls, 3, out) == 0);
    CHECK_NEAR(out[0], -log(3.0), 1e-6);
}

static void test_errors(void)
{
    float l[4] = {0, 1, 2, 3};
    int32_t ids[4];
    float p[4];
    int n;
    CHECK(exo_sample_candidates(l, 4, 0.0f, 0, 1, 0, ids, p, 4, &n) == EXO_EINVAL);
    CHECK(exo_sample_candidates(l, 4, 1.0f, 0, 0.0f, 0, ids, p, 4, &n) == EXO_EINVAL);
    CHECK(exo_sample_candidates(l, 4, 1.0f, 0, 1.5f, 0, ids, p, 4, &n) == EXO_EINVAL);
    CHECK(exo_sample_candidates(l, 4, 1.0f, 0, 1.0f, 1.0f, ids, p, 4, &n) == EXO_EINVAL);
    float bad[2] = {NAN, -INFINITY};
    CHECK(exo_sample_candidates(bad, 2, 1.0f, 0, 1.0f, 0, ids, p, 4, &n) == EXO_EINVAL);
    /* cap smaller than the vocabulary acts as a top-k bound. */
    CHECK(exo_sample_candidates(l, 4, 1.0f, 0, 1.0f, 0, ids, p, 2, &n) == 0 && n == 2 && ids[0] == 3 && ids[1] == 2);
}

static void test_json_check(void)
{
    static const char *valid[] = {
        "{}", " { } ", "{\"a\":1}", "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\\u00e9\\n\"}",
        "{\"a\" : -0.5e+3 , \"b\":true,\"c\":false}", "{\"\xC3\xA9\":\"\xE2\x82\xAC\xF0\x9F\x98\x80\"}",
        "{\"n\":0,\"m\":10.25E-2,\"o\":[[],{}]}", "{\"a\":[]}\n",
    };
    static const char *invalid[] = {
        "", "[]", "1", "\"s\"", "{", "{\"a\":1", "{\"a\":01}", "{\"a\":}", "{a:1}", "{\"a\":1,}", "{\"a\" 1}",
        "{\"a\":\"\x01\"}", "{\"a\":tru}", "{\"a\":1}}", "{\"a\":[1,]}", "{\"a\":1.}", "{\"a\":-}",
        "{\"a\":\"\\x\"}", "{\"a\":\"\\u12g4\"}", "{\"a\":\"\xC3\"}", "{\"a\":\"\xFF\"}", "{} {}",
        "{\"a\":1]", "{\"a\":[1}", "{\"a\":1e}", "{\"a\":NaN}",
        "{                                  }", /* a run of whitespace past the bound */
    };
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++)
        CHECK_MSG(exo_json_grammar_check(valid[i], strlen(valid[i])), "valid JSON refused: %s", valid[i]);
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++)
        CHECK_MSG(!exo_json_grammar_check(invalid[i], strlen(invalid[i])), "invalid JSON taken: %s", invalid[i]);
    /* 64 levels of nesting fit, 65 do not. */
    char deep[200];
    int n = 0;
    n += snprintf(deep + n, sizeof deep - (size_t)n, "{\"a\":");
    for (int i = 0; i < 63; i++) deep[n++] = '[';
    for (int i = 0; i < 63; i++) deep[n++] = ']';
    deep[n++] = '}';
    CHECK(exo_json_grammar_check(deep, (size_t)n));
    n = snprintf(deep, sizeof deep, "{\"a\":");
    for (int i = 0; i < 64; i++) deep[n++] = '[';
    CHECK(!exo_json_grammar_check(deep, (size_t)n));
}

int main(void)
{
    test_candidates();
    test_penalties_and_argmax();
    test_errors();
    test_json_check();
    CHECK_DONE();
}
