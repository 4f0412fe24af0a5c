/* sampler.c: the C primitives of sampling (the policy lives in Lua).
 *
 * Lua decides how to sample and draws the random number; C does what touches
 * every entry of a vocabulary-sized array: penalties over recent tokens,
 * temperature, the top-k / top-p / min-p truncations, the softmax, argmax and
 * log-probabilities. The result of the truncations is a short candidate list
 * (ids with their probabilities, most likely first) that is exactly the
 * distribution to draw from: speculative decoding keeps it as q(x) or p(x).
 *
 * Sorting a 100k-entry vocabulary per token would cost milliseconds, so the
 * candidates are found by partial selection: a bounded heap of the best k (or
 * of a first guess at how many top-p needs, widened only if that guess holds
 * too little of the probability mass). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "exo.h"

/* First guess of how many candidates top-p keeps; most distributions put
 * nearly all of their mass on far fewer tokens. */
#define TOP_P_FIRST_GUESS 256

int exo_sample_argmax(const float *logits, int n)
{
    if (!logits || n < 1) return exo__error_set(EXO_EINVAL, "argmax over %d values", n);
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

int exo_sample_penalties(float *logits, int n_vocab, const int32_t *recent, int n_recent, float repeat,
                         float presence, float frequency)
{
    if (!logits || n_vocab < 1 || n_recent < 0 || (n_recent > 0 && !recent))
        return exo__error_set(EXO_EINVAL, "exo_sample_penalties: bad arguments");
    if (repeat == 1.0f && presence == 0.0f && frequency == 0.0f) return EXO_OK;
    /* Counting in a sorted copy keeps this O(n log n) in the window, with no
     * vocabulary-sized scratch. */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n_recent > 0 ? n_recent : 1));
    if (!ids) return exo__error_set(EXO_ENOMEM, "out of memory");
    int n = 0;
    for (int i = 0; i < n_recent; i++)
        if (recent[i] >= 0 && recent[i] < n_vocab) ids[n++] = recent[i];
    for (int i = 1; i < n; i++) { /* insertion sort: windows are short (64 by default) */
        int32_t v = ids[i];
        int j = i - 1;
        while (j >= 0 && ids[j] > v) ids[j + 1] = ids[j], j--;
        ids[j + 1] = v;
    }
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && ids[j] == ids[i]) j++;
        float *l = &logits[ids[i]];
        /* The repetition penalty as in CTRL: shrink positive logits, grow negative ones. */
        if (repeat != 1.0f) *l = *l > 0 ? *l / repeat : *l * repeat;
        /* OpenAI's presence and frequency penalties. */
        *l -= presence + frequency * (float)(j - i);
        i = j;
    }
    free(ids);
    return EXO_OK;
}

/* Min-heap of (logit, id) holding the best `cap` entries seen. */
typedef struct heap_entry {
    float logit;
    int32_t id;
} heap_entry;

static int entry_less(heap_entry a, heap_entry b)
{
    /* Ties keep the lower id as the better one, so results are deterministic. */
    return a.logit < b.logit || (a.logit == b.logit && a.id > b.id);
}

static void heap_sift_down(heap_entry *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && entry_less(h[l], h[m])) m = l;
        if (r < n && entry_less(h[r], h[m])) m = r;
        if (m == i) return;
        heap_entry t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* The best k entries of logits, most likely first. */
static int select_top(const float *logits, int n_vocab, int k, heap_entry *h)
{
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        heap_entry e = {logits[i], i};
        if (isnan(e.logit)) continue;
        if (n < k) {
            h[n++] = e;
            if (n == k)
                for (int j = k / 2 - 1; j >= 0; j--) heap_sift_down(h, k, j);
        } else if (entry_less(h[0], e)) {
            h[0] = e;
            heap_sift_down(h, k, 0);
        }
    }
    if (n < k)
        for (int j = n / 2 - 1; j >= 0; j--) heap_sift_down(h, n, j);
    /* Heap-sort ascending by popping, leaving the array best-first. */
    for (int end = n - 1; end > 0; end--) {
        heap_entry t = h[0];
        h[0] = h[end];
        h[end] = t;
        heap_sift_down(h, end, 0);
    }
    return n;
}

int exo_sample_candidates(const float *logits, int n_vocab, float temperature, int top_k, float top_p, float min_p,
                          int32_t *ids_out, float *probs_out, int cap, int *n_out)
{
    if (!logits || n_vocab < 1 || !ids_out || !probs_out || cap < 1 || !n_out)
        return exo__error_set(EXO_EINVAL, "exo_sample_candidates: bad arguments");
    if (!(temperature > 0)) return exo__error_set(EXO_EINVAL, "temperature %g: greedy decoding uses argmax", temperature);
    if (!(top_p > 0 && top_p <= 1)) return exo__error_set(EXO_EINVAL, "top_p %g is outside (0, 1]", top_p);
    if (!(min_p >= 0 && min_p < 1)) return exo__error_set(EXO_EINVAL, "min_p %g is outside [0, 1)", min_p);
    int k = top_k > 0 && top_k < n_vocab ? top_k : n_vocab;
    if (k > cap) k = cap;

    /* The normaliser over the whole vocabulary, at this temperature. */
    float max = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] > max) max = logits[i];
    if (!isfinite(max)) return exo__error_set(EXO_EINVAL, "logits have no finite maximum");
    double total = 0;
    for (int i = 0; i < n_vocab; i++) total += exp((double)(logits[i] - max) / temperature);

    int guess = top_p < 1 && k > TOP_P_FIRST_GUESS ? TOP_P_FIRST_GUESS : k;
    heap_entry *h = malloc(sizeof(heap_entry) * (size_t)k);
    if (!h) return exo__error_set(EXO_ENOMEM, "out of memory");
    int n;
    for (;;) {
        n = select_top(logits, n_vocab, guess, h);
        if (guess >= k || top_p >= 1) break;
        double mass = 0;
        for (int i = 0; i < n; i++) mass += exp((double)(h[i].logit - max) / temperature);
        if (mass / total >= top_p) break;
        guess = guess * 8 < k ? guess * 8 : k;
    }

    /* With top-k, the distribution is renormalised over the k survivors. */
    double kept_total = 0;
    for (int i = 0; i < n; i++) kept_total += exp((double)(h[i].logit - max) / temperature);
    double norm = (top_k > 0 && top_k < n_vocab) ? kept_total : total;
    double p_max = exp((double)(h[0].logit - max) / temperature) / norm;
    double cum = 0;
    int m = 0;
    for (int i = 0; i < n; i++) {
        double p = exp((double)(h[i].logit - max) / temperature) / norm;
        if (m > 0 && p < min_p * p_max) break;
        ids_out[m] = h[i].id;
        probs_out[m] = (float)p;
        cum += p;
        m++;
        if (cum >= top_p) break;
    }
    free(h);
    /* Renormalise over what survived, so the candidates sum to one. */
    double sum = 0;
    for (int i = 0; i < m; i++) sum += probs_out[i];
    for (int i = 0; i < m; i++) probs_out[i] = (float)(probs_out[i] / sum);
    *n_out = m;
    return EXO_OK;
}

int exo_sample_log_softmax(const float *logits, int n, float *out)
{
    if (!logits || !out || n < 1) return exo__error_set(EXO_EINVAL, "exo_sample_log_softmax: bad arguments");
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)(logits[i] - max));
    float lse = max + (float)log(sum);
    for (int i = 0; i < n; i++) out[i] = logits[i] - lse;
    return EXO_OK;
}

int exo_sample_probs(const float *logits, int n_vocab, float temperature, int top_k, float top_p, float min_p,
                     int32_t *ids_scratch, float *probs_scratch, float *probs_out)
{
    if (!logits || n_vocab < 1 || !probs_out) return exo__error_set(EXO_EINVAL, "exo_sample_probs: bad arguments");
    if (!(temperature > 0)) return exo__error_set(EXO_EINVAL, "temperature %g: greedy decoding uses argmax", temperature);
    int truncated = (top_k > 0 && top_k < n_vocab) || top_p < 1 || min_p > 0;
    if (truncated) {
        if (!ids_scratch || !probs_scratch) return exo__error_set(EXO_EINVAL, "exo_sample_probs: scratch needed");
        int n = 0;
        int rc = exo_sample_candidates(logits, n_vocab, temperature, top_k, top_p, min_p, ids_scratch, probs_scratch,
                                       n_vocab, &n);
        if (rc) return rc;
        memset(probs_out, 0, sizeof(float) * (size_t)n_vocab);
        for (int i = 0; i < n; i++) probs_out[ids_scratch[i]] = probs_scratch[i];
        return EXO_OK;
    }
    float max = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] > max) max = logits[i];
    if (!isfinite(max)) return exo__error_set(EXO_EINVAL, "logits have no finite maximum");
    double total = 0;
    for (int i = 0; i < n_vocab; i++) {
        float e = (float)exp((double)(logits[i] - max) / temperature);
        probs_out[i] = isnan(e) ? 0 : e;
        total += probs_out[i];
    }
    for (int i = 0; i < n_vocab; i++) probs_out[i] = (float)(probs_out[i] / total);
    return EXO_OK;
}

int exo_sample_draw(const float *probs, int n, double u)
{
    if (!probs || n < 1) return exo__error_set(EXO_EINVAL, "exo_sample_draw: bad arguments");
    double total = 0;
    for (int i = 0; i < n; i++) total += probs[i];
    if (!(total > 0)) return exo__error_set(EXO_ERANGE, "the distribution is all zero");
    double target = u * total, cum = 0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (probs[i] <= 0) continue;
        cum += probs[i];
        last = i;
        if (target < cum) return i;
    }
    return last; /* rounding left the target past the last sum */
}

int exo_sample_residual(const float *p, const float *q, int n, double u)
{
    if (!p || !q || n < 1) return exo__error_set(EXO_EINVAL, "exo_sample_residual: bad arguments");
    double total = 0;
    for (int i = 0; i < n; i++)
        if (p[i] > q[i]) total += (double)p[i] - q[i];
    if (!(total > 0)) return exo__error_set(EXO_ERANGE, "the residual max(0, p - q) is all zero");
    double target = u * total, cum = 0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (!(p[i] > q[i])) continue;
        cum += (double)p[i] - q[i];
        last = i;
        if (target < cum) return i;
    }
    return last;
}
