/*
 * The save/load container from C (cluster_save, cluster_load; the Rust
 * twins are the unit tests of src/savefile.rs and tests/savefile.rs):
 * round trips (empty, 1 byte, 10 MB; content types up to 255 bytes), the
 * documented layout, overwrite keeping the mode; refusals with their
 * messages (a truncated, damaged, foreign, newer-version or over-long
 * file, a missing one); misuse (NULL and invalid arguments); atomicity: a
 * forked child saving a big file over an old one is SIGKILLed mid-write,
 * and the old file still loads, with nothing else left in the directory.
 *
 * Usage: test_savefile <case>. No cluster is started.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char g_dir[64];

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static void make_dir(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_savefile.XXXXXX");
    REQUIRE(mkdtemp(g_dir) != NULL);
}

/* Removes the test directory and what it holds (flat, but for "adir"). */
static void remove_dir(void) {
    DIR *d = opendir(g_dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        path_of(p, sizeof p, e->d_name);
        if (unlink(p) != 0) {
            char inner[600];
            snprintf(inner, sizeof inner, "%s/inside", p);
            rmdir(inner);
            rmdir(p);
        }
    }
    closedir(d);
    rmdir(g_dir);
}

/* How many entries the test directory has; `only` (may be NULL) must be the one. */
static int entries(const char *only) {
    DIR *d = opendir(g_dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        n++;
        if (only) EXPECTF(strcmp(e->d_name, only) == 0, "unexpected entry %s", e->d_name);
    }
    closedir(d);
    return n;
}

static uint8_t *pattern(size_t n) {
    uint8_t *p = malloc(n ? n : 1);
    REQUIRE(p != NULL);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)((i * 2654435761u) >> 13);
    return p;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    REQUIRE(b != NULL && fread(b, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void write_file(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    REQUIRE(f != NULL);
    REQUIRE(n == 0 || fwrite(b, 1, n, f) == n);
    fclose(f);
}

/* Loads `path`, expecting `want`; the last error must hold `needle`. */
static void expect_refused(const char *path, cluster_status want, const char *needle) {
    cluster_buffer data = {0}, ct = {0};
    if (EXPECT_ST(cluster_load(path, &data, &ct), want)) EXPECT_LAST_ERROR_HAS(needle);
    EXPECT(data.handle == 0 && data.data == NULL && ct.handle == 0); /* untouched on an error */
}

/* ---- cases ------------------------------------------------------------------- */

static void case_roundtrip(void) {
    char p[256];
    size_t big = 10u << 20;
    uint8_t *payload = pattern(big);
    char long_ct[256];
    memset(long_ct, 't', 255);
    long_ct[255] = '\0';
    struct {
        const char *ct;
        size_t len;
    } cases[] = {{"", 0}, {"x", 1}, {"julia.serialization", 0}, {"application/octet-stream", 10u << 20}, {long_ct, 3}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "f%zu", i);
        path_of(p, sizeof p, name);
        /* A zero-length payload may come as NULL. */
        EXPECT_OK(cluster_save(p, cases[i].ct, cases[i].len ? payload : NULL, cases[i].len));
        struct stat st;
        EXPECT(stat(p, &st) == 0 && (size_t)st.st_size == 60 + strlen(cases[i].ct) + cases[i].len);
        cluster_buffer data = {0}, ct = {0};
        if (EXPECT_OK(cluster_load(p, &data, &ct))) {
            EXPECTF(data.len == cases[i].len && (data.len == 0 || memcmp(data.data, payload, data.len) == 0), "case %zu: payload", i);
            EXPECTF(ct.len == strlen(cases[i].ct) && strcmp((const char *)ct.data, cases[i].ct) == 0, "case %zu: content type", i);
        }
        EXPECT_OK(cluster_buffer_free(&data));
        EXPECT_OK(cluster_buffer_free(&ct));
        /* Without the content type. */
        if (EXPECT_OK(cluster_load(p, &data, NULL))) EXPECT(data.len == cases[i].len);
        EXPECT_OK(cluster_buffer_free(&data));
    }
    /* The documented layout. */
    path_of(p, sizeof p, "layout");
    REQUIRE_OK(cluster_save(p, "text/plain", (const uint8_t *)"hello", 5));
    size_t n = 0;
    uint8_t *raw = read_file(p, &n);
    static const uint8_t head[] = {0x89, 'C', 'L', 'S', '\r', '\n', 0, '\n', 1, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0};
    EXPECT(n == 60 + 10 + 5);
    EXPECT(memcmp(raw, head, sizeof head) == 0);
    EXPECT(memcmp(raw + 20, "text/plain", 10) == 0);
    EXPECT(raw[30] == 5 && raw[31] == 0 && raw[37] == 0 && memcmp(raw + 38, "hello", 5) == 0);
    free(raw);
    /* Overwrite: new content, the old mode kept; a new file: 0644 minus the umask. */
    mode_t um = umask(022);
    umask(um);
    struct stat st;
    EXPECT(stat(p, &st) == 0 && (st.st_mode & 07777) == (0644 & ~um));
    EXPECT(chmod(p, 0600) == 0);
    EXPECT_OK(cluster_save(p, "v2", payload, 1000));
    EXPECT(stat(p, &st) == 0 && (st.st_mode & 07777) == 0600);
    cluster_buffer data = {0}, ct = {0};
    if (EXPECT_OK(cluster_load(p, &data, &ct))) EXPECT(data.len == 1000 && ct.len == 2 && memcmp(ct.data, "v2", 2) == 0);
    cluster_buffer_free(&data);
    cluster_buffer_free(&ct);
    EXPECT(entries(NULL) == 6); /* f0..f4, layout: no temporary file */
    free(payload);
}

static void case_refusals(void) {
    char good[256], bad[256];
    path_of(good, sizeof good, "good");
    path_of(bad, sizeof bad, "bad");
    uint8_t *payload = pattern(1000);
    REQUIRE_OK(cluster_save(good, "ct", payload, 1000));
    size_t n = 0;
    uint8_t *raw = read_file(good, &n);
    REQUIRE(n == 1062);
    /* Truncated at several points, each named with the lengths. */
    size_t cuts[] = {1, 7, 8, 19, 20, 29, 30, 500, n - 32, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_file(bad, raw, cuts[i]);
        char found[64];
        snprintf(found, sizeof found, "found %zu", cuts[i]);
        expect_refused(bad, CLUSTER_ERR_CORRUPT, "truncated");
        expect_refused(bad, CLUSTER_ERR_CORRUPT, found);
    }
    write_file(bad, raw, 500);
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "expected 1062 bytes, found 500");
    /* Damaged: a flipped bit in the payload, in the content type, in the checksum. */
    size_t flips[] = {21, 30 + 400, n - 1};
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        raw[flips[i]] ^= 0x04;
        write_file(bad, raw, n);
        raw[flips[i]] ^= 0x04;
        expect_refused(bad, CLUSTER_ERR_CORRUPT, "checksum mismatch");
    }
    /* A flipped bit in the header's payload length. */
    raw[24] ^= 0x01;
    write_file(bad, raw, n);
    raw[24] ^= 0x01;
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "expected");
    /* A newer version; unknown flags. */
    raw[8] = 2;
    write_file(bad, raw, n);
    raw[8] = 1;
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "format version 2 is newer than this library reads (it reads version 1)");
    raw[12] = 1;
    write_file(bad, raw, n);
    raw[12] = 0;
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "unknown flags");
    /* Trailing bytes. */
    uint8_t *longer = malloc(n + 3);
    REQUIRE(longer != NULL);
    memcpy(longer, raw, n);
    memset(longer + n, 0, 3);
    write_file(bad, longer, n + 3);
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "3 trailing bytes: expected 1062 bytes, found 1065");
    free(longer);
    /* Foreign files. */
    write_file(bad, (const uint8_t *)"hello, world\n", 13);
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "not a libcluster save file (bad magic");
    write_file(bad, NULL, 0);
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "not a libcluster save file (it is empty)");
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13};
    write_file(bad, png, sizeof png);
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "bad magic");
    /* The same file after a text-mode transfer turned \r\n into \n. */
    uint8_t *lf = malloc(n);
    REQUIRE(lf != NULL);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!(raw[i] == '\r' && i + 1 < n && raw[i + 1] == '\n')) lf[m++] = raw[i];
    write_file(bad, lf, m);
    expect_refused(bad, CLUSTER_ERR_CORRUPT, "line endings were converted");
    free(lf);
    /* Missing: an I/O error naming the path; a directory: an I/O error. */
    char missing[256];
    path_of(missing, sizeof missing, "missing");
    expect_refused(missing, CLUSTER_ERR_IO, missing);
    expect_refused(missing, CLUSTER_ERR_IO, "No such file");
    expect_refused(g_dir, CLUSTER_ERR_IO, g_dir);
    /* The good file still loads. */
    cluster_buffer data = {0};
    if (EXPECT_OK(cluster_load(good, &data, NULL))) EXPECT(data.len == 1000 && memcmp(data.data, payload, 1000) == 0);
    cluster_buffer_free(&data);
    free(raw);
    free(payload);
}

static void case_misuse(void) {
    char p[256];
    path_of(p, sizeof p, "f");
    const uint8_t b[4] = {1, 2, 3, 4};
    cluster_buffer data = {0}, ct = {0};
    EXPECT_ST(cluster_save(NULL, "ct", b, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("path must not be NULL");
    EXPECT_ST(cluster_save(p, NULL, b, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("content_type must not be NULL");
    EXPECT_ST(cluster_save(p, "ct", NULL, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("data must not be NULL");
    char long_ct[300];
    memset(long_ct, 'x', 256);
    long_ct[256] = '\0';
    EXPECT_ST(cluster_save(p, long_ct, b, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("at most 255");
    EXPECT_ST(cluster_save(p, "\xff\xfe", b, 4), CLUSTER_ERR_INVALID_ARGUMENT); /* not UTF-8 */
    char slash[300];
    snprintf(slash, sizeof slash, "%s/", g_dir);
    EXPECT_ST(cluster_save(slash, "ct", b, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_save("", "ct", b, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    /* No such directory; a directory in the way. */
    char deep[300];
    snprintf(deep, sizeof deep, "%s/no/such/f", g_dir);
    EXPECT_ST(cluster_save(deep, "ct", b, 4), CLUSTER_ERR_IO);
    EXPECT_LAST_ERROR_HAS("no/such");
    char adir[300];
    path_of(adir, sizeof adir, "adir");
    REQUIRE(mkdir(adir, 0755) == 0);
    EXPECT_ST(cluster_save(adir, "ct", b, 4), CLUSTER_ERR_IO);
    EXPECT_LAST_ERROR_HAS("it is a directory");
    EXPECT(rmdir(adir) == 0);
    /* Load. */
    REQUIRE_OK(cluster_save(p, "ct", b, 4));
    EXPECT_ST(cluster_load(NULL, &data, &ct), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_load(p, NULL, &ct), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("data must not be NULL");
    EXPECT(ct.handle == 0);
    if (EXPECT_OK(cluster_load(p, &data, &ct))) EXPECT(data.len == 4 && ct.len == 2);
    EXPECT_OK(cluster_buffer_free(&data));
    EXPECT_OK(cluster_buffer_free(&ct));
    EXPECT(entries("f") == 1); /* no temporary file left by any failure */
}

/* The size of the file process `pid` writes in g_dir without a name (an
   O_TMPFILE file: /proc shows it as "<dir>/#<inode> (deleted)"), or -1. */
static long long unnamed_file_size(pid_t pid) {
    char fds[64];
    snprintf(fds, sizeof fds, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(fds);
    if (!d) return -1;
    long long size = -1;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s/#", g_dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && size < 0) {
        char link[600], to[600];
        snprintf(link, sizeof link, "%s/%s", fds, e->d_name);
        ssize_t k = readlink(link, to, sizeof to - 1);
        if (k <= 0) continue;
        to[k] = '\0';
        struct stat st;
        if (strncmp(to, prefix, strlen(prefix)) == 0 && strstr(to, "(deleted)") && stat(link, &st) == 0) size = st.st_size;
    }
    closedir(d);
    return size;
}

static void case_atomic(void) {
    char p[256];
    path_of(p, sizeof p, "state");
    const char *old = "the old content";
    REQUIRE_OK(cluster_save(p, "old", (const uint8_t *)old, strlen(old)));
    size_t big = (size_t)256 << 20;
    uint8_t *payload = malloc(big);
    REQUIRE(payload != NULL);
    memset(payload, 0xa5, big);
    fflush(NULL);
    pid_t kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        cluster_status st = cluster_save(p, "new", payload, big);
        _exit(st == CLUSTER_OK ? 0 : 1);
    }
    /* Killed once a sixteenth is written (mid-write, not yet renamed). */
    int64_t until = now_ms() + 60000;
    long long seen = -1;
    while ((seen = unnamed_file_size(kid)) < (long long)(big / 16)) {
        int status;
        if (waitpid(kid, &status, WNOHANG) == kid) {
            EXPECTF(0, "the child ended (status %d) before it was seen writing", status);
            kid = -1;
            break;
        }
        REQUIRE(now_ms() < until);
        sleep_ms(1);
    }
    if (kid > 0) {
        EXPECT(kill(kid, SIGKILL) == 0);
        int status = 0;
        EXPECT(waitpid(kid, &status, 0) == kid && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        harness_logf("killed the saving child with %lld of %zu bytes written", seen, big);
        EXPECT(seen < (long long)big);
    }
    cluster_buffer data = {0}, ct = {0};
    if (EXPECT_OK(cluster_load(p, &data, &ct))) {
        EXPECT(data.len == strlen(old) && memcmp(data.data, old, data.len) == 0);
        EXPECT(ct.len == 3 && strcmp((const char *)ct.data, "old") == 0);
    }
    cluster_buffer_free(&data);
    cluster_buffer_free(&ct);
    EXPECT(entries("state") == 1); /* the unnamed file went with the child */
    /* The same save, not killed, replaces it. */
    EXPECT_OK(cluster_save(p, "new", payload, 1 << 20));
    if (EXPECT_OK(cluster_load(p, &data, NULL))) EXPECT(data.len == 1 << 20 && memcmp(data.data, payload, data.len) == 0);
    cluster_buffer_free(&data);
    EXPECT(entries("state") == 1);
    free(payload);
}

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {{"roundtrip", case_roundtrip}, {"refusals", case_refusals}, {"misuse", case_misuse}, {"atomic", case_atomic}};

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "";
    harness_name = which;
    void (*fn)(void) = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (strcmp(which, cases[i].name) == 0) fn = cases[i].fn;
    if (!fn) {
        fprintf(stderr, "usage: %s roundtrip|refusals|misuse|atomic\n", argv[0]);
        return 2;
    }
    harness_watchdog(100);
    make_dir();
    fn();
    remove_dir();
    return harness_finish();
}
