/*
 * Single-process tests of the C API: every exported function, its
 * arguments and its misuse (NULL, freed, stale, wrong-kind and garbage
 * handles; NULL out pointers; small buffers), versions and status strings.
 * No workers are started here except by the launch-error case, whose
 * launches are meant to fail.
 *
 * Usage: test_api <case>; see `cases` at the bottom.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

/* ---- helpers ------------------------------------------------------------ */

static cluster_ctx *new_head(int32_t dispatch) {
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.dispatch = dispatch;
    cluster_ctx *ctx = NULL;
    REQUIRE_OK(cluster_init(&cfg, &ctx));
    REQUIRE(ctx != NULL);
    return ctx;
}

/* A handle value no table entry can match: a plausible heap-like address. */
#define GARBAGE_CTX ((cluster_ctx *)(uintptr_t)0x00005555deadbee0ULL)
#define GARBAGE_FUT ((cluster_future *)(uintptr_t)0x00007fffcafe0010ULL)
#define GARBAGE_CALL ((cluster_call *)(uintptr_t)0x0000000000001234ULL)

static int32_t h_echo(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_status st = cluster_call_args(call, &d, &n);
    if (st != CLUSTER_OK) return st;
    return cluster_call_reply(call, d, n);
}

static int32_t h_empty(void *ud, cluster_call *call) {
    (void)ud;
    (void)call;
    return CLUSTER_OK; /* no reply: the library replies with no bytes */
}

static int32_t h_io_error(void *ud, cluster_call *call) {
    (void)ud;
    (void)call;
    return CLUSTER_ERR_IO; /* fails the call with the status description */
}

static int32_t h_fail(void *ud, cluster_call *call) {
    (void)ud;
    return cluster_call_fail(call, "boom from handler");
}

static int32_t h_sleep(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_call_args(call, &d, &n);
    int32_t ms = payload_i32(d, n);
    for (int32_t t = 0; t < ms; t += 10) {
        bool c = false;
        cluster_call_cancelled(call, &c);
        if (c) break;
        sleep_ms(10);
    }
    return cluster_call_reply(call, (const uint8_t *)"slept", 5);
}

/* ---- version ------------------------------------------------------------ */

static void case_version(void) {
    EXPECT(cluster_version() == CLUSTER_VERSION);
    EXPECT(CLUSTER_VERSION == (((uint32_t)CLUSTER_VERSION_MAJOR << 16) | ((uint32_t)CLUSTER_VERSION_MINOR << 8) |
                               (uint32_t)CLUSTER_VERSION_PATCH));
    const char *s = cluster_version_string();
    REQUIRE(s != NULL);
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", CLUSTER_VERSION_MAJOR, CLUSTER_VERSION_MINOR, CLUSTER_VERSION_PATCH);
    EXPECTF(strcmp(s, want) == 0, "version string \"%s\" vs macros \"%s\"", s, want);
    EXPECT(s == cluster_version_string()); /* static storage */
    unsigned ma, mi, pa;
    EXPECT(sscanf(s, "%u.%u.%u", &ma, &mi, &pa) == 3);
    EXPECT(((ma << 16) | (mi << 8) | pa) == cluster_version());
    /* Constants the header promises. */
    EXPECT(CLUSTER_ANY_WORKER == 0);
    EXPECT(CLUSTER_FOREVER == -1);
    EXPECT(CLUSTER_HEAD == 1);
}

/* ---- status strings and last error -------------------------------------- */

static void *fresh_thread_last_error(void *arg) {
    (void)arg;
    /* A thread that never failed sees "" and pid 0. */
    const char *e = cluster_last_error();
    bool ok = e != NULL && e[0] == '\0' && cluster_last_error_pid() == 0;
    /* A failure on this thread does not leak into another. */
    cluster_is_head(NULL, NULL);
    return (void *)(uintptr_t)ok;
}

/* The highest status code (statuses are 0..LAST_STATUS without gaps). */
#define LAST_STATUS CLUSTER_ERR_CORRUPT

static void case_status(void) {
    const char *seen[LAST_STATUS + 1];
    for (int i = 0; i <= LAST_STATUS; i++) {
        const char *s = cluster_status_str((cluster_status)i);
        REQUIRE(s != NULL);
        EXPECTF(s[0] != '\0', "status %d has an empty description", i);
        EXPECTF(strcmp(s, "unknown status") != 0, "status %d is unknown", i);
        for (int j = 0; j < i; j++) EXPECTF(strcmp(s, seen[j]) != 0, "status %d and %d share \"%s\"", i, j, s);
        seen[i] = s;
        EXPECT(s == cluster_status_str((cluster_status)i)); /* static */
    }
    EXPECT(strcmp(cluster_status_str(CLUSTER_OK), "ok") == 0);
    EXPECT(strcmp(cluster_status_str(CLUSTER_ERR_BUFFER_TOO_SMALL), "buffer too small") == 0);
    /* Out-of-range values: never NULL, never a crash. Checked in a child
     * process, so a crash (KI-1, fixed) fails this check, not the binary. */
    EXPECT(strcmp(cluster_status_str(CLUSTER_ERR_CHANNEL_CLOSED), "the channel is closed") == 0);
    EXPECT(strcmp(cluster_status_str(CLUSTER_ERR_NOT_FOUND), "no such key") == 0);
    EXPECT(strcmp(cluster_status_str(CLUSTER_ERR_CORRUPT), "damaged, truncated or foreign data") == 0);
    int odd[] = {LAST_STATUS + 1, LAST_STATUS + 2, 100, 255, 256, 65536, -1, -100, 0x7fffffff, (int)0x80000000};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        fflush(NULL);
        pid_t child = fork();
        REQUIRE(child >= 0);
        if (child == 0) {
            const char *s = cluster_status_str((cluster_status)odd[i]);
            _exit(s != NULL && s[0] != '\0' && strcmp(s, "unknown status") == 0 ? 0 : 1);
        }
        int wst = 0;
        REQUIRE(waitpid(child, &wst, 0) == child);
        bool ok = WIFEXITED(wst) && WEXITSTATUS(wst) == 0;
        EXPECTF(ok, "cluster_status_str(%d) %s (regression of KI-1)", odd[i],
                WIFSIGNALED(wst) ? "crashed" : "gave a wrong string");
    }

    pthread_t t;
    void *ok = NULL;
    REQUIRE(pthread_create(&t, NULL, fresh_thread_last_error, NULL) == 0);
    pthread_join(t, &ok);
    EXPECT(ok != NULL);

    /* The last error describes the last failure, with its pid. */
    EXPECT_ST(cluster_is_head(NULL, NULL), CLUSTER_ERR_BAD_HANDLE);
    EXPECT(cluster_last_error()[0] != '\0');
    EXPECT(cluster_last_error_pid() == 0);
    bool b;
    EXPECT_ST(cluster_is_head(GARBAGE_CTX, &b), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_LAST_ERROR_HAS("cluster_ctx");
    EXPECT_ST(cluster_config_init(NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("config");
}

/* ---- configuration and init --------------------------------------------- */

static void case_config(void) {
    EXPECT_ST(cluster_config_init(NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster_config cfg;
    memset(&cfg, 0xab, sizeof cfg);
    REQUIRE_OK(cluster_config_init(&cfg));
    EXPECT(cfg.struct_size == sizeof(cluster_config));
    EXPECT(cfg.listen_host == NULL && cfg.cookie == NULL && cfg.join == NULL);
    EXPECT(cfg.topology == CLUSTER_TOPOLOGY_ALL_TO_ALL);
    EXPECT(cfg.dispatch == CLUSTER_DISPATCH_THREADS);
    EXPECT(cfg.handler_threads == 1);
    EXPECT(cfg.startup_timeout_ms == 60000);
    EXPECT(cfg.max_message_bytes == (uint64_t)1 << 30);
    EXPECT(cfg.log_level == -1);
    EXPECT(cfg.exit_on_head_loss == true);
    EXPECT(cfg.heartbeat_timeout_ms == 5000 || getenv("LIBCLUSTER_HEARTBEAT_MS"));
    EXPECT(cfg.handshake_timeout_ms == 5000 || getenv("LIBCLUSTER_HANDSHAKE_MS"));

    cluster_ctx *ctx = NULL;
    EXPECT_ST(cluster_init(NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_init(&cfg, NULL), CLUSTER_ERR_INVALID_ARGUMENT);

    cluster_config bad = cfg;
    bad.struct_size = 12;
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.topology = 7;
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.handshake_timeout_ms = 0;
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.dispatch = 9;
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.log_level = 5;
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.log_level = -2;
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.handler_threads = 0;
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.cookie = "";
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.cookie = "\xff\xfe not utf-8";
    EXPECT_ST(cluster_init(&bad, &ctx), CLUSTER_ERR_INVALID_ARGUMENT);
    bad = cfg;
    bad.listen_host = "256.300.1.1";
    cluster_status st = cluster_init(&bad, &ctx);
    EXPECTF(st != CLUSTER_OK, "listening on 256.300.1.1 succeeded");
    if (st == CLUSTER_OK) cluster_free(ctx);

    /* NULL config: defaults, a head. */
    ctx = NULL;
    REQUIRE_OK(cluster_init(NULL, &ctx));
    bool head = false;
    EXPECT_OK(cluster_is_head(ctx, &head));
    EXPECT(head);
    EXPECT_OK(cluster_free(ctx));

    /* A given cookie and listen host are used. */
    cluster_config c2 = cfg;
    c2.cookie = "my-secret-cookie";
    c2.listen_host = "127.0.0.1";
    c2.log_level = CLUSTER_LOG_OFF;
    REQUIRE_OK(cluster_init(&c2, &ctx));
    char buf[64];
    size_t len = 0;
    EXPECT_OK(cluster_cookie(ctx, buf, sizeof buf, &len));
    EXPECT(len == strlen("my-secret-cookie") && strcmp(buf, "my-secret-cookie") == 0);
    EXPECT_OK(cluster_address(ctx, buf, sizeof buf, &len));
    EXPECTF(strncmp(buf, "127.0.0.1:", 10) == 0 && len == strlen(buf), "address \"%s\"", buf);
    EXPECT_OK(cluster_free(ctx));

    /* Independent clusters in one process. */
    cluster_ctx *a = NULL, *b = NULL;
    REQUIRE_OK(cluster_init(NULL, &a));
    REQUIRE_OK(cluster_init(NULL, &b));
    EXPECT(a != b);
    char ca[128], cb[128];
    EXPECT_OK(cluster_cookie(a, ca, sizeof ca, &len));
    EXPECT_OK(cluster_cookie(b, cb, sizeof cb, &len));
    EXPECT(strcmp(ca, cb) != 0); /* random cookies */
    EXPECT(len > 8);
    EXPECT_OK(cluster_free(a));
    EXPECT_OK(cluster_free(b));
}

/* ---- a lone head: membership queries, small buffers, lifetime ---------- */

typedef cluster_status (*ids_fn)(cluster_ctx *, int32_t *, size_t, size_t *);

static void check_ids(const char *what, ids_fn fn, cluster_ctx *ctx, const int32_t *want, size_t nwant) {
    int32_t ids[8];
    size_t count = 999;
    EXPECTF(cluster_last_error() != NULL, "%s", what);
    EXPECT_OK(fn(ctx, ids, 8, &count));
    EXPECTF(count == nwant, "%s: count %zu, want %zu", what, count, nwant);
    for (size_t i = 0; i < nwant && i < count; i++) EXPECTF(ids[i] == want[i], "%s[%zu] = %d", what, i, ids[i]);
    /* NULL count */
    EXPECT_ST(fn(ctx, ids, 8, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    if (nwant > 0) {
        /* too small: the count is still reported, to size a retry */
        count = 0;
        EXPECT_ST(fn(ctx, ids, nwant - 1, &count), CLUSTER_ERR_BUFFER_TOO_SMALL);
        EXPECTF(count == nwant, "%s: count on BUFFER_TOO_SMALL %zu", what, count);
        count = 0;
        EXPECT_ST(fn(ctx, NULL, 0, &count), CLUSTER_ERR_BUFFER_TOO_SMALL);
        EXPECT(count == nwant);
        /* enough capacity but a NULL array */
        EXPECT_ST(fn(ctx, NULL, 8, &count), CLUSTER_ERR_INVALID_ARGUMENT);
    } else {
        count = 99;
        EXPECT_OK(fn(ctx, NULL, 0, &count));
        EXPECT(count == 0);
    }
}

struct serve_arg {
    cluster_ctx *ctx;
    _Atomic int done;
    cluster_status st;
};

static void *serve_thread(void *p) {
    struct serve_arg *a = p;
    a->st = cluster_serve(a->ctx);
    atomic_store(&a->done, 1);
    return NULL;
}

static void case_lone_head(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    bool head = false;
    EXPECT_OK(cluster_is_head(ctx, &head));
    EXPECT(head);
    EXPECT_ST(cluster_is_head(ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    int32_t id = 0;
    EXPECT_OK(cluster_myid(ctx, &id));
    EXPECT(id == CLUSTER_HEAD);
    EXPECT_ST(cluster_myid(ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    size_t n = 0;
    EXPECT_OK(cluster_nprocs(ctx, &n));
    EXPECT(n == 1);
    EXPECT_ST(cluster_nprocs(ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    n = 0;
    EXPECT_OK(cluster_nworkers(ctx, &n));
    EXPECT(n == 1); /* as Distributed: the head counts as the worker when alone */
    EXPECT_ST(cluster_nworkers(ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);

    const int32_t one[] = {1};
    check_ids("procs", cluster_procs, ctx, one, 1);
    check_ids("workers", cluster_workers, ctx, one, 1);
    check_ids("other_procs", cluster_other_procs, ctx, NULL, 0);
    check_ids("other_workers", cluster_other_workers, ctx, NULL, 0);

    /* cookie / address: small buffers report the needed length */
    char big[256];
    size_t len = 0, cookie_len = 0;
    EXPECT_OK(cluster_cookie(ctx, big, sizeof big, &cookie_len));
    EXPECT(cookie_len == strlen(big) && cookie_len > 0);
    char small[4] = {'x', 'x', 'x', 'x'};
    len = 0;
    EXPECT_ST(cluster_cookie(ctx, small, sizeof small, &len), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(len == cookie_len);
    len = 0;
    EXPECT_ST(cluster_cookie(ctx, NULL, 0, &len), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(len == cookie_len);
    /* exactly strlen: no room for the NUL */
    EXPECT_ST(cluster_cookie(ctx, big, cookie_len, &len), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT_OK(cluster_cookie(ctx, big, cookie_len + 1, &len));
    EXPECT(big[cookie_len] == '\0');
    EXPECT_ST(cluster_cookie(ctx, big, sizeof big, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_cookie(ctx, NULL, 100, &len), CLUSTER_ERR_INVALID_ARGUMENT);

    size_t alen = 0;
    EXPECT_OK(cluster_address(ctx, big, sizeof big, &alen));
    EXPECT(alen == strlen(big));
    EXPECTF(strchr(big, ':') != NULL, "address \"%s\"", big);
    EXPECT_ST(cluster_address(ctx, small, sizeof small, &len), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(len == alen);
    EXPECT_ST(cluster_address(ctx, big, sizeof big, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_address(ctx, NULL, 64, &len), CLUSTER_ERR_INVALID_ARGUMENT);

    /* ready is a no-op on the head */
    EXPECT_OK(cluster_ready(ctx));

    /* serve on the head blocks until the cluster is shut down */
    struct serve_arg sa = {.ctx = ctx, .done = 0, .st = -1};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, serve_thread, &sa) == 0);
    sleep_ms(100);
    EXPECT(atomic_load(&sa.done) == 0);
    EXPECT_OK(cluster_shutdown(ctx, 2000));
    int64_t t0 = now_ms();
    while (!atomic_load(&sa.done) && now_ms() - t0 < 3000) sleep_ms(5);
    REQUIRE(atomic_load(&sa.done));
    pthread_join(t, NULL);
    EXPECT_OK(sa.st);

    /* After shutdown: the handle is valid but the cluster is closed, and
     * "later calls fail with CLUSTER_ERR_SHUTDOWN" -- calls to this very
     * process included (KI-3, fixed). */
    EXPECT_OK(cluster_is_head(ctx, &head));
    int32_t ids[1];
    EXPECT_ST(cluster_addprocs(ctx, 1, NULL, ids), CLUSTER_ERR_SHUTDOWN);
    EXPECT_ST(cluster_remotecall(ctx, 2, "echo", NULL, 0, &(cluster_future *){NULL}), CLUSTER_ERR_SHUTDOWN);
    cluster_future *f = NULL;
    if (!EXPECT_ST(cluster_remotecall(ctx, 1, "echo", NULL, 0, &f), CLUSTER_ERR_SHUTDOWN)) {
        cluster_future_wait(f, 1000);
        cluster_future_free(f);
    }
    cluster_buffer out = {0};
    if (!EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "echo", NULL, 0, &out), CLUSTER_ERR_SHUTDOWN))
        cluster_buffer_free(&out);
    EXPECT_ST(cluster_remote_do(ctx, 1, "echo", NULL, 0), CLUSTER_ERR_SHUTDOWN);
    EXPECT_ST(cluster_remotecall(ctx, CLUSTER_ANY_WORKER, "echo", NULL, 0, &f), CLUSTER_ERR_SHUTDOWN);
    EXPECT_ST(cluster_everywhere(ctx, NULL, 0, "echo", NULL, 0, 1000), CLUSTER_ERR_SHUTDOWN);
    EXPECT_OK(cluster_shutdown(ctx, 100)); /* again: harmless */

    EXPECT_OK(cluster_free(ctx));
    EXPECT_ST(cluster_free(ctx), CLUSTER_ERR_BAD_HANDLE); /* double free */
    EXPECT_OK(cluster_free(NULL));
}

/* ---- bad handles everywhere --------------------------------------------- */

static cluster_call *g_stashed_call;
static _Atomic int g_probe_ran;

/* Runs misuse checks against a live call, then keeps the handle to check
 * it is refused once the handler has returned. */
static int32_t h_probe(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d = NULL;
    size_t n = 0;
    EXPECT_ST(cluster_call_args(call, NULL, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_call_args(call, &d, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_call_args(call, &d, &n));
    EXPECT(n == 3 && memcmp(d, "abc", 3) == 0);
    int32_t caller = 0;
    EXPECT_OK(cluster_call_caller(call, &caller));
    EXPECT(caller == 1);
    EXPECT_ST(cluster_call_caller(call, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    char name[16];
    size_t len = 0;
    EXPECT_OK(cluster_call_name(call, name, sizeof name, &len));
    EXPECT(len == 5 && strcmp(name, "probe") == 0);
    len = 0;
    EXPECT_ST(cluster_call_name(call, name, 3, &len), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(len == 5);
    EXPECT_ST(cluster_call_name(call, name, 5, &len), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT_ST(cluster_call_name(call, name, sizeof name, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    bool c = true;
    EXPECT_OK(cluster_call_cancelled(call, &c));
    EXPECT(!c);
    EXPECT_ST(cluster_call_cancelled(call, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    /* A non-deferred call is not the host's to free. */
    EXPECT_ST(cluster_call_free(call), CLUSTER_ERR_INVALID_ARGUMENT);
    /* reply with NULL data and a length */
    EXPECT_ST(cluster_call_reply(call, NULL, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_call_reply(call, (const uint8_t *)"pong", 4));
    /* Answered once, and gone with the answer (it was not deferred). */
    EXPECT_ST(cluster_call_reply(call, (const uint8_t *)"again", 5), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_call_fail(call, "late"), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_call_args(call, &d, &n), CLUSTER_ERR_BAD_HANDLE);
    g_stashed_call = call;
    atomic_store(&g_probe_ran, 1);
    return CLUSTER_OK;
}

static void expect_bad_ctx(cluster_ctx *ctx, const char *what) {
    harness_logf("bad ctx: %s", what);
    bool b;
    int32_t i32, ids[4] = {2, 3, 4, 5};
    size_t sz;
    char buf[64];
    int fd;
    cluster_future *f = NULL;
    cluster_buffer out = {0};
    cluster_event ev[4];
    cluster_future_ref ref = {1, 1};
    const cluster_status B = CLUSTER_ERR_BAD_HANDLE;
    EXPECT_ST(cluster_shutdown(ctx, 0), B);
    EXPECT_ST(cluster_ready(ctx), B);
    EXPECT_ST(cluster_serve(ctx), B);
    EXPECT_ST(cluster_is_head(ctx, &b), B);
    EXPECT_ST(cluster_cookie(ctx, buf, sizeof buf, &sz), B);
    EXPECT_ST(cluster_address(ctx, buf, sizeof buf, &sz), B);
    EXPECT_ST(cluster_myid(ctx, &i32), B);
    EXPECT_ST(cluster_nprocs(ctx, &sz), B);
    EXPECT_ST(cluster_nworkers(ctx, &sz), B);
    EXPECT_ST(cluster_procs(ctx, ids, 4, &sz), B);
    EXPECT_ST(cluster_workers(ctx, ids, 4, &sz), B);
    EXPECT_ST(cluster_other_procs(ctx, ids, 4, &sz), B);
    EXPECT_ST(cluster_other_workers(ctx, ids, 4, &sz), B);
    EXPECT_ST(cluster_addprocs(ctx, 1, NULL, ids), B);
    EXPECT_ST(cluster_rmprocs(ctx, ids, 1, 10), B);
    EXPECT_ST(cluster_set_topology(ctx, CLUSTER_TOPOLOGY_ALL_TO_ALL), B);
    EXPECT_ST(cluster_set_lifecycle_callback(ctx, NULL, NULL), B);
    EXPECT_ST(cluster_set_log_callback(ctx, NULL, NULL), B);
    EXPECT_ST(cluster_set_log_level(ctx, CLUSTER_LOG_ERROR), B);
    EXPECT_ST(cluster_register(ctx, "x", h_echo, NULL), B);
    EXPECT_ST(cluster_unregister(ctx, "x"), B);
    EXPECT_ST(cluster_remotecall(ctx, 1, "x", NULL, 0, &f), B);
    EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "x", NULL, 0, &out), B);
    EXPECT_ST(cluster_remotecall_wait(ctx, 1, "x", NULL, 0, &f), B);
    EXPECT_ST(cluster_remote_do(ctx, 1, "x", NULL, 0), B);
    EXPECT_ST(cluster_everywhere(ctx, NULL, 0, "x", NULL, 0, 100), B);
    EXPECT_ST(cluster_interrupt(ctx, ids, 1), B);
    EXPECT_ST(cluster_future_import(ctx, &ref, &f), B);
    EXPECT_ST(cluster_event_fd(ctx, &fd), B);
    EXPECT_ST(cluster_set_notify(ctx, NULL, NULL), B);
    EXPECT_ST(cluster_poll(ctx, ev, 4, &sz), B);
    if (ctx != NULL) EXPECT_ST(cluster_free(ctx), B); /* NULL is accepted by free */
}

static void expect_bad_future(cluster_future *f, const char *what) {
    harness_logf("bad future: %s", what);
    bool b;
    const uint8_t *d;
    size_t n;
    int32_t pid;
    const char *msg;
    uint64_t id;
    cluster_future_ref ref;
    const cluster_status B = CLUSTER_ERR_BAD_HANDLE;
    EXPECT_ST(cluster_future_wait(f, 0), B);
    EXPECT_ST(cluster_future_wait(f, CLUSTER_FOREVER), B);
    EXPECT_ST(cluster_future_isready(f, &b), B);
    EXPECT_ST(cluster_future_fetch(f, 0, &d, &n), B);
    EXPECT_ST(cluster_future_error(f, &pid, &msg), B);
    EXPECT_ST(cluster_future_id(f, &id), B);
    EXPECT_ST(cluster_future_pid(f, &pid), B);
    EXPECT_ST(cluster_future_export(f, &ref), B);
    if (f != NULL) EXPECT_ST(cluster_future_free(f), B);
}

static void expect_bad_call(cluster_call *c, const char *what) {
    harness_logf("bad call: %s", what);
    const uint8_t *d;
    size_t n;
    int32_t i;
    char buf[16];
    bool b;
    const cluster_status B = CLUSTER_ERR_BAD_HANDLE;
    EXPECT_ST(cluster_call_args(c, &d, &n), B);
    EXPECT_ST(cluster_call_caller(c, &i), B);
    EXPECT_ST(cluster_call_name(c, buf, sizeof buf, &n), B);
    EXPECT_ST(cluster_call_cancelled(c, &b), B);
    EXPECT_ST(cluster_call_reply(c, (const uint8_t *)"x", 1), B);
    EXPECT_ST(cluster_call_fail(c, "x"), B);
    EXPECT_ST(cluster_call_defer(c), B);
    if (c != NULL) EXPECT_ST(cluster_call_free(c), B);
}

static void case_handles(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    REQUIRE_OK(cluster_register(ctx, "echo", h_echo, NULL));
    REQUIRE_OK(cluster_register(ctx, "probe", h_probe, NULL));

    /* A live future, to cast to the wrong kinds. */
    cluster_future *live = NULL;
    REQUIRE_OK(cluster_remotecall(ctx, 1, "echo", (const uint8_t *)"hi", 2, &live));
    REQUIRE_OK(cluster_future_wait(live, 5000));

    expect_bad_ctx(NULL, "NULL");
    expect_bad_ctx(GARBAGE_CTX, "garbage pointer");
    expect_bad_ctx((cluster_ctx *)live, "a future cast to cluster_ctx*");
    /* The wrong-kind free above must not have freed the future. */
    const uint8_t *d;
    size_t n;
    EXPECT_OK(cluster_future_fetch(live, 0, &d, &n));
    EXPECT(n == 2 && memcmp(d, "hi", 2) == 0);

    expect_bad_future(NULL, "NULL");
    expect_bad_future(GARBAGE_FUT, "garbage pointer");
    expect_bad_future((cluster_future *)ctx, "a ctx cast to cluster_future*");
    EXPECT_OK(cluster_is_head(ctx, &(bool){false})); /* ctx survived */

    /* A call handle: misuse inside the handler, stale after it. */
    cluster_buffer out = {0};
    REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "probe", (const uint8_t *)"abc", 3, &out));
    EXPECT(out.len == 4 && memcmp(out.data, "pong", 4) == 0);
    EXPECT_OK(cluster_buffer_free(&out));
    /* The reply is sent before the handler returns: wait for its end. */
    for (int64_t t0 = now_ms(); !atomic_load(&g_probe_ran) && now_ms() - t0 < 3000;) sleep_ms(2);
    REQUIRE(atomic_load(&g_probe_ran));
    /* No wait for the handler's return: the answer itself released the handle. */
    expect_bad_call(NULL, "NULL");
    expect_bad_call(GARBAGE_CALL, "garbage pointer");
    expect_bad_call(g_stashed_call, "stale (handler returned)");
    expect_bad_call((cluster_call *)live, "a future cast to cluster_call*");
    expect_bad_future((cluster_future *)g_stashed_call, "a call cast to cluster_future*");
    EXPECT_OK(cluster_call_free(NULL));

    /* Buffers: double free through a copy; a forged handle. */
    REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "echo", (const uint8_t *)"xyz", 3, &out));
    cluster_buffer copy = out;
    EXPECT_OK(cluster_buffer_free(&out));
    EXPECT(out.data == NULL && out.len == 0 && out.handle == 0);
    EXPECT_OK(cluster_buffer_free(&out)); /* zeroed: accepted */
    EXPECT_ST(cluster_buffer_free(&copy), CLUSTER_ERR_BAD_HANDLE);
    cluster_buffer forged = {.data = NULL, .len = 0, .handle = (uint64_t)(uintptr_t)live};
    EXPECT_ST(cluster_buffer_free(&forged), CLUSTER_ERR_BAD_HANDLE); /* a future's handle */
    EXPECT_OK(cluster_future_isready(live, &(bool){false}));          /* still alive */
    forged.handle = 0x0400000100000063ULL; /* buffer kind, absurd slot */
    EXPECT_ST(cluster_buffer_free(&forged), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_buffer_free(NULL));

    /* Freed future: every use is refused; double free too. */
    cluster_future *dead = live;
    EXPECT_OK(cluster_future_free(live));
    expect_bad_future(dead, "freed");
    EXPECT_OK(cluster_future_free(NULL));
    /* A freed slot that was reused still refuses the old handle. */
    cluster_future *again = NULL;
    REQUIRE_OK(cluster_remotecall(ctx, 1, "echo", NULL, 0, &again));
    expect_bad_future(dead, "freed, slot possibly reused");
    EXPECT_OK(cluster_future_wait(again, 5000));
    EXPECT_OK(cluster_future_free(again));

    /* Freed ctx. */
    cluster_ctx *gone = ctx;
    EXPECT_OK(cluster_free(ctx));
    expect_bad_ctx(gone, "freed");
}

/* ---- calls within one process ------------------------------------------- */

static void case_local_calls(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    REQUIRE_OK(cluster_register(ctx, "echo", h_echo, NULL));
    REQUIRE_OK(cluster_register(ctx, "empty", h_empty, NULL));
    REQUIRE_OK(cluster_register(ctx, "io_error", h_io_error, NULL));
    REQUIRE_OK(cluster_register(ctx, "fail", h_fail, NULL));
    REQUIRE_OK(cluster_register(ctx, "sleep", h_sleep, NULL));

    /* register / unregister misuse */
    EXPECT_ST(cluster_register(ctx, NULL, h_echo, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_register(ctx, "", h_echo, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_register(ctx, "nohandler", NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_unregister(ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_unregister(ctx, "never-registered"), CLUSTER_ERR_INVALID_ARGUMENT);

    /* call misuse */
    cluster_future *f = NULL;
    cluster_buffer out = {0};
    EXPECT_ST(cluster_remotecall(ctx, 1, NULL, NULL, 0, &f), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall(ctx, 1, "", NULL, 0, &f), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall(ctx, 1, "echo", NULL, 5, &f), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall(ctx, 1, "echo", NULL, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall(ctx, -3, "echo", NULL, 0, &f), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall(ctx, 99, "echo", NULL, 0, &f), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT(cluster_last_error_pid() == 99);
    EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "echo", NULL, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall_fetch(ctx, 1, NULL, NULL, 0, &out), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall_fetch(ctx, 99, "echo", NULL, 0, &out), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_remotecall_wait(ctx, 1, "echo", NULL, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remotecall_wait(ctx, 99, "echo", NULL, 0, &f), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_remote_do(ctx, 1, NULL, NULL, 0), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remote_do(ctx, 1, "echo", NULL, 1), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remote_do(ctx, -1, "echo", NULL, 0), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_remote_do(ctx, 99, "echo", NULL, 0), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_everywhere(ctx, NULL, 0, NULL, NULL, 0, 1000), CLUSTER_ERR_INVALID_ARGUMENT);
    int32_t neg = -5;
    EXPECT_ST(cluster_everywhere(ctx, &neg, 1, "echo", NULL, 0, 1000), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_interrupt(ctx, NULL, 2), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_interrupt(ctx, NULL, 0));

    /* A call to the head itself, alone: runs on a library thread here. */
    const char msg[] = "hello";
    REQUIRE_OK(cluster_remotecall(ctx, 1, "echo", (const uint8_t *)msg, 5, &f));
    EXPECT_OK(cluster_future_wait(f, 5000));
    bool ready = false;
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(ready);
    EXPECT_ST(cluster_future_isready(f, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    const uint8_t *d = NULL;
    size_t n = 0;
    EXPECT_OK(cluster_future_fetch(f, 0, &d, &n));
    EXPECT(n == 5 && memcmp(d, "hello", 5) == 0);
    const uint8_t *d2 = NULL;
    EXPECT_OK(cluster_future_fetch(f, CLUSTER_FOREVER, &d2, &n));
    EXPECT(d2 == d); /* cached: same bytes */
    EXPECT_ST(cluster_future_fetch(f, 0, NULL, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_future_fetch(f, 0, &d, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    int32_t pid = -1;
    const char *emsg = NULL;
    EXPECT_OK(cluster_future_error(f, &pid, &emsg));
    EXPECT(pid == 0 && emsg != NULL && emsg[0] == '\0');
    EXPECT_OK(cluster_future_error(f, NULL, NULL));
    uint64_t id1 = 0, id2 = 0;
    EXPECT_OK(cluster_future_id(f, &id1));
    EXPECT_ST(cluster_future_id(f, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_future_pid(f, &pid));
    EXPECT(pid == 1);
    EXPECT_ST(cluster_future_pid(f, NULL), CLUSTER_ERR_INVALID_ARGUMENT);

    /* export / import on the owner itself */
    cluster_future_ref ref = {0, 0};
    EXPECT_ST(cluster_future_export(f, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_future_export(f, &ref));
    EXPECT(ref.owner == 1);
    cluster_future *imp = NULL;
    EXPECT_ST(cluster_future_import(ctx, NULL, &imp), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_future_import(ctx, &ref, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_future_free(f)); /* the exported reference keeps the value */
    REQUIRE_OK(cluster_future_import(ctx, &ref, &imp));
    EXPECT_OK(cluster_future_fetch(imp, 1000, &d, &n));
    EXPECT(n == 5 && memcmp(d, "hello", 5) == 0);
    EXPECT_OK(cluster_future_id(imp, &id2));
    EXPECT_OK(cluster_future_free(imp));
    /* Imported once and freed: the reference is released. */
    EXPECT_ST(cluster_future_import(ctx, &ref, &imp), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster_future_ref bogus = {.owner = 1, .id = 0xfffffff0ULL};
    EXPECT_ST(cluster_future_import(ctx, &bogus, &imp), CLUSTER_ERR_INVALID_ARGUMENT);
    bogus.owner = 77;
    EXPECT_ST(cluster_future_import(ctx, &bogus, &imp), CLUSTER_ERR_NO_SUCH_PROCESS);
    bogus.owner = -2;
    EXPECT_ST(cluster_future_import(ctx, &bogus, &imp), CLUSTER_ERR_INVALID_ARGUMENT);

    /* ANY_WORKER on a lone head is the head. */
    REQUIRE_OK(cluster_remotecall_fetch(ctx, CLUSTER_ANY_WORKER, "echo", (const uint8_t *)"any", 3, &out));
    EXPECT(out.len == 3 && memcmp(out.data, "any", 3) == 0);
    EXPECT_OK(cluster_buffer_free(&out));

    /* remotecall_wait: a completed future */
    REQUIRE_OK(cluster_remotecall_wait(ctx, 1, "echo", (const uint8_t *)"w", 1, &f));
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(ready);
    EXPECT_OK(cluster_future_fetch(f, 0, &d, &n));
    EXPECT(n == 1 && d[0] == 'w');
    EXPECT_OK(cluster_future_free(f));

    /* Empty args and empty replies */
    REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "empty", NULL, 0, &out));
    EXPECT(out.len == 0);
    EXPECT_OK(cluster_buffer_free(&out));

    /* Handler failures: status return, explicit fail, unregistered. */
    EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "io_error", NULL, 0, &out), CLUSTER_ERR_REMOTE);
    EXPECT(cluster_last_error_pid() == 1);
    EXPECT_LAST_ERROR_HAS("I/O error");
    EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "fail", NULL, 0, &out), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("boom from handler");
    EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "nope", NULL, 0, &out), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("nope");
    EXPECT(cluster_last_error_pid() == 1);
    EXPECT_ST(cluster_remotecall_wait(ctx, 1, "nope", NULL, 0, &f), CLUSTER_ERR_REMOTE);
    REQUIRE_OK(cluster_remotecall(ctx, 1, "fail", NULL, 0, &f));
    EXPECT_ST(cluster_future_wait(f, 5000), CLUSTER_ERR_REMOTE);
    EXPECT_ST(cluster_future_fetch(f, 0, &d, &n), CLUSTER_ERR_REMOTE);
    pid = 0;
    emsg = NULL;
    EXPECT_OK(cluster_future_error(f, &pid, &emsg));
    EXPECT(pid == 1);
    EXPECTF(emsg && strstr(emsg, "boom from handler"), "future error \"%s\"", emsg ? emsg : "(null)");
    EXPECT_OK(cluster_future_free(f));

    /* Unregister: later calls fail remotely. Re-register replaces. */
    EXPECT_OK(cluster_unregister(ctx, "fail"));
    EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "fail", NULL, 0, &out), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("not registered");
    EXPECT_OK(cluster_register(ctx, "fail", h_echo, NULL));
    EXPECT_OK(cluster_remotecall_fetch(ctx, 1, "fail", (const uint8_t *)"z", 1, &out));
    EXPECT(out.len == 1);
    EXPECT_OK(cluster_buffer_free(&out));

    /* Pending futures: TIMEOUT and NOT_READY, then interrupt ourselves. */
    int32_t ms = 5000;
    REQUIRE_OK(cluster_remotecall(ctx, 1, "sleep", (const uint8_t *)&ms, sizeof ms, &f));
    EXPECT_ST(cluster_future_wait(f, 0), CLUSTER_ERR_TIMEOUT);
    int64_t t0 = now_ms();
    EXPECT_ST(cluster_future_wait(f, 100), CLUSTER_ERR_TIMEOUT);
    int64_t waited = now_ms() - t0;
    EXPECTF(waited >= 90 && waited < 2000, "wait(100) took %" PRId64 " ms", waited);
    EXPECT_ST(cluster_future_fetch(f, 0, &d, &n), CLUSTER_ERR_TIMEOUT);
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(!ready);
    EXPECT_ST(cluster_future_error(f, &pid, &emsg), CLUSTER_ERR_NOT_READY);
    int32_t me = 1;
    t0 = now_ms();
    EXPECT_OK(cluster_interrupt(ctx, &me, 1));
    EXPECT_ST(cluster_future_wait(f, 3000), CLUSTER_ERR_INTERRUPTED);
    EXPECTF(now_ms() - t0 < 2000, "interrupt took %" PRId64 " ms", now_ms() - t0);
    EXPECT_OK(cluster_future_error(f, &pid, &emsg));
    EXPECT(pid == 1);
    EXPECT_OK(cluster_future_free(f));
    /* The interrupt does not stick: the next call runs to completion. */
    ms = 20;
    REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "sleep", (const uint8_t *)&ms, sizeof ms, &out));
    EXPECT(out.len == 5);
    EXPECT_OK(cluster_buffer_free(&out));

    /* everywhere on a lone head: just the head */
    EXPECT_OK(cluster_everywhere(ctx, NULL, 0, "echo", NULL, 0, 5000));
    int32_t only_head = 1;
    EXPECT_OK(cluster_everywhere(ctx, &only_head, 1, "echo", NULL, 0, 5000));
    EXPECT_OK(cluster_everywhere(ctx, NULL, 0, "echo", NULL, 0, CLUSTER_FOREVER));
    EXPECT_ST(cluster_everywhere(ctx, NULL, 0, "nope", NULL, 0, 5000), CLUSTER_ERR_COMPOSITE);
    EXPECT_LAST_ERROR_HAS("process 1");

    /* Large payload round trip through the local path. */
    size_t big = 4u << 20;
    uint8_t *buf = malloc(big);
    REQUIRE(buf != NULL);
    for (size_t i = 0; i < big; i++) buf[i] = (uint8_t)(i * 31u + 7u);
    REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "echo", buf, big, &out));
    EXPECT(out.len == big && memcmp(out.data, buf, big) == 0);
    EXPECT_OK(cluster_buffer_free(&out));
    free(buf);

    EXPECT_OK(cluster_shutdown(ctx, 1000));
    EXPECT_OK(cluster_free(ctx));
}

/* ---- deferred calls in one process -------------------------------------- */

struct deferred {
    cluster_call *call;
    bool reply;
};

static void *answer_later(void *p) {
    struct deferred *df = p;
    sleep_ms(50);
    if (df->reply) {
        const uint8_t *d;
        size_t n;
        EXPECT_OK(cluster_call_args(df->call, &d, &n)); /* still valid while deferred */
        uint8_t out[64];
        memcpy(out, "late:", 5);
        memcpy(out + 5, d, n < 59 ? n : 59);
        EXPECT_OK(cluster_call_reply(df->call, out, 5 + (n < 59 ? n : 59)));
        EXPECT_ST(cluster_call_reply(df->call, out, 1), CLUSTER_ERR_INVALID_ARGUMENT);
    }
    EXPECT_OK(cluster_call_free(df->call));
    EXPECT_ST(cluster_call_free(df->call), CLUSTER_ERR_BAD_HANDLE); /* double free */
    free(df);
    return NULL;
}

static int32_t h_defer(void *ud, cluster_call *call) {
    bool reply = ud != NULL;
    EXPECT_OK(cluster_call_defer(call));
    EXPECT_OK(cluster_call_defer(call)); /* idempotent */
    struct deferred *df = malloc(sizeof *df);
    df->call = call;
    df->reply = reply;
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, answer_later, df) == 0);
    pthread_detach(t);
    return CLUSTER_OK; /* deferred: returning does not answer */
}

static void case_defer_local(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    REQUIRE_OK(cluster_register(ctx, "defer_reply", h_defer, (void *)1));
    REQUIRE_OK(cluster_register(ctx, "defer_drop", h_defer, NULL));
    cluster_buffer out = {0};
    REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "defer_reply", (const uint8_t *)"abc", 3, &out));
    EXPECT(out.len == 8 && memcmp(out.data, "late:abc", 8) == 0);
    EXPECT_OK(cluster_buffer_free(&out));
    /* Freed without an answer: the caller gets an error, not a hang. */
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(ctx, 1, "defer_drop", NULL, 0, &f));
    EXPECT_ST(cluster_future_wait(f, 5000), CLUSTER_ERR_REMOTE);
    EXPECT_OK(cluster_future_free(f));
    sleep_ms(100); /* let the answering threads finish their checks */
    EXPECT_OK(cluster_free(ctx));
}

/* ---- a call handle once answered ---------------------------------------- */

/* Every use of a call that was not deferred, once answered, is
 * CLUSTER_ERR_BAD_HANDLE, never CLUSTER_ERR_INVALID_ARGUMENT: deterministic,
 * with no window between the answer and the handler's return. */
static void expect_answered(cluster_call *c) {
    const uint8_t *d;
    size_t n;
    int32_t i;
    char buf[16];
    bool b;
    const cluster_status B = CLUSTER_ERR_BAD_HANDLE;
    EXPECT_ST(cluster_call_args(c, &d, &n), B);
    EXPECT_ST(cluster_call_caller(c, &i), B);
    EXPECT_ST(cluster_call_name(c, buf, sizeof buf, &n), B);
    EXPECT_ST(cluster_call_cancelled(c, &b), B);
    EXPECT_ST(cluster_call_reply(c, (const uint8_t *)"x", 1), B);
    EXPECT_ST(cluster_call_fail(c, "x"), B);
    EXPECT_ST(cluster_call_defer(c), B);
    EXPECT_ST(cluster_call_free(c), B);
}

/* Answers (reply, or fail when the argument is "f"), then uses the call. */
static int32_t h_answer_then_use(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    EXPECT_OK(cluster_call_args(call, &d, &n));
    if (n == 1 && d[0] == 'f')
        EXPECT_OK(cluster_call_fail(call, "failed on purpose"));
    else
        EXPECT_OK(cluster_call_reply(call, (const uint8_t *)"done", 4));
    expect_answered(call);
    return CLUSTER_OK; /* answered already: this status is not an answer */
}

static void *reply_from_thread(void *p) {
    cluster_call *call = p;
    EXPECT_OK(cluster_call_reply(call, (const uint8_t *)"other", 5));
    expect_answered(call);
    return NULL;
}

static _Atomic int g_seen_live;

/* Another thread answers while the handler keeps using the call: the
 * handler sees it live, then gone, and nothing in between. */
static int32_t h_answer_elsewhere(void *ud, cluster_call *call) {
    (void)ud;
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, reply_from_thread, call) == 0);
    for (;;) {
        bool b = false;
        cluster_status st = cluster_call_cancelled(call, &b);
        if (st == CLUSTER_OK) {
            atomic_fetch_add(&g_seen_live, 1);
            continue;
        }
        EXPECT_ST(st, CLUSTER_ERR_BAD_HANDLE);
        break;
    }
    pthread_join(t, NULL);
    expect_answered(call);
    return CLUSTER_OK;
}

static void case_call_after_answer(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    REQUIRE_OK(cluster_register(ctx, "use_after", h_answer_then_use, NULL));
    REQUIRE_OK(cluster_register(ctx, "elsewhere", h_answer_elsewhere, NULL));
    int before = harness_failures;
    for (int i = 0; i < 300 && harness_failures == before; i++) {
        cluster_buffer out = {0};
        REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "use_after", (const uint8_t *)"r", 1, &out));
        EXPECT(out.len == 4 && memcmp(out.data, "done", 4) == 0);
        EXPECT_OK(cluster_buffer_free(&out));
        EXPECT_ST(cluster_remotecall_fetch(ctx, 1, "use_after", (const uint8_t *)"f", 1, &out), CLUSTER_ERR_REMOTE);
        EXPECT_LAST_ERROR_HAS("failed on purpose");
        REQUIRE_OK(cluster_remotecall_fetch(ctx, 1, "elsewhere", NULL, 0, &out));
        EXPECT(out.len == 5 && memcmp(out.data, "other", 5) == 0);
        EXPECT_OK(cluster_buffer_free(&out));
    }
    EXPECT(atomic_load(&g_seen_live) > 0); /* the handler did use the live call */
    EXPECT_OK(cluster_free(ctx));

    /* Host mode: the handler runs inside cluster_poll, same rule. */
    ctx = new_head(CLUSTER_DISPATCH_HOST);
    REQUIRE_OK(cluster_register(ctx, "use_after", h_answer_then_use, NULL));
    for (int i = 0; i < 50 && harness_failures == before; i++) {
        cluster_future *f = NULL;
        REQUIRE_OK(cluster_remotecall(ctx, 1, "use_after", (const uint8_t *)"r", 1, &f));
        bool ready = false;
        cluster_event ev[4];
        size_t count;
        for (int64_t t0 = now_ms(); !ready && now_ms() - t0 < 5000;) {
            EXPECT_OK(cluster_poll(ctx, ev, 4, &count));
            EXPECT_OK(cluster_future_isready(f, &ready));
        }
        const uint8_t *d;
        size_t n;
        EXPECT_OK(cluster_future_fetch(f, 0, &d, &n));
        EXPECT(n == 4 && memcmp(d, "done", 4) == 0);
        EXPECT_OK(cluster_future_free(f));
    }
    EXPECT_OK(cluster_free(ctx));
}

/* ---- launch errors (no worker ever becomes ready) ------------------------ */

static void case_launch_errors(void) {
    /* SIGPIPE keeps its default action: a worker that exits before reading
     * its cookie must not kill the head (KI-2, fixed). */
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.startup_timeout_ms = 1000;
    cluster_ctx *ctx = NULL;
    REQUIRE_OK(cluster_init(&cfg, &ctx));
    int32_t ids[2] = {0, 0};

    EXPECT_ST(cluster_addprocs(ctx, 1, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_addprocs(ctx, 0, NULL, NULL));
    EXPECT_OK(cluster_addprocs(ctx, 0, NULL, ids));

    cluster_launch_options o = {0};
    const char *badenv[] = {"NO_EQUALS_SIGN", NULL};
    o.program = "/bin/true";
    o.env = badenv;
    EXPECT_ST(cluster_addprocs(ctx, 1, &o, ids), CLUSTER_ERR_INVALID_ARGUMENT);

    memset(&o, 0, sizeof o);
    o.program = "/nonexistent/libcluster-no-such-program";
    EXPECT_ST(cluster_addprocs(ctx, 2, &o, ids), CLUSTER_ERR_LAUNCH);
    EXPECT_LAST_ERROR_HAS("libcluster-no-such-program");

    /* A program that exits at once: all or nothing, with the reason. */
    o.program = "/bin/true";
    int64_t t0 = now_ms();
    EXPECT_ST(cluster_addprocs(ctx, 2, &o, ids), CLUSTER_ERR_LAUNCH);
    EXPECT_LAST_ERROR_HAS("exited");
    for (int i = 0; i < 5; i++) EXPECT_ST(cluster_addprocs(ctx, 2, &o, ids), CLUSTER_ERR_LAUNCH);
    EXPECTF(now_ms() - t0 < 3000, "took %" PRId64 " ms", now_ms() - t0);

    /* A program that never connects: the startup timeout, then it is killed. */
    const char *args[] = {"30", NULL};
    o.program = "/bin/sleep";
    o.argv = args;
    t0 = now_ms();
    EXPECT_ST(cluster_addprocs(ctx, 1, &o, ids), CLUSTER_ERR_LAUNCH);
    int64_t took = now_ms() - t0;
    EXPECTF(took >= 900 && took < 8000, "startup timeout took %" PRId64 " ms", took);
    EXPECT_LAST_ERROR_HAS("worker");

    /* None of that left a process in the cluster. */
    size_t n = 0;
    EXPECT_OK(cluster_nprocs(ctx, &n));
    EXPECT(n == 1);

    /* rmprocs / set_topology misuse on the head */
    int32_t one = 1, ninety = 90;
    EXPECT_ST(cluster_rmprocs(ctx, &one, 1, 100), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_rmprocs(ctx, &ninety, 1, 100), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_rmprocs(ctx, NULL, 1, 100), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_rmprocs(ctx, NULL, 0, 100));
    EXPECT_ST(cluster_set_topology(ctx, 2), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_set_topology(ctx, -1), CLUSTER_ERR_INVALID_ARGUMENT);

    EXPECT_OK(cluster_shutdown(ctx, 2000));
    EXPECT_OK(cluster_free(ctx));
}

/* ---- set_topology on a fresh head ---------------------------------------- */

static void case_topology_args(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    EXPECT_OK(cluster_set_topology(ctx, CLUSTER_TOPOLOGY_MASTER_WORKER));
    EXPECT_OK(cluster_set_topology(ctx, CLUSTER_TOPOLOGY_ALL_TO_ALL));
    EXPECT_ST(cluster_set_topology(ctx, 2), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_free(ctx));
}

/* ---- log callback and level --------------------------------------------- */

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_log_text[4096];
static int g_log_count;
static int g_log_max_level;

static void on_log(void *ud, cluster_log_level level, const char *message) {
    int *tag = ud;
    EXPECT(tag != NULL && *tag == 4242);
    EXPECT(message != NULL);
    pthread_mutex_lock(&g_log_mu);
    g_log_count++;
    if ((int)level > g_log_max_level) g_log_max_level = (int)level;
    size_t used = strlen(g_log_text);
    snprintf(g_log_text + used, sizeof g_log_text - used, "%d:%s\n", (int)level, message ? message : "");
    pthread_mutex_unlock(&g_log_mu);
}

static bool log_has(const char *needle, int64_t within_ms) {
    int64_t t0 = now_ms();
    for (;;) {
        pthread_mutex_lock(&g_log_mu);
        bool has = strstr(g_log_text, needle) != NULL;
        pthread_mutex_unlock(&g_log_mu);
        if (has) return true;
        if (now_ms() - t0 > within_ms) return false;
        sleep_ms(5);
    }
}

static void case_log(void) {
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.log_level = CLUSTER_LOG_ERROR;
    cluster_ctx *ctx = NULL;
    REQUIRE_OK(cluster_init(&cfg, &ctx));
    static int tag = 4242;
    EXPECT_OK(cluster_set_log_callback(ctx, on_log, &tag));
    EXPECT_ST(cluster_set_log_level(ctx, 5), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_set_log_level(ctx, -1), CLUSTER_ERR_INVALID_ARGUMENT);
    /* remote_do failures are logged on the callee: here. */
    EXPECT_OK(cluster_remote_do(ctx, 1, "no_such_fn", NULL, 0));
    EXPECTF(log_has("no_such_fn", 3000), "log so far: %s", g_log_text);
    EXPECT(g_log_max_level == CLUSTER_LOG_ERROR);

    /* OFF: nothing more arrives. */
    EXPECT_OK(cluster_set_log_level(ctx, CLUSTER_LOG_OFF));
    pthread_mutex_lock(&g_log_mu);
    int before = g_log_count;
    pthread_mutex_unlock(&g_log_mu);
    EXPECT_OK(cluster_remote_do(ctx, 1, "silent_fn", NULL, 0));
    sleep_ms(200);
    pthread_mutex_lock(&g_log_mu);
    EXPECT(g_log_count == before);
    pthread_mutex_unlock(&g_log_mu);

    /* DEBUG: info and debug records flow too (the interrupt is logged at info). */
    EXPECT_OK(cluster_set_log_level(ctx, CLUSTER_LOG_DEBUG));
    EXPECT_OK(cluster_remote_do(ctx, 1, "loud_fn", NULL, 0));
    EXPECT(log_has("loud_fn", 3000));

    /* NULL restores stderr; the callback is no longer called. */
    EXPECT_OK(cluster_set_log_callback(ctx, NULL, NULL));
    EXPECT_OK(cluster_set_log_level(ctx, CLUSTER_LOG_OFF));
    EXPECT_OK(cluster_free(ctx));
}

/* ---- modes: host-only functions in threads mode and vice versa ---------- */

static _Atomic int g_notified;
static int on_notify(void *ud) {
    EXPECT(ud == (void *)&g_notified);
    atomic_fetch_add(&g_notified, 1);
    return 0;
}

static pthread_t g_main_thread;
static _Atomic int g_handler_on_main;

static int32_t h_echo_thread(void *ud, cluster_call *call) {
    if (pthread_equal(pthread_self(), g_main_thread)) atomic_fetch_add(&g_handler_on_main, 1);
    return h_echo(ud, call);
}

static void case_modes(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    int fd = -1;
    cluster_event ev[4];
    size_t count;
    EXPECT_ST(cluster_event_fd(ctx, &fd), CLUSTER_ERR_WRONG_MODE);
    EXPECT_ST(cluster_set_notify(ctx, on_notify, NULL), CLUSTER_ERR_WRONG_MODE);
    EXPECT_ST(cluster_poll(ctx, ev, 4, &count), CLUSTER_ERR_WRONG_MODE);
    EXPECT_ST(cluster_event_fd(ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_free(ctx));

    g_main_thread = pthread_self();
    ctx = new_head(CLUSTER_DISPATCH_HOST);
    EXPECT_ST(cluster_serve(ctx), CLUSTER_ERR_WRONG_MODE);
    EXPECT_OK(cluster_event_fd(ctx, &fd));
    EXPECT(fd >= 0);
    EXPECT_ST(cluster_event_fd(ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_set_notify(ctx, on_notify, &g_notified));
    EXPECT_ST(cluster_poll(ctx, ev, 4, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_poll(ctx, NULL, 4, &count), CLUSTER_ERR_INVALID_ARGUMENT);
    count = 99;
    EXPECT_OK(cluster_poll(ctx, NULL, 0, &count));
    EXPECT(count == 0);
    REQUIRE_OK(cluster_register(ctx, "echo", h_echo_thread, NULL));

    /* A call to ourselves runs only inside cluster_poll, on this thread. */
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_remotecall(ctx, 1, "echo", (const uint8_t *)"hm", 2, &f));
    uint64_t fid = 0;
    EXPECT_OK(cluster_future_id(f, &fid));
    sleep_ms(50);
    bool ready = true;
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(!ready); /* nobody polled yet */
    EXPECT(atomic_load(&g_notified) > 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    EXPECT(poll(&p, 1, 1000) == 1);
    bool got_ready_event = false;
    int64_t t0 = now_ms();
    while (!got_ready_event && now_ms() - t0 < 5000) {
        p.revents = 0;
        poll(&p, 1, 100);
        count = 0;
        EXPECT_OK(cluster_poll(ctx, ev, 4, &count));
        for (size_t i = 0; i < count; i++)
            if (ev[i].service == CLUSTER_SERVICE_CORE && ev[i].kind == CLUSTER_EVENT_FUTURE_READY && ev[i].id == fid) got_ready_event = true;
    }
    EXPECT(got_ready_event);
    EXPECT(atomic_load(&g_handler_on_main) == 1);
    const uint8_t *d;
    size_t n;
    EXPECT_OK(cluster_future_fetch(f, 0, &d, &n));
    EXPECT(n == 2 && memcmp(d, "hm", 2) == 0);
    EXPECT_OK(cluster_future_free(f));

    /* Events beyond cap stay queued and the fd stays readable. */
    cluster_future *fs[3];
    for (int i = 0; i < 3; i++) REQUIRE_OK(cluster_remotecall(ctx, 1, "echo", NULL, 0, &fs[i]));
    /* First poll runs the handlers; their completions queue 3 events. */
    EXPECT_OK(cluster_poll(ctx, NULL, 0, &count));
    EXPECT(count == 0);
    int total = 0;
    t0 = now_ms();
    while (total < 3 && now_ms() - t0 < 3000) {
        p.revents = 0;
        if (poll(&p, 1, 200) != 1) continue;
        count = 0;
        EXPECT_OK(cluster_poll(ctx, ev, 1, &count)); /* one at a time */
        EXPECT(count <= 1);
        total += (int)count;
    }
    EXPECT(total == 3);
    for (int i = 0; i < 3; i++) EXPECT_OK(cluster_future_free(fs[i]));

    EXPECT_OK(cluster_set_notify(ctx, NULL, NULL));
    EXPECT_OK(cluster_free(ctx));
}

/* ---- main ---------------------------------------------------------------- */

/* ---- pools, pmap, worker sets, task queues on a lone head ------------------ */

static int32_t h_fail_odd(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_call_args(call, &d, &n);
    int32_t x = payload_i32(d, n);
    if (x % 2) return cluster_call_fail(call, "odd on purpose");
    int32_t y = x * 10;
    return cluster_call_reply(call, (const uint8_t *)&y, sizeof y);
}

/* (lo, hi[, k]) as int64s -> k * sum(lo..=hi). */
static int32_t h_range_sum(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *d;
    size_t n;
    cluster_call_args(call, &d, &n);
    if (n < 16) return cluster_call_fail(call, "want two int64s");
    int64_t lo, hi, k = 1, s = 0;
    memcpy(&lo, d, 8);
    memcpy(&hi, d + 8, 8);
    if (n >= 24) memcpy(&k, d + 16, 8);
    for (int64_t i = lo; i <= hi; i++) s += i;
    s *= k;
    return cluster_call_reply(call, (const uint8_t *)&s, sizeof s);
}

static _Atomic size_t g_prog_calls, g_prog_last_done, g_prog_total;
static void on_progress(void *ud, size_t done, size_t failed, size_t total) {
    (void)failed;
    EXPECT(ud == (void *)&g_prog_calls);
    atomic_fetch_add(&g_prog_calls, 1);
    atomic_store(&g_prog_last_done, done);
    atomic_store(&g_prog_total, total);
}

static _Atomic int g_retry_asked;
static bool never_retry(void *ud, size_t index, uint32_t attempt, int32_t status, int32_t pid, const char *message) {
    (void)ud;
    (void)index;
    (void)attempt;
    (void)pid;
    EXPECT(status == CLUSTER_ERR_REMOTE && strstr(message, "odd") != NULL);
    atomic_fetch_add(&g_retry_asked, 1);
    return false;
}

static _Atomic int g_task_cb;
static int64_t g_task_order[16];
static void on_task(void *ud, uint64_t task, int32_t pid, int32_t status, const uint8_t *data, size_t len) {
    (void)ud;
    (void)data;
    (void)len;
    EXPECT(pid == 1 && status == CLUSTER_OK);
    int k = atomic_fetch_add(&g_task_cb, 1);
    if (k < 16) g_task_order[k] = (int64_t)task;
}

static double prio_by_id(void *ud, const cluster_task_info *info) {
    (void)ud;
    EXPECT(info->queue == CLUSTER_QUEUE_PID || info->queue == CLUSTER_QUEUE_ANY || info->queue == CLUSTER_QUEUE_HOST);
    EXPECT(info->name != NULL && strcmp(info->name, "sleep") == 0 && info->host != NULL);
    EXPECT(info->queued_at > 1e9 && !info->all);
    return -(double)info->id; /* newest first */
}

static bool keep_none(void *ud, const cluster_task_info *info) {
    (void)info;
    (*(int *)ud)++;
    return false;
}

static void expect_bad_pool(cluster_pool *p, const char *what) {
    harness_logf("bad pool: %s", what);
    const cluster_status B = CLUSTER_ERR_BAD_HANDLE;
    int32_t pid;
    size_t n;
    bool b;
    cluster_future *f = NULL;
    cluster_buffer out = {0};
    EXPECT_ST(cluster_pool_push(p, 1), B);
    EXPECT_ST(cluster_pool_put(p, 1), B);
    EXPECT_ST(cluster_pool_take(p, 0, &pid), B);
    EXPECT_ST(cluster_pool_take_async(p, &f), B);
    EXPECT_ST(cluster_pool_length(p, &n), B);
    EXPECT_ST(cluster_pool_isready(p, &b), B);
    EXPECT_ST(cluster_pool_workers(p, &pid, 1, &n), B);
    EXPECT_ST(cluster_pool_remotecall(p, "echo", NULL, 0, &f), B);
    EXPECT_ST(cluster_pool_remotecall_fetch(p, "echo", NULL, 0, &out), B);
    EXPECT_ST(cluster_pool_remotecall_wait(p, "echo", NULL, 0, &f), B);
    EXPECT_ST(cluster_pool_remote_do(p, "echo", NULL, 0), B);
    if (p != NULL) EXPECT_ST(cluster_pool_free(p), B);
}

static void expect_bad_pmap(cluster_pmap *m, const char *what) {
    harness_logf("bad pmap: %s", what);
    const cluster_status B = CLUSTER_ERR_BAD_HANDLE;
    size_t n;
    const uint8_t *d;
    int32_t pid;
    const char *msg;
    cluster_future *f = NULL;
    EXPECT_ST(cluster_pmap_wait(m, 0), B);
    EXPECT_ST(cluster_pmap_future(m, &f), B);
    EXPECT_ST(cluster_pmap_length(m, &n), B);
    EXPECT_ST(cluster_pmap_batch_size(m, &n), B);
    EXPECT_ST(cluster_pmap_result(m, 0, &d, &n), B);
    EXPECT_ST(cluster_pmap_error(m, 0, &pid, &msg), B);
    EXPECT_ST(cluster_pmap_progress(m, &n, &n), B);
    EXPECT_ST(cluster_pmap_cancel(m), B);
    if (m != NULL) EXPECT_ST(cluster_pmap_free(m), B);
}

static void case_pools(void) {
    cluster_ctx *ctx = new_head(CLUSTER_DISPATCH_THREADS);
    REQUIRE_OK(cluster_register(ctx, "echo", h_echo, NULL));
    REQUIRE_OK(cluster_register(ctx, "fail_odd", h_fail_odd, NULL));
    REQUIRE_OK(cluster_register(ctx, "range_sum", h_range_sum, NULL));
    REQUIRE_OK(cluster_register(ctx, "sleep", h_sleep, NULL));

    /* splitrange: Distributed's, 1:11 over 3 is 1:4, 5:8, 9:11. */
    cluster_range r[8];
    size_t count = 0;
    EXPECT_OK(cluster_splitrange((cluster_range){1, 11}, 3, r, 8, &count));
    EXPECT(count == 3 && r[0].first == 1 && r[0].last == 4 && r[1].first == 5 && r[1].last == 8 && r[2].first == 9 && r[2].last == 11);
    EXPECT_ST(cluster_splitrange((cluster_range){1, 11}, 3, r, 2, &count), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(count == 3);
    EXPECT_OK(cluster_splitrange((cluster_range){1, 2}, 4, r, 8, &count));
    EXPECT(count == 2 && r[1].first == 2 && r[1].last == 2);
    EXPECT_OK(cluster_splitrange((cluster_range){5, 4}, 4, NULL, 0, &count));
    EXPECT(count == 0);
    EXPECT_ST(cluster_splitrange((cluster_range){1, 2}, 0, r, 8, &count), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_splitrange((cluster_range){1, 2}, 2, r, 8, NULL), CLUSTER_ERR_INVALID_ARGUMENT);

    /* The default pool of a lone head is the head itself. */
    cluster_pool *dp = NULL;
    REQUIRE_OK(cluster_pool_default(ctx, &dp));
    size_t n = 0;
    EXPECT_OK(cluster_pool_length(dp, &n));
    EXPECT(n == 1);
    int32_t ids[4];
    EXPECT_OK(cluster_pool_workers(dp, ids, 4, &count));
    EXPECT(count == 1 && ids[0] == 1);
    bool ready = false;
    EXPECT_OK(cluster_pool_isready(dp, &ready));
    EXPECT(ready);
    int32_t w = 0;
    EXPECT_OK(cluster_pool_take(dp, 1000, &w));
    EXPECT(w == 1);
    EXPECT_OK(cluster_pool_isready(dp, &ready));
    EXPECT(!ready);
    EXPECT_ST(cluster_pool_take(dp, 20, &w), CLUSTER_ERR_TIMEOUT);
    cluster_future *tf = NULL;
    REQUIRE_OK(cluster_pool_take_async(dp, &tf));
    EXPECT_ST(cluster_future_wait(tf, 20), CLUSTER_ERR_TIMEOUT);
    EXPECT_OK(cluster_pool_put(dp, 1));
    const uint8_t *d;
    EXPECT_OK(cluster_future_fetch(tf, 5000, &d, &n));
    EXPECT(n == 4 && payload_i32(d, n) == 1);
    EXPECT_OK(cluster_future_free(tf));
    EXPECT_OK(cluster_pool_put(dp, 1));
    EXPECT_OK(cluster_pool_put(dp, 1)); /* free already: ignored */
    EXPECT_OK(cluster_pool_put(dp, 9)); /* not a member: ignored */
    EXPECT_ST(cluster_pool_take(dp, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);

    /* Calls on a pool give the worker back when they complete. */
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_pool_remotecall(dp, "echo", (const uint8_t *)"hi", 2, &f));
    EXPECT_OK(cluster_future_fetch(f, 5000, &d, &n));
    EXPECT(n == 2 && memcmp(d, "hi", 2) == 0);
    EXPECT_OK(cluster_future_free(f));
    cluster_buffer out = {0};
    EXPECT_OK(cluster_pool_remotecall_fetch(dp, "echo", (const uint8_t *)"abc", 3, &out));
    EXPECT(out.len == 3);
    EXPECT_OK(cluster_buffer_free(&out));
    REQUIRE_OK(cluster_pool_remotecall_wait(dp, "echo", NULL, 0, &f));
    EXPECT_OK(cluster_future_isready(f, &ready));
    EXPECT(ready);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_ST(cluster_pool_remotecall_wait(dp, "fail_odd", (const uint8_t *)&(int32_t){3}, 4, &f), CLUSTER_ERR_REMOTE);
    EXPECT_OK(cluster_pool_remote_do(dp, "echo", NULL, 0));
    EXPECT_OK(cluster_pool_take(dp, 5000, &w)); /* back after each call */
    EXPECT_OK(cluster_pool_put(dp, w));

    /* An explicit pool; pushing; an empty pool fails its takers. */
    cluster_pool *p = NULL;
    REQUIRE_OK(cluster_pool_new(ctx, NULL, 0, &p));
    EXPECT_ST(cluster_pool_take(p, 0, &w), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_LAST_ERROR_HAS("no active worker available");
    REQUIRE_OK(cluster_pool_take_async(p, &tf));
    EXPECT_ST(cluster_future_wait(tf, 1000), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_OK(cluster_future_free(tf));
    EXPECT_ST(cluster_pool_push(p, 77), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_OK(cluster_pool_push(p, 1));
    EXPECT_OK(cluster_pool_push(p, 1)); /* a member already */
    EXPECT_OK(cluster_pool_length(p, &n));
    EXPECT(n == 1);
    EXPECT_ST(cluster_pool_new(ctx, (const int32_t[]){-3}, 1, &p), CLUSTER_ERR_INVALID_ARGUMENT);

    /* pmap over the head: results in order, per-element errors, progress. */
    cluster_bytes items[10];
    int32_t xs[10];
    for (int i = 0; i < 10; i++) {
        xs[i] = i;
        items[i] = (cluster_bytes){(const uint8_t *)&xs[i], sizeof xs[i]};
    }
    cluster_pmap_options o;
    REQUIRE_OK(cluster_pmap_options_init(&o));
    EXPECT(o.batch_size == 1 && o.max_in_flight == 16 && !o.on_error && o.retries == 0);
    o.on_error = true;
    o.progress = on_progress;
    o.progress_user_data = (void *)&g_prog_calls;
    cluster_pmap *m = NULL;
    REQUIRE_OK(cluster_pmap_async(ctx, NULL, "fail_odd", items, 10, &o, &m));
    EXPECT_OK(cluster_pmap_wait(m, 10000));
    EXPECT_OK(cluster_pmap_length(m, &n));
    EXPECT(n == 10);
    EXPECT_OK(cluster_pmap_batch_size(m, &n));
    EXPECT(n == 1);
    for (int i = 0; i < 10; i++) {
        cluster_status st = cluster_pmap_result(m, (size_t)i, &d, &n);
        int32_t pid = -1;
        const char *msg = NULL;
        EXPECT_OK(cluster_pmap_error(m, (size_t)i, &pid, &msg));
        if (i % 2) {
            EXPECT(st == CLUSTER_ERR_REMOTE && cluster_last_error_pid() == 1);
            EXPECT(pid == 1 && msg && strstr(msg, "odd on purpose"));
        } else {
            EXPECT(st == CLUSTER_OK && n == 4 && payload_i32(d, n) == i * 10);
            EXPECT(pid == 0 && msg && msg[0] == '\0');
        }
    }
    size_t done = 0, failed = 0;
    EXPECT_OK(cluster_pmap_progress(m, &done, &failed));
    EXPECT(done == 10 && failed == 5);
    EXPECT(atomic_load(&g_prog_calls) >= 1 && atomic_load(&g_prog_last_done) == 10 && atomic_load(&g_prog_total) == 10);
    EXPECT_ST(cluster_pmap_result(m, 10, &d, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_pmap_error(m, 10, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_pmap_result(m, 0, NULL, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    f = NULL;
    REQUIRE_OK(cluster_pmap_future(m, &f));
    EXPECT_OK(cluster_future_wait(f, 0));
    EXPECT_OK(cluster_future_free(f));
    EXPECT_OK(cluster_pmap_cancel(m)); /* ended: nothing happens */
    EXPECT_OK(cluster_pmap_wait(m, 0));
    cluster_pmap *gone = m;
    EXPECT_OK(cluster_pmap_free(m));
    expect_bad_pmap(gone, "freed");

    /* Without on_error the first failure ends the map; the check may refuse retries. */
    REQUIRE_OK(cluster_pmap_options_init(&o));
    uint32_t delays[2] = {0, 1};
    o.retry_delays_ms = delays;
    o.retries = 2;
    o.retry_check = never_retry;
    EXPECT_ST(cluster_pmap_run(ctx, dp, "fail_odd", items, 4, &o, 10000, &m), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("element 2");
    EXPECT(atomic_load(&g_retry_asked) >= 1);
    EXPECT_ST(cluster_pmap_result(m, 1, &d, &n), CLUSTER_ERR_NOT_READY);
    EXPECT_OK(cluster_pmap_free(m));
    /* Auto batches, an empty map, bad options. */
    REQUIRE_OK(cluster_pmap_options_init(&o));
    o.batch_size = CLUSTER_BATCH_AUTO;
    EXPECT_OK(cluster_pmap_run(ctx, NULL, "echo", items, 10, &o, 10000, &m));
    EXPECT_OK(cluster_pmap_batch_size(m, &n));
    EXPECT(n == 3); /* 10 elements, 1 worker: 10 / 3 */
    EXPECT_OK(cluster_pmap_result(m, 9, &d, &n));
    EXPECT(n == 4 && payload_i32(d, n) == 9);
    EXPECT_OK(cluster_pmap_free(m));
    EXPECT_OK(cluster_pmap_run(ctx, NULL, "echo", NULL, 0, NULL, 10000, &m));
    EXPECT_OK(cluster_pmap_free(m));
    o.struct_size = 3;
    EXPECT_ST(cluster_pmap_async(ctx, NULL, "echo", items, 1, &o, &m), CLUSTER_ERR_INVALID_ARGUMENT);
    REQUIRE_OK(cluster_pmap_options_init(&o));
    o.retries = 1; /* without delays */
    EXPECT_ST(cluster_pmap_async(ctx, NULL, "echo", items, 1, &o, &m), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_pmap_async(ctx, NULL, "echo", NULL, 3, NULL, &m), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_pmap_async(ctx, NULL, NULL, items, 1, NULL, &m), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_pmap_async(ctx, NULL, "echo", items, 1, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    /* An empty pool: the map fails clearly. */
    EXPECT_OK(cluster_pool_free(p));
    REQUIRE_OK(cluster_pool_new(ctx, NULL, 0, &p));
    EXPECT_ST(cluster_pmap_run(ctx, p, "echo", items, 3, NULL, 10000, &m), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_LAST_ERROR_HAS("no active worker available");
    EXPECT_OK(cluster_pmap_free(m));
    /* Cancelling a map under way. */
    int32_t ms = 30;
    cluster_bytes slow[20];
    for (int i = 0; i < 20; i++) slow[i] = (cluster_bytes){(const uint8_t *)&ms, 4};
    REQUIRE_OK(cluster_pmap_async(ctx, NULL, "sleep", slow, 20, NULL, &m));
    sleep_ms(50);
    EXPECT_OK(cluster_pmap_cancel(m));
    EXPECT_ST(cluster_pmap_wait(m, 5000), CLUSTER_ERR_INTERRUPTED);
    EXPECT_OK(cluster_pmap_free(m));

    /* @distributed on the head: static split and dynamic chunks. */
    REQUIRE_OK(cluster_distributed_async(ctx, NULL, "range_sum", (cluster_range){1, 11}, 0, NULL, 0, NULL, &m));
    EXPECT_OK(cluster_pmap_wait(m, 10000));
    EXPECT_OK(cluster_pmap_length(m, &n));
    EXPECT(n == 1); /* one worker: one chunk */
    EXPECT_OK(cluster_pmap_result(m, 0, &d, &n));
    int64_t sum = 0;
    if (n == 8) memcpy(&sum, d, 8);
    EXPECT(sum == 66);
    EXPECT_OK(cluster_pmap_free(m));
    int64_t k = 3;
    REQUIRE_OK(cluster_distributed_async(ctx, NULL, "range_sum", (cluster_range){1, 100}, 7, (const uint8_t *)&k, 8, NULL, &m));
    EXPECT_OK(cluster_pmap_wait(m, 10000));
    EXPECT_OK(cluster_pmap_length(m, &n));
    EXPECT(n == 15);
    sum = 0;
    for (size_t i = 0; i < 15; i++) {
        int64_t part = 0;
        if (cluster_pmap_result(m, i, &d, &n) == CLUSTER_OK && n == 8) memcpy(&part, d, 8);
        sum += part;
    }
    EXPECT(sum == 3 * 5050);
    EXPECT_OK(cluster_pmap_free(m));

    /* Worker sets over the head. */
    cluster_workerset *ws = NULL;
    REQUIRE_OK(cluster_workerset_new(ctx, (const int32_t[]){1}, 1, CLUSTER_WS_MODE_RR, &ws));
    EXPECT_OK(cluster_workerset_remotecall_fetch(ws, "echo", (const uint8_t *)"rr", 2, &out));
    EXPECT(out.len == 2);
    EXPECT_OK(cluster_buffer_free(&out));
    EXPECT_OK(cluster_workerset_free(ws));
    REQUIRE_OK(cluster_workerset_new(ctx, (const int32_t[]){1}, 1, CLUSTER_WS_MODE_FF, &ws));
    cluster_future *a = NULL, *b = NULL;
    REQUIRE_OK(cluster_workerset_remotecall(ws, "sleep", (const uint8_t *)&ms, 4, &a));
    REQUIRE_OK(cluster_workerset_remotecall(ws, "echo", (const uint8_t *)"q", 1, &b)); /* queued */
    int32_t fp = -1;
    EXPECT_OK(cluster_future_pid(b, &fp));
    EXPECT(fp == 0); /* not known while queued */
    EXPECT_OK(cluster_future_wait(b, 5000));
    EXPECT_OK(cluster_future_isready(a, &ready));
    EXPECT(ready); /* FIFO: the first call was done first */
    EXPECT_OK(cluster_future_free(a));
    EXPECT_OK(cluster_future_free(b));
    REQUIRE_OK(cluster_workerset_remotecall_wait(ws, "echo", NULL, 0, &a));
    EXPECT_OK(cluster_future_free(a));
    EXPECT_OK(cluster_workerset_free(ws));
    EXPECT_ST(cluster_workerset_new(ctx, (const int32_t[]){1}, 1, 7, &ws), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_workerset_new(ctx, NULL, 0, CLUSTER_WS_MODE_RR, &ws), CLUSTER_ERR_INVALID_ARGUMENT);

    /* A task queue over the head: priorities, re-prioritising, dequeueing. */
    cluster_taskqueue *tq = NULL;
    REQUIRE_OK(cluster_taskqueue_new(ctx, &tq));
    cluster_task_spec s;
    REQUIRE_OK(cluster_task_spec_init(&s));
    EXPECT(s.target == CLUSTER_TARGET_ANY && s.priority > 1e300);
    s.name = "sleep";
    int32_t long_ms = 200, short_ms = 1;
    s.args = (const uint8_t *)&long_ms;
    s.len = 4;
    s.callback = on_task;
    uint64_t blocker = 0, t1 = 0, t2 = 0, t3 = 0, t4 = 0;
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &blocker, NULL));
    s.args = (const uint8_t *)&short_ms;
    s.priority = 5;
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &t1, NULL));
    s.priority = 1;
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &t2, NULL));
    s.target = CLUSTER_TARGET_PIDS;
    s.pids = (const int32_t[]){1};
    s.npids = 1;
    s.priority = 3;
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &t3, NULL));
    cluster_future *tf4 = NULL;
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &t4, &tf4));
    size_t queued = 0, running = 0;
    EXPECT_OK(cluster_taskqueue_length(tq, &queued, &running));
    EXPECT(queued == 4 && running == 1);
    EXPECT_OK(cluster_taskqueue_set_priority(tq, t1, 0.5)); /* t1 now first */
    bool removed = false;
    EXPECT_OK(cluster_taskqueue_dequeue(tq, t4, &removed));
    EXPECT(removed);
    EXPECT_OK(cluster_taskqueue_dequeue(tq, t4, &removed));
    EXPECT(!removed);
    EXPECT_ST(cluster_future_wait(tf4, 1000), CLUSTER_ERR_INTERRUPTED);
    EXPECT_OK(cluster_future_free(tf4));
    EXPECT_ST(cluster_taskqueue_set_priority(tq, t4, 1), CLUSTER_ERR_INVALID_ARGUMENT);
    for (int64_t t0 = now_ms(); atomic_load(&g_task_cb) < 4 && now_ms() - t0 < 5000;) sleep_ms(2);
    EXPECT(atomic_load(&g_task_cb) == 4);
    EXPECT(g_task_order[0] == (int64_t)blocker && g_task_order[1] == (int64_t)t1 && g_task_order[2] == (int64_t)t2 &&
           g_task_order[3] == (int64_t)t3);
    /* set_priorities and dequeue_if see every queued entry. */
    s.target = CLUSTER_TARGET_ANY;
    s.priority = 1;
    s.args = (const uint8_t *)&long_ms;
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &blocker, NULL));
    s.args = (const uint8_t *)&short_ms;
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &t1, NULL));
    REQUIRE_OK(cluster_taskqueue_queue(tq, &s, &t2, NULL));
    EXPECT_OK(cluster_taskqueue_set_priorities(tq, prio_by_id, NULL));
    int seen = 0;
    count = 0;
    EXPECT_OK(cluster_taskqueue_dequeue_if(tq, keep_none, &seen, &count));
    EXPECT(seen == 2 && count == 2);
    EXPECT_ST(cluster_taskqueue_set_priorities(tq, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_taskqueue_dequeue_if(tq, NULL, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    /* execute_worker_task; prep_remotes; host targets. */
    s.callback = NULL;
    s.name = "echo";
    s.args = (const uint8_t *)"task";
    s.len = 4;
    EXPECT_OK(cluster_taskqueue_execute(tq, &s, 10000, &out));
    EXPECT(out.len == 4 && memcmp(out.data, "task", 4) == 0);
    EXPECT_OK(cluster_buffer_free(&out));
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    const char *hosts[] = {host};
    s.target = CLUSTER_TARGET_HOSTS;
    s.hosts = hosts;
    s.nhosts = 1;
    uint64_t id = 0;
    EXPECT_ST(cluster_taskqueue_queue(tq, &s, &id, NULL), CLUSTER_ERR_INVALID_ARGUMENT); /* before prep_remotes */
    cluster_future *pf = NULL;
    REQUIRE_OK(cluster_taskqueue_prep_remotes_async(tq, false, &pf));
    EXPECT_OK(cluster_future_wait(pf, 5000));
    EXPECT_OK(cluster_future_free(pf));
    EXPECT_OK(cluster_taskqueue_prep_remotes(tq, true, 5000));
    EXPECT_OK(cluster_taskqueue_num_remotes(tq, &n));
    EXPECT(n == 1);
    EXPECT_OK(cluster_taskqueue_execute(tq, &s, 10000, &out));
    EXPECT_OK(cluster_buffer_free(&out));
    hosts[0] = "no-such-host.example";
    EXPECT_ST(cluster_taskqueue_queue(tq, &s, &id, NULL), CLUSTER_ERR_NO_SUCH_PROCESS);
    s.target = CLUSTER_TARGET_PIDS;
    s.pids = (const int32_t[]){42};
    EXPECT_ST(cluster_taskqueue_queue(tq, &s, &id, NULL), CLUSTER_ERR_NO_SUCH_PROCESS);
    s.target = 9;
    EXPECT_ST(cluster_taskqueue_queue(tq, &s, &id, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    s.target = CLUSTER_TARGET_ALL;
    EXPECT_OK(cluster_taskqueue_execute(tq, &s, 10000, &out)); /* once on the one worker: no value */
    EXPECT(out.len == 0);
    EXPECT_OK(cluster_buffer_free(&out));
    s.struct_size = 1;
    EXPECT_ST(cluster_taskqueue_queue(tq, &s, &id, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_taskqueue_free(tq));

    /* Handles of these kinds: NULL, garbage, wrong kind, freed. */
    expect_bad_pool(NULL, "NULL");
    expect_bad_pool((cluster_pool *)(uintptr_t)0x00005555deadbee0ULL, "garbage pointer");
    expect_bad_pool((cluster_pool *)ctx, "a ctx cast to cluster_pool*");
    expect_bad_pmap(NULL, "NULL");
    expect_bad_pmap((cluster_pmap *)dp, "a pool cast to cluster_pmap*");
    cluster_pool *freed = dp;
    EXPECT_OK(cluster_pool_free(dp));
    expect_bad_pool(freed, "freed");
    EXPECT_OK(cluster_pool_free(p));
    EXPECT_OK(cluster_pool_free(NULL));
    EXPECT_OK(cluster_pmap_free(NULL));
    EXPECT_OK(cluster_workerset_free(NULL));
    EXPECT_OK(cluster_taskqueue_free(NULL));
    EXPECT_ST(cluster_workerset_free((cluster_workerset *)ctx), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_taskqueue_free((cluster_taskqueue *)freed), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_workerset_remotecall(NULL, "echo", NULL, 0, &f), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_taskqueue_queue(NULL, &s, &id, NULL), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_free(ctx));
}

struct test_case {
    const char *name;
    void (*fn)(void);
};

static const struct test_case cases[] = {
    {"version", case_version},
    {"status", case_status},
    {"config", case_config},
    {"lone_head", case_lone_head},
    {"handles", case_handles},
    {"local_calls", case_local_calls},
    {"defer_local", case_defer_local},
    {"call_after_answer", case_call_after_answer},
    {"launch_errors", case_launch_errors},
    {"topology_args", case_topology_args},
    {"log", case_log},
    {"modes", case_modes},
    {"pools", case_pools},
};

int main(int argc, char **argv) {
    harness_name = argc > 1 ? argv[1] : "test_api";
    harness_watchdog(40);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) continue;
        harness_logf("case %s", cases[i].name);
        cases[i].fn();
    }
    return harness_finish();
}
