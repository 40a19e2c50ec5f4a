/* A tiny consumer of an installed libcluster (C API): a head with one
 * worker, one call. Built by tests/c/package/run.sh with pkg-config. */
#include <cluster.h>

#include <stdio.h>
#include <string.h>

static int32_t echo(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_status st = cluster_call_args(call, &d, &n);
    return st != CLUSTER_OK ? st : cluster_call_reply(call, d, n);
}

int main(void) {
    if (cluster_version() != CLUSTER_VERSION) {
        fprintf(stderr, "header %u vs library %u\n", (unsigned)CLUSTER_VERSION, (unsigned)cluster_version());
        return 1;
    }
    cluster_ctx *ctx = NULL;
    if (cluster_init(NULL, &ctx) != CLUSTER_OK) return 1;
    cluster_register(ctx, "echo", echo, NULL);
    bool head = false;
    cluster_is_head(ctx, &head);
    if (!head) {
        cluster_serve(ctx);
        cluster_free(ctx);
        return 0;
    }
    int32_t id = 0;
    cluster_buffer out = {0};
    int ok = cluster_addprocs(ctx, 1, NULL, &id) == CLUSTER_OK &&
             cluster_remotecall_fetch(ctx, id, "echo", (const uint8_t *)"ping", 4, &out) == CLUSTER_OK &&
             out.len == 4 && memcmp(out.data, "ping", 4) == 0;
    if (!ok) fprintf(stderr, "consumer: %s\n", cluster_last_error());
    cluster_buffer_free(&out);
    cluster_shutdown(ctx, 10000);
    cluster_free(ctx);
    printf("consumer (C, libcluster %s): %s\n", cluster_version_string(), ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
