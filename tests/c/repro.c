/*
 * Minimal reproductions of the library bugs in tests/KNOWN_ISSUES.md.
 * Built with the tests (target `repro`), not run by ctest.
 *
 *   build/c/repro ki1   cluster_status_str(21) reads a wild pointer / crashes
 *   build/c/repro ki2   head killed by SIGPIPE when a launched worker exits at once
 *   build/c/repro ki3   calls to this process still run after cluster_shutdown
 *   build/c/repro ki5   an oversized argument kills the worker, no TOO_LARGE
 *   build/c/repro ki6   first worker-to-worker call never answered (stranded frame)
 *   build/c/repro ki7   a worker misses a peer that became ready at the same time
 *
 * Each prints "REPRODUCED" or "not reproduced" and exits 1 / 0.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static cluster_ctx *ctx;

static int32_t whoami(void *ud, cluster_call *call) {
    (void)ud;
    int32_t id = 0;
    cluster_myid(ctx, &id);
    return cluster_call_reply(call, (const uint8_t *)&id, sizeof id);
}

static int32_t nprocs(void *ud, cluster_call *call) {
    (void)ud;
    size_t n = 0;
    cluster_nprocs(ctx, &n);
    int32_t v = (int32_t)n;
    return cluster_call_reply(call, (const uint8_t *)&v, sizeof v);
}

/* Calls whoami on the worker named in args, waits at most 3 s. */
static int32_t call_peer(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_call_args(call, &d, &n);
    int32_t peer;
    memcpy(&peer, d, sizeof peer);
    cluster_future *f = NULL;
    int32_t st = cluster_remotecall(ctx, peer, "whoami", NULL, 0, &f);
    if (st == CLUSTER_OK) st = cluster_future_wait(f, 3000);
    cluster_future_free(f);
    return cluster_call_reply(call, (const uint8_t *)&st, sizeof st);
}

static int verdict(bool bug, const char *what) {
    printf("%s: %s\n", bug ? "REPRODUCED" : "not reproduced", what);
    return bug ? 1 : 0;
}

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "";
    cluster_config cfg;
    cluster_config_init(&cfg);
    if (strcmp(which, "ki5") == 0 && getenv("LIBCLUSTER_HEAD")) cfg.max_message_bytes = 1 << 20;
    if (cluster_init(&cfg, &ctx) != CLUSTER_OK) return 2;
    cluster_register(ctx, "whoami", whoami, NULL);
    cluster_register(ctx, "nprocs", nprocs, NULL);
    cluster_register(ctx, "call_peer", call_peer, NULL);
    bool head = false;
    cluster_is_head(ctx, &head);
    if (!head) {
        cluster_serve(ctx);
        cluster_free(ctx);
        return 0;
    }
    alarm(60);
    int rc = 2;
    if (strcmp(which, "ki1") == 0) {
        const char *s = cluster_status_str((cluster_status)21); /* crashes in a release build */
        rc = verdict(strcmp(s, "unknown status") != 0, "cluster_status_str(21) did not return \"unknown status\"");
    } else if (strcmp(which, "ki2") == 0) {
        cluster_launch_options o = {0};
        o.program = "/bin/true";
        int32_t ids[4];
        for (int i = 0; i < 20; i++) cluster_addprocs(ctx, 4, &o, ids); /* dies with SIGPIPE (exit 141) */
        rc = verdict(false, "survived 20 launches of /bin/true");
    } else if (strcmp(which, "ki3") == 0) {
        cluster_shutdown(ctx, 1000);
        cluster_buffer out = {0};
        cluster_status st = cluster_remotecall_fetch(ctx, 1, "whoami", NULL, 0, &out);
        rc = verdict(st != CLUSTER_ERR_SHUTDOWN, "remotecall_fetch to self after shutdown did not fail with SHUTDOWN");
    } else if (strcmp(which, "ki5") == 0) {
        int32_t id;
        cluster_addprocs(ctx, 1, NULL, &id);
        size_t big = (1u << 20) + 1;
        uint8_t *buf = calloc(big, 1);
        cluster_buffer out = {0};
        cluster_status st = cluster_remotecall_fetch(ctx, id, "whoami", buf, big, &out);
        printf("oversized argument: %s (%s)\n", cluster_status_str(st), cluster_last_error());
        rc = verdict(st != CLUSTER_ERR_TOO_LARGE, "expected CLUSTER_ERR_TOO_LARGE and a live worker");
        free(buf);
    } else if (strcmp(which, "ki6") == 0) {
        int32_t ids[2];
        cluster_addprocs(ctx, 2, NULL, ids);
        cluster_buffer out = {0};
        cluster_remotecall_fetch(ctx, ids[0], "call_peer", (const uint8_t *)&ids[1], sizeof ids[1], &out);
        int32_t st = -1;
        if (out.len == sizeof st) memcpy(&st, out.data, sizeof st);
        cluster_buffer_free(&out);
        printf("worker %d -> worker %d: %s\n", ids[0], ids[1], cluster_status_str((cluster_status)st));
        rc = verdict(st == CLUSTER_ERR_TIMEOUT, "first worker-to-worker call got no answer in 3 s");
    } else if (strcmp(which, "ki7") == 0) {
        bool bug = false;
        for (int round = 0; round < 10 && !bug; round++) {
            int32_t ids[3];
            cluster_addprocs(ctx, 3, NULL, ids);
            size_t total = 0;
            cluster_nprocs(ctx, &total);
            for (int i = 0; i < 3; i++) {
                cluster_buffer out = {0};
                cluster_remotecall_fetch(ctx, ids[i], "nprocs", NULL, 0, &out);
                int32_t n = 0;
                memcpy(&n, out.data, sizeof n);
                cluster_buffer_free(&out);
                if ((size_t)n != total) {
                    printf("round %d: worker %d sees %d processes, the head %zu\n", round, ids[i], n, total);
                    bug = true;
                }
            }
            cluster_rmprocs(ctx, ids, 3, 5000);
        }
        rc = verdict(bug, "a worker's view of the cluster misses a worker");
    } else {
        fprintf(stderr, "usage: %s ki1|ki2|ki3|ki5|ki6|ki7\n", argv[0]);
    }
    cluster_shutdown(ctx, 5000);
    cluster_free(ctx);
    return rc;
}
