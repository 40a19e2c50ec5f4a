/*
 * Shared memory and server tasks from C (cluster_shm_*, cluster_stasks_*;
 * tests/shm.rs and tests/stasks.rs are the Rust twins). Shared memory:
 * a segment created here is mapped by every local process (or a given
 * set) and sees their writes; one a worker creates is mapped here; its
 * type and dimensions travel with it; unlink (blocking and as a future)
 * removes it everywhere; a segment larger than /dev/shm fails at creation
 * leaving nothing; a dead cluster's segment is an orphan the cleaner
 * removes while a live one's stays; misuse gives errors, never crashes.
 * Server tasks: a task per worker whose state slot its calls keep,
 * mismatched argument counts refused, a plain call is no task's, stop
 * frees the state through a function of the user's.
 *
 * Usage: test_shm <case>. The binary is its own worker.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>

static cluster_ctx *g_ctx;
static int32_t g_me;
static char g_prefix[64];

/* args: "<name>" NUL "<prefix>" NUL, then an offset (u64) and, for a poke,
 * the bytes to write. */
static int32_t parse(cluster_call *call, cluster_shm **s, uint64_t *off, const uint8_t **rest, size_t *nrest) {
    const uint8_t *a;
    size_t n;
    if (cluster_call_args(call, &a, &n) != CLUSTER_OK) return -1;
    const char *name = (const char *)a;
    size_t l1 = strnlen(name, n);
    if (l1 == n) return cluster_call_fail(call, "bad args");
    const char *prefix = name + l1 + 1;
    size_t l2 = strnlen(prefix, n - l1 - 1);
    size_t used = l1 + 1 + l2 + 1;
    if (used + 8 > n) return cluster_call_fail(call, "bad args");
    memcpy(off, a + used, 8);
    *rest = a + used + 8;
    *nrest = n - used - 8;
    if (cluster_shm_find(g_ctx, name, prefix, s) != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    return 0;
}

/* Replies 8 bytes at the offset. */
static int32_t h_peek(void *ud, cluster_call *call) {
    (void)ud;
    cluster_shm *s = NULL;
    uint64_t off = 0;
    const uint8_t *rest;
    size_t nrest;
    int32_t rc = parse(call, &s, &off, &rest, &nrest);
    if (!s) return rc;
    void *data = NULL;
    size_t len = 0;
    cluster_shm_data(s, &data, &len);
    rc = off + 8 <= len ? cluster_call_reply(call, (const uint8_t *)data + off, 8) : cluster_call_fail(call, "out of range");
    cluster_shm_free(s);
    return rc;
}

static int32_t h_poke(void *ud, cluster_call *call) {
    (void)ud;
    cluster_shm *s = NULL;
    uint64_t off = 0;
    const uint8_t *rest;
    size_t nrest;
    int32_t rc = parse(call, &s, &off, &rest, &nrest);
    if (!s) return rc;
    void *data = NULL;
    size_t len = 0;
    cluster_shm_data(s, &data, &len);
    if (off + nrest <= len) {
        memcpy((uint8_t *)data + off, rest, nrest);
        rc = cluster_call_reply(call, NULL, 0);
    } else {
        rc = cluster_call_fail(call, "out of range");
    }
    cluster_shm_free(s);
    return rc;
}

/* Creates "byworker" (prefix in the args) of 64 u8 here. */
static int32_t h_create(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a;
    size_t n;
    cluster_call_args(call, &a, &n);
    char prefix[64] = {0};
    memcpy(prefix, a, n < sizeof prefix - 1 ? n : sizeof prefix - 1);
    uint64_t dims[1] = {64};
    cluster_shm_spec spec = {"byworker", prefix, CLUSTER_ELEM_U8, 1, dims, 1};
    cluster_shm *s = NULL;
    if (cluster_shm_create(g_ctx, &spec, NULL, 0, &s) != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    cluster_shm_free(s);
    return cluster_call_reply(call, NULL, 0);
}

/* A server task's function: counts its calls in the task's state slot
 * (allocated on the first) and replies (task index, count). */
static int32_t h_stk_count(void *ud, cluster_call *call) {
    (void)ud;
    size_t task = 0, len = 0;
    const uint8_t *args = NULL;
    void **state = NULL;
    if (cluster_stask_state(call, &task, &args, &len, &state) != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    if (*state == NULL) *state = calloc(1, sizeof(int32_t));
    int32_t *n = *state;
    (*n)++;
    int32_t out[3] = {(int32_t)task, *n, (int32_t)len};
    return cluster_call_reply(call, (const uint8_t *)out, sizeof out);
}

/* stop_stasks' freeing function. */
static int32_t h_stk_free(void *ud, cluster_call *call) {
    (void)ud;
    void **state = NULL;
    if (cluster_stask_state(call, NULL, NULL, NULL, &state) != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    free(*state);
    *state = NULL;
    return cluster_call_reply(call, NULL, 0);
}

static size_t args_of(uint8_t *buf, const char *name, const char *prefix, uint64_t off, const void *data, size_t n) {
    size_t l1 = strlen(name) + 1, l2 = strlen(prefix) + 1;
    memcpy(buf, name, l1);
    memcpy(buf + l1, prefix, l2);
    memcpy(buf + l1 + l2, &off, 8);
    if (n) memcpy(buf + l1 + l2 + 8, data, n);
    return l1 + l2 + 8 + n;
}

static cluster_status peek_on(int32_t pid, const char *name, uint64_t off, uint64_t *out) {
    uint8_t a[256];
    size_t n = args_of(a, name, g_prefix, off, NULL, 0);
    cluster_buffer b = {0};
    cluster_status st = cluster_remotecall_fetch(g_ctx, pid, "shm_peek", a, n, &b);
    if (st == CLUSTER_OK) {
        REQUIRE(b.len == 8);
        memcpy(out, b.data, 8);
    }
    cluster_buffer_free(&b);
    return st;
}

static void poke_on(int32_t pid, const char *name, uint64_t off, uint64_t v) {
    uint8_t a[256];
    size_t n = args_of(a, name, g_prefix, off, &v, 8);
    cluster_buffer b = {0};
    EXPECT_OK(cluster_remotecall_fetch(g_ctx, pid, "shm_poke", a, n, &b));
    cluster_buffer_free(&b);
}

/* Whether /dev/shm has an entry containing `needle`. */
static bool in_dev_shm(const char *needle) {
    DIR *d = opendir("/dev/shm");
    REQUIRE(d != NULL);
    bool found = false;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strstr(e->d_name, needle)) found = true;
    closedir(d);
    return found;
}

static void case_basic(void) {
    int32_t ids[2];
    REQUIRE_OK(cluster_addprocs(g_ctx, 2, NULL, ids));
    /* 16 x 4 int64 created here, mapped by both workers. */
    uint64_t dims[2] = {16, 4};
    cluster_shm_spec spec = {"svar", g_prefix, CLUSTER_ELEM_I64, 8, dims, 2};
    cluster_shm *s = NULL;
    REQUIRE_OK(cluster_shm_create(g_ctx, &spec, NULL, 0, &s));
    int64_t *a = NULL;
    size_t len = 0;
    REQUIRE_OK(cluster_shm_data(s, (void **)&a, &len));
    EXPECT(len == 16 * 4 * 8);
    int32_t et = -1;
    uint32_t es = 0;
    uint64_t got_dims[4] = {0};
    size_t nd = 0;
    EXPECT_OK(cluster_shm_info(s, &et, &es, got_dims, 4, &nd));
    EXPECT(et == CLUSTER_ELEM_I64 && es == 8 && nd == 2 && got_dims[0] == 16 && got_dims[1] == 4);
    char os_name[256];
    size_t nl = 0;
    EXPECT_OK(cluster_shm_os_name(s, os_name, sizeof os_name, &nl));
    EXPECT(nl == strlen(os_name) && strncmp(os_name, "lcshm.", 6) == 0 && strstr(os_name, g_prefix) && in_dev_shm(os_name));
    EXPECT_ST(cluster_shm_os_name(s, os_name, 4, &nl), CLUSTER_ERR_BUFFER_TOO_SMALL);
    a[5] = 555;
    uint64_t v = 0;
    for (int i = 0; i < 2; i++) {
        EXPECT_OK(peek_on(ids[i], "svar", 5 * 8, &v));
        EXPECT(v == 555);
    }
    poke_on(ids[1], "svar", 63 * 8, 6363);
    EXPECT(a[63] == 6363);
    EXPECT_OK(peek_on(ids[0], "svar", 63 * 8, &v));
    EXPECT(v == 6363);
    /* The same name again is refused. */
    cluster_shm *dup = NULL;
    EXPECT_ST(cluster_shm_create(g_ctx, &spec, NULL, 0, &dup), CLUSTER_ERR_INVALID_ARGUMENT);
    /* A worker's segment is mapped here. */
    cluster_buffer b = {0};
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, ids[0], "shm_create", (const uint8_t *)g_prefix, strlen(g_prefix), &b));
    cluster_buffer_free(&b);
    cluster_shm *w = NULL;
    REQUIRE_OK(cluster_shm_find(g_ctx, "byworker", g_prefix, &w));
    poke_on(ids[1], "byworker", 8, 77);
    uint8_t *wb = NULL;
    REQUIRE_OK(cluster_shm_data(w, (void **)&wb, &len));
    uint64_t w8;
    memcpy(&w8, wb + 8, 8);
    EXPECT(len == 64 && w8 == 77);
    /* As a future: exists here at once, mapped everywhere once complete. */
    uint64_t two = 2;
    cluster_shm_spec spec2 = {"fut", g_prefix, CLUSTER_ELEM_F32, 4, &two, 1};
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_shm_create_async(g_ctx, &spec2, NULL, 0, &f));
    cluster_shm *fs = NULL;
    EXPECT_OK(cluster_shm_find(g_ctx, "fut", g_prefix, &fs));
    EXPECT_OK(cluster_future_wait(f, 10000));
    cluster_future_free(f);
    EXPECT_OK(peek_on(ids[1], "fut", 0, &v));
    cluster_shm_free(fs);
    /* An explicit set: only worker ids[1] maps it. */
    uint64_t one = 8;
    cluster_shm_spec spec3 = {"only", g_prefix, CLUSTER_ELEM_OPAQUE, 1, &one, 1};
    cluster_shm *o = NULL;
    REQUIRE_OK(cluster_shm_create(g_ctx, &spec3, &ids[1], 1, &o));
    EXPECT_OK(peek_on(ids[1], "only", 0, &v));
    EXPECT_ST(peek_on(ids[0], "only", 0, &v), CLUSTER_ERR_REMOTE);
    cluster_shm_free(o);
    /* No live cluster's segment is an orphan. */
    cluster_buffer ob = {0};
    size_t count = 9;
    EXPECT_OK(cluster_shm_orphans(g_prefix, &ob, &count));
    EXPECT(count == 0 && ob.len == 0);
    cluster_buffer_free(&ob);
    EXPECT_OK(cluster_shm_remove_orphans(g_prefix, &ob, &count));
    EXPECT(count == 0);
    cluster_buffer_free(&ob);
    /* Unlink: gone from /dev/shm and every process; held memory stays. */
    EXPECT_OK(cluster_shm_unlink(g_ctx, "svar", g_prefix));
    REQUIRE_OK(cluster_shm_unlink_async(g_ctx, "byworker", g_prefix, &f));
    EXPECT_OK(cluster_future_wait(f, 10000));
    cluster_future_free(f);
    EXPECT_ST(cluster_shm_unlink(g_ctx, "fut", NULL), CLUSTER_ERR_NOT_FOUND);
    EXPECT_OK(cluster_shm_unlink(g_ctx, "fut", g_prefix));
    EXPECT_OK(cluster_shm_unlink(g_ctx, "only", g_prefix));
    EXPECT(!in_dev_shm(os_name) && !in_dev_shm(g_prefix));
    EXPECT_ST(peek_on(ids[0], "svar", 0, &v), CLUSTER_ERR_REMOTE);
    cluster_shm *gone = NULL;
    EXPECT_ST(cluster_shm_find(g_ctx, "svar", g_prefix, &gone), CLUSTER_ERR_NOT_FOUND);
    EXPECT_ST(cluster_shm_unlink(g_ctx, "svar", g_prefix), CLUSTER_ERR_NOT_FOUND);
    EXPECT(a[63] == 6363);
    EXPECT_OK(cluster_shm_free(s));
    EXPECT_OK(cluster_shm_free(w));
}

static void case_full(void) {
    struct statvfs sv;
    REQUIRE(statvfs("/dev/shm", &sv) == 0);
    uint64_t dims[1] = {(uint64_t)sv.f_blocks * sv.f_frsize + (64u << 20)};
    cluster_shm_spec spec = {"huge", g_prefix, CLUSTER_ELEM_U8, 1, dims, 1};
    cluster_shm *s = NULL;
    int64_t t0 = now_ms();
    EXPECT_ST(cluster_shm_create(g_ctx, &spec, NULL, 0, &s), CLUSTER_ERR_IO);
    EXPECT_LAST_ERROR_HAS("no room in /dev/shm");
    EXPECT(now_ms() - t0 < 5000 && s == NULL);
    EXPECT(!in_dev_shm(g_prefix));
}

static void case_orphans(void) {
    /* A segment stamped with this process's pid but another start time:
     * the head it names is gone. */
    char name[200];
    snprintf(name, sizeof name, "/lcshm.%d-1-7.%d.%s.dead", (int)getpid(), (int)getpid(), g_prefix);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    REQUIRE(fd >= 0);
    close(fd);
    uint64_t one = 16;
    cluster_shm_spec spec = {"alive", g_prefix, CLUSTER_ELEM_U8, 1, &one, 1};
    cluster_shm *s = NULL;
    REQUIRE_OK(cluster_shm_create(g_ctx, &spec, NULL, 0, &s));
    cluster_buffer b = {0};
    size_t count = 0;
    EXPECT_OK(cluster_shm_orphans(g_prefix, &b, &count));
    EXPECT(count == 1 && b.len == strlen(name) && strcmp((const char *)b.data, name + 1) == 0);
    cluster_buffer_free(&b);
    EXPECT_OK(cluster_shm_orphans("some-other-prefix", &b, &count));
    EXPECT(count == 0);
    cluster_buffer_free(&b);
    EXPECT_OK(cluster_shm_orphans(NULL, &b, NULL));
    EXPECT(b.len >= strlen(name));
    cluster_buffer_free(&b);
    EXPECT_OK(cluster_shm_remove_orphans(g_prefix, &b, &count));
    EXPECT(count == 1 && strcmp((const char *)b.data, name + 1) == 0);
    cluster_buffer_free(&b);
    EXPECT(!in_dev_shm(name + 1) && in_dev_shm("alive"));
    EXPECT_OK(cluster_shm_unlink(g_ctx, "alive", g_prefix));
    EXPECT_OK(cluster_shm_free(s));
}

static void case_misuse(void) {
    cluster_shm *s = NULL;
    uint64_t one = 4;
    cluster_shm_spec ok = {"m", g_prefix, CLUSTER_ELEM_U8, 1, &one, 1};
    EXPECT_ST(cluster_shm_create(g_ctx, NULL, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_shm_create(g_ctx, &ok, NULL, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_shm_create(NULL, &ok, NULL, 0, &s), CLUSTER_ERR_BAD_HANDLE);
    const char *bad_names[] = {"", "a.b", "a/b", "sp ace"};
    for (size_t i = 0; i < 4; i++) {
        cluster_shm_spec b = ok;
        b.name = bad_names[i];
        EXPECT_ST(cluster_shm_create(g_ctx, &b, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    }
    cluster_shm_spec b = ok;
    b.name = NULL;
    EXPECT_ST(cluster_shm_create(g_ctx, &b, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    b = ok;
    b.prefix = "x/y";
    EXPECT_ST(cluster_shm_create(g_ctx, &b, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    b = ok;
    b.elem_type = 99;
    EXPECT_ST(cluster_shm_create(g_ctx, &b, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    b = ok;
    b.elem_size = 0;
    EXPECT_ST(cluster_shm_create(g_ctx, &b, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    b = ok;
    b.dims = NULL;
    EXPECT_ST(cluster_shm_create(g_ctx, &b, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    uint64_t over[2] = {UINT64_MAX, 2};
    b = ok;
    b.dims = over;
    b.ndims = 2;
    EXPECT_ST(cluster_shm_create(g_ctx, &b, NULL, 0, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    int32_t nobody = 99;
    EXPECT_ST(cluster_shm_create(g_ctx, &ok, &nobody, 1, &s), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT(!in_dev_shm(g_prefix));
    EXPECT_ST(cluster_shm_find(g_ctx, NULL, NULL, &s), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_shm_unlink(g_ctx, "m", g_prefix), CLUSTER_ERR_NOT_FOUND);
    /* Freed, stale and wrong-kind handles. */
    REQUIRE_OK(cluster_shm_create(g_ctx, &ok, NULL, 0, &s));
    void *data = NULL;
    size_t len = 0;
    EXPECT_ST(cluster_shm_data(s, NULL, &len), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_shm_info(s, NULL, NULL, NULL, 0, NULL));
    EXPECT_OK(cluster_shm_free(s));
    EXPECT_ST(cluster_shm_data(s, &data, &len), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_shm_free(s), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_shm_free(NULL));
    EXPECT_ST(cluster_shm_data((cluster_shm *)g_ctx, &data, &len), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_free((cluster_dict *)s), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_shm_orphans(NULL, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_shm_unlink(g_ctx, "m", g_prefix));
}

static void case_stasks(void) {
    int32_t ids[2];
    REQUIRE_OK(cluster_addprocs(g_ctx, 2, NULL, ids));
    cluster_stasks *h = NULL;
    REQUIRE_OK(cluster_stasks_start(g_ctx, NULL, 0, &h));
    size_t n = 0, np = 0;
    int32_t pids[4] = {0};
    EXPECT_OK(cluster_stasks_count(h, &n));
    EXPECT_OK(cluster_stasks_pids(h, pids, 4, &np));
    EXPECT(n == 2 && np == 2 && pids[0] == ids[0] && pids[1] == ids[1]);
    cluster_bytes args[2] = {{(const uint8_t *)"a", 1}, {(const uint8_t *)"bcd", 3}};
    for (int32_t round = 1; round <= 3; round++) {
        cluster_buffer res[2] = {{0}};
        cluster_status st[2] = {CLUSTER_ERR_IO, CLUSTER_ERR_IO};
        REQUIRE_OK(cluster_stasks_pmap(h, "stk_count", args, 2, res, st));
        for (int i = 0; i < 2; i++) {
            EXPECT(st[i] == CLUSTER_OK && res[i].len == 12);
            if (res[i].len == 12) {
                int32_t v[3];
                memcpy(v, res[i].data, 12);
                EXPECTF(v[0] == i && v[1] == round && v[2] == (int32_t)args[i].len, "task %d round %d: %d %d %d", i, round, v[0], v[1], v[2]);
            }
            cluster_buffer_free(&res[i]);
        }
    }
    /* One argument per task, no more, no less. */
    cluster_buffer res1[1] = {{0}};
    cluster_status st1[1];
    EXPECT_ST(cluster_stasks_pmap(h, "stk_count", args, 1, res1, st1), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("1 argument(s) for 2 server task(s)");
    /* As futures. */
    cluster_future *fs[2] = {NULL, NULL};
    REQUIRE_OK(cluster_stasks_pmap_async(h, "stk_count", args, 2, fs));
    for (int i = 0; i < 2; i++) {
        const uint8_t *d = NULL;
        size_t l = 0;
        EXPECT_OK(cluster_future_fetch(fs[i], 10000, &d, &l));
        int32_t v[3] = {0};
        if (l == 12) memcpy(v, d, 12);
        EXPECT(v[1] == 4);
        cluster_future_free(fs[i]);
    }
    /* A plain call is no server task's. */
    cluster_buffer b = {0};
    EXPECT_ST(cluster_remotecall_fetch(g_ctx, ids[0], "stk_count", NULL, 0, &b), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("not a server task");
    /* Stop frees every state (ASan would see a leak otherwise). */
    EXPECT_OK(cluster_stasks_stop(h, "stk_free"));
    cluster_buffer res[2] = {{0}};
    cluster_status st[2];
    REQUIRE_OK(cluster_stasks_pmap(h, "stk_count", args, 2, res, st));
    EXPECT(st[0] == CLUSTER_ERR_REMOTE && st[1] == CLUSTER_ERR_REMOTE);
    EXPECT(res[0].len > 0 && memmem(res[0].data, res[0].len, "not a server task", 17) != NULL);
    cluster_buffer_free(&res[0]);
    cluster_buffer_free(&res[1]);
    EXPECT_OK(cluster_stasks_free(h));
    EXPECT_ST(cluster_stasks_count(h, &n), CLUSTER_ERR_BAD_HANDLE);
    /* Started as a future on one worker; stopped as one. */
    cluster_future *started = NULL;
    REQUIRE_OK(cluster_stasks_start_async(g_ctx, &ids[1], 1, &h, &started));
    EXPECT_OK(cluster_future_wait(started, 10000));
    cluster_future_free(started);
    cluster_buffer r1[1] = {{0}};
    REQUIRE_OK(cluster_stasks_pmap(h, "stk_count", args, 1, r1, st1));
    EXPECT(st1[0] == CLUSTER_OK);
    cluster_buffer_free(&r1[0]);
    cluster_future *stopped = NULL;
    REQUIRE_OK(cluster_stasks_stop_async(h, "stk_free", &stopped));
    EXPECT_OK(cluster_future_wait(stopped, 10000));
    cluster_future_free(stopped);
    EXPECT_OK(cluster_stasks_free(h));
    EXPECT_OK(cluster_stasks_free(NULL));
    /* Misuse. */
    EXPECT_ST(cluster_stasks_start(g_ctx, NULL, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_stask_state(NULL, NULL, NULL, NULL, NULL), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_stasks_pmap_async((cluster_stasks *)g_ctx, "f", args, 2, fs), CLUSTER_ERR_BAD_HANDLE);
}

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {{"basic", case_basic}, {"full", case_full}, {"orphans", case_orphans}, {"misuse", case_misuse}, {"stasks", case_stasks}};

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "";
    harness_name = which;
    void (*fn)(void) = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (strcmp(which, cases[i].name) == 0) fn = cases[i].fn;
    if (!fn && getenv("LIBCLUSTER_HEAD") == NULL) {
        fprintf(stderr, "usage: %s basic|full|orphans|misuse|stasks\n", argv[0]);
        return 2;
    }
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.startup_timeout_ms = 20000;
    REQUIRE_OK(cluster_init(&cfg, &g_ctx));
    REQUIRE_OK(cluster_myid(g_ctx, &g_me));
    REQUIRE_OK(cluster_register(g_ctx, "shm_peek", h_peek, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "shm_poke", h_poke, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "shm_create", h_create, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "stk_count", h_stk_count, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "stk_free", h_stk_free, NULL));
    bool head = false;
    REQUIRE_OK(cluster_is_head(g_ctx, &head));
    if (!head) {
        harness_name = "worker";
        harness_watchdog(60);
        cluster_status st = cluster_serve(g_ctx);
        if (st != CLUSTER_OK && st != CLUSTER_ERR_HEAD_LOST) harness_logf("serve: %s", cluster_last_error());
        cluster_free(g_ctx);
        return harness_failures ? 1 : 0;
    }
    snprintf(g_prefix, sizeof g_prefix, "ctest%d%s", (int)getpid(), which);
    harness_watchdog(50);
    harness_logf("case %s", which);
    fn();
    EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    EXPECT_OK(cluster_free(g_ctx));
    EXPECT(!in_dev_shm(g_prefix));
    return harness_finish();
}
