/* A minimal C worker for LibCluster's tests: started by the Julia head with
 * addprocs_exec, it registers a few functions that take and return raw
 * bytes, then serves calls until the head stops it. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cluster.h"

static cluster_status echo(void *ud, cluster_call *call) {
    const uint8_t *data; size_t len;
    (void)ud;
    cluster_call_args(call, &data, &len);
    return cluster_call_reply(call, data, len);
}

static cluster_status upper(void *ud, cluster_call *call) {
    const uint8_t *data; size_t len;
    (void)ud;
    cluster_call_args(call, &data, &len);
    uint8_t *out = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++) out[i] = (uint8_t)toupper(data[i]);
    cluster_status st = cluster_call_reply(call, out, len);
    free(out);
    return st;
}

static cluster_status fail(void *ud, cluster_call *call) {
    (void)ud;
    return cluster_call_fail(call, "fail was called");
}

int main(void) {
    cluster_ctx *ctx = NULL;
    if (cluster_init(NULL, &ctx) != CLUSTER_OK) {
        fprintf(stderr, "c_worker: cluster_init: %s\n", cluster_last_error());
        return 1;
    }
    cluster_register(ctx, "echo", echo, NULL);
    cluster_register(ctx, "upper", upper, NULL);
    cluster_register(ctx, "fail", fail, NULL);
    cluster_status st = cluster_serve(ctx);
    cluster_free(ctx);
    return st == CLUSTER_OK ? 0 : 2;
}
