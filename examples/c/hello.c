/*
 * hello cluster (C): start 4 workers, call a function on each, gather the
 * results, and show what a remote error looks like.
 *
 * The same program is the head and the workers: cluster_addprocs relaunches
 * this executable, and cluster_init makes the relaunched copies workers.
 *
 *   cc hello.c $(pkg-config --cflags --libs libcluster) -o hello && ./hello
 */
#include <cluster.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NWORKERS 4

static cluster_ctx *ctx;

/* Stops with a message when a call fails. */
static void check(cluster_status st, const char *what) {
    if (st != CLUSTER_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, cluster_status_str(st), cluster_last_error());
        exit(1);
    }
}

/* A registered function: replies "hello <args> from worker <id> (pid <pid>)". */
static int32_t hello(void *user_data, cluster_call *call) {
    (void)user_data;
    const uint8_t *args;
    size_t len;
    int32_t me = 0;
    cluster_status st = cluster_call_args(call, &args, &len);
    if (st != CLUSTER_OK) return st;
    cluster_myid(ctx, &me);
    char reply[256];
    int n = snprintf(reply, sizeof reply, "hello %.*s from worker %d (pid %d)", (int)len, (const char *)args, me,
                     (int)getpid());
    return cluster_call_reply(call, (const uint8_t *)reply, (size_t)n);
}

int main(void) {
    check(cluster_init(NULL, &ctx), "cluster_init");
    check(cluster_register(ctx, "hello", hello, NULL), "cluster_register");

    bool head = false;
    check(cluster_is_head(ctx, &head), "cluster_is_head");
    if (!head) {                   /* a worker: serve calls until the head stops us */
        cluster_serve(ctx);
        cluster_free(ctx);
        return 0;
    }

    if (cluster_version() != CLUSTER_VERSION) fprintf(stderr, "warning: header/library version mismatch\n");
    printf("libcluster %s\n", cluster_version_string());

    int32_t ids[NWORKERS];
    check(cluster_addprocs(ctx, NWORKERS, NULL, ids), "cluster_addprocs");
    size_t nprocs = 0;
    check(cluster_nprocs(ctx, &nprocs), "cluster_nprocs");
    printf("started %d workers; %zu processes in the cluster\n", NWORKERS, nprocs);

    /* Call every worker at once, then gather the results. */
    const char *who = "cluster";
    cluster_future *futures[NWORKERS];
    for (int i = 0; i < NWORKERS; i++)
        check(cluster_remotecall(ctx, ids[i], "hello", (const uint8_t *)who, strlen(who), &futures[i]),
              "cluster_remotecall");
    int answered = 0;
    for (int i = 0; i < NWORKERS; i++) {
        const uint8_t *data;
        size_t len;
        check(cluster_future_fetch(futures[i], 10000, &data, &len), "cluster_future_fetch");
        /* The bytes are not NUL-terminated: copy them into a string. */
        char text[256];
        snprintf(text, sizeof text, "%.*s", (int)len, (const char *)data);
        printf("  %s\n", text);
        answered += strstr(text, "from worker") != NULL;
        cluster_future_free(futures[i]); /* also releases `data` */
    }

    /* A remote error: the function does not exist on the worker. */
    cluster_buffer out = {0};
    cluster_status st = cluster_remotecall_fetch(ctx, ids[0], "no_such_function", NULL, 0, &out);
    printf("calling a missing function: %s (from process %d): %s\n", cluster_status_str(st),
           cluster_last_error_pid(), cluster_last_error());
    bool remote_error_ok = st == CLUSTER_ERR_REMOTE && cluster_last_error_pid() == ids[0];
    if (st == CLUSTER_OK) cluster_buffer_free(&out);

    check(cluster_shutdown(ctx, 10000), "cluster_shutdown");
    cluster_free(ctx);
    return answered == NWORKERS && remote_error_ok ? 0 : 1;
}
