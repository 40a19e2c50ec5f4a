/*
 * pfork from C (cluster_pfork; tests/fork.rs is the Rust twin): results in
 * index order, large ones read concurrently; a child that fails, returns
 * non-zero, calls exit(3), is SIGKILLed, segfaults, aborts or _exits
 * without a result gets its own outcome and message; a hung child is
 * killed at the timeout; no zombie is left (/proc); children write into a
 * shared mapping the parent reads, while private memory stays the
 * parent's; stdio is neither repeated nor lost; pfork beside a running
 * cluster (a head with a worker, which keep working), on a worker inside a
 * handler, and every libcluster handle refused in a child; misuse.
 *
 * Usage: test_fork <case>. Only the `cluster` case starts a cluster (the
 * binary is then its own worker): pfork needs none.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <sys/mman.h>

/* ---- helpers ------------------------------------------------------------------ */

/* Children of this process in state Z, from /proc. */
static int zombie_children(void) {
    int n = 0;
    DIR *d = opendir("/proc");
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t got = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[got] = '\0';
        const char *close = strrchr(buf, ')');
        char state = 0;
        int ppid = 0;
        if (close && sscanf(close + 1, " %c %d", &state, &ppid) == 2 && state == 'Z' && ppid == (int)getpid()) n++;
    }
    closedir(d);
    return n;
}

/* No child of ours is left a zombie (launched workers are reaped by their
   cluster within moments, so this is retried briefly). */
static void expect_no_zombies(void) {
    int64_t until = now_ms() + 5000;
    int z;
    while ((z = zombie_children()) != 0 && now_ms() < until) sleep_ms(20);
    EXPECTF(z == 0, "%d zombie children left", z);
}

typedef struct {
    int outcome, code, os_pid;
    const char *message;
} child_info;

static child_info info_of(cluster_fork_results *r, size_t i) {
    child_info c = {-1, -1, -1, NULL};
    EXPECT_OK(cluster_fork_results_child(r, i, &c.outcome, &c.code, &c.os_pid, &c.message));
    return c;
}

#define EXPECT_HAS(text, needle) \
    EXPECTF((text) != NULL && strstr((text), (needle)) != NULL, "\"%s\" lacks \"%s\"", (text) ? (text) : "(null)", (needle))

static size_t size_of_child(int i) {
    switch (i % 4) {
    case 0: return 0;
    case 1: return 8;
    case 2: return (size_t)3 << 20;
    default: return ((size_t)5 << 20) + (size_t)i;
    }
}

static uint8_t pattern(int i, size_t j) { return (uint8_t)(i * 31 + j * 7); }

/* ---- order -------------------------------------------------------------------- */

static int32_t child_pattern(void *ud, int32_t i, cluster_fork_child *child) {
    (void)ud;
    size_t n = size_of_child(i);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return 1;
    for (size_t j = 0; j < n; j++) b[j] = pattern(i, j);
    cluster_status st = cluster_fork_return(child, b, n);
    free(b);
    return st == CLUSTER_OK ? 0 : 2;
}

static void case_order(void) {
    cluster_fork_results *r = NULL;
    REQUIRE_OK(cluster_pfork(8, child_pattern, NULL, 60000, &r));
    size_t count = 0;
    EXPECT_OK(cluster_fork_results_count(r, &count));
    EXPECT(count == 8);
    for (int i = 0; i < 8; i++) {
        const uint8_t *d = NULL;
        size_t len = 0;
        if (!EXPECT_OK(cluster_fork_results_get(r, (size_t)i, &d, &len))) continue;
        EXPECTF(len == size_of_child(i), "child %d: %zu bytes", i, len);
        bool same = true;
        for (size_t j = 0; j < len && same; j++) same = d[j] == pattern(i, j);
        EXPECTF(same, "child %d's bytes differ", i);
        child_info c = info_of(r, (size_t)i);
        EXPECT(c.outcome == CLUSTER_FORK_RETURNED && c.code == 0 && c.os_pid > 0 && c.os_pid != (int)getpid());
        EXPECT(c.message != NULL && c.message[0] == '\0');
    }
    EXPECT_OK(cluster_fork_results_free(r));
    /* Many small ones; none at all. */
    REQUIRE_OK(cluster_pfork(64, child_pattern, NULL, CLUSTER_FOREVER, &r));
    EXPECT_OK(cluster_fork_results_count(r, &count));
    EXPECT(count == 64);
    EXPECT_OK(cluster_fork_results_free(r));
    REQUIRE_OK(cluster_pfork(0, child_pattern, NULL, CLUSTER_FOREVER, &r));
    EXPECT_OK(cluster_fork_results_count(r, &count));
    EXPECT(count == 0);
    EXPECT_OK(cluster_fork_results_free(r));
    expect_no_zombies();
}

/* ---- failures ----------------------------------------------------------------- */

static int32_t child_fails_variously(void *ud, int32_t i, cluster_fork_child *child) {
    (void)ud;
    char text[32];
    switch (i) {
    case 1: cluster_fork_fail(child, "bad input 1"); return 1;
    case 2: return 7;
    case 3: exit(3);
    case 4:
        kill(getpid(), SIGKILL);
        sleep_ms(10000);
        return 0;
    case 5:
        /* The default action, so a runtime's handler (a sanitizer's) does
           not turn the crash into an exit. */
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
        return 0;
    case 6: abort();
    case 7: _exit(0);
    default:
        snprintf(text, sizeof text, "fine %d", (int)i);
        return cluster_fork_return(child, (const uint8_t *)text, strlen(text)) == CLUSTER_OK ? 0 : 9;
    }
}

static void case_failures(void) {
    cluster_fork_results *r = NULL;
    /* The first failing child (1) gives the status and the last error. */
    EXPECT_ST(cluster_pfork(9, child_fails_variously, NULL, 60000, &r), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("child 1 (pid ");
    EXPECT_LAST_ERROR_HAS("failed: bad input 1");
    REQUIRE(r != NULL);
    const uint8_t *d;
    size_t len;
    EXPECT_OK(cluster_fork_results_get(r, 0, &d, &len));
    EXPECT(len == 6 && memcmp(d, "fine 0", 6) == 0);
    EXPECT_OK(cluster_fork_results_get(r, 8, &d, &len));
    EXPECT(len == 6 && memcmp(d, "fine 8", 6) == 0);
    struct {
        int outcome, code;
        cluster_status status;
        const char *says;
    } want[9] = {
        {CLUSTER_FORK_RETURNED, 0, CLUSTER_OK, ""},
        {CLUSTER_FORK_FAILED, 0, CLUSTER_ERR_REMOTE, "failed: bad input 1"},
        {CLUSTER_FORK_FAILED, 0, CLUSTER_ERR_REMOTE, "failed: the child function returned 7"},
        {CLUSTER_FORK_EXITED, 3, CLUSTER_ERR_PROCESS_EXITED, "exited with status 3 before returning a result"},
        {CLUSTER_FORK_SIGNALED, SIGKILL, CLUSTER_ERR_PROCESS_EXITED, "was killed by signal 9 (SIGKILL)"},
        {CLUSTER_FORK_SIGNALED, SIGSEGV, CLUSTER_ERR_PROCESS_EXITED, "was killed by signal 11 (SIGSEGV)"},
        {CLUSTER_FORK_SIGNALED, SIGABRT, CLUSTER_ERR_PROCESS_EXITED, "was killed by signal 6 (SIGABRT)"},
        {CLUSTER_FORK_NO_RESULT, 0, CLUSTER_ERR_PROCESS_EXITED, "without a complete result: it wrote nothing"},
        {CLUSTER_FORK_RETURNED, 0, CLUSTER_OK, ""},
    };
    for (int i = 0; i < 9; i++) {
        child_info c = info_of(r, (size_t)i);
        EXPECTF(c.outcome == want[i].outcome && c.code == want[i].code, "child %d: outcome %d code %d, expected %d %d (%s)",
                i, c.outcome, c.code, want[i].outcome, want[i].code, c.message);
        EXPECT_HAS(c.message, want[i].says);
        if (want[i].status != CLUSTER_OK) {
            char who[64];
            snprintf(who, sizeof who, "child %d (pid %d)", i, c.os_pid);
            EXPECT_HAS(c.message, who);
            EXPECT_ST(cluster_fork_results_get(r, (size_t)i, &d, &len), want[i].status);
            EXPECT_LAST_ERROR_HAS(who);
            EXPECT(cluster_last_error_pid() == 0);
        }
    }
    EXPECT_OK(cluster_fork_results_free(r));
    expect_no_zombies();
}

/* ---- timeout ------------------------------------------------------------------ */

static int32_t child_hangs_if_one(void *ud, int32_t i, cluster_fork_child *child) {
    (void)ud;
    if (i == 1) sleep_ms(60000);
    uint8_t b = (uint8_t)i;
    return cluster_fork_return(child, &b, 1) == CLUSTER_OK ? 0 : 1;
}

static void case_timeout(void) {
    cluster_fork_results *r = NULL;
    int64_t t0 = now_ms();
    EXPECT_ST(cluster_pfork(3, child_hangs_if_one, NULL, 300, &r), CLUSTER_ERR_TIMEOUT);
    int64_t took = now_ms() - t0;
    EXPECTF(took >= 300 && took < 10000, "took %" PRId64 " ms", took);
    EXPECT_LAST_ERROR_HAS("child 1 (pid ");
    EXPECT_LAST_ERROR_HAS("timeout of 300 ms");
    REQUIRE(r != NULL);
    child_info c = info_of(r, 1);
    EXPECT(c.outcome == CLUSTER_FORK_TIMED_OUT && c.code == SIGKILL);
    const uint8_t *d;
    size_t len;
    EXPECT_OK(cluster_fork_results_get(r, 2, &d, &len));
    EXPECT(len == 1 && d[0] == 2);
    EXPECT_OK(cluster_fork_results_free(r));
    expect_no_zombies();
}

/* ---- shared memory, private memory, stdio ------------------------------------------ */

enum { SHM_CHILDREN = 6, SHM_PER = 1024 };

typedef struct {
    uint64_t *shared; /* MAP_SHARED: written by the children */
    uint64_t *private_; /* ordinary memory: copy-on-write in the children */
    FILE *log;
} shm_ud;

static int32_t child_writes_shared(void *ud, int32_t i, cluster_fork_child *child) {
    (void)child;
    shm_ud *u = ud;
    for (int j = 0; j < SHM_PER; j++) u->shared[i * SHM_PER + j] = (uint64_t)i * 1000000u + (uint64_t)j;
    u->private_[i] = 1;
    fprintf(u->log, "child%d;", (int)i); /* buffered: flushed by pfork before the child exits */
    return 0;
}

static void case_shm(void) {
    size_t bytes = sizeof(uint64_t) * SHM_CHILDREN * SHM_PER;
    uint64_t *shared = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(shared != MAP_FAILED);
    uint64_t private_[SHM_CHILDREN] = {0};
    char path[] = "/tmp/test_fork_stdio_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    FILE *log = fopen(path, "a");
    REQUIRE(log != NULL);
    fprintf(log, "before;"); /* still in the parent's buffer at the fork */
    shm_ud u = {shared, private_, log};
    cluster_fork_results *r = NULL;
    EXPECT_OK(cluster_pfork(SHM_CHILDREN, child_writes_shared, &u, 60000, &r));
    EXPECT_OK(cluster_fork_results_free(r));
    fprintf(log, "after;");
    fclose(log);
    for (int i = 0; i < SHM_CHILDREN; i++) {
        EXPECTF(private_[i] == 0, "the parent's private memory changed for child %d", i);
        for (int j = 0; j < SHM_PER; j++) {
            if (shared[i * SHM_PER + j] != (uint64_t)i * 1000000u + (uint64_t)j) {
                EXPECTF(false, "child %d element %d: %" PRIu64, i, j, shared[i * SHM_PER + j]);
                break;
            }
        }
    }
    munmap(shared, bytes);
    /* Every piece of output once: the parent's buffer was not repeated by
       the children, and theirs were not lost. */
    char text[512] = {0};
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    size_t got = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    unlink(path);
    text[got] = '\0';
    EXPECTF(strncmp(text, "before;", 7) == 0 && strstr(text + 1, "before;") == NULL, "output: %s", text);
    EXPECTF(strlen(text) >= 6 && strcmp(text + strlen(text) - 6, "after;") == 0, "output: %s", text);
    for (int i = 0; i < SHM_CHILDREN; i++) {
        char piece[16];
        snprintf(piece, sizeof piece, "child%d;", i);
        const char *at = strstr(text, piece);
        EXPECTF(at != NULL && strstr(at + 1, piece) == NULL, "%s not exactly once in %s", piece, text);
    }
    expect_no_zombies();
}

/* ---- with a cluster ------------------------------------------------------------- */

static cluster_ctx *g_ctx;

static int32_t child_uses_the_cluster(void *ud, int32_t i, cluster_fork_child *child) {
    (void)ud;
    /* What a child must not do is refused, not attempted: each check's
       status goes back to the parent. */
    int32_t id = 0;
    int32_t st[4];
    st[0] = cluster_myid(g_ctx, &id);
    cluster_ctx *other = NULL;
    st[1] = cluster_init(NULL, &other);
    cluster_fork_results *nested = NULL;
    st[2] = cluster_pfork(1, child_pattern, NULL, 1000, &nested);
    st[3] = (int32_t)i;
    return cluster_fork_return(child, (const uint8_t *)st, sizeof st) == CLUSTER_OK ? 0 : 1;
}

static int32_t child_square(void *ud, int32_t i, cluster_fork_child *child) {
    (void)ud;
    int64_t sq = (int64_t)i * i;
    return cluster_fork_return(child, (const uint8_t *)&sq, sizeof sq) == CLUSTER_OK ? 0 : 1;
}

static int32_t echo(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a;
    size_t n;
    cluster_call_args(call, &a, &n);
    return cluster_call_reply(call, a, n);
}

/* On a worker, inside a handler: pfork(n) of squares, answered as their sum. */
static int32_t pfork_on_worker(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a;
    size_t n;
    cluster_call_args(call, &a, &n);
    int32_t k = payload_i32(a, n);
    cluster_fork_results *r = NULL;
    if (cluster_pfork(k, child_square, NULL, 30000, &r) != CLUSTER_OK) {
        cluster_fork_results_free(r);
        return cluster_call_fail(call, cluster_last_error());
    }
    int64_t sum = 0;
    for (int32_t i = 0; i < k; i++) {
        const uint8_t *d;
        size_t len;
        int64_t v = 0;
        if (cluster_fork_results_get(r, (size_t)i, &d, &len) == CLUSTER_OK && len == sizeof v) memcpy(&v, d, sizeof v);
        sum += v;
    }
    cluster_fork_results_free(r);
    int64_t reply[2] = {sum, zombie_children()};
    return cluster_call_reply(call, (const uint8_t *)reply, sizeof reply);
}

static void case_cluster(void) {
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.startup_timeout_ms = 20000;
    REQUIRE_OK(cluster_init(&cfg, &g_ctx));
    REQUIRE_OK(cluster_register(g_ctx, "echo", echo, NULL));
    REQUIRE_OK(cluster_register(g_ctx, "pfork_on_worker", pfork_on_worker, NULL));
    bool head = false;
    REQUIRE_OK(cluster_is_head(g_ctx, &head));
    if (!head) {
        harness_name = "worker";
        harness_watchdog(60);
        cluster_status st = cluster_serve(g_ctx);
        if (st != CLUSTER_OK && st != CLUSTER_ERR_HEAD_LOST) harness_logf("serve: %s", cluster_last_error());
        cluster_free(g_ctx);
        _exit(harness_failures ? 1 : 0);
    }
    int32_t w = 0;
    REQUIRE_OK(cluster_addprocs(g_ctx, 1, NULL, &w));
    cluster_buffer out;
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, w, "echo", (const uint8_t *)"before", 6, &out));
    EXPECT(out.len == 6 && memcmp(out.data, "before", 6) == 0);
    EXPECT_OK(cluster_buffer_free(&out));

    /* Beside the running cluster: the children inherit its connections and
       threads' memory and must not use them; every handle is refused. */
    cluster_fork_results *r = NULL;
    EXPECT_OK(cluster_pfork(4, child_uses_the_cluster, NULL, 30000, &r));
    for (size_t i = 0; i < 4; i++) {
        const uint8_t *d;
        size_t len;
        int32_t st[4] = {0};
        if (!EXPECT_OK(cluster_fork_results_get(r, i, &d, &len))) continue;
        REQUIRE(len == sizeof st);
        memcpy(st, d, sizeof st);
        EXPECTF(st[0] == CLUSTER_ERR_WRONG_MODE && st[1] == CLUSTER_ERR_WRONG_MODE && st[2] == CLUSTER_ERR_WRONG_MODE &&
                    st[3] == (int32_t)i,
                "child %zu: myid %d, init %d, nested pfork %d", i, st[0], st[1], st[2]);
    }
    EXPECT_OK(cluster_fork_results_free(r));
    expect_no_zombies();
    /* The cluster still works, and a handle works again in the parent. */
    int32_t me = 0;
    EXPECT_OK(cluster_myid(g_ctx, &me));
    EXPECT(me == 1);
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, w, "echo", (const uint8_t *)"after", 5, &out));
    EXPECT(out.len == 5 && memcmp(out.data, "after", 5) == 0);
    EXPECT_OK(cluster_buffer_free(&out));
    /* On the worker, inside a handler. */
    int32_t k = 6;
    REQUIRE_OK(cluster_remotecall_fetch(g_ctx, w, "pfork_on_worker", (const uint8_t *)&k, sizeof k, &out));
    int64_t reply[2] = {0, -1};
    if (EXPECT(out.len == sizeof reply)) memcpy(reply, out.data, sizeof reply);
    EXPECTF(reply[0] == 0 + 1 + 4 + 9 + 16 + 25 && reply[1] == 0, "sum %" PRId64 ", zombies %" PRId64, reply[0], reply[1]);
    EXPECT_OK(cluster_buffer_free(&out));
    EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

/* ---- misuse ------------------------------------------------------------------- */

static int32_t child_misuses(void *ud, int32_t i, cluster_fork_child *child) {
    (void)ud;
    (void)i;
    int32_t st[5];
    st[0] = cluster_fork_return(NULL, (const uint8_t *)"x", 1);
    st[1] = cluster_fork_return((cluster_fork_child *)((uintptr_t)child + 8), (const uint8_t *)"x", 1);
    st[2] = cluster_fork_return(child, NULL, 3);
    st[3] = cluster_fork_fail(child, NULL);
    cluster_buffer b = {NULL, 0, 0x0400000001000001ull};
    st[4] = cluster_buffer_free(&b);
    /* Replaced by the last return. */
    cluster_fork_return(child, (const uint8_t *)"first", 5);
    return cluster_fork_return(child, (const uint8_t *)st, sizeof st) == CLUSTER_OK ? 0 : 1;
}

static void case_misuse(void) {
    cluster_fork_results *r = (cluster_fork_results *)1;
    EXPECT_ST(cluster_pfork(-1, child_pattern, NULL, 1000, &r), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT(r == NULL);
    EXPECT_ST(cluster_pfork(2, NULL, NULL, 1000, &r), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_pfork(2, child_pattern, NULL, 1000, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    /* The child-side functions outside a child. */
    EXPECT_ST(cluster_fork_return(NULL, (const uint8_t *)"x", 1), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_fork_fail((cluster_fork_child *)&r, "x"), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_LAST_ERROR_HAS("valid only in a cluster_pfork child");
    /* In a child: bad child pointers and arguments; a handle refused. */
    REQUIRE_OK(cluster_pfork(1, child_misuses, NULL, 30000, &r));
    const uint8_t *d;
    size_t len;
    int32_t st[5] = {0};
    REQUIRE_OK(cluster_fork_results_get(r, 0, &d, &len));
    REQUIRE(len == sizeof st);
    memcpy(st, d, sizeof st);
    EXPECTF(st[0] == CLUSTER_ERR_BAD_HANDLE && st[1] == CLUSTER_ERR_BAD_HANDLE && st[2] == CLUSTER_ERR_INVALID_ARGUMENT &&
                st[3] == CLUSTER_ERR_INVALID_ARGUMENT && st[4] == CLUSTER_ERR_WRONG_MODE,
            "in the child: %d %d %d %d %d", st[0], st[1], st[2], st[3], st[4]);
    /* Results: bad indexes, NULL outs, NULL and freed handles. */
    EXPECT_ST(cluster_fork_results_get(r, 1, &d, &len), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_fork_results_get(r, 0, NULL, &len), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_fork_results_child(r, 5, NULL, NULL, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_fork_results_child(r, 0, NULL, NULL, NULL, NULL));
    size_t count;
    EXPECT_ST(cluster_fork_results_count(r, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_fork_results_count(NULL, &count), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_fork_results_free(r));
    EXPECT_ST(cluster_fork_results_count(r, &count), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_fork_results_free(r), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_fork_results_free(NULL));
    expect_no_zombies();
}

/* ---- main ----------------------------------------------------------------- */

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {
    {"order", case_order}, {"failures", case_failures}, {"timeout", case_timeout},
    {"shm", case_shm},     {"cluster", case_cluster},   {"misuse", case_misuse},
};

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "";
    harness_name = which;
    void (*fn)(void) = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (strcmp(which, cases[i].name) == 0) fn = cases[i].fn;
    if (!fn) {
        fprintf(stderr, "usage: %s order|failures|timeout|shm|cluster|misuse\n", argv[0]);
        return 2;
    }
    harness_watchdog(50);
    int64_t t0 = now_ms();
    fn();
    harness_logf("case %s took %" PRId64 " ms", which, now_ms() - t0);
    return harness_finish();
}
