/*
 * ClusterUtils' core from C (tests/clusterutils.rs is the Rust twin):
 * hosts travel with membership (a worker under another host name is told
 * apart, every worker knows every host), remote variables set, read and
 * transformed where they live, the all-gather over 2 to 6 processes and
 * its failures (a participant killed mid-exchange, a timeout), the parts
 * layout walked with cluster_parts_next, misuse giving errors.
 *
 * The `ssh` case starts workers on namespaced hosts over SSH
 * (cluster_addprocs_ssh; scripts/test-hosts.sh builds the hosts, found
 * through TEST_HOSTS_SCRIPT) and skips, passing, where they cannot run.
 *
 * Usage: test_clusterutils <case>. The binary is its own worker.
 */
#define _GNU_SOURCE
#include "harness.h"

static cluster_ctx *g_ctx;
static int32_t g_me;

/* Copies the parts of `b` into pids/parts (at most `cap`); returns the count. */
static size_t walk(const uint8_t *data, size_t len, int32_t *pids, const uint8_t **parts, size_t *lens, size_t cap) {
    size_t off = 0, n = 0;
    int32_t pid;
    const uint8_t *p;
    size_t l;
    cluster_status st;
    while ((st = cluster_parts_next(data, len, &off, &pid, &p, &l)) == CLUSTER_OK) {
        if (n < cap) {
            pids[n] = pid;
            parts[n] = p;
            lens[n] = l;
        }
        n++;
    }
    EXPECT(st == CLUSTER_ERR_NOT_FOUND);
    return n;
}

/* args: tag (u64), timeout_ms (i64), delay_ms (u32), n (u32), n pids (i32),
 * then this process's block. Runs the all-gather here; replies its result. */
static int32_t h_ag(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a;
    size_t n;
    cluster_call_args(call, &a, &n);
    uint64_t tag;
    int64_t timeout;
    uint32_t delay, np;
    if (n < 24) return cluster_call_fail(call, "bad args");
    memcpy(&tag, a, 8);
    memcpy(&timeout, a + 8, 8);
    memcpy(&delay, a + 16, 4);
    memcpy(&np, a + 20, 4);
    if (np > 16 || n < 24 + 4 * (size_t)np) return cluster_call_fail(call, "bad args");
    int32_t pids[16];
    memcpy(pids, a + 24, 4 * (size_t)np);
    size_t used = 24 + 4 * (size_t)np;
    sleep_ms(delay);
    /* Half the callers use the future, half the blocking form. */
    cluster_buffer out = {0};
    cluster_status st;
    if (g_me % 2) {
        cluster_future *f = NULL;
        st = cluster_allgather_async(g_ctx, pids, np, tag, a + used, n - used, timeout, &f);
        if (st == CLUSTER_OK) {
            const uint8_t *d;
            size_t l;
            st = cluster_future_fetch(f, 30000, &d, &l);
            int32_t rc = st == CLUSTER_OK ? cluster_call_reply(call, d, l) : cluster_call_fail(call, cluster_last_error());
            cluster_future_free(f);
            return rc;
        }
    } else {
        st = cluster_allgather(g_ctx, pids, np, tag, a + used, n - used, timeout, &out);
    }
    if (st != CLUSTER_OK) {
        char msg[600];
        int32_t pid = cluster_last_error_pid();
        snprintf(msg, sizeof msg, "%d %d %s", (int)st, (int)pid, cluster_last_error());
        return cluster_call_fail(call, msg);
    }
    int32_t rc = cluster_call_reply(call, out.data, out.len);
    cluster_buffer_free(&out);
    return rc;
}

static int32_t h_twice(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a;
    size_t n;
    cluster_call_args(call, &a, &n);
    uint8_t *buf = malloc(2 * n + 1);
    if (!buf) return cluster_call_fail(call, "out of memory");
    memcpy(buf, a, n);
    memcpy(buf + n, a, n);
    int32_t rc = cluster_call_reply(call, buf, 2 * n);
    free(buf);
    return rc;
}

static size_t ag_args(uint8_t *buf, uint64_t tag, int64_t timeout, uint32_t delay, const int32_t *pids, uint32_t np, const void *block, size_t blen) {
    memcpy(buf, &tag, 8);
    memcpy(buf + 8, &timeout, 8);
    memcpy(buf + 16, &delay, 4);
    memcpy(buf + 20, &np, 4);
    memcpy(buf + 24, pids, 4 * (size_t)np);
    memcpy(buf + 24 + 4 * (size_t)np, block, blen);
    return 24 + 4 * (size_t)np + blen;
}

static void case_hosts(void) {
    int32_t ids[3];
    REQUIRE_OK(cluster_addprocs(g_ctx, 2, NULL, ids));
    const char *env[] = {"LIBCLUSTER_HOSTNAME=c-otherhost", NULL};
    cluster_launch_options o = {NULL, NULL, env, NULL};
    REQUIRE_OK(cluster_addprocs(g_ctx, 1, &o, &ids[2]));
    char here[256] = {0};
    gethostname(here, sizeof here - 1);
    const char *over = getenv("LIBCLUSTER_HOSTNAME");
    if (over && *over) snprintf(here, sizeof here, "%s", over);
    cluster_buffer b = {0};
    EXPECT_OK(cluster_host_of(g_ctx, ids[0], &b));
    EXPECT(b.len == strlen(here) && memcmp(b.data, here, b.len) == 0);
    cluster_buffer_free(&b);
    EXPECT_OK(cluster_host_of(g_ctx, ids[2], &b));
    EXPECT(b.len == 11 && memcmp(b.data, "c-otherhost", 11) == 0);
    cluster_buffer_free(&b);
    EXPECT_OK(cluster_host_of(g_ctx, 1, &b));
    EXPECT(b.len == strlen(here));
    cluster_buffer_free(&b);
    /* Every process with its host, ascending. */
    EXPECT_OK(cluster_hosts(g_ctx, &b));
    int32_t pids[8];
    const uint8_t *parts[8];
    size_t lens[8];
    size_t n = walk(b.data, b.len, pids, parts, lens, 8);
    EXPECT(n == 4 && pids[0] == 1 && pids[1] == ids[0] && pids[2] == ids[1] && pids[3] == ids[2]);
    EXPECT(n == 4 && lens[3] == 11 && memcmp(parts[3], "c-otherhost", 11) == 0 && lens[0] == strlen(here));
    cluster_buffer_free(&b);
    EXPECT_ST(cluster_host_of(g_ctx, 99, &b), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_host_of(g_ctx, -1, &b), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_host_of(g_ctx, 1, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_hosts(NULL, &b), CLUSTER_ERR_BAD_HANDLE);
    REQUIRE_OK(cluster_rmprocs(g_ctx, &ids[1], 1, 10000));
    EXPECT_ST(cluster_host_of(g_ctx, ids[1], &b), CLUSTER_ERR_PROCESS_EXITED);
}

static void case_vars(void) {
    int32_t ids[3];
    REQUIRE_OK(cluster_addprocs(g_ctx, 3, NULL, ids));
    int32_t all[4] = {1, ids[0], ids[1], ids[2]};
    EXPECT_OK(cluster_vars_set(g_ctx, all, 4, "x", (const uint8_t *)"ab", 2));
    cluster_buffer b = {0};
    int32_t order[3] = {ids[2], 1, ids[0]};
    EXPECT_OK(cluster_vars_get(g_ctx, order, 3, "x", &b));
    int32_t pids[8];
    const uint8_t *parts[8];
    size_t lens[8];
    size_t n = walk(b.data, b.len, pids, parts, lens, 8);
    EXPECT(n == 3 && pids[0] == ids[2] && pids[1] == 1 && pids[2] == ids[0]);
    for (size_t i = 0; i < n && i < 8; i++) EXPECT(lens[i] == 2 && memcmp(parts[i], "ab", 2) == 0);
    cluster_buffer_free(&b);
    /* Each its own value, as futures. */
    for (int i = 0; i < 3; i++) {
        cluster_future *f = NULL;
        REQUIRE_OK(cluster_vars_set_async(g_ctx, &ids[i], 1, "mine", (const uint8_t *)&ids[i], 4, &f));
        EXPECT_OK(cluster_future_wait(f, 10000));
        cluster_future_free(f);
    }
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_vars_get_async(g_ctx, ids, 3, "mine", &f));
    const uint8_t *d;
    size_t l;
    EXPECT_OK(cluster_future_fetch(f, 10000, &d, &l));
    n = walk(d, l, pids, parts, lens, 8);
    for (size_t i = 0; i < n && i < 8; i++) EXPECT(lens[i] == 4 && memcmp(parts[i], &pids[i], 4) == 0);
    cluster_future_free(f);
    /* Missing on the head: not found, naming it. */
    EXPECT_ST(cluster_vars_get(g_ctx, all, 4, "mine", &b), CLUSTER_ERR_NOT_FOUND);
    EXPECT(cluster_last_error_pid() == 1);
    /* Apply: results returned, or kept there. */
    EXPECT_OK(cluster_vars_apply(g_ctx, ids, 3, "x", "twice", NULL, &b));
    n = walk(b.data, b.len, pids, parts, lens, 8);
    EXPECT(n == 3);
    for (size_t i = 0; i < n && i < 8; i++) EXPECT(lens[i] == 4 && memcmp(parts[i], "abab", 4) == 0);
    cluster_buffer_free(&b);
    REQUIRE_OK(cluster_vars_apply_async(g_ctx, ids, 3, "x", "twice", "y", &f));
    EXPECT_OK(cluster_future_fetch(f, 10000, &d, &l));
    n = walk(d, l, pids, parts, lens, 8);
    for (size_t i = 0; i < n && i < 8; i++) EXPECT(lens[i] == 0);
    cluster_future_free(f);
    EXPECT_OK(cluster_vars_get(g_ctx, ids, 3, "y", &b));
    n = walk(b.data, b.len, pids, parts, lens, 8);
    for (size_t i = 0; i < n && i < 8; i++) EXPECT(lens[i] == 4 && memcmp(parts[i], "abab", 4) == 0);
    cluster_buffer_free(&b);
    EXPECT_ST(cluster_vars_apply(g_ctx, ids, 3, "x", "no_such_function", NULL, &b), CLUSTER_ERR_REMOTE);
    EXPECT_OK(cluster_vars_delete(g_ctx, ids, 3, "y"));
    EXPECT_ST(cluster_vars_get(g_ctx, ids, 1, "y", &b), CLUSTER_ERR_NOT_FOUND);
    /* Here, without a message. */
    EXPECT_OK(cluster_vars_local_set(g_ctx, "here", (const uint8_t *)"h", 1));
    EXPECT_OK(cluster_vars_local_get(g_ctx, "here", &b));
    EXPECT(b.len == 1 && b.data[0] == 'h');
    cluster_buffer_free(&b);
    EXPECT_OK(cluster_vars_local_get(g_ctx, "x", &b));
    EXPECT(b.len == 2);
    cluster_buffer_free(&b);
    EXPECT_ST(cluster_vars_local_get(g_ctx, "nope", &b), CLUSTER_ERR_NOT_FOUND);
    /* Misuse. */
    EXPECT_ST(cluster_vars_set(g_ctx, all, 4, "", NULL, 0), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_vars_set(g_ctx, NULL, 0, "x", NULL, 0), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_vars_set(g_ctx, all, 4, NULL, NULL, 0), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_vars_set(g_ctx, all, 4, "x", NULL, 3), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_vars_get(g_ctx, all, 4, "x", NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    int32_t nobody = 77;
    EXPECT_ST(cluster_vars_get(g_ctx, &nobody, 1, "x", &b), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_vars_local_set((cluster_ctx *)&b, "x", NULL, 0), CLUSTER_ERR_BAD_HANDLE);
    /* A corrupt parts layout is refused, never overread. */
    uint8_t bad[12] = {1, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0};
    size_t off = 0;
    int32_t pid;
    const uint8_t *p;
    EXPECT_ST(cluster_parts_next(bad, sizeof bad, &off, &pid, &p, &l), CLUSTER_ERR_CORRUPT);
    EXPECT_ST(cluster_parts_next(bad, 5, &off, &pid, &p, &l), CLUSTER_ERR_CORRUPT);
    EXPECT_ST(cluster_parts_next(NULL, 0, &off, &pid, &p, &l), CLUSTER_ERR_NOT_FOUND);
    EXPECT_ST(cluster_parts_next(bad, sizeof bad, NULL, &pid, &p, &l), CLUSTER_ERR_INVALID_ARGUMENT);
}

/* Runs the all-gather on workers ids[0..nw) over set[0..ns) with tag; each
 * worker's block is `size` bytes of its id's low byte (size 0: 3*id bytes).
 * Checks every result when `expect_ok`; else returns the first error text. */
static void run_ag(const int32_t *ids, size_t nw, const int32_t *set, uint32_t ns, uint64_t tag, size_t size, int64_t timeout, bool expect_ok, char *err, size_t errcap) {
    static uint8_t args[200000];
    static uint8_t block[100000];
    cluster_future *fs[16] = {NULL};
    for (size_t i = 0; i < nw; i++) {
        size_t blen = size ? size : 3 * (size_t)ids[i];
        memset(block, ids[i] & 0xff, blen);
        size_t n = ag_args(args, tag, timeout, 0, set, ns, block, blen);
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[i], "ag", args, n, &fs[i]));
    }
    for (size_t i = 0; i < nw; i++) {
        const uint8_t *d;
        size_t l;
        cluster_status st = cluster_future_fetch(fs[i], 30000, &d, &l);
        if (expect_ok) {
            EXPECTF(st == CLUSTER_OK, "worker %d: %s", ids[i], cluster_last_error());
            int32_t pids[16];
            const uint8_t *parts[16];
            size_t lens[16];
            size_t n = st == CLUSTER_OK ? walk(d, l, pids, parts, lens, 16) : 0;
            EXPECTF(n == ns, "%zu parts of %u", n, ns);
            for (size_t k = 0; k < n && k < 16; k++) {
                size_t want = size ? size : 3 * (size_t)pids[k];
                EXPECTF(pids[k] == set[k] && lens[k] == want && (want == 0 || (parts[k][0] == (pids[k] & 0xff) && parts[k][want - 1] == (pids[k] & 0xff))),
                        "part %zu: pid %d len %zu", k, pids[k], lens[k]);
            }
        } else {
            EXPECTF(st == CLUSTER_ERR_REMOTE, "worker %d: %d", ids[i], (int)st);
            if (err && i == 0) snprintf(err, errcap, "%s", cluster_last_error());
        }
        cluster_future_free(fs[i]);
    }
}

static void case_allgather(void) {
    int32_t ids[6];
    REQUIRE_OK(cluster_addprocs(g_ctx, 6, NULL, ids));
    uint64_t tag = 1;
    for (uint32_t n = 2; n <= 6; n++) {
        size_t sizes[3] = {8, 70000, 0};
        for (int s = 0; s < 3; s++) {
            int32_t set[6];
            for (uint32_t k = 0; k < n; k++) set[k] = ids[n - 1 - k]; /* any order */
            run_ag(ids, n, set, n, tag++, sizes[s], 20000, true, NULL, 0);
        }
    }
    /* The head takes part, as a future. */
    int32_t set[3] = {1, ids[0], ids[1]};
    static uint8_t args[256];
    cluster_future *fs[2];
    for (int i = 0; i < 2; i++) {
        uint8_t blk = (uint8_t)ids[i];
        size_t na = ag_args(args, 99, -1, 0, set, 3, &blk, 1);
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[i], "ag", args, na, &fs[i]));
    }
    uint8_t mine = 1;
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_allgather_async(g_ctx, set, 3, 99, &mine, 1, 20000, &f));
    const uint8_t *d;
    size_t l;
    EXPECT_OK(cluster_future_fetch(f, 20000, &d, &l));
    int32_t pids[4];
    const uint8_t *parts[4];
    size_t lens[4];
    size_t n = walk(d, l, pids, parts, lens, 4);
    EXPECT(n == 3 && pids[0] == 1 && pids[1] == ids[0] && parts[1][0] == (uint8_t)ids[0] && parts[2][0] == (uint8_t)ids[1]);
    cluster_future_free(f);
    for (int i = 0; i < 2; i++) {
        EXPECT_OK(cluster_future_wait(fs[i], 20000));
        cluster_future_free(fs[i]);
    }
    /* Misuse. */
    cluster_buffer b = {0};
    EXPECT_ST(cluster_allgather(g_ctx, ids, 2, 1, NULL, 0, -1, &b), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("not in the set");
    int32_t twice[2] = {1, 1};
    EXPECT_ST(cluster_allgather(g_ctx, twice, 2, 1, NULL, 0, -1, &b), CLUSTER_ERR_INVALID_ARGUMENT);
    int32_t ghost[2] = {1, 88};
    EXPECT_ST(cluster_allgather(g_ctx, ghost, 2, 1, NULL, 0, -1, &b), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_allgather(g_ctx, set, 3, 1, NULL, 0, -1, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_allgather_async(g_ctx, set, 3, 1, NULL, 0, -1, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    int32_t alone = 1;
    EXPECT_OK(cluster_allgather(g_ctx, &alone, 1, 1, (const uint8_t *)"z", 1, -1, &b));
    EXPECT(b.len == 13 && b.data[12] == 'z');
    cluster_buffer_free(&b);
}

static void case_kill(void) {
    int32_t ids[4];
    REQUIRE_OK(cluster_addprocs(g_ctx, 4, NULL, ids));
    /* A timeout names a process not heard from. */
    char err[600] = {0};
    run_ag(ids, 2, ids, 4, 5, 8, 300, false, err, sizeof err);
    EXPECTF(strstr(err, "timed out") != NULL, "%s", err);
    /* The last worker never calls; it is killed while the others wait. */
    cluster_buffer pidb = {0};
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, ids[3], "getpid", NULL, 0, &pidb));
    int32_t os = 0;
    memcpy(&os, pidb.data, 4);
    cluster_buffer_free(&pidb);
    static uint8_t args[256];
    cluster_future *fs[3];
    uint8_t blk = 1;
    for (int i = 0; i < 3; i++) {
        size_t na = ag_args(args, 6, -1, 0, ids, 4, &blk, 1);
        REQUIRE_OK(cluster_remotecall(g_ctx, ids[i], "ag", args, na, &fs[i]));
    }
    sleep_ms(300);
    kill(os, SIGKILL);
    int64_t t0 = now_ms();
    char want[32];
    snprintf(want, sizeof want, "process %d died", (int)ids[3]);
    for (int i = 0; i < 3; i++) {
        const uint8_t *d;
        size_t l;
        EXPECT_ST(cluster_future_fetch(fs[i], 20000, &d, &l), CLUSTER_ERR_REMOTE);
        EXPECTF(strstr(cluster_last_error(), want) != NULL, "%s", cluster_last_error());
        cluster_future_free(fs[i]);
    }
    EXPECT(now_ms() - t0 < 10000);
}

static int32_t h_getpid(void *ud, cluster_call *call) {
    (void)ud;
    int32_t p = (int32_t)getpid();
    return cluster_call_reply(call, (const uint8_t *)&p, 4);
}

/* Writes a line to standard error: replies 1 if it got there, 0 if the
 * write failed (a closed ssh session: EPIPE, SIGPIPE being ignored). */
static int32_t h_stderr_ok(void *ud, cluster_call *call) {
    (void)ud;
    static const char line[] = "worker: a line on stderr\n";
    uint8_t ok = write(2, line, sizeof line - 1) == (ssize_t)(sizeof line - 1);
    return cluster_call_reply(call, &ok, 1);
}

/* Runs the hosts script with `args`; 0 on success. */
static int hosts_script(const char *args) {
    const char *script = getenv("TEST_HOSTS_SCRIPT");
    if (!script) return -1;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s", script, args);
    return system(cmd);
}

static void case_ssh(void) {
    if (hosts_script("check >/dev/null 2>&1") != 0) {
        harness_logf("SKIPPED: the test hosts cannot run here (scripts/test-hosts.sh check)");
        return;
    }
    REQUIRE(hosts_script("up cssh 3 --bad-key 3 >/dev/null") == 0);
    char names[3][64] = {{0}}, ips[3][32] = {{0}};
    FILE *f = fopen("/tmp/lc-hosts-cssh/hosts", "r");
    REQUIRE(f != NULL);
    for (int i = 0; i < 3; i++) REQUIRE(fscanf(f, "%63s %31s", names[i], ips[i]) == 2);
    fclose(f);
    char spec[3][128];
    for (int i = 0; i < 3; i++) snprintf(spec[i], sizeof spec[i], "root@%s", ips[i]);
    const char *flags[] = {"-F", "/tmp/lc-hosts-cssh/ssh_config", NULL};
    cluster_ssh_options o;
    REQUIRE_OK(cluster_ssh_options_init(&o));
    o.ssh_flags = flags;
    cluster_machine ms[2] = {{spec[0], 2}, {spec[1], 1}};
    int32_t ids[4] = {0};
    size_t n = 0;
    EXPECT_OK(cluster_addprocs_ssh(g_ctx, ms, 2, &o, ids, 4, &n));
    EXPECTF(n == 3, "%zu workers", n);
    for (size_t i = 0; i < n && i < 4; i++) {
        cluster_buffer b = {0};
        EXPECT_OK(cluster_host_of(g_ctx, ids[i], &b));
        const char *want = i < 2 ? names[0] : names[1];
        EXPECTF(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "worker %d on %.*s", ids[i], (int)b.len, (const char *)b.data);
        cluster_buffer_free(&b);
        cluster_buffer pid = {0};
        EXPECT_OK(cluster_remotecall_fetch(g_ctx, ids[i], "getpid", NULL, 0, &pid));
        cluster_buffer_free(&pid);
        /* The call's ssh sessions (multiplexed) outlive it: the workers'
         * output still reaches the head. */
        cluster_buffer ok = {0};
        EXPECT_OK(cluster_remotecall_fetch(g_ctx, ids[i], "stderr_ok", NULL, 0, &ok));
        EXPECTF(ok.len == 1 && ok.data[0] == 1, "worker %d cannot write to its stderr", ids[i]);
        cluster_buffer_free(&ok);
    }
    /* A host refusing the key: named, with ssh's reason; as a future too. */
    cluster_machine bad = {spec[2], 1};
    EXPECT_ST(cluster_addprocs_ssh(g_ctx, &bad, 1, &o, ids, 4, &n), CLUSTER_ERR_LAUNCH);
    EXPECT_LAST_ERROR_HAS("Permission denied");
    EXPECT_LAST_ERROR_HAS(ips[2]);
    cluster_future *fut = NULL;
    cluster_machine mixed[2] = {{spec[1], 1}, {spec[2], 1}};
    o.tolerate_failures = true;
    REQUIRE_OK(cluster_addprocs_ssh_async(g_ctx, mixed, 2, &o, &fut));
    const uint8_t *d = NULL;
    size_t l = 0;
    EXPECT_OK(cluster_future_fetch(fut, 30000, &d, &l));
    EXPECTF(l == 4, "one worker joined (%zu bytes)", l);
    cluster_future_free(fut);
    /* A per-call startup timeout: a program that never joins fails the
     * call after it, not after the cluster's 60 s. */
    cluster_ssh_options slow = o;
    const char *forever[] = {"30", NULL};
    slow.tolerate_failures = false;
    slow.exename = "sleep";
    slow.argv = forever;
    slow.startup_timeout_ms = 1500;
    cluster_machine one = {spec[1], 1};
    time_t t0 = time(NULL);
    EXPECT_ST(cluster_addprocs_ssh(g_ctx, &one, 1, &slow, ids, 4, &n), CLUSTER_ERR_LAUNCH);
    EXPECT_LAST_ERROR_HAS("startup timeout of 1.5s");
    EXPECTF(time(NULL) - t0 < 15, "failed after %lds", (long)(time(NULL) - t0));
    /* Misuse. */
    cluster_machine zero = {spec[0], 0};
    EXPECT_ST(cluster_addprocs_ssh(g_ctx, &zero, 1, &o, ids, 4, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster_machine junk = {"h:notaport", 1};
    EXPECT_ST(cluster_addprocs_ssh(g_ctx, &junk, 1, &o, ids, 4, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_addprocs_ssh(g_ctx, NULL, 1, &o, ids, 4, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_ssh_options_init(NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster_ssh_options stale = o;
    stale.struct_size = 8;
    EXPECT_ST(cluster_addprocs_ssh(g_ctx, ms, 1, &stale, ids, 4, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    hosts_script("down cssh");
}

/* Workers as the tasks of one srun step (scripts/test-slurm.sh starts a
 * one-node Slurm; TEST_SLURM_SCRIPT finds it); skips, passing, without it. */
static void case_slurm(void) {
    const char *script = getenv("TEST_SLURM_SCRIPT");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s check >/dev/null 2>&1", script ? script : "false");
    if (!script || system(cmd) != 0) {
        harness_logf("SKIPPED: Slurm cannot run here (scripts/test-slurm.sh check)");
        return;
    }
    snprintf(cmd, sizeof cmd, "%s up >/dev/null", script);
    REQUIRE(system(cmd) == 0);
    const char *senv[] = {"SLURM_CONF=/tmp/lc-slurm/slurm.conf", NULL};
    cluster_slurm_options o;
    REQUIRE_OK(cluster_slurm_options_init(&o));
    o.srun_env = senv;
    int32_t ids[4] = {0};
    size_t n = 0;
    EXPECT_OK(cluster_addprocs_slurm(g_ctx, 3, &o, ids, 4, &n));
    EXPECTF(n == 3, "%zu workers", n);
    for (size_t i = 0; i < n && i < 4; i++) {
        cluster_buffer b = {0};
        EXPECT_OK(cluster_remotecall_fetch(g_ctx, ids[i], "getpid", NULL, 0, &b));
        cluster_buffer_free(&b);
    }
    /* A partition that does not exist: srun's own reason. */
    const char *bad[] = {"-p", "nosuchpartition", NULL};
    o.srun_args = bad;
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_addprocs_slurm_async(g_ctx, 2, &o, &f));
    EXPECT_ST(cluster_future_wait(f, 30000), CLUSTER_ERR_LAUNCH);
    cluster_future_free(f);
    EXPECT_ST(cluster_slurm_options_init(NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster_slurm_options stale = o;
    stale.struct_size = 4;
    EXPECT_ST(cluster_addprocs_slurm(g_ctx, 1, &stale, ids, 4, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    snprintf(cmd, sizeof cmd, "%s down >/dev/null 2>&1", script);
    if (system(cmd) != 0) harness_logf("test-slurm.sh down failed");
}

/* The head asks for TLS on every connection (CLUSTER_TLS_ALWAYS, set in
 * main); its workers are told to ask too. */
static void case_tls(void) {
    int32_t ids[2];
    REQUIRE_OK(cluster_addprocs(g_ctx, 2, NULL, ids));
    for (int i = 0; i < 2; i++) {
        bool enc = false;
        EXPECT_OK(cluster_connection_encrypted(g_ctx, ids[i], &enc));
        EXPECTF(enc, "the connection to worker %d is plain", ids[i]);
    }
    /* Payloads cross whole, small and over many TLS records. */
    size_t big = 3u << 20;
    uint8_t *in = malloc(big);
    REQUIRE(in != NULL);
    for (size_t i = 0; i < big; i++) in[i] = (uint8_t)(i * 7 + 3);
    cluster_buffer out = {0};
    EXPECT_OK(cluster_remotecall_fetch(g_ctx, ids[1], "twice", in, big, &out));
    EXPECT(out.len == 2 * big && memcmp(out.data, in, big) == 0 && memcmp(out.data + big, in, big) == 0);
    cluster_buffer_free(&out);
    free(in);
    bool enc = false;
    EXPECT_ST(cluster_connection_encrypted(g_ctx, 99, &enc), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_ST(cluster_connection_encrypted(g_ctx, 1, &enc), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_connection_encrypted(g_ctx, ids[0], NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_connection_encrypted(NULL, ids[0], &enc), CLUSTER_ERR_BAD_HANDLE);
    /* A mode that does not exist is refused. */
    cluster_config c2;
    REQUIRE_OK(cluster_config_init(&c2));
    c2.tls = 7;
    cluster_ctx *other = NULL;
    EXPECT_ST(cluster_init(&c2, &other), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("TLS mode");
    REQUIRE_OK(cluster_rmprocs(g_ctx, ids, 2, 10000));
}

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {{"tls", case_tls}, {"hosts", case_hosts}, {"vars", case_vars}, {"allgather", case_allgather}, {"kill", case_kill}, {"ssh", case_ssh}, {"slurm", case_slurm}};

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "";
    harness_name = which;
    void (*fn)(void) = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (strcmp(which, cases[i].name) == 0) fn = cases[i].fn;
    if (!fn && getenv("LIBCLUSTER_HEAD") == NULL) {
        fprintf(stderr, "usage: %s tls|hosts|vars|allgather|kill|ssh|slurm\n", argv[0]);
        return 2;
    }
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.startup_timeout_ms = 20000;
    /* Workers on other hosts reach the head on its bridge address. */
    if (strcmp(which, "ssh") == 0) cfg.listen_host = "0.0.0.0";
    if (strcmp(which, "tls") == 0) cfg.tls = CLUSTER_TLS_ALWAYS;
    REQUIRE_OK(cluster_init(&cfg, &g_ctx));
    REQUIRE_OK(cluster_myid(g_ctx, &g_me));
    REQUIRE_OK(cluster_register(g_ctx, "ag", h_ag, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "twice", h_twice, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "getpid", h_getpid, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "stderr_ok", h_stderr_ok, NULL));
    bool head = false;
    REQUIRE_OK(cluster_is_head(g_ctx, &head));
    if (!head) {
        harness_name = "worker";
        signal(SIGPIPE, SIG_IGN);
        harness_watchdog(60);
        cluster_status st = cluster_serve(g_ctx);
        if (st != CLUSTER_OK && st != CLUSTER_ERR_HEAD_LOST) harness_logf("serve: %s", cluster_last_error());
        cluster_free(g_ctx);
        return harness_failures ? 1 : 0;
    }
    harness_watchdog(50);
    harness_logf("case %s", which);
    fn();
    if (fn != case_ssh && fn != case_slurm) EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    EXPECT_OK(cluster_free(g_ctx));
    return harness_finish();
}
