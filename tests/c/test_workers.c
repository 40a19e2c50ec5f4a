/*
 * Multi-process tests: a head starts workers (this same executable,
 * relaunched with the same argv by cluster_addprocs) and calls them.
 *
 * Usage: test_workers <case>. Every process registers every handler; a
 * worker then serves (or, in host-driven cases, runs its own poll loop)
 * until the head stops it. Each head bounds itself with the watchdog and
 * ends with cluster_shutdown, so no worker outlives its test.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/wait.h>

extern char **environ;

static cluster_ctx *g_ctx;
static const char *g_case = "";
static int32_t g_counter; /* remote_do target; touched by one handler thread at a time */

/* ---- lifecycle recording --------------------------------------------------- */

#define MAX_EVENTS 64
static pthread_mutex_t g_lc_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int32_t pid;
    cluster_lifecycle what;
} g_lc[MAX_EVENTS];
static int g_nlc;
static pthread_t g_main_thread;
static _Atomic int g_lc_off_main; /* host mode: callbacks must run on the polling thread */

static void on_lifecycle(void *ud, int32_t pid, cluster_lifecycle what) {
    EXPECT(ud == (void *)&g_lc);
    if (!pthread_equal(pthread_self(), g_main_thread)) atomic_fetch_add(&g_lc_off_main, 1);
    pthread_mutex_lock(&g_lc_mu);
    if (g_nlc < MAX_EVENTS) {
        g_lc[g_nlc].pid = pid;
        g_lc[g_nlc].what = what;
        g_nlc++;
    }
    pthread_mutex_unlock(&g_lc_mu);
}

static int lifecycle_count(int32_t pid, cluster_lifecycle what) {
    int n = 0;
    pthread_mutex_lock(&g_lc_mu);
    for (int i = 0; i < g_nlc; i++)
        if (g_lc[i].pid == pid && g_lc[i].what == what) n++;
    pthread_mutex_unlock(&g_lc_mu);
    return n;
}

/* Waits until the lifecycle callback reported (pid, what); returns elapsed ms or -1. */
static int64_t wait_lifecycle(int32_t pid, cluster_lifecycle what, int64_t timeout_ms) {
    int64_t t0 = now_ms();
    while (now_ms() - t0 <= timeout_ms) {
        if (lifecycle_count(pid, what) > 0) return now_ms() - t0;
        sleep_ms(2);
    }
    return -1;
}

/* ---- handlers (registered in every process) ------------------------------- */

static int32_t reply_i32(cluster_call *call, int32_t v) {
    return cluster_call_reply(call, (const uint8_t *)&v, sizeof v);
}

static int32_t arg_i32(cluster_call *call) {
    const uint8_t *d = NULL;
    size_t n = 0;
    if (cluster_call_args(call, &d, &n) != CLUSTER_OK) return INT32_MIN;
    return payload_i32(d, n);
}

static int32_t h_whoami(void *ud, cluster_call *call) {
    (void)ud;
    int32_t id = 0;
    cluster_myid(g_ctx, &id);
    return reply_i32(call, id);
}

static int32_t h_getpid(void *ud, cluster_call *call) {
    (void)ud;
    return reply_i32(call, (int32_t)getpid());
}

static int32_t h_echo(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_status st = cluster_call_args(call, &d, &n);
    return st ? st : cluster_call_reply(call, d, n);
}

static int32_t h_square(void *ud, cluster_call *call) {
    int32_t delay = (int32_t)(intptr_t)ud;
    int32_t x = arg_i32(call);
    if (delay) sleep_ms(delay);
    return reply_i32(call, x * x);
}

/* Sleeps args ms (polling for cancellation every 5 ms). */
static int32_t h_sleep_long(void *ud, cluster_call *call) {
    (void)ud;
    int32_t ms = arg_i32(call);
    int64_t t0 = now_ms();
    while (now_ms() - t0 < ms) {
        bool c = false;
        cluster_call_cancelled(call, &c);
        if (c) return cluster_call_fail(call, "cancelled by interrupt");
        sleep_ms(5);
    }
    return cluster_call_reply(call, (const uint8_t *)"done", 4);
}

static int32_t h_counter_add(void *ud, cluster_call *call) {
    (void)ud;
    g_counter += arg_i32(call);
    return CLUSTER_OK;
}

static int32_t h_counter_get(void *ud, cluster_call *call) {
    (void)ud;
    return reply_i32(call, g_counter);
}

static int32_t h_fail_on(void *ud, cluster_call *call) {
    (void)ud;
    int32_t id = 0;
    cluster_myid(g_ctx, &id);
    if (id == arg_i32(call)) return cluster_call_fail(call, "failing on purpose");
    return CLUSTER_OK;
}

/* On a worker: head-only functions must refuse with NOT_HEAD. */
static int32_t h_head_only_checks(void *ud, cluster_call *call) {
    (void)ud;
    int32_t r[8] = {0};
    int32_t ids[1] = {0};
    int32_t victim = 1;
    r[0] = cluster_addprocs(g_ctx, 1, NULL, ids);
    victim = 2;
    r[1] = cluster_rmprocs(g_ctx, &victim, 1, 100);
    r[2] = cluster_set_topology(g_ctx, CLUSTER_TOPOLOGY_ALL_TO_ALL);
    bool head = true;
    cluster_is_head(g_ctx, &head);
    r[3] = head;
    cluster_myid(g_ctx, &r[4]);
    size_t n = 0;
    cluster_nprocs(g_ctx, &n);
    r[5] = (int32_t)n;
    r[6] = cluster_ready(g_ctx); /* again: harmless */
    int32_t procs[16];
    size_t count = 0;
    r[7] = cluster_other_workers(g_ctx, procs, 16, &count) == CLUSTER_OK ? (int32_t)count : -1;
    return cluster_call_reply(call, (const uint8_t *)r, sizeof r);
}

/* Calls "whoami" on process args[0]; replies {status, value, last_error_pid}. */
static int32_t h_call_peer(void *ud, cluster_call *call) {
    (void)ud;
    int32_t target = arg_i32(call);
    int32_t r[3] = {0, 0, 0};
    cluster_future *f = NULL;
    r[0] = cluster_remotecall(g_ctx, target, "whoami", NULL, 0, &f);
    if (r[0] == CLUSTER_OK) {
        /* Bounded: a lost answer must not hang the worker (KI-6, fixed). */
        const uint8_t *d;
        size_t n;
        r[0] = cluster_future_fetch(f, 2000, &d, &n);
        if (r[0] == CLUSTER_OK) r[1] = payload_i32(d, n);
    }
    if (r[0] != CLUSTER_OK) r[2] = cluster_last_error_pid();
    cluster_future_free(f);
    return cluster_call_reply(call, (const uint8_t *)r, sizeof r);
}

/* Imports the future reference in args, fetches it, replies with its bytes. */
static int32_t h_import_fetch(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_call_args(call, &d, &n);
    if (n != sizeof(cluster_future_ref)) return cluster_call_fail(call, "bad ref size");
    cluster_future_ref ref;
    memcpy(&ref, d, sizeof ref);
    cluster_future *f = NULL;
    cluster_status st = cluster_future_import(g_ctx, &ref, &f);
    if (st != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    const uint8_t *v;
    size_t vn;
    st = cluster_future_fetch(f, 2000, &v, &vn);
    if (st != CLUSTER_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "fetch of imported future: %s: %s", cluster_status_str(st), cluster_last_error());
        cluster_future_free(f);
        return cluster_call_fail(call, msg);
    }
    st = cluster_call_reply(call, v, vn); /* the bytes belong to f: reply before freeing it */
    cluster_future_free(f);
    return st;
}

/* Starts slow_square(9) on process args[0], exports the future (owned
 * here), frees the local handle and replies with the reference. */
static int32_t h_make_ref(void *ud, cluster_call *call) {
    (void)ud;
    int32_t target = arg_i32(call), nine = 9;
    cluster_future *f = NULL;
    if (cluster_remotecall(g_ctx, target, "slow_square", (const uint8_t *)&nine, sizeof nine, &f) != CLUSTER_OK)
        return cluster_call_fail(call, cluster_last_error());
    cluster_future_ref ref;
    cluster_status st = cluster_future_export(f, &ref);
    cluster_future_free(f);
    if (st != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    return cluster_call_reply(call, (const uint8_t *)&ref, sizeof ref);
}

/* Imports a reference owned elsewhere and exports it again (a round trip
 * to the owner), then drops the import; replies with the new reference. */
static int32_t h_reexport(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_call_args(call, &d, &n);
    if (n != sizeof(cluster_future_ref)) return cluster_call_fail(call, "bad ref size");
    cluster_future_ref ref, out;
    memcpy(&ref, d, sizeof ref);
    cluster_future *f = NULL;
    if (cluster_future_import(g_ctx, &ref, &f) != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    cluster_status st = cluster_future_export(f, &out);
    cluster_future_free(f);
    if (st != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    return cluster_call_reply(call, (const uint8_t *)&out, sizeof out);
}

struct deferred {
    cluster_call *call;
    int32_t delay_ms;
    bool reply;
};

static void *answer_later(void *p) {
    struct deferred *df = p;
    sleep_ms(df->delay_ms);
    if (df->reply) {
        int32_t id = 0;
        cluster_myid(g_ctx, &id);
        char msg[64];
        int len = snprintf(msg, sizeof msg, "deferred reply from %d", id);
        cluster_call_reply(df->call, (const uint8_t *)msg, (size_t)len);
    }
    cluster_call_free(df->call);
    free(df);
    return NULL;
}

static int32_t h_defer(void *ud, cluster_call *call) {
    cluster_status st = cluster_call_defer(call);
    if (st != CLUSTER_OK) return st;
    struct deferred *df = malloc(sizeof *df);
    df->call = call;
    df->delay_ms = arg_i32(call);
    df->reply = ud != NULL;
    pthread_t t;
    if (pthread_create(&t, NULL, answer_later, df) != 0) abort();
    pthread_detach(t);
    return CLUSTER_OK;
}

static int32_t h_getenv(void *ud, cluster_call *call) {
    (void)ud;
    char name[128];
    size_t len;
    const uint8_t *d;
    size_t n;
    cluster_call_args(call, &d, &n);
    len = n < sizeof name - 1 ? n : sizeof name - 1;
    memcpy(name, d, len);
    name[len] = '\0';
    const char *v = getenv(name);
    if (!v) return cluster_call_fail(call, "unset");
    return cluster_call_reply(call, (const uint8_t *)v, strlen(v));
}

static int32_t h_getcwd(void *ud, cluster_call *call) {
    (void)ud;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return cluster_call_fail(call, "getcwd failed");
    return cluster_call_reply(call, (const uint8_t *)cwd, strlen(cwd));
}

/* Host-driven head: runs only inside the head's cluster_poll. */
static _Atomic int g_head_fn_off_main;
static _Atomic int g_head_fn_calls;
static int32_t h_head_fn(void *ud, cluster_call *call) {
    (void)ud;
    if (!pthread_equal(pthread_self(), g_main_thread)) atomic_fetch_add(&g_head_fn_off_main, 1);
    atomic_fetch_add(&g_head_fn_calls, 1);
    return cluster_call_reply(call, (const uint8_t *)"from head", 9);
}

/* On a worker: calls back into the head's "head_fn". */
static int32_t h_call_head(void *ud, cluster_call *call) {
    (void)ud;
    cluster_future *f = NULL;
    cluster_status st = cluster_remotecall(g_ctx, CLUSTER_HEAD, "head_fn", NULL, 0, &f);
    if (st != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    const uint8_t *d;
    size_t n;
    st = cluster_future_fetch(f, 5000, &d, &n);
    st = st == CLUSTER_OK ? cluster_call_reply(call, d, n) : cluster_call_fail(call, cluster_last_error());
    cluster_future_free(f);
    return st;
}

/* A handler returning a status outside the enum (KI-1). */
static int32_t h_bad_status(void *ud, cluster_call *call) {
    (void)ud;
    (void)call;
    int32_t v = 99;
    cluster_status st;
    memcpy(&st, &v, sizeof st);
    return st;
}

/* Replies with args[0] bytes. */
static int32_t h_make_bytes(void *ud, cluster_call *call) {
    (void)ud;
    int32_t n = arg_i32(call);
    if (n < 0 || n > (64 << 20)) return cluster_call_fail(call, "bad size");
    uint8_t *b = calloc((size_t)n + 1, 1);
    if (!b) return cluster_call_fail(call, "out of memory");
    for (int32_t i = 0; i < n; i++) b[i] = (uint8_t)i;
    cluster_status st = cluster_call_reply(call, b, (size_t)n);
    free(b);
    return st;
}

static void register_all(cluster_ctx *ctx) {
    static const struct {
        const char *name;
        cluster_handler fn;
        void *ud;
    } table[] = {
        {"whoami", h_whoami, NULL},
        {"getpid", h_getpid, NULL},
        {"echo", h_echo, NULL},
        {"square", h_square, NULL},
        {"slow_square", h_square, (void *)200},
        {"sleep_long", h_sleep_long, NULL},
        {"counter_add", h_counter_add, NULL},
        {"counter_get", h_counter_get, NULL},
        {"fail_on", h_fail_on, NULL},
        {"head_only_checks", h_head_only_checks, NULL},
        {"call_peer", h_call_peer, NULL},
        {"import_fetch", h_import_fetch, NULL},
        {"make_ref", h_make_ref, NULL},
        {"reexport", h_reexport, NULL},
        {"defer_reply", h_defer, (void *)1},
        {"defer_drop", h_defer, NULL},
        {"getenv", h_getenv, NULL},
        {"getcwd", h_getcwd, NULL},
        {"head_fn", h_head_fn, NULL},
        {"call_head", h_call_head, NULL},
        {"bad_status", h_bad_status, NULL},
        {"make_bytes", h_make_bytes, NULL},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        REQUIRE_OK(cluster_register(ctx, table[i].name, table[i].fn, table[i].ud));
}

/* ---- helpers for the head ------------------------------------------------- */

/*
 * Stranded-frame probe (KI-6, fixed). A future that timed out may in fact be
 * complete, its answer left in a connection's read buffer while the next
 * reader waits in poll(). New traffic on that connection would flush it: call
 * `pid` once and wait again, to tell that regression apart from a lost
 * answer. Either way it is a failure.
 */
static cluster_status nudge_and_wait(cluster_future *f, int32_t pid, const char *what) {
    cluster_future *n = NULL;
    if (pid > 0 && cluster_remotecall(g_ctx, pid, "whoami", NULL, 0, &n) == CLUSTER_OK) {
        cluster_future_wait(n, 2000);
        cluster_future_free(n);
    }
    cluster_status st = cluster_future_wait(f, 1000);
    harness_logf("%s: no answer in time; after new traffic from process %d: %s", what, pid,
                 st == CLUSTER_ERR_TIMEOUT ? "still none (lost answer)"
                                           : "it arrived (stranded frame: regression of KI-6)");
    harness_failures++;
    return st;
}

/* remotecall + a bounded fetch, so a lost answer fails the test instead of
 * hanging it. Copies the value to buf[0..cap) and its size to *len. A
 * timeout goes through the probe above. */
static cluster_status call_within(int32_t pid, const char *fn, const void *args, size_t alen, void *buf,
                                  size_t cap, size_t *len, int64_t timeout_ms) {
    cluster_future *f = NULL;
    cluster_status st = cluster_remotecall(g_ctx, pid, fn, (const uint8_t *)args, alen, &f);
    if (st != CLUSTER_OK) return st;
    const uint8_t *d = NULL;
    size_t n = 0;
    st = cluster_future_wait(f, timeout_ms);
    if (st == CLUSTER_ERR_TIMEOUT) {
        int32_t target = pid;
        cluster_future_pid(f, &target);
        char what[128];
        snprintf(what, sizeof what, "call of %s on process %d", fn, target);
        st = nudge_and_wait(f, target, what);
    }
    if (st == CLUSTER_OK) st = cluster_future_fetch(f, 0, &d, &n);
    if (st == CLUSTER_OK) {
        if (len) *len = n;
        if (buf) memcpy(buf, d, n < cap ? n : cap);
    }
    cluster_future_free(f);
    return st;
}

static int32_t fetch_i32(int32_t pid, const char *fn, int32_t arg) {
    int32_t v = INT32_MIN;
    size_t n = 0;
    cluster_status st = call_within(pid, fn, &arg, sizeof arg, &v, sizeof v, &n, 5000);
    if (st == CLUSTER_ERR_TIMEOUT) return INT32_MIN; /* reported by the probe */
    if (st != CLUSTER_OK) {
        harness_logf("fetch_i32(%d, %s): %s: %s", pid, fn, cluster_status_str(st), cluster_last_error());
        harness_failures++;
        return INT32_MIN;
    }
    EXPECT(n == sizeof v);
    return v;
}

static void addprocs(size_t n, int32_t *ids) {
    int64_t t0 = now_ms();
    REQUIRE_OK(cluster_addprocs(g_ctx, n, NULL, ids));
    harness_logf("addprocs(%zu) took %" PRId64 " ms", n, now_ms() - t0);
}

static void shutdown_all(void) {
    int64_t t0 = now_ms();
    EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    harness_logf("shutdown took %" PRId64 " ms", now_ms() - t0);
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

/* ---- cases ---------------------------------------------------------------- */

static void case_basic(void) {
    int32_t ids[3];
    addprocs(3, ids);
    for (int i = 0; i < 3; i++) {
        EXPECT(ids[i] == 2 + i); /* ids count up from 2 */
        EXPECTF(wait_lifecycle(ids[i], CLUSTER_WORKER_STARTED, 2000) >= 0, "no STARTED for %d", ids[i]);
    }

    /* membership, head's view */
    size_t n = 0;
    EXPECT_OK(cluster_nprocs(g_ctx, &n));
    EXPECT(n == 4);
    EXPECT_OK(cluster_nworkers(g_ctx, &n));
    EXPECT(n == 3);
    int32_t got[8];
    size_t count = 0;
    EXPECT_OK(cluster_procs(g_ctx, got, 8, &count));
    EXPECT(count == 4 && got[0] == 1 && got[1] == 2 && got[2] == 3 && got[3] == 4);
    EXPECT_OK(cluster_workers(g_ctx, got, 8, &count));
    EXPECT(count == 3 && got[0] == 2 && got[2] == 4);
    EXPECT_OK(cluster_other_procs(g_ctx, got, 8, &count));
    EXPECT(count == 3 && got[0] == 2);
    EXPECT_OK(cluster_other_workers(g_ctx, got, 8, &count));
    EXPECT(count == 3 && got[0] == 2);
    EXPECT_ST(cluster_procs(g_ctx, got, 2, &count), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(count == 4);
    EXPECT_ST(cluster_workers(g_ctx, got, 2, &count), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(count == 3);

    /* remotecall / wait / isready / fetch */
    for (int i = 0; i < 3; i++) EXPECT(fetch_i32(ids[i], "whoami", 0) == ids[i]);
    int32_t seven = 7;
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "slow_square", (const uint8_t *)&seven, 4, &f));
    bool ready = true;
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(!ready);
    EXPECT_ST(cluster_future_wait(f, 10), CLUSTER_ERR_TIMEOUT);
    int32_t fp = 0;
    EXPECT_OK(cluster_future_pid(f, &fp));
    EXPECT(fp == ids[0]);
    EXPECT_OK(cluster_future_wait(f, 5000));
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(ready);
    const uint8_t *d;
    size_t dn;
    EXPECT_OK(cluster_future_fetch(f, 0, &d, &dn));
    EXPECT(dn == 4 && payload_i32(d, dn) == 49);
    EXPECT_OK(cluster_future_free(f));

    /* remotecall_wait */
    REQUIRE_OK(cluster_remotecall_wait(g_ctx, ids[1], "square", (const uint8_t *)&seven, 4, &f));
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(ready);
    EXPECT_OK(cluster_future_fetch(f, 0, &d, &dn));
    EXPECT(payload_i32(d, dn) == 49);
    EXPECT_OK(cluster_future_free(f));

    /* many futures in flight at once, to all workers */
    cluster_future *fs[30];
    for (int i = 0; i < 30; i++) {
        int32_t x = i;
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[i % 3], "square", (const uint8_t *)&x, 4, &fs[i]));
    }
    for (int i = 0; i < 30; i++) {
        EXPECT_OK(cluster_future_fetch(fs[i], 5000, &d, &dn));
        EXPECT(payload_i32(d, dn) == i * i);
        EXPECT_OK(cluster_future_free(fs[i]));
    }

    /* remote_do: fire and forget; calls to one process run in order */
    for (int i = 1; i <= 10; i++) EXPECT_OK(cluster_remote_do(g_ctx, ids[2], "counter_add", (const uint8_t *)&i, 4));
    EXPECT(fetch_i32(ids[2], "counter_get", 0) == 55);
    EXPECT_OK(cluster_remote_do(g_ctx, ids[2], "no_such_function", NULL, 0)); /* only logged remotely */
    EXPECT(fetch_i32(ids[2], "whoami", 0) == ids[2]);                          /* still fine */

    /* CLUSTER_ANY_WORKER: round robin over the workers */
    int hits[5] = {0};
    for (int i = 0; i < 9; i++) {
        int32_t who = fetch_i32(CLUSTER_ANY_WORKER, "whoami", 0);
        if (who >= 2 && who <= 4) hits[who]++;
        else EXPECTF(false, "ANY_WORKER answered by %d", who);
    }
    EXPECTF(hits[2] == 3 && hits[3] == 3 && hits[4] == 3, "round robin hits %d %d %d", hits[2], hits[3], hits[4]);
    REQUIRE_OK(cluster_remotecall(g_ctx, CLUSTER_ANY_WORKER, "whoami", NULL, 0, &f));
    EXPECT_OK(cluster_future_pid(f, &fp));
    EXPECT(fp >= 2 && fp <= 4); /* the future names the chosen worker */
    EXPECT_OK(cluster_future_fetch(f, 5000, &d, &dn));
    EXPECT(payload_i32(d, dn) == fp);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_OK(cluster_remote_do(g_ctx, CLUSTER_ANY_WORKER, "counter_add", (const uint8_t *)&seven, 4));

    /* everywhere: all processes (head included), a list, a failing one, a timeout */
    EXPECT_OK(cluster_everywhere(g_ctx, NULL, 0, "whoami", NULL, 0, 5000));
    EXPECT_OK(cluster_everywhere(g_ctx, ids, 2, "whoami", NULL, 0, 5000));
    EXPECT_OK(cluster_everywhere(g_ctx, ids, 0, "whoami", NULL, 0, 5000)); /* empty list */
    int32_t victim = ids[1];
    EXPECT_ST(cluster_everywhere(g_ctx, NULL, 0, "fail_on", (const uint8_t *)&victim, 4, 5000), CLUSTER_ERR_COMPOSITE);
    char want[64];
    snprintf(want, sizeof want, "process %d", victim);
    EXPECT_LAST_ERROR_HAS(want);
    EXPECT_LAST_ERROR_HAS("failing on purpose");
    EXPECT_LAST_ERROR_HAS("1 of 4");
    EXPECT_ST(cluster_everywhere(g_ctx, NULL, 0, "no_such_function", NULL, 0, 5000), CLUSTER_ERR_COMPOSITE);
    EXPECT_LAST_ERROR_HAS("4 of 4");
    int32_t bogus[2] = {ids[0], 77};
    EXPECT_ST(cluster_everywhere(g_ctx, bogus, 2, "whoami", NULL, 0, 5000), CLUSTER_ERR_COMPOSITE);
    EXPECT_LAST_ERROR_HAS("process 77");
    int32_t ms = 5000;
    int64_t t0 = now_ms();
    EXPECT_ST(cluster_everywhere(g_ctx, ids, 3, "sleep_long", (const uint8_t *)&ms, 4, 100), CLUSTER_ERR_COMPOSITE);
    EXPECTF(now_ms() - t0 < 2000, "everywhere with timeout 100 took %" PRId64 " ms", now_ms() - t0);
    EXPECT_LAST_ERROR_HAS("timed out");
    /* Cancel those calls instead of waiting for them. */
    EXPECT_OK(cluster_interrupt(g_ctx, ids, 3));
    for (int i = 0; i < 3; i++) EXPECT(fetch_i32(ids[i], "whoami", 0) == ids[i]); /* queued behind them */
    EXPECTF(now_ms() - t0 < 4000, "interrupted everywhere calls took %" PRId64 " ms", now_ms() - t0);

    /* remote errors: unregistered function, explicit failure */
    cluster_buffer out = {0};
    EXPECT_ST(cluster_remotecall_fetch(g_ctx, ids[2], "no_such_function", NULL, 0, &out), CLUSTER_ERR_REMOTE);
    EXPECT(cluster_last_error_pid() == ids[2]);
    EXPECT_LAST_ERROR_HAS("no_such_function");
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "no_such_function", NULL, 0, &f));
    EXPECT_ST(cluster_future_wait(f, 5000), CLUSTER_ERR_REMOTE);
    int32_t epid = 0;
    const char *emsg = NULL;
    EXPECT_OK(cluster_future_error(f, &epid, &emsg));
    EXPECT(epid == ids[0]);
    EXPECTF(emsg && strstr(emsg, "not registered"), "future error \"%s\"", emsg ? emsg : "(null)");
    EXPECT_ST(cluster_future_fetch(f, 0, &d, &dn), CLUSTER_ERR_REMOTE);
    EXPECT(cluster_last_error_pid() == ids[0]);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_ST(cluster_remotecall_wait(g_ctx, ids[1], "fail_on", (const uint8_t *)&ids[1], 4, &f), CLUSTER_ERR_REMOTE);
    EXPECT(cluster_last_error_pid() == ids[1]);

    /* head-only functions on a worker: NOT_HEAD, checked by the worker itself */
    int32_t r[8];
    size_t rn = 0;
    REQUIRE_OK(call_within(ids[0], "head_only_checks", NULL, 0, r, sizeof r, &rn, 5000));
    REQUIRE(rn == sizeof r);
    EXPECTF(r[0] == CLUSTER_ERR_NOT_HEAD, "worker addprocs -> %d", r[0]);
    EXPECTF(r[1] == CLUSTER_ERR_NOT_HEAD, "worker rmprocs -> %d", r[1]);
    EXPECTF(r[2] == CLUSTER_ERR_NOT_HEAD, "worker set_topology -> %d", r[2]);
    EXPECT(r[3] == 0);      /* is_head false */
    EXPECT(r[4] == ids[0]); /* myid */
    EXPECT(r[6] == CLUSTER_OK);
    /* Every worker knows every other once addprocs returned (KI-7, fixed:
     * a worker that became ready concurrently with another missed it). */
    int32_t worker_view[3];
    for (int i = 0; i < 3; i++) {
        REQUIRE_OK(call_within(ids[i], "head_only_checks", NULL, 0, r, sizeof r, &rn, 5000));
        worker_view[i] = r[5];
        if (!EXPECT(r[5] == 4 && r[7] == 2))
            harness_logf("worker %d sees %d procs, %d other workers", ids[i], r[5], r[7]);
    }

    /* worker -> head and worker -> worker (all_to_all) calls */
    int32_t head = 1;
    REQUIRE_OK(call_within(ids[0], "call_peer", &head, 4, r, 3 * sizeof(int32_t), &rn, 5000));
    EXPECT(r[0] == CLUSTER_OK && r[1] == 1);
    for (int i = 0; i < 3; i++) {
        int32_t to = ids[(i + 1) % 3];
        REQUIRE_OK(call_within(ids[i], "call_peer", &to, 4, r, 3 * sizeof(int32_t), &rn, 5000));
        if (r[0] == CLUSTER_OK) {
            EXPECT(r[1] == to);
        } else {
            /* TIMEOUT was the first frame after HELLO stranded (KI-6);
             * NO_SUCH_PROCESS, the caller never learned of the callee (KI-7). */
            EXPECTF(false, "worker %d -> worker %d call: %s", ids[i], to, cluster_status_str((cluster_status)r[0]));
        }
    }

    /* rmprocs: EXITED, then calls to it fail */
    t0 = now_ms();
    EXPECT_OK(cluster_rmprocs(g_ctx, &ids[2], 1, 5000));
    harness_logf("rmprocs took %" PRId64 " ms", now_ms() - t0);
    EXPECT(wait_lifecycle(ids[2], CLUSTER_WORKER_EXITED, 2000) >= 0);
    EXPECT(lifecycle_count(ids[2], CLUSTER_WORKER_DIED) == 0);
    EXPECT_ST(cluster_remotecall_fetch(g_ctx, ids[2], "whoami", NULL, 0, &out), CLUSTER_ERR_PROCESS_EXITED);
    EXPECT(cluster_last_error_pid() == ids[2]);
    EXPECT_ST(cluster_remote_do(g_ctx, ids[2], "whoami", NULL, 0), CLUSTER_ERR_PROCESS_EXITED);
    EXPECT_OK(cluster_nprocs(g_ctx, &n));
    EXPECT(n == 3);
    EXPECT_OK(cluster_rmprocs(g_ctx, &ids[2], 1, 1000)); /* already gone: fine */
    /* the remaining workers learn about it too */
    t0 = now_ms();
    int32_t seen = 0;
    do {
        if (call_within(ids[0], "head_only_checks", NULL, 0, r, sizeof r, &rn, 5000) != CLUSTER_OK) break;
        seen = r[5];
    } while (seen != 3 && now_ms() - t0 < 2000 && (sleep_ms(20), 1));
    EXPECTF(seen == 3, "worker still sees %d procs (it saw %d before)", seen, worker_view[0]);
    /* a new worker gets a fresh id: ids are never reused */
    int32_t more[1];
    addprocs(1, more);
    EXPECT(more[0] == 5);
    EXPECT(fetch_i32(more[0], "whoami", 0) == 5);

    shutdown_all();
    /* The EXITED callbacks may trail cluster_shutdown by a moment. */
    EXPECT(wait_lifecycle(ids[1], CLUSTER_WORKER_EXITED, 1000) >= 0);
    EXPECT(wait_lifecycle(more[0], CLUSTER_WORKER_EXITED, 1000) >= 0);
    EXPECT(wait_lifecycle(ids[0], CLUSTER_WORKER_EXITED, 1000) >= 0);
    EXPECT(lifecycle_count(ids[0], CLUSTER_WORKER_EXITED) == 1);
    EXPECT(lifecycle_count(ids[1], CLUSTER_WORKER_EXITED) == 1);
    EXPECT(lifecycle_count(more[0], CLUSTER_WORKER_EXITED) == 1);
    EXPECT(lifecycle_count(ids[0], CLUSTER_WORKER_DIED) == 0);
}

static void case_interrupt(void) {
    int32_t ids[2];
    addprocs(2, ids);
    int32_t long_ms = 10000, short_ms = 600;
    cluster_future *a = NULL, *b = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "sleep_long", (const uint8_t *)&long_ms, 4, &a));
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[1], "sleep_long", (const uint8_t *)&short_ms, 4, &b));
    sleep_ms(150); /* both handlers are running */
    int64_t t0 = now_ms();
    EXPECT_OK(cluster_interrupt(g_ctx, &ids[0], 1));
    EXPECT_ST(cluster_future_wait(a, 3000), CLUSTER_ERR_INTERRUPTED);
    int64_t took = now_ms() - t0;
    EXPECTF(took < 1000, "interrupt took %" PRId64 " ms", took);
    int32_t pid = 0;
    const char *msg = NULL;
    EXPECT_OK(cluster_future_error(a, &pid, &msg));
    EXPECT(pid == ids[0]);
    harness_logf("interrupted call error: \"%s\"", msg ? msg : "(null)");
    /* the other worker was not interrupted */
    EXPECT_OK(cluster_future_wait(b, 5000));
    const uint8_t *d;
    size_t n;
    EXPECT_OK(cluster_future_fetch(b, 0, &d, &n));
    EXPECT(n == 4 && memcmp(d, "done", 4) == 0);
    EXPECT_OK(cluster_future_free(a));
    EXPECT_OK(cluster_future_free(b));

    /* idle processes ignore it; later calls run normally */
    EXPECT_OK(cluster_interrupt(g_ctx, ids, 2));
    sleep_ms(50);
    EXPECT(fetch_i32(ids[0], "whoami", 0) == ids[0]);
    cluster_buffer out = {0};
    int32_t ms = 50;
    EXPECT_OK(cluster_remotecall_fetch(g_ctx, ids[0], "sleep_long", (const uint8_t *)&ms, 4, &out));
    EXPECT(out.len == 4);
    cluster_buffer_free(&out);

    /* both at once */
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "sleep_long", (const uint8_t *)&long_ms, 4, &a));
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[1], "sleep_long", (const uint8_t *)&long_ms, 4, &b));
    sleep_ms(100);
    EXPECT_OK(cluster_interrupt(g_ctx, ids, 2));
    EXPECT_ST(cluster_future_wait(a, 3000), CLUSTER_ERR_INTERRUPTED);
    EXPECT_ST(cluster_future_wait(b, 3000), CLUSTER_ERR_INTERRUPTED);
    EXPECT_OK(cluster_future_free(a));
    EXPECT_OK(cluster_future_free(b));
    /* a process not in the cluster */
    int32_t nobody = 42;
    EXPECT_ST(cluster_interrupt(g_ctx, &nobody, 1), CLUSTER_ERR_NO_SUCH_PROCESS);
    shutdown_all();
}

static void case_kill(void) {
    int32_t ids[2];
    addprocs(2, ids);
    int32_t os_pid = fetch_i32(ids[0], "getpid", 0);
    REQUIRE(os_pid > 1 && os_pid != (int32_t)getpid());
    int32_t long_ms = 20000;
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "sleep_long", (const uint8_t *)&long_ms, 4, &f));
    sleep_ms(100);
    REQUIRE(kill((pid_t)os_pid, SIGKILL) == 0);
    int64_t t0 = now_ms();
    EXPECT_ST(cluster_future_wait(f, 3000), CLUSTER_ERR_PROCESS_EXITED);
    int64_t took = now_ms() - t0;
    EXPECTF(took < 1000, "the pending future failed after %" PRId64 " ms", took);
    int32_t epid = 0;
    const char *msg = NULL;
    EXPECT_OK(cluster_future_error(f, &epid, &msg));
    EXPECT(epid == ids[0]);
    harness_logf("killed worker: future error \"%s\"", msg ? msg : "(null)");
    EXPECT_OK(cluster_future_free(f));
    int64_t lc = wait_lifecycle(ids[0], CLUSTER_WORKER_DIED, 1000);
    EXPECTF(lc >= 0, "no CLUSTER_WORKER_DIED for worker %d", ids[0]);
    EXPECT(lifecycle_count(ids[0], CLUSTER_WORKER_EXITED) == 0);

    /* the dead worker is gone from the cluster; the other still works */
    cluster_buffer out = {0};
    EXPECT_ST(cluster_remotecall_fetch(g_ctx, ids[0], "whoami", NULL, 0, &out), CLUSTER_ERR_PROCESS_EXITED);
    EXPECT(cluster_last_error_pid() == ids[0]);
    size_t n = 0;
    EXPECT_OK(cluster_nprocs(g_ctx, &n));
    EXPECT(n == 2);
    EXPECT(fetch_i32(ids[1], "whoami", 0) == ids[1]);
    EXPECT(fetch_i32(CLUSTER_ANY_WORKER, "whoami", 0) == ids[1]);
    EXPECT_OK(cluster_everywhere(g_ctx, NULL, 0, "whoami", NULL, 0, 5000));
    /* a worker killed while idle */
    os_pid = fetch_i32(ids[1], "getpid", 0);
    REQUIRE(kill((pid_t)os_pid, SIGKILL) == 0);
    EXPECTF(wait_lifecycle(ids[1], CLUSTER_WORKER_DIED, 1500) >= 0, "no DIED for idle worker %d", ids[1]);
    EXPECT_OK(cluster_nworkers(g_ctx, &n));
    EXPECT(n == 1); /* the head alone counts as the worker */
    shutdown_all();
}



static void case_future_ref(void) {
    int32_t ids[3];
    addprocs(3, ids);
    const uint8_t *d;
    size_t n = 0;
    int32_t v = 0;
    cluster_status st;

    /* 1. Head-owned: a call to worker A; the reference goes to worker B,
     *    which imports it and fetches the value from the head. */
    int32_t seven = 7;
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "slow_square", (const uint8_t *)&seven, 4, &f));
    cluster_future_ref ref, ref2;
    REQUIRE_OK(cluster_future_export(f, &ref));
    EXPECT(ref.owner == 1);
    EXPECT_OK(cluster_future_free(f)); /* the export keeps the value alive */
    if (EXPECT_OK(call_within(ids[1], "import_fetch", &ref, sizeof ref, &v, sizeof v, &n, 4000)))
        EXPECT(n == 4 && v == 49);

    /* 2. Worker-owned: worker C starts slow_square(9) on the head (then,
     *    second round, on worker A) and exports it; the head imports it
     *    (a remote reference) and fetches it from C. */
    for (int round = 0; round < 2; round++) {
        int32_t compute_on = round == 0 ? 1 : ids[0];
        st = call_within(ids[2], "make_ref", &compute_on, 4, &ref, sizeof ref, &n, 3000);
        if (!EXPECT_OK(st)) continue;
        REQUIRE_OK(st);
        REQUIRE(n == sizeof ref);
        EXPECT(ref.owner == ids[2]);
        cluster_future *imp = NULL;
        REQUIRE_OK(cluster_future_import(g_ctx, &ref, &imp));
        int32_t fp = 0;
        EXPECT_OK(cluster_future_pid(imp, &fp));
        EXPECTF(fp == ids[2], "imported future pid %d", fp);
        /* 3. Export the imported future again (ADD_REF round trip to C)
         *    and pass it to B, which fetches from C. */
        EXPECT_OK(cluster_future_export(imp, &ref2));
        EXPECT(ref2.owner == ids[2] && ref2.id == ref.id);
        /* The same as a future: the 12 bytes of another reference. */
        cluster_future *xf = NULL;
        REQUIRE_OK(cluster_future_export_async(imp, &xf));
        if (EXPECT_OK(cluster_future_fetch(xf, 5000, &d, &n))) {
            cluster_future_ref ref3 = {0, 0};
            EXPECT(n == 12);
            memcpy(&ref3.owner, d, 4);
            memcpy(&ref3.id, d + 4, 8);
            EXPECT(ref3.owner == ids[2] && ref3.id == ref.id);
            cluster_future *again = NULL;
            EXPECT_OK(cluster_future_import(g_ctx, &ref3, &again));
            EXPECT_OK(cluster_future_free(again));
        }
        EXPECT_OK(cluster_future_free(xf));
        st = cluster_future_fetch(imp, 3000, &d, &n);
        if (st == CLUSTER_ERR_TIMEOUT) st = nudge_and_wait(imp, ids[2], "the value from worker C");
        if (EXPECT_OK(st)) {
            EXPECT_OK(cluster_future_fetch(imp, 0, &d, &n));
            EXPECT(n == 4 && payload_i32(d, n) == 81);
            bool ready = false;
            EXPECT_OK(cluster_future_isready(imp, &ready));
            EXPECT(ready);
        }
        EXPECT_OK(cluster_future_free(imp));
        /* B's first call to C is a first worker-to-worker message (KI-6 stranded it). */
        st = call_within(ids[1], "import_fetch", &ref2, sizeof ref2, &v, sizeof v, &n, 4000);
        if (EXPECT_OK(st)) EXPECT(n == 4 && v == 81);
    }

    /* 4. A worker re-exports a head-owned reference; the head imports the
     *    result (owned by itself) and fetches locally. */
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "square", (const uint8_t *)&seven, 4, &f));
    REQUIRE_OK(cluster_future_export(f, &ref));
    st = call_within(ids[1], "reexport", &ref, sizeof ref, &ref2, sizeof ref2, &n, 5000);
    if (EXPECT_OK(st)) {
        REQUIRE(n == sizeof ref2);
        EXPECT(ref2.owner == 1 && ref2.id == ref.id);
        EXPECT_OK(cluster_future_free(f));
        cluster_future *imp = NULL;
        REQUIRE_OK(cluster_future_import(g_ctx, &ref2, &imp));
        EXPECT_OK(cluster_future_fetch(imp, 5000, &d, &n));
        EXPECT(n == 4 && payload_i32(d, n) == 49);
        EXPECT_OK(cluster_future_free(imp));
    } else {
        EXPECT_OK(cluster_future_free(f));
    }

    /* 5. A failing future passed on: the importer sees the remote error. */
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "no_such_function", NULL, 0, &f));
    REQUIRE_OK(cluster_future_export(f, &ref));
    EXPECT_OK(cluster_future_free(f));
    st = call_within(ids[1], "import_fetch", &ref, sizeof ref, &v, sizeof v, &n, 4000);
    if (st != CLUSTER_ERR_TIMEOUT) {
        EXPECT_ST(st, CLUSTER_ERR_REMOTE);
        EXPECT_LAST_ERROR_HAS("no_such_function");
    }

    /* 6. A reference to a value that is gone: an error, not a hang. */
    cluster_future_ref stale = {.owner = ids[2], .id = 0x7fffffff};
    cluster_future *imp = NULL;
    REQUIRE_OK(cluster_future_import(g_ctx, &stale, &imp));
    st = cluster_future_wait(imp, 5000);
    EXPECTF(st != CLUSTER_OK && st != CLUSTER_ERR_TIMEOUT, "stale reference: %s", cluster_status_str(st));
    EXPECT_OK(cluster_future_free(imp));

    shutdown_all();
}

static void case_defer(void) {
    int32_t ids[1];
    addprocs(1, ids);
    /* A deferred call answered later from another thread. */
    int32_t delay = 1500;
    cluster_future *slow = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "defer_reply", (const uint8_t *)&delay, 4, &slow));
    /* With one handler thread, the deferred call does not hold the slot:
     * another call to the same worker is answered meanwhile. */
    int64_t t0 = now_ms();
    EXPECT(fetch_i32(ids[0], "whoami", 0) == ids[0]);
    EXPECTF(now_ms() - t0 < 1000, "a call behind a deferred one took %" PRId64 " ms", now_ms() - t0);
    bool ready = true;
    EXPECT_OK(cluster_future_isready(slow, &ready));
    EXPECT(!ready);
    const uint8_t *d;
    size_t n;
    EXPECT_OK(cluster_future_fetch(slow, 5000, &d, &n));
    char want[64];
    int wl = snprintf(want, sizeof want, "deferred reply from %d", ids[0]);
    EXPECT(n == (size_t)wl && memcmp(d, want, n) == 0);
    EXPECT_OK(cluster_future_free(slow));
    /* A deferred call freed without an answer fails for the caller. */
    delay = 50;
    cluster_buffer out = {0};
    EXPECT_ST(cluster_remotecall_fetch(g_ctx, ids[0], "defer_drop", (const uint8_t *)&delay, 4, &out),
              CLUSTER_ERR_REMOTE);
    EXPECT(cluster_last_error_pid() == ids[0]);
    /* Many deferred calls at once. */
    cluster_future *fs[16];
    for (int i = 0; i < 16; i++) {
        int32_t dl = 10 + (i * 7) % 50;
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "defer_reply", (const uint8_t *)&dl, 4, &fs[i]));
    }
    for (int i = 0; i < 16; i++) {
        cluster_status st = cluster_future_wait(fs[i], 3000);
        if (st == CLUSTER_ERR_TIMEOUT) st = nudge_and_wait(fs[i], ids[0], "deferred reply");
        EXPECT_OK(st);
        EXPECT_OK(cluster_future_free(fs[i]));
    }
    shutdown_all();
}

/* Host-driven head and workers: cluster_event_fd + poll() + cluster_poll. */
static _Atomic int g_notify_count;
static int on_notify(void *ud) {
    (void)ud;
    atomic_fetch_add(&g_notify_count, 1);
    return 0;
}

static _Atomic int g_log_off_main, g_log_count;
static void on_log(void *ud, cluster_log_level level, const char *message) {
    (void)ud;
    (void)level;
    (void)message;
    if (!pthread_equal(pthread_self(), g_main_thread)) atomic_fetch_add(&g_log_off_main, 1);
    atomic_fetch_add(&g_log_count, 1);
}

/* Polls until `done()` or the timeout; counts events by kind. */
struct host_state {
    int fd;
    int ready_events;
    int worker_events[3];
    uint64_t want_future;
    bool got_future;
};

static void host_pump(struct host_state *hs, int64_t timeout_ms, bool (*done)(struct host_state *)) {
    int64_t t0 = now_ms();
    while (!done(hs) && now_ms() - t0 < timeout_ms) {
        struct pollfd p = {.fd = hs->fd, .events = POLLIN};
        poll(&p, 1, 50);
        cluster_event ev[8];
        size_t count = 0;
        EXPECT_OK(cluster_poll(g_ctx, ev, 8, &count));
        for (size_t i = 0; i < count; i++) {
            if (ev[i].service != CLUSTER_SERVICE_CORE) continue;
            switch (ev[i].kind) {
            case CLUSTER_EVENT_FUTURE_READY:
                hs->ready_events++;
                if (ev[i].id == hs->want_future) hs->got_future = true;
                break;
            case CLUSTER_EVENT_WORKER_STARTED:
                hs->worker_events[CLUSTER_WORKER_STARTED]++;
                break;
            case CLUSTER_EVENT_WORKER_EXITED:
                hs->worker_events[CLUSTER_WORKER_EXITED]++;
                break;
            case CLUSTER_EVENT_WORKER_DIED:
                hs->worker_events[CLUSTER_WORKER_DIED]++;
                break;
            default:
                break;
            }
        }
    }
}

static bool two_started(struct host_state *hs) { return hs->worker_events[CLUSTER_WORKER_STARTED] >= 2; }
static bool got_future(struct host_state *hs) { return hs->got_future; }
static bool two_exited(struct host_state *hs) { return hs->worker_events[CLUSTER_WORKER_EXITED] >= 2; }

static void case_host(void) {
    struct host_state hs = {0};
    REQUIRE_OK(cluster_event_fd(g_ctx, &hs.fd));
    REQUIRE_OK(cluster_set_notify(g_ctx, on_notify, NULL));
    REQUIRE_OK(cluster_set_log_callback(g_ctx, on_log, NULL));
    REQUIRE_OK(cluster_set_log_level(g_ctx, CLUSTER_LOG_INFO));
    EXPECT_ST(cluster_serve(g_ctx), CLUSTER_ERR_WRONG_MODE);
    int32_t ids[2];
    addprocs(2, ids);
    /* Lifecycle events and callbacks arrive only through cluster_poll. */
    EXPECT(lifecycle_count(ids[0], CLUSTER_WORKER_STARTED) == 0);
    host_pump(&hs, 3000, two_started);
    EXPECT(hs.worker_events[CLUSTER_WORKER_STARTED] == 2);
    EXPECT(lifecycle_count(ids[0], CLUSTER_WORKER_STARTED) == 1);
    EXPECT(lifecycle_count(ids[1], CLUSTER_WORKER_STARTED) == 1);
    EXPECT(atomic_load(&g_notify_count) > 0);

    /* Worker (also host-driven) calls back into the head: the head's
     * handler runs inside our cluster_poll, on this thread. */
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "call_head", NULL, 0, &f));
    REQUIRE_OK(cluster_future_id(f, &hs.want_future));
    host_pump(&hs, 5000, got_future);
    EXPECT(hs.got_future);
    EXPECT(atomic_load(&g_head_fn_calls) == 1);
    const uint8_t *d;
    size_t n;
    EXPECT_OK(cluster_future_fetch(f, 0, &d, &n));
    EXPECT(n == 9 && memcmp(d, "from head", 9) == 0);
    EXPECT_OK(cluster_future_free(f));

    /* Plain calls from the head: FUTURE_READY names each future. */
    cluster_future *fs[4];
    uint64_t fids[4];
    for (int i = 0; i < 4; i++) {
        int32_t x = i + 2;
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[i % 2], "square", (const uint8_t *)&x, 4, &fs[i]));
        REQUIRE_OK(cluster_future_id(fs[i], &fids[i]));
        for (int j = 0; j < i; j++) EXPECT(fids[j] != fids[i]);
    }
    for (int i = 0; i < 4; i++) {
        hs.got_future = false;
        hs.want_future = fids[i];
        bool isready = false;
        EXPECT_OK(cluster_future_isready(fs[i], &isready));
        if (!isready) host_pump(&hs, 5000, got_future);
        EXPECT_OK(cluster_future_fetch(fs[i], 0, &d, &n));
        EXPECT(payload_i32(d, n) == (i + 2) * (i + 2));
        EXPECT_OK(cluster_future_free(fs[i]));
    }
    /* remotecall_fetch works in host mode when no local handler is needed */
    EXPECT(fetch_i32(ids[1], "whoami", 0) == ids[1]);

    /* Everything foreign ran on this thread. */
    EXPECT(atomic_load(&g_head_fn_off_main) == 0);
    EXPECT(atomic_load(&g_lc_off_main) == 0);
    EXPECT(atomic_load(&g_log_off_main) == 0);
    EXPECTF(atomic_load(&g_log_count) > 0, "no log records were delivered in cluster_poll");

    /* Shutdown: workers see CLUSTER_EVENT_SHUTDOWN and leave their loops. */
    EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    host_pump(&hs, 2000, two_exited);
    EXPECT(hs.worker_events[CLUSTER_WORKER_EXITED] == 2);
    EXPECT(lifecycle_count(ids[0], CLUSTER_WORKER_EXITED) == 1);
    EXPECT_OK(cluster_set_notify(g_ctx, NULL, NULL));
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

static void host_worker_loop(void) {
    REQUIRE_OK(cluster_ready(g_ctx));
    int fd = -1;
    REQUIRE_OK(cluster_event_fd(g_ctx, &fd));
    bool stop = false;
    while (!stop) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 1000);
        cluster_event ev[8];
        size_t count = 0;
        if (cluster_poll(g_ctx, ev, 8, &count) != CLUSTER_OK) break;
        for (size_t i = 0; i < count; i++)
            if (ev[i].service == CLUSTER_SERVICE_CORE && (ev[i].kind == CLUSTER_EVENT_SHUTDOWN || ev[i].kind == CLUSTER_EVENT_HEAD_LOST)) stop = true;
    }
}

static void case_topology(void) {
    int32_t ids[2];
    EXPECT_OK(cluster_set_topology(g_ctx, CLUSTER_TOPOLOGY_MASTER_WORKER));
    addprocs(2, ids);
    /* No change while workers run... */
    EXPECT_ST(cluster_set_topology(g_ctx, CLUSTER_TOPOLOGY_ALL_TO_ALL), CLUSTER_ERR_TOPOLOGY);
    int32_t r[3];
    /* worker -> head: allowed */
    int32_t head = 1;
    size_t rn = 0;
    REQUIRE_OK(call_within(ids[0], "call_peer", &head, 4, r, sizeof r, &rn, 5000));
    EXPECT(r[0] == CLUSTER_OK && r[1] == 1);
    /* worker -> worker: refused by the topology */
    REQUIRE_OK(call_within(ids[0], "call_peer", &ids[1], 4, r, sizeof r, &rn, 5000));
    EXPECTF(r[0] == CLUSTER_ERR_TOPOLOGY, "worker->worker under master_worker: %d", r[0]);
    /* ...and a change once none is left, as Distributed allows with nprocs() == 1. */
    EXPECT_OK(cluster_rmprocs(g_ctx, ids, 2, 10000));
    EXPECT_OK(cluster_set_topology(g_ctx, CLUSTER_TOPOLOGY_ALL_TO_ALL));
    addprocs(2, ids);
    REQUIRE_OK(call_within(ids[0], "call_peer", &ids[1], 4, r, sizeof r, &rn, 5000));
    EXPECTF(r[0] == CLUSTER_OK && r[1] == ids[1], "worker->worker after the change: %d", r[0]);
    shutdown_all();
}

static void case_launch_options(void) {
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    REQUIRE(l > 0);
    exe[l] = '\0';
    const char *argv[] = {"launch_options", NULL};
    const char *env[] = {"CLUSTER_TEST_FOO=bar baz", "CLUSTER_TEST_EMPTY=", NULL};
    char dir[] = "/tmp/libcluster-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    cluster_launch_options o = {.program = exe, .argv = argv, .env = env, .dir = dir};
    int32_t ids[2];
    REQUIRE_OK(cluster_addprocs(g_ctx, 2, &o, ids));
    cluster_buffer out = {0};
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, ids[0], "getenv", (const uint8_t *)"CLUSTER_TEST_FOO", 16, &out));
    EXPECT(out.len == 7 && memcmp(out.data, "bar baz", 7) == 0);
    cluster_buffer_free(&out);
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, ids[1], "getenv", (const uint8_t *)"CLUSTER_TEST_EMPTY", 18, &out));
    EXPECT(out.len == 0);
    cluster_buffer_free(&out);
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, ids[0], "getcwd", NULL, 0, &out));
    EXPECTF(out.len == strlen(dir) && memcmp(out.data, dir, out.len) == 0, "worker cwd %.*s", (int)out.len,
            (const char *)out.data);
    cluster_buffer_free(&out);
    /* The cookie never appears in a worker's environment. */
    EXPECT_ST(cluster_remotecall_fetch(g_ctx, ids[0], "getenv", (const uint8_t *)"LIBCLUSTER_COOKIE", 17, &out),
              CLUSTER_ERR_REMOTE);
    shutdown_all();
    rmdir(dir);
}

/* Elastic join: a process started by hand joins with the address + cookie. */
static pid_t spawn_self(const char *arg1, const char *arg2, const char *cookie) {
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    REQUIRE(l > 0);
    exe[l] = '\0';
    char *argv[] = {exe, (char *)arg1, (char *)arg2, NULL};
    /* environ plus the cookie */
    size_t ne = 0;
    while (environ[ne]) ne++;
    char **envp = calloc(ne + 2, sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (strncmp(environ[i], "LIBCLUSTER_", 11) != 0) envp[k++] = environ[i];
    char cookie_var[512];
    snprintf(cookie_var, sizeof cookie_var, "LIBCLUSTER_COOKIE=%s", cookie);
    envp[k++] = cookie_var;
    envp[k] = NULL;
    pid_t pid = -1;
    REQUIRE(posix_spawn(&pid, exe, NULL, NULL, argv, envp) == 0);
    free(envp);
    return pid;
}

static int wait_child(pid_t pid, int64_t timeout_ms) {
    int64_t t0 = now_ms();
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (now_ms() - t0 > timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(10);
    }
}

static void case_elastic(void) {
    char addr[128], cookie[256];
    size_t len = 0;
    REQUIRE_OK(cluster_address(g_ctx, addr, sizeof addr, &len));
    REQUIRE_OK(cluster_cookie(g_ctx, cookie, sizeof cookie, &len));

    /* A wrong cookie is refused: the joiner's cluster_init fails with AUTH. */
    pid_t bad = spawn_self("elastic_join", addr, "not-the-cookie");
    int code = wait_child(bad, 15000);
    EXPECTF(code == 40 + CLUSTER_ERR_AUTH, "joining with a wrong cookie exited with %d", code);

    pid_t child = spawn_self("elastic_join", addr, cookie);
    int64_t t0 = now_ms();
    size_t n = 0;
    while (now_ms() - t0 < 10000) {
        EXPECT_OK(cluster_nprocs(g_ctx, &n));
        if (n == 2) break;
        sleep_ms(10);
    }
    REQUIRE(n == 2);
    int32_t others[4];
    size_t count = 0;
    EXPECT_OK(cluster_other_procs(g_ctx, others, 4, &count));
    REQUIRE(count == 1);
    EXPECT(fetch_i32(others[0], "whoami", 0) == others[0]);
    EXPECT(fetch_i32(others[0], "getpid", 0) == (int32_t)child);
    EXPECTF(wait_lifecycle(others[0], CLUSTER_WORKER_STARTED, 1000) >= 0, "no STARTED for the elastic worker");
    /* The elastic worker is not our child: shutdown asks it to leave. */
    EXPECT_OK(cluster_shutdown(g_ctx, 6000));
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
    code = wait_child(child, 10000);
    EXPECTF(code == 0, "elastic worker exited with %d", code);
}

static int elastic_join_main(const char *addr) {
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.join = addr;
    cfg.startup_timeout_ms = 5000;
    cluster_status st = cluster_init(&cfg, &g_ctx);
    if (st != CLUSTER_OK) {
        harness_logf("elastic join failed: %s: %s", cluster_status_str(st), cluster_last_error());
        return 40 + st;
    }
    bool head = true;
    REQUIRE_OK(cluster_is_head(g_ctx, &head));
    REQUIRE(!head);
    register_all(g_ctx);
    st = cluster_serve(g_ctx);
    cluster_free(g_ctx);
    return st == CLUSTER_OK ? 0 : 40 + st;
}

/* Messages above a receiver's max_message_bytes. */
static void case_too_large(void) {
    int32_t ids[1];
    addprocs(1, ids);
    /* The worker accepts at most 1 MiB; the head, the default 1 GiB. */
    size_t big = (1u << 20) + 1024;
    uint8_t *buf = calloc(big, 1);
    cluster_buffer out = {0};
    int64_t t0 = now_ms();
    cluster_status st = cluster_remotecall_fetch(g_ctx, ids[0], "echo", buf, big, &out);
    harness_logf("too-large argument: %s after %" PRId64 " ms: %s", cluster_status_str(st), now_ms() - t0,
                 cluster_last_error());
    EXPECT_ST(st, CLUSTER_ERR_TOO_LARGE); /* at the sender, not a dropped connection (KI-5, fixed) */
    EXPECT_LAST_ERROR_HAS("exceeds");
    if (st == CLUSTER_OK) cluster_buffer_free(&out);
    /* The worker survives an oversized message sent to it. */
    st = cluster_remotecall_fetch(g_ctx, ids[0], "whoami", NULL, 0, &out);
    EXPECT_ST(st, CLUSTER_OK);
    if (st == CLUSTER_OK) cluster_buffer_free(&out);
    free(buf);
    /* A reply above the head's limit (2 MiB here): the caller gets an error,
     * not a hang, and the worker survives. */
    int32_t size = 3 << 20;
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "make_bytes", (const uint8_t *)&size, 4, &f));
    st = cluster_future_wait(f, 5000);
    harness_logf("too-large reply: %s: %s", cluster_status_str(st), cluster_last_error());
    EXPECTF(st == CLUSTER_ERR_TOO_LARGE || st == CLUSTER_ERR_REMOTE, "too-large reply gave %s", cluster_status_str(st));
    cluster_future_free(f);
    EXPECT(fetch_i32(ids[0], "whoami", 0) == ids[0]);
    shutdown_all();
}

/* A handler that returns a value outside cluster_status. */
static void case_bad_status(void) {
    int32_t ids[1];
    addprocs(1, ids);
    cluster_buffer out = {0};
    cluster_status st = cluster_remotecall_fetch(g_ctx, ids[0], "bad_status", NULL, 0, &out);
    harness_logf("handler returning 99: %s: %s", cluster_status_str(st), cluster_last_error());
    EXPECT_ST(st, CLUSTER_ERR_REMOTE);
    /* The message names the bad status (KI-1, fixed: it was read through a wild pointer). */
    EXPECT_LAST_ERROR_HAS("unknown status");
    EXPECT(fetch_i32(ids[0], "whoami", 0) == ids[0]);
    shutdown_all();
}

/* Several threads calling at once. */
static void *hammer(void *arg) {
    int base = (int)(intptr_t)arg;
    for (int i = 0; i < 50; i++) {
        int32_t x = base * 1000 + i;
        cluster_buffer out = {0};
        if (cluster_remotecall_fetch(g_ctx, CLUSTER_ANY_WORKER, "square", (const uint8_t *)&x, 4, &out) != CLUSTER_OK)
            return (void *)1;
        int32_t v = payload_i32(out.data, out.len);
        cluster_buffer_free(&out);
        if (v != x * x) return (void *)2;
    }
    return NULL;
}

static void case_threads(void) {
    int32_t ids[4];
    addprocs(4, ids);
    pthread_t t[6];
    for (int i = 0; i < 6; i++) REQUIRE(pthread_create(&t[i], NULL, hammer, (void *)(intptr_t)(i + 1)) == 0);
    for (int i = 0; i < 6; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        EXPECTF(r == NULL, "thread %d failed (%d)", i, (int)(intptr_t)r);
    }
    /* Large replies from every worker. */
    for (int i = 0; i < 4; i++) {
        int32_t size = 3 << 20;
        cluster_buffer out = {0};
        REQUIRE_OK(cluster_remotecall_fetch(g_ctx, ids[i], "make_bytes", (const uint8_t *)&size, 4, &out));
        EXPECT(out.len == (size_t)size);
        bool good = true;
        for (size_t k = 0; k < out.len && good; k += 4093) good = out.data[k] == (uint8_t)k;
        EXPECT(good);
        cluster_buffer_free(&out);
    }
    shutdown_all();
}

/* Worker -> head calls from inside handlers, right after addprocs. */
static void case_worker_to_head(void) {
    int32_t ids[3];
    addprocs(3, ids);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 3; i++) {
            int32_t head = 1;
            cluster_future *f = NULL;
            REQUIRE_OK(cluster_remotecall(g_ctx, ids[i], "call_peer", (const uint8_t *)&head, 4, &f));
            cluster_status st = cluster_future_wait(f, 3000);
            EXPECTF(st == CLUSTER_OK, "round %d: worker %d -> head call: %s", round, ids[i], cluster_status_str(st));
            cluster_future_free(f);
        }
    }
    shutdown_all();
}


/* ---- async forms ------------------------------------------------------------ */

/* Every operation that can wait has a form that returns a future at once. */
static void case_async(void) {
    cluster_future *f = NULL;
    bool pending = false;
    EXPECT_ST(cluster_drive(g_ctx, CLUSTER_HEAD, 0, &pending), CLUSTER_ERR_WRONG_MODE);
    EXPECT_ST(cluster_cork(g_ctx, CLUSTER_HEAD, true), CLUSTER_ERR_WRONG_MODE);
    int64_t t0 = now_ms();
    REQUIRE_OK(cluster_addprocs_async(g_ctx, 2, NULL, &f));
    EXPECTF(now_ms() - t0 < 500, "addprocs_async took %" PRId64 " ms to return", now_ms() - t0);
    const uint8_t *d = NULL;
    size_t n = 0;
    REQUIRE_OK(cluster_future_fetch(f, 20000, &d, &n));
    REQUIRE(n == 2 * sizeof(int32_t));
    int32_t ids[2];
    memcpy(ids, d, sizeof ids);
    EXPECT(ids[0] >= 2 && ids[1] == ids[0] + 1);
    EXPECT_OK(cluster_future_free(f));
    for (int i = 0; i < 2; i++) EXPECT(fetch_i32(ids[i], "whoami", 0) == ids[i]);

    /* everywhere: a future that completes once all calls have; failures
     * listed per process, a slow one as timed out. */
    f = NULL;
    REQUIRE_OK(cluster_everywhere_async(g_ctx, ids, 2, "whoami", NULL, 0, 5000, &f));
    EXPECT_OK(cluster_future_wait(f, 10000));
    EXPECT_OK(cluster_future_free(f));
    int32_t bad = ids[1];
    f = NULL;
    REQUIRE_OK(cluster_everywhere_async(g_ctx, ids, 2, "fail_on", (const uint8_t *)&bad, 4, 5000, &f));
    EXPECT_ST(cluster_future_wait(f, 10000), CLUSTER_ERR_COMPOSITE);
    int32_t epid = -1;
    const char *msg = NULL;
    EXPECT_OK(cluster_future_error(f, &epid, &msg));
    char want[32];
    snprintf(want, sizeof want, "process %d", bad);
    EXPECTF(msg && strstr(msg, want) && strstr(msg, "1 of 2"), "everywhere_async error: %s", msg ? msg : "(null)");
    EXPECT_OK(cluster_future_free(f));
    int32_t ms = 3000;
    f = NULL;
    t0 = now_ms();
    REQUIRE_OK(cluster_everywhere_async(g_ctx, ids, 2, "sleep_long", (const uint8_t *)&ms, 4, 100, &f));
    EXPECT_ST(cluster_future_wait(f, 5000), CLUSTER_ERR_COMPOSITE);
    EXPECTF(now_ms() - t0 < 2000, "a 100 ms everywhere took %" PRId64 " ms", now_ms() - t0);
    EXPECT_OK(cluster_future_error(f, &epid, &msg));
    EXPECTF(msg && strstr(msg, "timed out") && strstr(msg, "2 of 2"), "everywhere_async timeout: %s", msg ? msg : "(null)");
    EXPECT_OK(cluster_future_free(f));
    EXPECT_OK(cluster_interrupt(g_ctx, ids, 2));

    /* drive: reads the reply on this thread, never parks. */
    f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "whoami", NULL, 0, &f));
    bool ready = false;
    for (int i = 0; i < 200000 && !ready; i++) EXPECT_OK(cluster_future_drive(f, 100, &ready));
    EXPECT(ready);
    EXPECT_ST(cluster_future_drive(f, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_ST(cluster_future_drive(f, 0, &ready), CLUSTER_ERR_BAD_HANDLE);

    /* rmprocs and shutdown as futures. */
    f = NULL;
    REQUIRE_OK(cluster_rmprocs_async(g_ctx, &ids[1], 1, 5000, &f));
    EXPECT_OK(cluster_future_wait(f, 10000));
    EXPECT_OK(cluster_future_free(f));
    EXPECT(wait_lifecycle(ids[1], CLUSTER_WORKER_EXITED, 5000) >= 0);
    f = NULL;
    REQUIRE_OK(cluster_shutdown_async(g_ctx, 10000, &f));
    EXPECT_OK(cluster_future_wait(f, 20000));
    EXPECT_OK(cluster_future_free(f));
    EXPECT(wait_lifecycle(ids[0], CLUSTER_WORKER_EXITED, 5000) >= 0);
    f = NULL;
    EXPECT_ST(cluster_addprocs_async(g_ctx, 1, NULL, &f), CLUSTER_ERR_SHUTDOWN);
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

/* Host mode: the host never blocks; the futures of addprocs and everywhere
 * (this process among the targets) complete while it polls. */
static void case_async_host(void) {
    struct host_state hs = {0};
    REQUIRE_OK(cluster_event_fd(g_ctx, &hs.fd));
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_addprocs_async(g_ctx, 2, NULL, &f));
    REQUIRE_OK(cluster_future_id(f, &hs.want_future));
    host_pump(&hs, 20000, got_future);
    EXPECT(hs.got_future);
    const uint8_t *d = NULL;
    size_t n = 0;
    REQUIRE_OK(cluster_future_fetch(f, 0, &d, &n));
    EXPECT(n == 8);
    EXPECT_OK(cluster_future_free(f));
    f = NULL;
    REQUIRE_OK(cluster_everywhere_async(g_ctx, NULL, 0, "whoami", NULL, 0, 10000, &f));
    hs.got_future = false;
    REQUIRE_OK(cluster_future_id(f, &hs.want_future));
    host_pump(&hs, 10000, got_future);
    EXPECT(hs.got_future);
    EXPECT_OK(cluster_future_wait(f, 0));
    EXPECT_OK(cluster_future_free(f));
    f = NULL;
    REQUIRE_OK(cluster_shutdown_async(g_ctx, 10000, &f));
    hs.got_future = false;
    REQUIRE_OK(cluster_future_id(f, &hs.want_future));
    host_pump(&hs, 20000, got_future);
    EXPECT(hs.got_future);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

/* ---- host-driven reads (cluster_drive) ---------------------------------------- */

/* A host-mode worker that, between calls, reads the head's connection on
 * its own thread (cluster_drive) instead of waiting for the eventfd. */
static void drive_worker_loop(void) {
    REQUIRE_OK(cluster_ready(g_ctx));
    int fd = -1;
    REQUIRE_OK(cluster_event_fd(g_ctx, &fd));
    bool stop = false;
    int64_t last = now_ms();
    while (!stop) {
        cluster_event ev[8];
        size_t count = 0;
        /* Replies of the calls run in this poll go out together. */
        if (cluster_cork(g_ctx, CLUSTER_HEAD, true) != CLUSTER_OK) break;
        cluster_status st = cluster_poll(g_ctx, ev, 8, &count);
        if (cluster_cork(g_ctx, CLUSTER_HEAD, false) != CLUSTER_OK || st != CLUSTER_OK) break;
        for (size_t i = 0; i < count; i++)
            if (ev[i].service == CLUSTER_SERVICE_CORE && (ev[i].kind == CLUSTER_EVENT_SHUTDOWN || ev[i].kind == CLUSTER_EVENT_HEAD_LOST)) stop = true;
        if (count > 0) last = now_ms();
        if (now_ms() - last < 100) {
            bool pending = false;
            if (cluster_drive(g_ctx, CLUSTER_HEAD, 200, &pending) != CLUSTER_OK) break;
            continue;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) > 0) last = now_ms();
    }
}

/* The head drives a worker's connection until a call from it is pending;
 * host-mode workers drive the head's connection between calls. */
static void case_drive(void) {
    bool pending = true;
    EXPECT_ST(cluster_drive(g_ctx, 2, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_drive(g_ctx, -1, 0, &pending), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_drive(NULL, 2, 0, &pending), CLUSTER_ERR_BAD_HANDLE);
    /* No connection to that process: returns at once, nothing pending. */
    int64_t t0 = now_ms();
    EXPECT_OK(cluster_drive(g_ctx, 99, 500000, &pending));
    EXPECT(!pending);
    EXPECTF(now_ms() - t0 < 100, "cluster_drive without a connection took %" PRId64 " ms", now_ms() - t0);
    int32_t ids[1];
    addprocs(1, ids);
    /* The worker calls back into the head; the head reads that call itself. */
    int calls_before = atomic_load(&g_head_fn_calls);
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "call_head", NULL, 0, &f));
    pending = false;
    t0 = now_ms();
    while (!pending && now_ms() - t0 < 5000) EXPECT_OK(cluster_drive(g_ctx, ids[0], 1000, &pending));
    EXPECTF(pending, "no call from the worker was read by cluster_drive");
    /* Pending work runs in cluster_poll, on this thread. */
    EXPECT(atomic_load(&g_head_fn_calls) == calls_before);
    bool ready = false;
    t0 = now_ms();
    while (!ready && now_ms() - t0 < 5000) {
        cluster_event ev[8];
        size_t count = 0;
        EXPECT_OK(cluster_poll(g_ctx, ev, 8, &count));
        EXPECT_OK(cluster_future_drive(f, 1000, &ready));
    }
    EXPECT(ready);
    EXPECT(atomic_load(&g_head_fn_calls) == calls_before + 1);
    EXPECT(atomic_load(&g_head_fn_off_main) == 0);
    EXPECT_OK(cluster_future_free(f));
    /* Nothing pending and spin 0: returns at once. */
    cluster_event ev[8];
    size_t count = 0;
    EXPECT_OK(cluster_poll(g_ctx, ev, 8, &count));
    EXPECT_OK(cluster_drive(g_ctx, ids[0], 0, &pending));
    EXPECT(!pending);
    /* Corking: a reply the head holds (and never uncorks) still reaches the
     * worker, written by a library thread within a short while. */
    EXPECT_ST(cluster_cork(g_ctx, -1, true), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_cork(NULL, ids[0], true), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_cork(g_ctx, 99, true)); /* no connection: nothing held */
    EXPECT_OK(cluster_cork(g_ctx, ids[0], true));
    f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "call_head", NULL, 0, &f));
    ready = false;
    t0 = now_ms();
    while (!ready && now_ms() - t0 < 5000) {
        size_t c = 0;
        cluster_event evs[8];
        EXPECT_OK(cluster_poll(g_ctx, evs, 8, &c)); /* runs head_fn: its reply is corked */
        EXPECT_OK(cluster_future_drive(f, 1000, &ready));
    }
    EXPECTF(ready, "a corked reply was never written");
    EXPECT(atomic_load(&g_head_fn_calls) == calls_before + 2);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_OK(cluster_cork(g_ctx, ids[0], false));
    /* A burst of calls: the worker corks the replies of each poll's batch. */
    enum { BURST = 500 };
    static cluster_future *burst[BURST];
    for (int i = 0; i < BURST; i++) {
        int32_t x = i;
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "square", (const uint8_t *)&x, 4, &burst[i]));
    }
    for (int i = 0; i < BURST; i++) {
        ready = false;
        t0 = now_ms();
        while (!ready && now_ms() - t0 < 5000) EXPECT_OK(cluster_future_drive(burst[i], 1000, &ready));
        const uint8_t *d;
        size_t n;
        EXPECT_OK(cluster_future_fetch(burst[i], 0, &d, &n));
        EXPECT(payload_i32(d, n) == i * i);
        EXPECT_OK(cluster_future_free(burst[i]));
    }
    /* Back-to-back calls to a worker that drives its head's connection. */
    for (int i = 0; i < 2000; i++) {
        int32_t x = i;
        f = NULL;
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "square", (const uint8_t *)&x, 4, &f));
        ready = false;
        t0 = now_ms();
        while (!ready && now_ms() - t0 < 5000) EXPECT_OK(cluster_future_drive(f, 1000, &ready));
        const uint8_t *d;
        size_t n;
        EXPECT_OK(cluster_future_fetch(f, 0, &d, &n));
        EXPECT(payload_i32(d, n) == x * x);
        EXPECT_OK(cluster_future_free(f));
    }
    struct host_state hs = {0};
    REQUIRE_OK(cluster_event_fd(g_ctx, &hs.fd));
    f = NULL;
    REQUIRE_OK(cluster_shutdown_async(g_ctx, 10000, &f));
    REQUIRE_OK(cluster_future_id(f, &hs.want_future));
    host_pump(&hs, 20000, got_future);
    EXPECT(hs.got_future);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

/* ---- teardown ----------------------------------------------------------------- */

static _Atomic int g_close_running, g_close_after;
static _Atomic bool g_closed;
static int32_t h_slow_callback(void *ud, cluster_call *call) {
    (void)ud;
    g_close_running++;
    sleep_ms(300);
    if (g_closed) g_close_after++; /* cluster_close returned while this ran */
    g_close_running--;
    return cluster_call_reply(call, NULL, 0);
}
static void on_lifecycle_count(void *ud, int32_t pid, cluster_lifecycle what) {
    (void)pid;
    (void)what;
    if (g_closed) g_close_after++;
    (*(_Atomic int *)ud)++;
}

/* cluster_close: once it returns no callback runs, or will run. */
static void case_close(void) {
    static _Atomic int lc;
    /* The head's "head_fn" (which workers' "call_head" calls) becomes slow. */
    REQUIRE_OK(cluster_register(g_ctx, "head_fn", h_slow_callback, NULL));
    int32_t ids[1];
    addprocs(1, ids);
    REQUIRE_OK(cluster_set_lifecycle_callback(g_ctx, on_lifecycle_count, (void *)&lc));
    /* The worker calls the head's slow handler; close while it runs. */
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(g_ctx, ids[0], "call_head", NULL, 0, &f));
    for (int i = 0; i < 200 && g_close_running == 0; i++) sleep_ms(5);
    EXPECTF(g_close_running == 1, "the head's handler is not running (%d)", (int)g_close_running);
    int64_t t0 = now_ms();
    EXPECT_OK(cluster_close(g_ctx, 5000));
    g_closed = true;
    EXPECTF(now_ms() - t0 >= 100, "cluster_close returned after %" PRId64 " ms, while a handler ran", now_ms() - t0);
    EXPECT(g_close_running == 0);
    /* The worker sees the head gone; no lifecycle callback runs now. */
    sleep_ms(300);
    EXPECT(g_close_after == 0);
    EXPECT_ST(cluster_future_wait(f, 1000), CLUSTER_ERR_SHUTDOWN);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_ST(cluster_remotecall(g_ctx, ids[0], "whoami", NULL, 0, &f), CLUSTER_ERR_SHUTDOWN);
    EXPECT_OK(cluster_close(g_ctx, 0)); /* again: nothing runs */
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

/* ---- main ----------------------------------------------------------------- */

struct test_case {
    const char *name;
    void (*fn)(void);
    int32_t dispatch;
};

static const struct test_case cases[] = {
    {"basic", case_basic, CLUSTER_DISPATCH_THREADS},
    {"interrupt", case_interrupt, CLUSTER_DISPATCH_THREADS},
    {"kill", case_kill, CLUSTER_DISPATCH_THREADS},
    {"future_ref", case_future_ref, CLUSTER_DISPATCH_THREADS},
    {"defer", case_defer, CLUSTER_DISPATCH_THREADS},
    {"host", case_host, CLUSTER_DISPATCH_HOST},
    {"topology", case_topology, CLUSTER_DISPATCH_THREADS},
    {"launch_options", case_launch_options, CLUSTER_DISPATCH_THREADS},
    {"elastic", case_elastic, CLUSTER_DISPATCH_THREADS},
    {"too_large", case_too_large, CLUSTER_DISPATCH_THREADS},
    {"bad_status", case_bad_status, CLUSTER_DISPATCH_THREADS},
    {"threads", case_threads, CLUSTER_DISPATCH_THREADS},
    {"worker_to_head", case_worker_to_head, CLUSTER_DISPATCH_THREADS},
    {"async", case_async, CLUSTER_DISPATCH_THREADS},
    {"async_host", case_async_host, CLUSTER_DISPATCH_HOST},
    {"drive", case_drive, CLUSTER_DISPATCH_HOST},
    {"close", case_close, CLUSTER_DISPATCH_THREADS},
};

int main(int argc, char **argv) {
    g_case = argc > 1 ? argv[1] : "";
    harness_name = g_case;
    g_main_thread = pthread_self();
    if (strcmp(g_case, "elastic_join") == 0 && argc > 2) {
        harness_watchdog(30);
        return elastic_join_main(argv[2]);
    }
    const struct test_case *tc = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (strcmp(g_case, cases[i].name) == 0) tc = &cases[i];
    if (!tc) {
        fprintf(stderr, "usage: %s <case>\n", argv[0]);
        return 2;
    }

    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.dispatch = tc->dispatch;
    cfg.startup_timeout_ms = 20000;
    if (strcmp(g_case, "too_large") == 0) cfg.max_message_bytes = getenv("LIBCLUSTER_HEAD") ? 1u << 20 : 2u << 20;
    REQUIRE_OK(cluster_init(&cfg, &g_ctx));
    register_all(g_ctx);
    bool head = false;
    REQUIRE_OK(cluster_is_head(g_ctx, &head));
    if (!head) {
        harness_name = "worker";
        harness_watchdog(60); /* never outlive a broken test */
        if (tc->fn == case_drive) {
            drive_worker_loop();
        } else if (tc->dispatch == CLUSTER_DISPATCH_HOST) {
            host_worker_loop();
        } else {
            cluster_status st = cluster_serve(g_ctx);
            if (st != CLUSTER_OK) harness_logf("serve: %s", cluster_last_error());
        }
        cluster_free(g_ctx);
        return 0;
    }
    harness_watchdog(45);
    REQUIRE_OK(cluster_set_lifecycle_callback(g_ctx, on_lifecycle, &g_lc));
    harness_logf("case %s", g_case);
    tc->fn();
    if (g_ctx) shutdown_all();
    return harness_finish();
}
