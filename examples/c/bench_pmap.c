/* pmap from C, for the benchmark (examples/bench.rs runs it): the head
 * starts two workers (this program again) and times cluster_pmap_run of a
 * no-op over n empty elements, batch size 1. Prints, as "name value" lines:
 *   pmap_default        items/s with the default options (medians)
 *   pmap_d1 / pmap_d2   items/s with at most 1 or 2 calls in flight per worker
 *   progress_overhead_pct   the time a progress callback adds, median over
 *                           short runs with and without it in A B B A
 *                           order (defaults: a report every 100 ms)
 *   noise_pct               the same measure between two runs without it:
 *                           how much this machine's noise alone gives
 *   progress_cb_share_pct   the share of a map's time spent inside callbacks
 *   progress_calls          callbacks per run with it
 *   progress_fast_overhead_pct, fast_noise_pct, progress_fast_calls
 *                           the same with a report every 1 ms
 *   progress_bound_pct      what reports can cost at the default rate: the
 *                           1 ms figure plus its noise, scaled by the
 *                           reports' ratio (a report's cost is far below
 *                           the noise at the default rate) */
#include <cluster.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int32_t noop(void *ud, cluster_call *call) {
    (void)ud;
    (void)call;
    return CLUSTER_OK;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_s(void);
static size_t g_calls;
static double g_cb_time;
static void on_progress(void *ud, size_t done, size_t failed, size_t total) {
    double t0 = now_s();
    (void)ud;
    (void)done;
    (void)failed;
    (void)total;
    g_calls++;
    g_cb_time += now_s() - t0;
}

static cluster_ctx *ctx;
static uint32_t g_interval_ms; /* 0: the default */
static cluster_bytes *items;

/* Seconds for one map of n elements. */
static double run(size_t n, uint32_t depth, bool progress) {
    cluster_pmap_options o;
    cluster_pmap_options_init(&o);
    if (depth) o.max_in_flight = depth;
    if (progress) o.progress = on_progress;
    if (progress && g_interval_ms) o.progress_interval_ms = g_interval_ms;
    cluster_pmap *m = NULL;
    double t0 = now_s();
    if (cluster_pmap_run(ctx, NULL, "noop", items, n, &o, CLUSTER_FOREVER, &m) != CLUSTER_OK) {
        fprintf(stderr, "pmap: %s\n", cluster_last_error());
        exit(1);
    }
    double t = now_s() - t0;
    cluster_pmap_free(m);
    return t;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 100000;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1 || reps > 64) reps = 5;
    if (cluster_init(NULL, &ctx) != CLUSTER_OK) return 1;
    cluster_register(ctx, "noop", noop, NULL);
    bool head = false;
    cluster_is_head(ctx, &head);
    if (!head) {
        cluster_serve(ctx);
        cluster_free(ctx);
        return 0;
    }
    const char *no_args[] = {NULL};
    cluster_launch_options lo;
    memset(&lo, 0, sizeof lo);
    lo.argv = no_args;
    int32_t ids[2];
    if (cluster_addprocs(ctx, 2, &lo, ids) != CLUSTER_OK) {
        fprintf(stderr, "addprocs: %s\n", cluster_last_error());
        return 1;
    }
    items = calloc(n, sizeof *items); /* n empty elements */
    run(n / 10 + 1, 0, false);        /* warm up */
    double t[64];
    for (uint32_t depth = 0; depth <= 2; depth++) {
        for (int r = 0; r < reps; r++) t[r] = run(n, depth, false);
        qsort(t, (size_t)reps, sizeof t[0], cmp);
        if (depth == 0)
            printf("pmap_default %.0f\n", (double)n / t[reps / 2]);
        else
            printf("pmap_d%u %.0f\n", depth, (double)n / t[reps / 2]);
    }
    /* Short maps in A B B A quads (A without the callback, B with it), so
     * the machine's slow drifts cancel: B's time over A's, and A's second
     * run over its first as the noise floor; at the default report rate,
     * then with a report every 1 ms. */
    size_t m = n / 2 > 1000 ? n / 2 : n;
    int quads = reps * 4 > 63 ? 63 : reps * 4;
    double over[2], floor_[2], calls[2], share = 0;
    for (int pass = 0; pass < 2; pass++) {
        g_interval_ms = pass == 0 ? 0 : 1;
        double ratio[64], noise[64];
        size_t total_calls = 0;
        for (int r = 0; r < quads; r++) {
            double a1 = run(m, 0, false);
            g_calls = 0;
            g_cb_time = 0;
            double b1 = run(m, 0, true);
            double b2 = run(m, 0, true);
            total_calls += g_calls;
            if (pass == 0) share += g_cb_time / (b1 + b2);
            double a2 = run(m, 0, false);
            ratio[r] = (b1 + b2) / (a1 + a2);
            noise[r] = a2 / a1 > 1 ? a2 / a1 : a1 / a2;
        }
        qsort(ratio, (size_t)quads, sizeof ratio[0], cmp);
        qsort(noise, (size_t)quads, sizeof noise[0], cmp);
        over[pass] = (ratio[quads / 2] - 1) * 100;
        floor_[pass] = (noise[quads / 2] - 1) * 100;
        calls[pass] = (double)total_calls / (2.0 * quads);
    }
    printf("progress_overhead_pct %.3f\n", over[0]);
    printf("noise_pct %.3f\n", floor_[0]);
    printf("progress_cb_share_pct %.5f\n", share / quads * 100);
    printf("progress_calls %.1f\n", calls[0]);
    printf("progress_fast_overhead_pct %.3f\n", over[1]);
    printf("fast_noise_pct %.3f\n", floor_[1]);
    printf("progress_fast_calls %.1f\n", calls[1]);
    double fast = over[1] > 0 ? over[1] : 0;
    printf("progress_bound_pct %.4f\n", (fast + floor_[1]) * calls[0] / (calls[1] > 1 ? calls[1] : 1));
    free(items);
    cluster_shutdown(ctx, 10000);
    return cluster_free(ctx) == CLUSTER_OK ? 0 : 1;
}
