/* Round trip from C, for the benchmark (examples/bench.rs runs it): the
 * head starts one worker (this program again) and times
 * cluster_remotecall_fetch of an 8-byte echo. Prints "rtt_us <median>". */
#include <cluster.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int32_t echo(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a;
    size_t n;
    cluster_call_args(call, &a, &n);
    return cluster_call_reply(call, a, n);
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

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20000;
    cluster_ctx *ctx;
    if (cluster_init(NULL, &ctx) != CLUSTER_OK) return 1;
    cluster_register(ctx, "echo", echo, NULL);
    bool head = false;
    cluster_is_head(ctx, &head);
    if (!head) {
        cluster_serve(ctx);
        cluster_free(ctx);
        return 0;
    }
    const char *no_args[] = {NULL};
    cluster_launch_options o;
    memset(&o, 0, sizeof o);
    o.argv = no_args;
    int32_t id;
    if (cluster_addprocs(ctx, 1, &o, &id) != CLUSTER_OK) {
        fprintf(stderr, "addprocs: %s\n", cluster_last_error());
        return 1;
    }
    uint64_t arg = 42;
    double runs[5];
    for (int r = -1; r < 5; r++) {
        int n = r < 0 ? 1000 : rounds / 5;
        double t0 = now_s();
        for (int i = 0; i < n; i++) {
            cluster_buffer out;
            if (cluster_remotecall_fetch(ctx, id, "echo", (const uint8_t *)&arg, sizeof arg, &out) != CLUSTER_OK) {
                fprintf(stderr, "call: %s\n", cluster_last_error());
                return 1;
            }
            cluster_buffer_free(&out);
        }
        if (r >= 0) runs[r] = (now_s() - t0) / n;
    }
    qsort(runs, 5, sizeof runs[0], cmp);
    printf("rtt_us %.3f\n", runs[2] * 1e6);
    cluster_shutdown(ctx, 10000);
    return cluster_free(ctx) == CLUSTER_OK ? 0 : 1;
}
