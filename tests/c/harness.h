/*
 * Minimal test harness for the libcluster C tests.
 *
 *  - EXPECT*: record a failure and carry on (misuse checks, so one library
 *    bug does not hide the next).
 *  - REQUIRE*: print and stop this process at once (_exit), for setup steps
 *    later checks depend on. Launched workers notice their head is gone and
 *    exit by themselves.
 *  - harness_watchdog(s): bounds the whole process; on expiry it prints and
 *    _exits, so a hang is a failure, never a stuck ctest.
 *
 * Every test binary is its own worker: cluster_addprocs relaunches it with
 * the same argv, so argv[1] (the case name) tells a worker what to register.
 */
#ifndef LIBCLUSTER_TEST_HARNESS_H
#define LIBCLUSTER_TEST_HARNESS_H

#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

static int harness_failures = 0;
static const char *harness_name = "test";

static inline void harness_logf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void harness_logf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%s %d] ", harness_name, (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
}

static inline void harness_die(void) {
    fflush(stdout);
    fflush(stderr);
    _exit(1);
}

/* Monotonic milliseconds. */
static inline int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sleep_ms(int64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline void harness_alarm(int sig) {
    (void)sig;
    static const char msg[] = "\n*** watchdog: test exceeded its time limit ***\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(124);
}

/* Kills this process (exit 124) after `seconds`. 0 disarms. */
static inline void harness_watchdog(unsigned seconds) {
    signal(SIGALRM, harness_alarm);
    alarm(seconds);
}

static inline const char *harness_status_name(cluster_status st) {
    return cluster_status_str(st);
}

#define HARNESS_REPORT_STATUS(file, line, expr, got, want)                                              \
    harness_logf("%s:%d: %s returned %d (%s), expected %d (%s); last error: \"%s\" (pid %d)", file, line, \
                 expr, (int)(got), harness_status_name(got), (int)(want), harness_status_name(want),    \
                 cluster_last_error(), (int)cluster_last_error_pid())

/* Non-fatal: `expr` must return status `want`. Evaluates to whether it did. */
#define EXPECT_ST(expr, want)                                                             \
    __extension__({                                                                       \
        cluster_status st_ = (cluster_status)(expr);                                      \
        bool ok_ = st_ == (cluster_status)(want);                                         \
        if (!ok_) {                                                                       \
            HARNESS_REPORT_STATUS(__FILE__, __LINE__, #expr, st_, (cluster_status)(want)); \
            harness_failures++;                                                           \
        }                                                                                 \
        ok_;                                                                              \
    })

#define EXPECT_OK(expr) EXPECT_ST(expr, CLUSTER_OK)

#define REQUIRE_ST(expr, want)                                                            \
    do {                                                                                  \
        cluster_status st_ = (cluster_status)(expr);                                      \
        if (st_ != (cluster_status)(want)) {                                              \
            HARNESS_REPORT_STATUS(__FILE__, __LINE__, #expr, st_, (cluster_status)(want)); \
            harness_logf("FATAL: cannot continue");                                       \
            harness_die();                                                                \
        }                                                                                 \
    } while (0)

#define REQUIRE_OK(expr) REQUIRE_ST(expr, CLUSTER_OK)

#define EXPECT(cond)                                                         \
    __extension__({                                                          \
        bool c_ = (cond);                                                    \
        if (!c_) {                                                           \
            harness_logf("%s:%d: expected %s", __FILE__, __LINE__, #cond);   \
            harness_failures++;                                              \
        }                                                                    \
        c_;                                                                  \
    })

#define EXPECTF(cond, ...)                                                   \
    __extension__({                                                          \
        bool c_ = (cond);                                                    \
        if (!c_) {                                                           \
            harness_logf("%s:%d: expected %s", __FILE__, __LINE__, #cond);   \
            harness_logf(__VA_ARGS__);                                       \
            harness_failures++;                                              \
        }                                                                    \
        c_;                                                                  \
    })

#define REQUIRE(cond)                                                                  \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            harness_logf("%s:%d: FATAL: requirement %s failed", __FILE__, __LINE__, #cond); \
            harness_die();                                                             \
        }                                                                              \
    } while (0)

/* The message of the last error contains `needle`. */
#define EXPECT_LAST_ERROR_HAS(needle)                                                           \
    EXPECTF(strstr(cluster_last_error(), (needle)) != NULL, "last error \"%s\" lacks \"%s\"", \
            cluster_last_error(), (needle))

/*
 * Known library bugs (see tests/KNOWN_ISSUES.md). A check tagged with an
 * issue id logs "KNOWN ISSUE <id>" instead of failing, so the suite stays
 * usable while the bug is open; set CLUSTER_STRICT=1 to make them fail.
 * TODO: drop the tag once the issue is fixed.
 */
static inline bool harness_strict(void) {
    const char *s = getenv("CLUSTER_STRICT");
    return s != NULL && s[0] != '\0' && strcmp(s, "0") != 0;
}

static inline void harness_known(const char *issue, const char *file, int line, const char *what) {
    if (harness_strict()) {
        harness_logf("%s:%d: %s (known issue %s; failing because CLUSTER_STRICT is set)", file, line, what, issue);
        harness_failures++;
    } else {
        harness_logf("%s:%d: KNOWN ISSUE %s: %s (TODO: remove the tag once fixed)", file, line, issue, what);
    }
}

/* As EXPECT_ST, for a check that fails because of a known library bug. */
#define EXPECT_ST_KNOWN(issue, expr, want)                                                   \
    __extension__({                                                                          \
        cluster_status st_ = (cluster_status)(expr);                                         \
        bool ok_ = st_ == (cluster_status)(want);                                            \
        if (!ok_) {                                                                          \
            char w_[512];                                                                    \
            snprintf(w_, sizeof w_, "%s returned %d (%s), expected %d; last error \"%s\"", #expr, \
                     (int)st_, cluster_status_str(st_), (int)(want), cluster_last_error());  \
            harness_known(issue, __FILE__, __LINE__, w_);                                    \
        }                                                                                    \
        ok_;                                                                                 \
    })

#define EXPECT_KNOWN(issue, cond)                                            \
    __extension__({                                                          \
        bool c_ = (cond);                                                    \
        if (!c_) harness_known(issue, __FILE__, __LINE__, "expected " #cond); \
        c_;                                                                  \
    })

/* Ends a test case: prints a summary, returns the process exit status. */
static inline int harness_finish(void) {
    if (harness_failures) {
        harness_logf("FAILED: %d check(s) failed", harness_failures);
        return 1;
    }
    harness_logf("PASSED");
    return 0;
}

/* Encodes/decodes little host-order integers as call payloads. */
static inline int32_t payload_i32(const uint8_t *data, size_t len) {
    int32_t v = 0;
    if (len >= sizeof v) memcpy(&v, data, sizeof v);
    return v;
}

#ifdef __cplusplus
}
#endif

#endif
