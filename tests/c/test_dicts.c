/*
 * Cluster dictionaries from C (cluster_dict_*; tests/dicts.rs is the Rust
 * twin): ClusterDicts' matrix (members all / workers / a list / the
 * default x given or generated name x both kinds) with every operation,
 * from the head and from the other processes (members or not) through a
 * handle passed in call arguments; every _async form; value functions
 * registered by name (and CLUSTER_DICT_EACH); concurrent writers and
 * get-or-insert from several processes; a member SIGKILLed under
 * replication 2 (no acknowledged write lost) and 1 (its keys reported
 * lost); release leaving nothing anywhere; misuse (NULL, freed, stale and
 * wrong-kind handles, bad enum values, garbage bytes).
 *
 * Usage: test_dicts <case>. As test_workers, the binary is its own worker:
 * every process registers the handlers and value functions below, workers
 * then serve until the head shuts the cluster down.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>

static cluster_ctx *g_ctx;
static int32_t g_me;

/* ---- bytes: a growable buffer and a reader ---------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static void buf_put(buf_t *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        REQUIRE(p != NULL);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_u32(buf_t *b, uint32_t v) { buf_put(b, &v, sizeof v); }

static void buf_blob(buf_t *b, const void *data, size_t n) {
    buf_u32(b, (uint32_t)n);
    buf_put(b, data, n);
}

static void buf_free(buf_t *b) {
    free(b->p);
    *b = (buf_t){0};
}

typedef struct {
    const uint8_t *p;
    size_t left;
    bool bad;
} rd_t;

static const uint8_t *rd_take(rd_t *r, size_t n) {
    if (r->bad || n > r->left) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static uint32_t rd_u32(rd_t *r) {
    uint32_t v = 0;
    const uint8_t *p = rd_take(r, sizeof v);
    if (p) memcpy(&v, p, sizeof v);
    return v;
}

static const uint8_t *rd_blob(rd_t *r, size_t *n) {
    *n = rd_u32(r);
    return rd_take(r, *n);
}

static size_t slen(const char *s) { return s ? strlen(s) : 0; }

static uint64_t rd_u64(rd_t *r) {
    uint64_t v = 0;
    const uint8_t *p = rd_take(r, sizeof v);
    if (p) memcpy(&v, p, sizeof v);
    return v;
}

/* Concurrent clients start together: the processes share one machine, so
 * CLOCK_MONOTONIC is the same clock in all of them. */
static void sleep_until_ms(int64_t t) {
    int64_t now = now_ms();
    if (t > now && t - now < 5000) sleep_ms(t - now);
}

static bool same_bytes(const void *a, size_t an, const void *b, size_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* ---- listings as bytes: count, then (key, value) blobs ------------------------ */

typedef struct {
    const uint8_t *k, *v;
    size_t kl, vl;
} kv_t;

typedef struct {
    kv_t *items;
    size_t n;
} kvs_t;

static cluster_status encode_entries(cluster_dict_entries *e, buf_t *out) {
    size_t n = 0;
    cluster_status st = cluster_dict_entries_count(e, &n);
    if (st != CLUSTER_OK) return st;
    buf_u32(out, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *k = NULL, *v = NULL;
        size_t kl = 0, vl = 0;
        st = cluster_dict_entries_get(e, i, &k, &kl, &v, &vl);
        if (st != CLUSTER_OK) return st;
        buf_blob(out, k, kl);
        buf_blob(out, v, vl);
    }
    return CLUSTER_OK;
}

static int kv_cmp(const void *pa, const void *pb) {
    const kv_t *a = pa, *b = pb;
    size_t n = a->kl < b->kl ? a->kl : b->kl;
    int c = n ? memcmp(a->k, b->k, n) : 0;
    if (c) return c;
    if (a->kl != b->kl) return a->kl < b->kl ? -1 : 1;
    n = a->vl < b->vl ? a->vl : b->vl;
    c = n ? memcmp(a->v, b->v, n) : 0;
    if (c) return c;
    return a->vl == b->vl ? 0 : a->vl < b->vl ? -1 : 1;
}

/* Decodes what encode_entries wrote (pointing into `data`), sorted. */
static kvs_t kvs_decode(const uint8_t *data, size_t len) {
    rd_t r = {data, len, false};
    kvs_t s = {NULL, rd_u32(&r)};
    if (r.bad) s.n = 0;
    s.items = calloc(s.n ? s.n : 1, sizeof *s.items);
    REQUIRE(s.items != NULL);
    for (size_t i = 0; i < s.n; i++) {
        s.items[i].k = rd_blob(&r, &s.items[i].kl);
        s.items[i].v = rd_blob(&r, &s.items[i].vl);
    }
    if (r.bad) {
        harness_logf("a listing did not decode");
        harness_failures++;
        s.n = 0;
    }
    qsort(s.items, s.n, sizeof *s.items, kv_cmp);
    return s;
}

static void kvs_free(kvs_t *s) {
    free(s->items);
    *s = (kvs_t){0};
}

static const kv_t *kvs_find(const kvs_t *s, const void *k, size_t kl) {
    kv_t want = {k, NULL, kl, 0};
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const kv_t *m = &s->items[mid];
        kv_t key_only = {m->k, NULL, m->kl, 0};
        int c = kv_cmp(&key_only, &want);
        if (c == 0) return m;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool kvs_equal(const kvs_t *a, const kvs_t *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++)
        if (kv_cmp(&a->items[i], &b->items[i]) != 0) return false;
    return true;
}

/* ---- one operation, here or in another process ---------------------------- */

enum {
    OP_SET = 1,
    OP_GET,
    OP_GET_LOCAL, /* out: held (1 byte), then the value */
    OP_HASKEY,    /* out: 1 byte */
    OP_GET_OR_INSERT,
    OP_POP,
    OP_DELETE,
    OP_LENGTH, /* out: uint64_t */
    OP_KEYS,   /* out: a listing; OP_KEYS + CLUSTER_DICT_* is the listing asked for */
    OP_VALUES,
    OP_PAIRS,
    OP_LOCALPART,
    OP_OWNER, /* out: int32_t */
    OP_RELEASE,
    OP_SET_WITH, /* value: function name, NUL, arguments */
};

/* An operation's outcome: its status, the process and message of its
 * error, its output. */
typedef struct {
    cluster_status st;
    int32_t pid;
    char msg[256];
    buf_t out;
} res_t;

static void res_clear(res_t *r) {
    buf_free(&r->out);
    memset(r, 0, sizeof *r);
}

static void res_status(res_t *r, cluster_status st) {
    r->st = st;
    if (st != CLUSTER_OK) {
        r->pid = cluster_last_error_pid();
        snprintf(r->msg, sizeof r->msg, "%s", cluster_last_error());
    }
}

static void do_op(cluster_dict *d, uint32_t op, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, res_t *r) {
    cluster_buffer b = {0};
    cluster_status st;
    switch (op) {
    case OP_SET:
        st = cluster_dict_set(d, k, kl, v, vl);
        break;
    case OP_GET:
        st = cluster_dict_get(d, k, kl, &b);
        break;
    case OP_GET_LOCAL: {
        bool held = false;
        st = cluster_dict_get_local(d, k, kl, &held, &b);
        uint8_t h = held;
        buf_put(&r->out, &h, 1);
        break;
    }
    case OP_HASKEY: {
        bool has = false;
        st = cluster_dict_haskey(d, k, kl, &has);
        uint8_t h = has;
        if (st == CLUSTER_OK) buf_put(&r->out, &h, 1);
        break;
    }
    case OP_GET_OR_INSERT:
        st = cluster_dict_get_or_insert(d, k, kl, v, vl, &b);
        break;
    case OP_POP:
        st = cluster_dict_pop(d, k, kl, &b);
        break;
    case OP_DELETE:
        st = cluster_dict_delete(d, k, kl);
        break;
    case OP_LENGTH: {
        size_t n = 0;
        st = cluster_dict_length(d, &n);
        uint64_t n64 = n;
        if (st == CLUSTER_OK) buf_put(&r->out, &n64, sizeof n64);
        break;
    }
    case OP_KEYS:
    case OP_VALUES:
    case OP_PAIRS:
    case OP_LOCALPART: {
        cluster_dict_entries *e = NULL;
        st = op == OP_LOCALPART ? cluster_dict_localpart(d, &e) : cluster_dict_list(d, (int32_t)(op - OP_KEYS), &e);
        if (st == CLUSTER_OK) st = encode_entries(e, &r->out);
        res_status(r, st);
        EXPECT_OK(cluster_dict_entries_free(e));
        return;
    }
    case OP_OWNER: {
        int32_t pid = 0;
        st = cluster_dict_owner(d, k, kl, &pid);
        if (st == CLUSTER_OK) buf_put(&r->out, &pid, sizeof pid);
        break;
    }
    case OP_RELEASE:
        st = cluster_dict_release(d);
        break;
    case OP_SET_WITH: {
        size_t fl = strnlen((const char *)v, vl);
        st = fl == vl ? CLUSTER_ERR_INVALID_ARGUMENT
                      : cluster_dict_set_with(d, k, kl, (const char *)v, v + fl + 1, vl - fl - 1);
        break;
    }
    default:
        st = CLUSTER_ERR_INVALID_ARGUMENT;
    }
    res_status(r, st);
    if (b.handle != 0) {
        buf_put(&r->out, b.data, b.len);
        EXPECT_OK(cluster_buffer_free(&b));
    }
}

/* remotecall + a bounded fetch; appends the value to *out. */
static cluster_status call_fetch(int32_t pid, const char *fn, const void *args, size_t alen, buf_t *out,
                                 int64_t timeout_ms) {
    cluster_future *f = NULL;
    cluster_status st = cluster_remotecall(g_ctx, pid, fn, (const uint8_t *)args, alen, &f);
    if (st == CLUSTER_OK) {
        const uint8_t *d = NULL;
        size_t n = 0;
        st = cluster_future_fetch(f, timeout_ms, &d, &n);
        if (st == CLUSTER_OK && out) buf_put(out, d, n);
    }
    if (st != CLUSTER_OK)
        harness_logf("call of %s on %d: %s: %s", fn, pid, cluster_status_str(st), cluster_last_error());
    cluster_future_free(f);
    return st;
}

static buf_t handle_bytes(cluster_dict *d) {
    cluster_buffer hb = {0};
    REQUIRE_OK(cluster_dict_to_bytes(d, &hb));
    buf_t b = {0};
    buf_blob(&b, hb.data, hb.len);
    EXPECT_OK(cluster_buffer_free(&hb));
    EXPECT(hb.handle == 0 && hb.data == NULL);
    return b;
}

static int32_t reply_res(cluster_call *call, res_t *res) {
    buf_t b = {0};
    buf_u32(&b, (uint32_t)res->st);
    buf_u32(&b, (uint32_t)res->pid);
    buf_blob(&b, res->msg, strlen(res->msg));
    buf_put(&b, res->out.p, res->out.len);
    cluster_status st = cluster_call_reply(call, b.p, b.len);
    buf_free(&b);
    res_clear(res);
    return st;
}

static void parse_res(const uint8_t *data, size_t len, res_t *r) {
    rd_t rd = {data, len, false};
    r->st = (cluster_status)rd_u32(&rd);
    r->pid = (int32_t)rd_u32(&rd);
    size_t ml = 0;
    const uint8_t *m = rd_blob(&rd, &ml);
    if (rd.bad) {
        r->st = CLUSTER_ERR_PROTOCOL;
        snprintf(r->msg, sizeof r->msg, "a dict_op reply did not decode");
        return;
    }
    snprintf(r->msg, sizeof r->msg, "%.*s", (int)ml, (const char *)m);
    buf_put(&r->out, rd.p, rd.left);
}

/* Operation `op` on `d` from process `pid` (here, or through "dict_op"
 * with the handle as bytes). */
static void op_on(int32_t pid, cluster_dict *d, uint32_t op, const void *k, size_t kl, const void *v, size_t vl,
                  res_t *r) {
    res_clear(r);
    if (pid == g_me) {
        do_op(d, op, k, kl, v, vl, r);
        return;
    }
    buf_t a = {0};
    buf_u32(&a, op);
    buf_t h = handle_bytes(d);
    buf_put(&a, h.p, h.len);
    buf_free(&h);
    buf_blob(&a, k, kl);
    buf_blob(&a, v, vl);
    buf_t reply = {0};
    cluster_status st = call_fetch(pid, "dict_op", a.p, a.len, &reply, 30000);
    buf_free(&a);
    if (st != CLUSTER_OK) {
        harness_failures++;
        res_status(r, st);
    } else {
        parse_res(reply.p, reply.len, r);
    }
    buf_free(&reply);
}

/* Runs `op` from `pid`, expecting status `want` and, when `out` is not
 * NULL, output out[0..outl). Returns whether both held. */
static bool check_op(const char *file, int line, int32_t pid, cluster_dict *d, uint32_t op, const void *k, size_t kl,
                     const void *v, size_t vl, cluster_status want, const void *out, size_t outl) {
    res_t r = {0};
    op_on(pid, d, op, k, kl, v, vl, &r);
    bool ok = r.st == want;
    if (!ok)
        harness_logf("%s:%d: op %u from process %d: %s (%s, process %d), expected %s", file, line, op, pid,
                     cluster_status_str(r.st), r.msg, r.pid, cluster_status_str(want));
    if (ok && out && !same_bytes(r.out.p, r.out.len, out, outl)) {
        harness_logf("%s:%d: op %u from process %d: got %zu bytes \"%.*s\", expected %zu \"%.*s\"", file, line, op,
                     pid, r.out.len, (int)r.out.len, (const char *)r.out.p, outl, (int)outl, (const char *)out);
        ok = false;
    }
    if (!ok) harness_failures++;
    res_clear(&r);
    return ok;
}

/* String keys, values and outputs (NULL: empty, or no output check). */
#define OPS(pid, d, op, k, v, want, out) \
    check_op(__FILE__, __LINE__, pid, d, op, k, slen(k), v, slen(v), want, out, slen(out))
/* Binary outputs. */
#define OPB(pid, d, op, k, v, want, out, outl) \
    check_op(__FILE__, __LINE__, pid, d, op, k, slen(k), v, slen(v), want, out, outl)

/* A listing from `pid` (OP_KEYS/VALUES/PAIRS/LOCALPART); frees with
 * kvs_free + res_clear. */
static kvs_t listing_on(int32_t pid, cluster_dict *d, uint32_t op, res_t *r) {
    op_on(pid, d, op, NULL, 0, NULL, 0, r);
    if (!EXPECTF(r->st == CLUSTER_OK, "listing %u from %d: %s: %s", op, pid, cluster_status_str(r->st), r->msg))
        return kvs_decode(NULL, 0);
    return kvs_decode(r->out.p, r->out.len);
}

static size_t localpart_count(int32_t pid, cluster_dict *d) {
    res_t r = {0};
    kvs_t s = listing_on(pid, d, OP_LOCALPART, &r);
    size_t n = s.n;
    kvs_free(&s);
    res_clear(&r);
    return n;
}

static int32_t owner_of(cluster_dict *d, const char *key) {
    int32_t pid = 0;
    EXPECT_OK(cluster_dict_owner(d, (const uint8_t *)key, strlen(key), &pid));
    return pid;
}

/* The names of the dicts process `pid` holds state for. */
static size_t local_names_on(int32_t pid, char *first, size_t cap) {
    buf_t b = {0};
    if (pid == g_me) {
        cluster_dict_entries *e = NULL;
        EXPECT_OK(cluster_dict_local_names(g_ctx, &e));
        if (e) EXPECT_OK(encode_entries(e, &b));
        EXPECT_OK(cluster_dict_entries_free(e));
    } else if (call_fetch(pid, "dict_local_names", NULL, 0, &b, 10000) != CLUSTER_OK) {
        harness_failures++;
    }
    kvs_t s = kvs_decode(b.p, b.len);
    size_t n = s.n;
    if (first && cap) snprintf(first, cap, "%.*s", n ? (int)s.items[0].kl : 0, n ? (const char *)s.items[0].k : "");
    kvs_free(&s);
    buf_free(&b);
    return n;
}

static void expect_nothing_held(const int32_t *pids, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        char name[128];
        size_t held = local_names_on(pids[i], name, sizeof name);
        EXPECTF(held == 0, "%s: process %d still holds %zu dict(s), e.g. %s", what, pids[i], held, name);
    }
}

/* ---- handlers and value functions (registered in every process) ------------- */

static int32_t h_getpid(void *ud, cluster_call *call) {
    (void)ud;
    int32_t v = (int32_t)getpid();
    return cluster_call_reply(call, (const uint8_t *)&v, sizeof v);
}

/* args: op, handle, key, value (blobs); replies a res_t. */
static int32_t h_dict_op(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a = NULL;
    size_t n = 0;
    cluster_call_args(call, &a, &n);
    rd_t r = {a, n, false};
    uint32_t op = rd_u32(&r);
    size_t hl, kl, vl;
    const uint8_t *h = rd_blob(&r, &hl), *k = rd_blob(&r, &kl), *v = rd_blob(&r, &vl);
    if (r.bad) return cluster_call_fail(call, "bad dict_op arguments");
    res_t res = {0};
    cluster_dict *d = NULL;
    cluster_status st = cluster_dict_open(g_ctx, h, hl, &d);
    if (st != CLUSTER_OK)
        res_status(&res, st);
    else
        do_op(d, op, k, kl, v, vl, &res);
    cluster_dict_free(d);
    return reply_res(call, &res);
}

/* What a worker's dict_create takes. */
struct wire_spec {
    int32_t kind, members;
    uint32_t replication, npids;
    int32_t pids[8];
    char name[64];
};

/* args: a wire_spec; replies a res_t whose output is the handle's bytes. */
static int32_t h_dict_create(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a = NULL;
    size_t n = 0;
    cluster_call_args(call, &a, &n);
    struct wire_spec ws;
    if (n != sizeof ws) return cluster_call_fail(call, "bad dict_create arguments");
    memcpy(&ws, a, sizeof ws);
    cluster_dict_spec spec;
    cluster_dict_spec_init(&spec);
    spec.kind = ws.kind;
    spec.members = ws.members;
    spec.replication = ws.replication;
    spec.pids = ws.pids;
    spec.npids = ws.npids;
    spec.name = ws.name[0] ? ws.name : NULL;
    res_t res = {0};
    cluster_dict *d = NULL;
    cluster_status st = cluster_dict_create(g_ctx, &spec, &d);
    res_status(&res, st);
    if (st == CLUSTER_OK) {
        cluster_buffer hb = {0};
        res_status(&res, cluster_dict_to_bytes(d, &hb));
        buf_put(&res.out, hb.data, hb.len);
        cluster_buffer_free(&hb);
    }
    cluster_dict_free(d);
    return reply_res(call, &res);
}

static int32_t h_dict_local_names(void *ud, cluster_call *call) {
    (void)ud;
    cluster_dict_entries *e = NULL;
    cluster_status st = cluster_dict_local_names(g_ctx, &e);
    if (st != CLUSTER_OK) return cluster_call_fail(call, cluster_last_error());
    buf_t b = {0};
    st = encode_entries(e, &b);
    cluster_dict_entries_free(e);
    st = st == CLUSTER_OK ? cluster_call_reply(call, b.p, b.len) : cluster_call_fail(call, cluster_last_error());
    buf_free(&b);
    return st;
}

/* Opens the handle at the start of `r`. */
static cluster_dict *open_arg(rd_t *r) {
    size_t hl = 0;
    const uint8_t *h = rd_blob(r, &hl);
    cluster_dict *d = NULL;
    if (!r->bad && cluster_dict_open(g_ctx, h, hl, &d) != CLUSTER_OK) d = NULL;
    return d;
}

/* Rounds of writes to keys "key<i>": every key as a pipelined set_async,
 * then every answer, the value "<myid>:<round>". */
static cluster_status write_rounds(cluster_dict *d, uint32_t nkeys, uint32_t rounds, char *err, size_t errcap) {
    cluster_future *fs[64];
    if (nkeys > 64) return CLUSTER_ERR_INVALID_ARGUMENT;
    for (uint32_t round = 0; round < rounds; round++) {
        char v[32];
        int vl = snprintf(v, sizeof v, "%d:%u", g_me, round);
        for (uint32_t i = 0; i < nkeys; i++) {
            char k[16];
            int kl = snprintf(k, sizeof k, "key%u", i);
            fs[i] = NULL;
            cluster_status st = cluster_dict_set_async(d, (const uint8_t *)k, (size_t)kl, (const uint8_t *)v, (size_t)vl, &fs[i]);
            if (st != CLUSTER_OK) {
                snprintf(err, errcap, "set_async: %s", cluster_last_error());
                for (uint32_t j = 0; j < i; j++) cluster_future_free(fs[j]);
                return st;
            }
        }
        cluster_status first = CLUSTER_OK;
        for (uint32_t i = 0; i < nkeys; i++) {
            cluster_status st = cluster_future_wait(fs[i], 20000);
            if (st != CLUSTER_OK && first == CLUSTER_OK) {
                first = st;
                snprintf(err, errcap, "round %u key%u: %s: %s", round, i, cluster_status_str(st), cluster_last_error());
            }
            cluster_future_free(fs[i]);
        }
        if (first != CLUSTER_OK) return first;
    }
    return CLUSTER_OK;
}

/* args: handle, nkeys, rounds, start (monotonic ms, u64). */
static int32_t h_dict_write_many(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a = NULL;
    size_t n = 0;
    cluster_call_args(call, &a, &n);
    rd_t r = {a, n, false};
    cluster_dict *d = open_arg(&r);
    uint32_t nkeys = rd_u32(&r), rounds = rd_u32(&r);
    int64_t start = (int64_t)rd_u64(&r);
    if (!d || r.bad) {
        cluster_dict_free(d);
        return cluster_call_fail(call, "bad dict_write_many arguments");
    }
    char err[300] = "";
    sleep_until_ms(start);
    cluster_status st = write_rounds(d, nkeys, rounds, err, sizeof err);
    cluster_dict_free(d);
    return st == CLUSTER_OK ? cluster_call_reply(call, NULL, 0) : cluster_call_fail(call, err);
}

/* args: handle, n, start (monotonic ms, u64); get_or_insert("new<i>",
 * myid) for each i (blocking); replies n int32 values. */
static int32_t h_dict_get_insert_many(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a = NULL;
    size_t n = 0;
    cluster_call_args(call, &a, &n);
    rd_t r = {a, n, false};
    cluster_dict *d = open_arg(&r);
    uint32_t count = rd_u32(&r);
    int64_t start = (int64_t)rd_u64(&r);
    if (!d || r.bad) {
        cluster_dict_free(d);
        return cluster_call_fail(call, "bad dict_get_insert_many arguments");
    }
    int32_t *got = calloc(count ? count : 1, sizeof *got);
    REQUIRE(got != NULL);
    cluster_status st = CLUSTER_OK;
    sleep_until_ms(start);
    /* Each process from its own first key, so that every one wins some. */
    for (uint32_t n_done = 0; n_done < count && st == CLUSTER_OK; n_done++) {
        uint32_t i = (n_done + (uint32_t)g_me * 11) % count;
        char k[16];
        int kl = snprintf(k, sizeof k, "new%u", i);
        cluster_buffer b = {0};
        st = cluster_dict_get_or_insert(d, (const uint8_t *)k, (size_t)kl, (const uint8_t *)&g_me, sizeof g_me, &b);
        if (st == CLUSTER_OK) got[i] = b.len == 4 ? payload_i32(b.data, b.len) : -1;
        cluster_buffer_free(&b);
    }
    cluster_dict_free(d);
    st = st == CLUSTER_OK ? cluster_call_reply(call, (const uint8_t *)got, count * sizeof *got)
                          : cluster_call_fail(call, cluster_last_error());
    free(got);
    return st;
}

/* A writer of keys {tag, i} = i (uint32_t) for `ms` milliseconds, with
 * blocking sets or 16 set_async in flight; counts what failed. */
struct seq {
    cluster_dict *d;
    uint8_t tag;
    bool async;
    uint32_t ms;
    uint32_t n, nerr;
    int32_t first_st;
    char first_msg[200];
};

static void seq_failed(struct seq *s, cluster_status st, uint32_t i) {
    if (s->nerr++ == 0) {
        s->first_st = st;
        snprintf(s->first_msg, sizeof s->first_msg, "write %u: %s: %s", i, cluster_status_str(st), cluster_last_error());
    }
}

static void *write_seq(void *p) {
    struct seq *s = p;
    enum { WINDOW = 16 };
    cluster_future *win[WINDOW] = {0};
    uint32_t idx[WINDOW] = {0};
    int64_t end = now_ms() + s->ms;
    uint32_t i = 0;
    for (; now_ms() < end; i++) {
        uint8_t k[5] = {s->tag};
        memcpy(k + 1, &i, 4);
        if (!s->async) {
            cluster_status st = cluster_dict_set(s->d, k, sizeof k, (const uint8_t *)&i, sizeof i);
            if (st != CLUSTER_OK) seq_failed(s, st, i);
        } else {
            uint32_t slot = i % WINDOW;
            if (win[slot]) {
                cluster_status st = cluster_future_wait(win[slot], 30000);
                if (st != CLUSTER_OK) seq_failed(s, st, idx[slot]);
                cluster_future_free(win[slot]);
                win[slot] = NULL;
            }
            cluster_status st = cluster_dict_set_async(s->d, k, sizeof k, (const uint8_t *)&i, sizeof i, &win[slot]);
            if (st != CLUSTER_OK) seq_failed(s, st, i);
            idx[slot] = i;
        }
        if (i % 2 == 1) sleep_ms(1); /* a steady stream, not a flood */
    }
    for (uint32_t slot = 0; slot < WINDOW; slot++) {
        if (!win[slot]) continue;
        cluster_status st = cluster_future_wait(win[slot], 30000);
        if (st != CLUSTER_OK) seq_failed(s, st, idx[slot]);
        cluster_future_free(win[slot]);
    }
    s->n = i;
    return NULL;
}

/* args: handle, tag (u32), async (u32), ms (u32); replies n, nerr,
 * first status, first message. */
static int32_t h_dict_write_seq(void *ud, cluster_call *call) {
    (void)ud;
    const uint8_t *a = NULL;
    size_t n = 0;
    cluster_call_args(call, &a, &n);
    rd_t r = {a, n, false};
    struct seq s = {0};
    s.d = open_arg(&r);
    s.tag = (uint8_t)rd_u32(&r);
    s.async = rd_u32(&r) != 0;
    s.ms = rd_u32(&r);
    if (!s.d || r.bad) {
        cluster_dict_free(s.d);
        return cluster_call_fail(call, "bad dict_write_seq arguments");
    }
    write_seq(&s);
    cluster_dict_free(s.d);
    buf_t b = {0};
    buf_u32(&b, s.n);
    buf_u32(&b, s.nerr);
    buf_u32(&b, (uint32_t)s.first_st);
    buf_blob(&b, s.first_msg, strlen(s.first_msg));
    cluster_status st = cluster_call_reply(call, b.p, b.len);
    buf_free(&b);
    return st;
}

/* Value functions. Every call checks its user data and counts itself. */
static int g_vf_tag;
static _Atomic int g_vf_calls;
static _Atomic int g_vf_bad_ud;
static cluster_value *_Atomic g_kept_value;
static _Atomic int g_bad_set_status = -1;

/* This process's id, then the arguments. */
static int32_t vf_myid(void *ud, const uint8_t *args, size_t len, cluster_value *value) {
    if (ud != &g_vf_tag) atomic_fetch_add(&g_vf_bad_ud, 1);
    atomic_fetch_add(&g_vf_calls, 1);
    uint8_t v[64];
    if (len > sizeof v - 4) len = sizeof v - 4;
    memcpy(v, &g_me, 4);
    if (len) memcpy(v + 4, args, len);
    return cluster_value_set(value, v, 4 + len);
}

/* Fails on the process args names (0 or no args: everywhere); else "ok". */
static int32_t vf_fail(void *ud, const uint8_t *args, size_t len, cluster_value *value) {
    if (ud != &g_vf_tag) atomic_fetch_add(&g_vf_bad_ud, 1);
    atomic_fetch_add(&g_vf_calls, 1);
    int32_t on = payload_i32(args, len);
    if (on == 0 || on == g_me) {
        char msg[64];
        int n = snprintf(msg, sizeof msg, "value function failed on %d", g_me);
        cluster_value_set(value, (const uint8_t *)msg, (size_t)n);
        return 1;
    }
    return cluster_value_set(value, (const uint8_t *)"ok", 2);
}

/* Fails without putting a message: the library words one. */
static int32_t vf_fail_quietly(void *ud, const uint8_t *args, size_t len, cluster_value *value) {
    (void)ud;
    (void)args;
    (void)len;
    (void)value;
    return 7;
}

/* Keeps its cluster_value (stale once it returns); checks a bad put. */
static int32_t vf_keep(void *ud, const uint8_t *args, size_t len, cluster_value *value) {
    (void)ud;
    (void)args;
    (void)len;
    atomic_store(&g_kept_value, value);
    atomic_store(&g_bad_set_status, (int)cluster_value_set(value, NULL, 3));
    cluster_value_set(value, (const uint8_t *)"first", 5);
    return cluster_value_set(value, (const uint8_t *)"kept", 4); /* replaces "first" */
}

static void register_all(void) {
    static const struct {
        const char *name;
        cluster_handler fn;
    } handlers[] = {
        {"getpid", h_getpid},
        {"dict_op", h_dict_op},
        {"dict_create", h_dict_create},
        {"dict_local_names", h_dict_local_names},
        {"dict_write_many", h_dict_write_many},
        {"dict_get_insert_many", h_dict_get_insert_many},
        {"dict_write_seq", h_dict_write_seq},
    };
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        REQUIRE_OK(cluster_register(g_ctx, handlers[i].name, handlers[i].fn, NULL));
    REQUIRE_OK(cluster_dict_register_value_fn(g_ctx, "myid", vf_fail, &g_vf_tag));
    REQUIRE_OK(cluster_dict_register_value_fn(g_ctx, "myid", vf_myid, &g_vf_tag)); /* replaces the first */
    REQUIRE_OK(cluster_dict_register_value_fn(g_ctx, "fail", vf_fail, &g_vf_tag));
    REQUIRE_OK(cluster_dict_register_value_fn(g_ctx, "fail_quietly", vf_fail_quietly, NULL));
    REQUIRE_OK(cluster_dict_register_value_fn(g_ctx, "keep", vf_keep, NULL));
}

/* ---- head helpers --------------------------------------------------------- */

static void addprocs(size_t n, int32_t *ids) {
    int64_t t0 = now_ms();
    REQUIRE_OK(cluster_addprocs(g_ctx, n, NULL, ids));
    harness_logf("addprocs(%zu) took %" PRId64 " ms", n, now_ms() - t0);
}

static void shutdown_all(void) {
    EXPECT_OK(cluster_shutdown(g_ctx, 10000));
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

static cluster_dict *create(int32_t kind, int32_t members, const int32_t *pids, size_t npids, const char *name,
                            uint32_t replication) {
    cluster_dict_spec spec;
    REQUIRE_OK(cluster_dict_spec_init(&spec));
    spec.kind = kind;
    spec.members = members;
    spec.pids = pids;
    spec.npids = npids;
    spec.name = name;
    spec.replication = replication;
    cluster_dict *d = NULL;
    REQUIRE_OK(cluster_dict_create(g_ctx, &spec, &d));
    return d;
}

/* A worker's dict_create of `ws`: its status; on success *d opens the
 * handle it sent back. */
static cluster_status create_on(int32_t pid, const struct wire_spec *ws, cluster_dict **d, res_t *r) {
    res_clear(r);
    buf_t reply = {0};
    cluster_status st = call_fetch(pid, "dict_create", ws, sizeof *ws, &reply, 20000);
    if (st != CLUSTER_OK) {
        harness_failures++;
        buf_free(&reply);
        return st;
    }
    parse_res(reply.p, reply.len, r);
    buf_free(&reply);
    if (r->st == CLUSTER_OK && d) EXPECT_OK(cluster_dict_open(g_ctx, r->out.p, r->out.len, d));
    return r->st;
}

static size_t length_of(cluster_dict *d) {
    size_t n = SIZE_MAX;
    EXPECT_OK(cluster_dict_length(d, &n));
    return n;
}

/* A future's value, copied (or its status). */
static cluster_status fetch_future(cluster_future *f, buf_t *out) {
    const uint8_t *data = NULL;
    size_t n = 0;
    cluster_status st = cluster_future_fetch(f, 20000, &data, &n);
    if (st == CLUSTER_OK && out) buf_put(out, data, n);
    return st;
}

/* Waits for `f`, expects status `want` (from both wait and fetch) and,
 * if `val` is not NULL, the value val[0..vl); frees it. */
static bool check_future(const char *file, int line, cluster_future *f, cluster_status want, const void *val, size_t vl) {
    bool ok = true;
    cluster_status w = cluster_future_wait(f, 20000);
    buf_t got = {0};
    cluster_status st = fetch_future(f, &got);
    if (w != want || st != want) {
        harness_logf("%s:%d: future: wait %s, fetch %s (%s), expected %s", file, line, cluster_status_str(w),
                     cluster_status_str(st), cluster_last_error(), cluster_status_str(want));
        ok = false;
    } else if (want == CLUSTER_OK && val && !same_bytes(got.p, got.len, val, vl)) {
        harness_logf("%s:%d: future value: %zu bytes \"%.*s\", expected %zu \"%.*s\"", file, line, got.len,
                     (int)got.len, (const char *)got.p, vl, (int)vl, (const char *)val);
        ok = false;
    } else if (want != CLUSTER_OK) {
        int32_t pid = -1;
        const char *msg = NULL;
        if (cluster_future_error(f, &pid, &msg) != CLUSTER_OK || !msg || !msg[0]) {
            harness_logf("%s:%d: a failed future has no error", file, line);
            ok = false;
        }
    }
    if (!ok) harness_failures++;
    buf_free(&got);
    EXPECT_OK(cluster_future_free(f));
    return ok;
}
#define CHECK_FUTURE(f, want, val, vl) check_future(__FILE__, __LINE__, f, want, val, vl)
#define K(s) (const uint8_t *)(s), strlen(s)

/* Every _async form on `d` from here. `base`: the pairs already there;
 * `local_global`: this process is a member of a global dict (reads its
 * own copy). */
static void async_ops(cluster_dict *d, size_t base, bool local_global) {
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_dict_set_async(d, K("as-x"), K("1"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, "", 0);
    REQUIRE_OK(cluster_dict_get_async(d, K("as-x"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, "1", 1);
    REQUIRE_OK(cluster_dict_get_async(d, K("as-missing"), &f));
    CHECK_FUTURE(f, CLUSTER_ERR_NOT_FOUND, NULL, 0);
    uint8_t yes = 1, no = 0;
    REQUIRE_OK(cluster_dict_haskey_async(d, K("as-x"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, &yes, 1);
    REQUIRE_OK(cluster_dict_haskey_async(d, K("as-missing"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, &no, 1);
    REQUIRE_OK(cluster_dict_get_or_insert_async(d, K("as-y"), K("2"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, "2", 1);
    REQUIRE_OK(cluster_dict_get_or_insert_async(d, K("as-y"), K("3"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, "2", 1);
    /* Batches: blocking and as a future; each pair reads back. */
    {
        const char *ks[3] = {"as-m0", "as-m1", "as-m2"}, *vs[3] = {"m0", "m1", "m2"};
        cluster_bytes kb[3], vb[3];
        for (int i = 0; i < 3; i++) {
            kb[i] = (cluster_bytes){(const uint8_t *)ks[i], strlen(ks[i])};
            vb[i] = (cluster_bytes){(const uint8_t *)vs[i], strlen(vs[i])};
        }
        REQUIRE_OK(cluster_dict_set_many(d, kb, vb, 3));
        REQUIRE_OK(cluster_dict_get_async(d, K("as-m1"), &f));
        CHECK_FUTURE(f, CLUSTER_OK, "m1", 2);
        vb[2] = (cluster_bytes){(const uint8_t *)"M2", 2};
        REQUIRE_OK(cluster_dict_set_many_async(d, kb + 2, vb + 2, 1, &f));
        CHECK_FUTURE(f, CLUSTER_OK, "", 0);
        REQUIRE_OK(cluster_dict_get_async(d, K("as-m2"), &f));
        CHECK_FUTURE(f, CLUSTER_OK, "M2", 2);
        EXPECT_OK(cluster_dict_set_many(d, NULL, NULL, 0));
        EXPECT_ST(cluster_dict_set_many(d, NULL, vb, 1), CLUSTER_ERR_INVALID_ARGUMENT);
        for (int i = 0; i < 3; i++) REQUIRE_OK(cluster_dict_delete(d, kb[i].data, kb[i].len));
    }
    REQUIRE_OK(cluster_dict_set_with_async(d, K("as-z"), "myid", NULL, 0, &f));
    CHECK_FUTURE(f, CLUSTER_OK, "", 0);
    int32_t z = local_global ? g_me : owner_of(d, "as-z");
    REQUIRE_OK(cluster_dict_get_async(d, K("as-z"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, &z, sizeof z);
    uint64_t n = base + 3;
    REQUIRE_OK(cluster_dict_length_async(d, &f));
    CHECK_FUTURE(f, CLUSTER_OK, &n, sizeof n);
    /* Listings as futures, decoded. */
    for (int32_t what = CLUSTER_DICT_KEYS; what <= CLUSTER_DICT_PAIRS; what++) {
        REQUIRE_OK(cluster_dict_list_async(d, what, &f));
        buf_t b = {0};
        EXPECT_OK(fetch_future(f, &b));
        cluster_future_free(f);
        cluster_dict_entries *e = NULL;
        if (!EXPECT_OK(cluster_dict_entries_decode(b.p, b.len, what, &e))) {
            buf_free(&b);
            continue;
        }
        buf_free(&b);
        size_t count = 0;
        EXPECT_OK(cluster_dict_entries_count(e, &count));
        EXPECT(count == base + 3);
        bool seen_x = false, seen_one = false;
        for (size_t i = 0; i < count; i++) {
            const uint8_t *k = (const uint8_t *)"junk", *v = (const uint8_t *)"junk";
            size_t kl = 99, vl = 99;
            EXPECT_OK(cluster_dict_entries_get(e, i, &k, &kl, &v, &vl));
            if (what == CLUSTER_DICT_VALUES) EXPECT(k == NULL && kl == 0);
            if (what == CLUSTER_DICT_KEYS) EXPECT(v == NULL && vl == 0);
            if (what != CLUSTER_DICT_VALUES && same_bytes(k, kl, "as-x", 4)) {
                seen_x = true;
                if (what == CLUSTER_DICT_PAIRS) EXPECT(same_bytes(v, vl, "1", 1));
            }
            if (what == CLUSTER_DICT_VALUES && same_bytes(v, vl, "1", 1)) seen_one = true;
        }
        EXPECT(what == CLUSTER_DICT_VALUES ? seen_one : seen_x);
        EXPECT_OK(cluster_dict_entries_free(e));
    }
    REQUIRE_OK(cluster_dict_pop_async(d, K("as-x"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, "1", 1);
    REQUIRE_OK(cluster_dict_pop_async(d, K("as-x"), &f));
    CHECK_FUTURE(f, CLUSTER_ERR_NOT_FOUND, NULL, 0);
    REQUIRE_OK(cluster_dict_delete_async(d, K("as-y"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, "", 0);
    REQUIRE_OK(cluster_dict_delete_async(d, K("as-y"), &f)); /* absent: nothing to do */
    CHECK_FUTURE(f, CLUSTER_OK, "", 0);
    REQUIRE_OK(cluster_dict_delete_async(d, K("as-z"), &f));
    CHECK_FUTURE(f, CLUSTER_OK, "", 0);
    n = base;
    REQUIRE_OK(cluster_dict_length_async(d, &f));
    CHECK_FUTURE(f, CLUSTER_OK, &n, sizeof n);
}

static bool contains(const int32_t *ids, size_t n, int32_t id) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

/* ---- the matrix --------------------------------------------------------------- */

static const int32_t g_all[] = {1, 2, 3, 4};
#define NALL 4
static int g_release_way;

/* One cell: a dict of `kind` over `members` (-1: the spec's default for
 * either), named or not, created here; the original's operations on it
 * from every process. */
static void cell(int32_t kind, int32_t members, const char *name) {
    static const int32_t list[] = {2, 3};
    const bool global = kind == CLUSTER_DICT_GLOBAL;
    char what[128];
    snprintf(what, sizeof what, "%s over %s, %s", kind < 0 ? "default kind" : global ? "global" : "distributed",
             members == CLUSTER_MEMBERS_ALL       ? "all"
             : members == CLUSTER_MEMBERS_WORKERS ? "workers"
             : members == CLUSTER_MEMBERS_PIDS    ? "[2, 3]"
                                                  : "default members",
             name ? name : "generated name");
    harness_logf("cell: %s", what);
    int64_t t0 = now_ms();
    cluster_dict_spec spec;
    REQUIRE_OK(cluster_dict_spec_init(&spec));
    EXPECT(spec.kind == CLUSTER_DICT_DISTRIBUTED && spec.members == CLUSTER_MEMBERS_WORKERS && spec.name == NULL &&
           spec.replication == 0 && spec.npids == 0 && spec.type_tag_len == 0);
    if (kind >= 0) spec.kind = kind;
    if (members >= 0) spec.members = members;
    if (members == CLUSTER_MEMBERS_PIDS) {
        spec.pids = list;
        spec.npids = 2;
    }
    spec.name = name;
    const int32_t *expect = members == CLUSTER_MEMBERS_ALL ? g_all : members == CLUSTER_MEMBERS_PIDS ? list : g_all + 1;
    const size_t nexp = members == CLUSTER_MEMBERS_ALL ? 4 : members == CLUSTER_MEMBERS_PIDS ? 2 : 3;
    int32_t non[NALL];
    size_t nnon = 0;
    for (size_t i = 0; i < NALL; i++)
        if (!contains(expect, nexp, g_all[i])) non[nnon++] = g_all[i];

    /* Named: created blocking; generated: as a future, opened from its value. */
    cluster_dict *d = NULL;
    if (name) {
        REQUIRE_OK(cluster_dict_create(g_ctx, &spec, &d));
    } else {
        cluster_future *f = NULL;
        REQUIRE_OK(cluster_dict_create_async(g_ctx, &spec, &f));
        buf_t b = {0};
        REQUIRE_OK(fetch_future(f, &b));
        cluster_future_free(f);
        REQUIRE_OK(cluster_dict_open(g_ctx, b.p, b.len, &d));
        buf_free(&b);
    }
    int32_t got[8];
    size_t count = 0;
    EXPECT_OK(cluster_dict_members(d, got, 8, &count));
    EXPECTF(count == nexp && memcmp(got, expect, nexp * sizeof *got) == 0, "%s: %zu members", what, count);
    char nm[sizeof ((struct wire_spec *)0)->name];
    size_t nl = 0;
    EXPECT_OK(cluster_dict_name(d, nm, sizeof nm, &nl));
    if (name)
        EXPECT(strcmp(nm, name) == 0 && nl == strlen(name));
    else
        EXPECTF(strncmp(nm, "dict-1-", 7) == 0 && nl == strlen(nm), "generated name %s", nm);
    int32_t k_got = -1;
    uint32_t rep = 0;
    EXPECT_OK(cluster_dict_info(d, &k_got, &rep));
    EXPECT(k_got == (kind < 0 ? CLUSTER_DICT_DISTRIBUTED : kind));
    EXPECTF(rep == (global ? nexp : 2), "%s: replication %u", what, rep);

    /* A new dict is empty, everywhere. */
    uint64_t zero = 0, one = 1, two = 2;
    for (size_t i = 0; i < NALL; i++) OPB(g_all[i], d, OP_LENGTH, NULL, NULL, CLUSTER_OK, &zero, 8);
    /* set / get / length; a missing key; get! inserts once; overwrite. */
    OPS(1, d, OP_SET, "a", "1", CLUSTER_OK, "");
    OPS(1, d, OP_GET, "a", NULL, CLUSTER_OK, "1");
    OPB(1, d, OP_LENGTH, NULL, NULL, CLUSTER_OK, &one, 8);
    cluster_buffer b = {0};
    EXPECT_ST(cluster_dict_get(d, K("missing"), &b), CLUSTER_ERR_NOT_FOUND);
    EXPECT(b.handle == 0);
    EXPECT_LAST_ERROR_HAS("not found");
    OPB(1, d, OP_HASKEY, "missing", NULL, CLUSTER_OK, &zero, 1);
    OPS(1, d, OP_GET_OR_INSERT, "b", "2", CLUSTER_OK, "2");
    OPS(1, d, OP_GET_OR_INSERT, "b", "3", CLUSTER_OK, "2");
    OPS(1, d, OP_GET, "b", NULL, CLUSTER_OK, "2");
    OPS(1, d, OP_SET, "a", "11", CLUSTER_OK, "");
    OPS(1, d, OP_GET, "a", NULL, CLUSTER_OK, "11");
    OPB(1, d, OP_LENGTH, NULL, NULL, CLUSTER_OK, &two, 8);
    int32_t owner_a = owner_of(d, "a");
    EXPECT(contains(expect, nexp, owner_a));
    /* From every process: the same answers; a global member reads its own copy. */
    for (size_t i = 0; i < NALL; i++) {
        int32_t p = g_all[i];
        bool local = global && contains(expect, nexp, p);
        OPS(p, d, OP_GET, "missing", NULL, CLUSTER_ERR_NOT_FOUND, NULL);
        OPS(p, d, OP_GET, "a", NULL, CLUSTER_OK, "11");
        OPB(p, d, OP_HASKEY, "a", NULL, CLUSTER_OK, &one, 1);
        OPB(p, d, OP_HASKEY, "missing", NULL, CLUSTER_OK, &zero, 1);
        OPB(p, d, OP_LENGTH, NULL, NULL, CLUSTER_OK, &two, 8);
        OPB(p, d, OP_OWNER, "a", NULL, CLUSTER_OK, &owner_a, sizeof owner_a);
        OPB(p, d, OP_GET_LOCAL, "a", NULL, CLUSTER_OK, local ? "\001" "11" : "\000", local ? 3 : 1);
        OPS(p, d, OP_GET_LOCAL, "missing", NULL, local ? CLUSTER_ERR_NOT_FOUND : CLUSTER_OK, NULL);
    }
    /* keys, values, pairs (from here and from a worker). */
    for (int32_t p = 1; p <= 2; p++) {
        res_t r = {0};
        kvs_t s = listing_on(p, d, OP_KEYS, &r);
        EXPECT(s.n == 2 && same_bytes(s.items[0].k, s.items[0].kl, "a", 1) &&
               same_bytes(s.items[1].k, s.items[1].kl, "b", 1) && s.items[0].vl == 0);
        kvs_free(&s);
        s = listing_on(p, d, OP_VALUES, &r);
        EXPECT(s.n == 2 && s.items[0].kl == 0 && same_bytes(s.items[0].v, s.items[0].vl, "11", 2) &&
               same_bytes(s.items[1].v, s.items[1].vl, "2", 1));
        kvs_free(&s);
        s = listing_on(p, d, OP_PAIRS, &r);
        EXPECT(s.n == 2 && same_bytes(s.items[0].v, s.items[0].vl, "11", 2) &&
               same_bytes(s.items[1].k, s.items[1].kl, "b", 1) && same_bytes(s.items[1].v, s.items[1].vl, "2", 1));
        kvs_free(&s);
        res_clear(&r);
    }
    if (global) {
        /* Every member holds every pair; ValueF(myid) stores each member's own id. */
        for (size_t i = 0; i < nexp; i++) EXPECTF(localpart_count(expect[i], d) == 2, "%s: member %d", what, expect[i]);
        EXPECT(check_op(__FILE__, __LINE__, 1, d, OP_SET_WITH, "id", 2, "myid\0!", 6, CLUSTER_OK, "", 0));
        for (size_t i = 0; i < nexp; i++) {
            uint8_t want[5];
            memcpy(want, &expect[i], 4);
            want[4] = '!';
            OPB(expect[i], d, OP_GET, "id", NULL, CLUSTER_OK, want, 5);
        }
        for (size_t i = 0; i < nnon; i++) {
            EXPECTF(localpart_count(non[i], d) == 0, "%s: non-member %d stores nothing", what, non[i]);
            uint8_t want[5];
            int32_t o = owner_of(d, "id");
            memcpy(want, &o, 4);
            want[4] = '!';
            OPB(non[i], d, OP_GET, "id", NULL, CLUSTER_OK, want, 5); /* the owner's copy */
        }
        OPS(1, d, OP_DELETE, "id", NULL, CLUSTER_OK, "");
    } else {
        /* 100 keys spread over the members, each on `rep` of them. */
        cluster_future *fs[100];
        for (uint32_t i = 0; i < 100; i++) {
            char k[16];
            int kl = snprintf(k, sizeof k, "key%u", i);
            REQUIRE_OK(cluster_dict_set_async(d, (const uint8_t *)k, (size_t)kl, (const uint8_t *)&i, sizeof i, &fs[i]));
        }
        for (uint32_t i = 0; i < 100; i++) EXPECT_OK(cluster_future_wait(fs[i], 20000));
        for (uint32_t i = 0; i < 100; i++) cluster_future_free(fs[i]);
        EXPECT(length_of(d) == 102);
        size_t stored = 0;
        for (size_t i = 0; i < nexp; i++) {
            size_t n = localpart_count(expect[i], d);
            EXPECTF(n > 10, "%s: member %d stores only %zu", what, expect[i], n);
            stored += n;
        }
        EXPECTF(stored == 102 * rep, "%s: %zu stored, not %u copies of 102", what, stored, rep);
        for (size_t i = 0; i < nnon; i++) EXPECT(localpart_count(non[i], d) == 0);
        int32_t reader = nnon ? non[0] : expect[0];
        for (uint32_t i = 0; i < 100; i += 7) {
            char k[16];
            snprintf(k, sizeof k, "key%u", i);
            OPB(reader, d, OP_GET, k, NULL, CLUSTER_OK, &i, sizeof i);
        }
        res_t r = {0};
        kvs_t s = listing_on(expect[0], d, OP_KEYS, &r);
        EXPECT(s.n == 102);
        kvs_free(&s);
        res_clear(&r);
        /* ValueF on the owner: its id, copied to the backups. */
        EXPECT(check_op(__FILE__, __LINE__, 1, d, OP_SET_WITH, "id", 2, "myid", 5, CLUSTER_OK, "", 0));
        int32_t o = owner_of(d, "id");
        for (size_t i = 0; i < NALL; i++) OPB(g_all[i], d, OP_GET, "id", NULL, CLUSTER_OK, &o, sizeof o);
        for (uint32_t i = 0; i < 100; i++) {
            char k[16];
            int kl = snprintf(k, sizeof k, "key%u", i);
            REQUIRE_OK(cluster_dict_delete_async(d, (const uint8_t *)k, (size_t)kl, &fs[i]));
        }
        for (uint32_t i = 0; i < 100; i++) EXPECT_OK(cluster_future_wait(fs[i], 20000));
        for (uint32_t i = 0; i < 100; i++) cluster_future_free(fs[i]);
        OPS(2, d, OP_DELETE, "id", NULL, CLUSTER_OK, "");
        EXPECT(length_of(d) == 2);
    }
    /* A non-member reads and writes through the handle it received. */
    for (size_t i = 0; i < nnon; i++) {
        int32_t p = non[i];
        EXPECT(check_op(__FILE__, __LINE__, p, d, OP_SET, "from", 4, &p, sizeof p, CLUSTER_OK, "", 0));
        OPB(1, d, OP_GET, "from", NULL, CLUSTER_OK, &p, sizeof p);
        OPS(p, d, OP_GET, "a", NULL, CLUSTER_OK, "11");
        OPS(p, d, OP_GET_OR_INSERT, "a", "x", CLUSTER_OK, "11");
        OPB(p, d, OP_POP, "from", NULL, CLUSTER_OK, &p, sizeof p);
        OPS(p, d, OP_POP, "from", NULL, CLUSTER_ERR_NOT_FOUND, NULL);
        EXPECT(localpart_count(p, d) == 0);
    }
    /* pop! and delete! from a member. */
    int32_t m = expect[nexp - 1];
    OPS(m, d, OP_POP, "b", NULL, CLUSTER_OK, "2");
    OPS(m, d, OP_POP, "b", NULL, CLUSTER_ERR_NOT_FOUND, NULL);
    OPS(m, d, OP_DELETE, "a", NULL, CLUSTER_OK, "");
    OPS(m, d, OP_DELETE, "a", NULL, CLUSTER_OK, "");
    bool has = true;
    EXPECT_OK(cluster_dict_haskey(d, K("a"), &has));
    EXPECT(!has);
    EXPECT(length_of(d) == 0);
    /* Every _async form, from here. */
    async_ops(d, 0, global && contains(expect, nexp, 1));
    /* Opening by name with the same spec (a worker, and here): the same
     * dict; another spec is an error. */
    struct wire_spec ws = {spec.kind, spec.members, spec.replication, (uint32_t)spec.npids, {2, 3}, ""};
    snprintf(ws.name, sizeof ws.name, "%s", nm);
    res_t r = {0};
    cluster_dict *again = NULL;
    if (EXPECT_OK(create_on(4, &ws, &again, &r))) {
        char nm2[128];
        EXPECT_OK(cluster_dict_name(again, nm2, sizeof nm2, &nl));
        EXPECT(strcmp(nm, nm2) == 0);
        EXPECT_OK(cluster_dict_set(again, K("via-again"), K("v")));
        OPS(1, d, OP_GET, "via-again", NULL, CLUSTER_OK, "v");
        EXPECT_OK(cluster_dict_free(again));
    }
    cluster_dict_spec same = spec;
    same.name = nm;
    cluster_dict *here = NULL;
    EXPECT_OK(cluster_dict_create(g_ctx, &same, &here));
    OPS(1, here, OP_POP, "via-again", NULL, CLUSTER_OK, "v");
    EXPECT_OK(cluster_dict_free(here));
    ws.kind = global ? CLUSTER_DICT_DISTRIBUTED : CLUSTER_DICT_GLOBAL;
    EXPECT_ST(create_on(2, &ws, NULL, &r), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECTF(strstr(r.msg, "another specification") != NULL, "%s", r.msg);
    cluster_dict_spec other = same;
    other.members = members == CLUSTER_MEMBERS_ALL ? CLUSTER_MEMBERS_WORKERS : CLUSTER_MEMBERS_ALL;
    EXPECT_ST(cluster_dict_create(g_ctx, &other, &here), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("another specification");
    other = same;
    other.type_tag = (const uint8_t *)"Int=>Int";
    other.type_tag_len = 8;
    EXPECT_ST(cluster_dict_create(g_ctx, &other, &here), CLUSTER_ERR_INVALID_ARGUMENT);
    res_clear(&r);

    /* Release (blocking, as a future, or from a worker): no member holds
     * anything, the handle is dead, the name is free. */
    switch (g_release_way++ % 3) {
    case 0:
        EXPECT_OK(cluster_dict_release(d));
        break;
    case 1: {
        cluster_future *f = NULL;
        REQUIRE_OK(cluster_dict_release_async(d, &f));
        CHECK_FUTURE(f, CLUSTER_OK, "", 0);
        break;
    }
    default:
        OPS(3, d, OP_RELEASE, NULL, NULL, CLUSTER_OK, "");
    }
    expect_nothing_held(g_all, NALL, what);
    EXPECT_ST(cluster_dict_get(d, K("a"), &b), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set(d, K("a"), K("1")), CLUSTER_ERR_INVALID_ARGUMENT);
    OPS(2, d, OP_SET, "a", "1", CLUSTER_ERR_INVALID_ARGUMENT, NULL);
    EXPECT_OK(cluster_dict_free(d));
    static const int32_t two_only[] = {2};
    cluster_dict *fresh = create(CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_PIDS, two_only, 1, nm, 0);
    EXPECT(length_of(fresh) == 0);
    EXPECT_OK(cluster_dict_release(fresh));
    EXPECT_OK(cluster_dict_free(fresh));
    harness_logf("cell took %" PRId64 " ms", now_ms() - t0);
}

static void case_matrix(void) {
    int32_t ids[3];
    addprocs(3, ids);
    REQUIRE(ids[0] == 2 && ids[2] == 4);
    static const int32_t kinds[] = {CLUSTER_DICT_GLOBAL, CLUSTER_DICT_DISTRIBUTED};
    static const int32_t sets[] = {CLUSTER_MEMBERS_ALL, CLUSTER_MEMBERS_WORKERS, CLUSTER_MEMBERS_PIDS, -1};
    for (size_t i = 0; i < 2; i++) {
        for (size_t j = 0; j < 4; j++) {
            char name[32];
            snprintf(name, sizeof name, "cell-%zu-%zu", i, j);
            cell(kinds[i], sets[j], name);
            cell(kinds[i], sets[j], NULL);
        }
    }
    cell(-1, -1, NULL); /* the spec as cluster_dict_spec_init leaves it */

    /* A worker creates one; the handle it passes on works everywhere. */
    struct wire_spec ws = {CLUSTER_DICT_DISTRIBUTED, CLUSTER_MEMBERS_PIDS, 0, 2, {2, 4}, ""};
    res_t r = {0};
    cluster_dict *d = NULL;
    REQUIRE_OK(create_on(3, &ws, &d, &r));
    char nm[64];
    size_t nl = 0;
    EXPECT_OK(cluster_dict_name(d, nm, sizeof nm, &nl));
    EXPECTF(strncmp(nm, "dict-3-", 7) == 0, "%s", nm);
    OPS(3, d, OP_SET, "x", "y", CLUSTER_OK, "");
    OPS(1, d, OP_GET, "x", NULL, CLUSTER_OK, "y");
    OPS(2, d, OP_GET, "x", NULL, CLUSTER_OK, "y");
    OPS(3, d, OP_RELEASE, NULL, NULL, CLUSTER_OK, "");
    expect_nothing_held(g_all, NALL, "released by worker 3");
    EXPECT_ST(cluster_dict_get(d, K("x"), &(cluster_buffer){0}), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_dict_free(d));
    res_clear(&r);
    shutdown_all();
}

/* ---- value functions ----------------------------------------------------------- */

/* "<prefix><i>" for the first i whose owner is (or is not) `pid`. */
static const char *key_owned(cluster_dict *d, const char *prefix, int32_t pid, bool owned) {
    static char keys[4][32];
    static int next;
    char *k = keys[next++ % 4];
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof keys[0], "%s%d", prefix, i);
        if ((owner_of(d, k) == pid) == owned) return k;
    }
    REQUIRE(!"no such key");
    return k;
}
static const char *key_owned_by(cluster_dict *d, const char *prefix, int32_t pid) { return key_owned(d, prefix, pid, true); }
static const char *key_not_owned_by(cluster_dict *d, const char *prefix, int32_t pid) {
    return key_owned(d, prefix, pid, false);
}

static void case_values(void) {
    int32_t ids[3];
    addprocs(3, ids);
    cluster_dict *g = create(CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_ALL, NULL, 0, "vg", 0);
    cluster_dict *d = create(CLUSTER_DICT_DISTRIBUTED, CLUSTER_MEMBERS_WORKERS, NULL, 0, "vd", 0);
    int calls_before = atomic_load(&g_vf_calls);
    /* myid on a global dict: each member stores its own id (and the args). */
    EXPECT_OK(cluster_dict_set_with(g, K("id"), "myid", (const uint8_t *)"+", 1));
    for (size_t i = 0; i < NALL; i++) {
        uint8_t want[5];
        memcpy(want, &g_all[i], 4);
        want[4] = '+';
        res_t r = {0};
        op_on(g_all[i], g, OP_GET_LOCAL, "id", 2, NULL, 0, &r);
        EXPECT(r.st == CLUSTER_OK && r.out.len == 6 && r.out.p[0] == 1 && memcmp(r.out.p + 1, want, 5) == 0);
        res_clear(&r);
    }
    EXPECT(atomic_load(&g_vf_calls) == calls_before + 1); /* here, once: the head is one member */
    EXPECT(atomic_load(&g_vf_bad_ud) == 0);
    /* myid on a distributed dict: computed on the owner, copied to its backup. */
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_dict_set_with_async(d, K("id"), "myid", NULL, 0, &f));
    CHECK_FUTURE(f, CLUSTER_OK, "", 0);
    int32_t o = owner_of(d, "id");
    EXPECT(o >= 2 && o <= 4);
    int copies = 0;
    for (int32_t p = 2; p <= 4; p++) {
        res_t r = {0};
        kvs_t s = listing_on(p, d, OP_LOCALPART, &r);
        const kv_t *kv = kvs_find(&s, "id", 2);
        if (kv) {
            copies++;
            EXPECTF(same_bytes(kv->v, kv->vl, &o, 4), "process %d holds another id", p);
        }
        kvs_free(&s);
        res_clear(&r);
    }
    EXPECT(copies == 2);
    for (size_t i = 0; i < NALL; i++) OPB(g_all[i], d, OP_GET, "id", NULL, CLUSTER_OK, &o, sizeof o);

    /* A failing value function fails the write, naming the process; the
     * key is left absent where it failed. */
    int32_t three = 3;
    const char *bad_key = key_not_owned_by(g, "bad", 3); /* so that 3 fails as a backup */
    EXPECT_ST(cluster_dict_set_with(g, K(bad_key), "fail", (const uint8_t *)&three, 4), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("value function failed on 3");
    EXPECT(cluster_last_error_pid() == 3);
    OPS(3, g, OP_GET_LOCAL, bad_key, NULL, CLUSTER_ERR_NOT_FOUND, NULL);
    OPS(2, g, OP_GET_LOCAL, bad_key, NULL, CLUSTER_OK, "\001ok");
    /* Failing on the owner: nothing is written anywhere. */
    const char *owned = key_owned_by(g, "bad", 3);
    EXPECT_ST(cluster_dict_set_with(g, K(owned), "fail", (const uint8_t *)&three, 4), CLUSTER_ERR_REMOTE);
    EXPECT(cluster_last_error_pid() == 3);
    for (size_t i = 0; i < NALL; i++) OPS(g_all[i], g, OP_GET, owned, NULL, CLUSTER_ERR_NOT_FOUND, NULL);
    int32_t everywhere = 0;
    EXPECT_ST(cluster_dict_set_with(g, K("worse"), "fail", (const uint8_t *)&everywhere, 4), CLUSTER_ERR_REMOTE);
    for (size_t i = 0; i < NALL; i++) OPS(g_all[i], g, OP_GET, "worse", NULL, CLUSTER_ERR_NOT_FOUND, NULL);
    EXPECT_ST(cluster_dict_set_with(d, K("bad"), "fail", NULL, 0), CLUSTER_ERR_REMOTE); /* the owner fails */
    EXPECT_LAST_ERROR_HAS("value function failed on");
    int32_t failed_on = cluster_last_error_pid();
    EXPECT(failed_on == owner_of(d, "bad"));
    OPS(2, d, OP_GET, "bad", NULL, CLUSTER_ERR_NOT_FOUND, NULL);
    REQUIRE_OK(cluster_dict_set_with_async(d, K("bad"), "fail", NULL, 0, &f));
    CHECK_FUTURE(f, CLUSTER_ERR_REMOTE, NULL, 0);
    REQUIRE_OK(cluster_dict_set_with_async(g, K("bad2"), "fail", (const uint8_t *)&three, 4, &f));
    EXPECT_ST(cluster_future_wait(f, 20000), CLUSTER_ERR_REMOTE);
    int32_t epid = 0;
    const char *emsg = NULL;
    EXPECT_OK(cluster_future_error(f, &epid, &emsg));
    EXPECTF(epid == 3 && emsg && strstr(emsg, "failed on 3"), "pid %d: %s", epid, emsg ? emsg : "");
    cluster_future_free(f);
    EXPECT_ST(cluster_dict_set_with(d, K("quiet"), "fail_quietly", NULL, 0), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("returned 7");
    /* A function not registered there. */
    EXPECT_ST(cluster_dict_set_with(g, K("nope"), "no_such_fn", NULL, 0), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("no value function");
    /* Failed writes from a worker, too. */
    EXPECT(check_op(__FILE__, __LINE__, 4, d, OP_SET_WITH, "bad", 3, "fail", 5, CLUSTER_ERR_REMOTE, NULL, 0));
    EXPECT(check_op(__FILE__, __LINE__, 4, g, OP_SET_WITH, "id4", 3, "myid\0", 5, CLUSTER_OK, "", 0));
    OPB(4, g, OP_GET, "id4", NULL, CLUSTER_OK, &ids[2], 4);

    /* CLUSTER_DICT_EACH: a value computed beforehand for each process. */
    buf_t each = {0};
    for (int32_t p = 1; p <= 4; p++) {
        char v[16];
        int vl = snprintf(v, sizeof v, "v%d", p);
        uint8_t hdr[12];
        for (int i = 0; i < 4; i++) hdr[i] = (uint8_t)((uint32_t)p >> (8 * i)); /* id, u32 LE */
        for (int i = 0; i < 8; i++) hdr[4 + i] = (uint8_t)((uint64_t)vl >> (8 * i)); /* length, u64 LE */
        buf_put(&each, hdr, sizeof hdr);
        buf_put(&each, v, (size_t)vl);
    }
    EXPECT_OK(cluster_dict_set_with(g, K("each"), CLUSTER_DICT_EACH, each.p, each.len));
    for (int32_t p = 1; p <= 4; p++) {
        char v[16];
        snprintf(v, sizeof v, "v%d", p);
        OPS(p, g, OP_GET, "each", NULL, CLUSTER_OK, v);
    }
    REQUIRE_OK(cluster_dict_set_with_async(d, K("each"), CLUSTER_DICT_EACH, each.p, each.len, &f));
    CHECK_FUTURE(f, CLUSTER_OK, "", 0);
    char ov[16];
    snprintf(ov, sizeof ov, "v%d", owner_of(d, "each"));
    for (size_t i = 0; i < NALL; i++) OPS(g_all[i], d, OP_GET, "each", NULL, CLUSTER_OK, ov);
    /* No value for process 4 (the last entry cut off), and garbage. */
    const char *each4 = key_not_owned_by(g, "each", 4);
    EXPECT_ST(cluster_dict_set_with(g, K(each4), CLUSTER_DICT_EACH, each.p, each.len - 14), CLUSTER_ERR_REMOTE);
    EXPECT(cluster_last_error_pid() == 4);
    EXPECT_LAST_ERROR_HAS("process 4");
    OPS(4, g, OP_GET_LOCAL, each4, NULL, CLUSTER_ERR_NOT_FOUND, NULL);
    OPS(3, g, OP_GET_LOCAL, each4, NULL, CLUSTER_OK, "\001v3");
    EXPECT_ST(cluster_dict_set_with(g, K("junk"), CLUSTER_DICT_EACH, each.p, 7), CLUSTER_ERR_REMOTE);
    EXPECT_LAST_ERROR_HAS("bad cluster.each arguments");
    buf_free(&each);

    /* A cluster_value is dead once its function returned; a bad put inside
     * it is refused; the last put wins. */
    EXPECT_OK(cluster_dict_set_with(g, K("kept"), "keep", NULL, 0));
    OPS(1, g, OP_GET, "kept", NULL, CLUSTER_OK, "kept");
    cluster_value *stale = atomic_load(&g_kept_value);
    EXPECT(stale != NULL);
    EXPECT(atomic_load(&g_bad_set_status) == CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_value_set(stale, (const uint8_t *)"late", 4), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_value_set(NULL, (const uint8_t *)"late", 4), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_value_set((cluster_value *)g, (const uint8_t *)"late", 4), CLUSTER_ERR_BAD_HANDLE);

    EXPECT_OK(cluster_dict_release(g));
    EXPECT_OK(cluster_dict_release(d));
    expect_nothing_held(g_all, NALL, "value functions");
    cluster_dict_free(g);
    cluster_dict_free(d);
    shutdown_all();
}

/* ---- concurrent writers --------------------------------------------------------- */

/* Every process writes the same 16 keys at once, 30 rounds. */
static void write_everywhere(cluster_dict *d, const int32_t *workers, size_t nw) {
    buf_t a = handle_bytes(d);
    buf_u32(&a, 16);
    buf_u32(&a, 30);
    uint64_t start = (uint64_t)(now_ms() + 50);
    buf_put(&a, &start, sizeof start);
    cluster_future *fs[8];
    for (size_t i = 0; i < nw; i++) REQUIRE_OK(cluster_remotecall(g_ctx, workers[i], "dict_write_many", a.p, a.len, &fs[i]));
    buf_free(&a);
    char err[300] = "";
    sleep_until_ms((int64_t)start);
    EXPECTF(write_rounds(d, 16, 30, err, sizeof err) == CLUSTER_OK, "%s", err);
    for (size_t i = 0; i < nw; i++) {
        EXPECTF(cluster_future_wait(fs[i], 30000) == CLUSTER_OK, "writer %d: %s", workers[i], cluster_last_error());
        cluster_future_free(fs[i]);
    }
}

/* Concurrent get! of 40 new keys from every process: all agree. */
static void get_insert_everywhere(cluster_dict *d, const int32_t *workers, size_t nw, bool global) {
    enum { N = 40 };
    buf_t a = handle_bytes(d);
    buf_u32(&a, N);
    uint64_t start = (uint64_t)(now_ms() + 50);
    buf_put(&a, &start, sizeof start);
    cluster_future *fs[8];
    for (size_t i = 0; i < nw; i++)
        REQUIRE_OK(cluster_remotecall(g_ctx, workers[i], "dict_get_insert_many", a.p, a.len, &fs[i]));
    buf_free(&a);
    char keys[N][16];
    for (int i = 0; i < N; i++) snprintf(keys[i], sizeof keys[i], "new%d", i);
    int32_t got[8][N];
    sleep_until_ms((int64_t)start);
    /* Here as futures, one at a time from this process's first key, as
     * the workers do. */
    for (int n_done = 0; n_done < N; n_done++) {
        int i = (n_done + g_me * 11) % N;
        cluster_future *f = NULL;
        REQUIRE_OK(cluster_dict_get_or_insert_async(d, K(keys[i]), (const uint8_t *)&g_me, 4, &f));
        const uint8_t *v = NULL;
        size_t n = 0;
        got[0][i] = EXPECT_OK(cluster_future_fetch(f, 20000, &v, &n)) ? payload_i32(v, n) : -1;
        cluster_future_free(f);
    }
    for (size_t w = 0; w < nw; w++) {
        const uint8_t *v = NULL;
        size_t n = 0;
        memset(got[w + 1], 0xff, sizeof got[w + 1]);
        if (EXPECT_OK(cluster_future_fetch(fs[w], 30000, &v, &n)) && EXPECT(n == sizeof got[w + 1]))
            memcpy(got[w + 1], v, n);
        cluster_future_free(fs[w]);
    }
    int winners[8] = {0};
    for (int i = 0; i < N; i++) {
        for (size_t w = 1; w <= nw; w++) EXPECTF(got[w][i] == got[0][i], "get! of %s: %d vs %d", keys[i], got[w][i], got[0][i]);
        EXPECT(got[0][i] >= 1 && got[0][i] <= 4);
        if (got[0][i] >= 1 && got[0][i] <= 4) winners[got[0][i]]++;
        cluster_buffer b = {0};
        EXPECT_OK(cluster_dict_get(d, K(keys[i]), &b));
        EXPECT(b.len == 4 && payload_i32(b.data, b.len) == got[0][i]);
        cluster_buffer_free(&b);
    }
    harness_logf("get! winners: 1:%d 2:%d 3:%d 4:%d", winners[1], winners[2], winners[3], winners[4]);
    if (global) {
        for (int32_t p = 1; p <= 4; p++) {
            res_t r = {0};
            kvs_t s = listing_on(p, d, OP_LOCALPART, &r);
            for (int i = 0; i < N; i++) {
                const kv_t *kv = kvs_find(&s, keys[i], strlen(keys[i]));
                EXPECTF(kv && same_bytes(kv->v, kv->vl, &got[0][i], 4), "member %d's copy of %s", p, keys[i]);
            }
            kvs_free(&s);
            res_clear(&r);
        }
    }
}

static void case_concurrent(void) {
    int32_t ids[3];
    addprocs(3, ids);
    int64_t t0 = now_ms();
    /* Global over everyone: once the writers stop, every member holds the same. */
    cluster_dict *g = create(CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_ALL, NULL, 0, "cg", 0);
    write_everywhere(g, ids, 3);
    res_t r0 = {0};
    kvs_t first = listing_on(1, g, OP_LOCALPART, &r0);
    EXPECT(first.n == 16);
    for (size_t i = 0; i < first.n; i++) {
        const kv_t *kv = &first.items[i];
        EXPECTF(kv->vl > 3 && memcmp(kv->v + kv->vl - 3, ":29", 3) == 0, "%.*s = %.*s: not a last round", (int)kv->kl,
                (const char *)kv->k, (int)kv->vl, (const char *)kv->v);
    }
    for (int32_t p = 2; p <= 4; p++) {
        res_t r = {0};
        kvs_t s = listing_on(p, g, OP_LOCALPART, &r);
        EXPECTF(kvs_equal(&s, &first), "member %d's copy differs from member 1's", p);
        kvs_free(&s);
        res_clear(&r);
    }
    kvs_free(&first);
    res_clear(&r0);
    /* Distributed, replication 2: both copies of each key agree. */
    cluster_dict *d = create(CLUSTER_DICT_DISTRIBUTED, CLUSTER_MEMBERS_WORKERS, NULL, 0, "cd", 0);
    write_everywhere(d, ids, 3);
    res_t rs[3] = {{0}};
    kvs_t parts[3];
    for (int i = 0; i < 3; i++) parts[i] = listing_on(ids[i], d, OP_LOCALPART, &rs[i]);
    EXPECT(parts[0].n + parts[1].n + parts[2].n == 32);
    for (int i = 0; i < 16; i++) {
        char k[16];
        snprintf(k, sizeof k, "key%d", i);
        const kv_t *found[3];
        int n = 0;
        for (int j = 0; j < 3; j++)
            if ((found[n] = kvs_find(&parts[j], k, strlen(k)))) n++;
        EXPECTF(n == 2, "%s on %d members", k, n);
        if (n == 2) EXPECTF(kv_cmp(found[0], found[1]) == 0, "the copies of %s differ", k);
    }
    for (int i = 0; i < 3; i++) {
        kvs_free(&parts[i]);
        res_clear(&rs[i]);
    }
    /* Concurrent get!: every process gets the one value inserted. */
    get_insert_everywhere(g, ids, 3, true);
    get_insert_everywhere(d, ids, 3, false);
    EXPECT_OK(cluster_dict_release(g));
    EXPECT_OK(cluster_dict_release(d));
    expect_nothing_held(g_all, NALL, "concurrent");
    cluster_dict_free(g);
    cluster_dict_free(d);
    harness_logf("concurrent took %" PRId64 " ms", now_ms() - t0);
    shutdown_all();
}

/* ---- a member's death ------------------------------------------------------------ */

/* Of writer {tag}'s n keys, those `all` lacks or holds with another value
 * (*missing), and those not stored with their value on `copies` of the
 * survivors (*bad_copies); `log` tells the first few of each. */
static void count_acked(cluster_dict *d, uint8_t tag, uint32_t n, const int32_t *survivors, size_t ns, int copies,
                        const kvs_t *all, bool log, uint32_t *missing, uint32_t *bad_copies) {
    kvs_t parts[4];
    res_t rs[4] = {{0}};
    for (size_t i = 0; i < ns; i++) parts[i] = listing_on(survivors[i], d, OP_LOCALPART, &rs[i]);
    *missing = *bad_copies = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t k[5] = {tag};
        memcpy(k + 1, &i, 4);
        const kv_t *kv = kvs_find(all, k, 5);
        if (!kv || !same_bytes(kv->v, kv->vl, &i, 4)) {
            if ((*missing)++ < 3 && log)
                harness_logf("acknowledged write %c%u %s", tag, i, kv ? "has another value" : "is lost");
            continue;
        }
        int held = 0;
        for (size_t j = 0; j < ns; j++) {
            const kv_t *c = kvs_find(&parts[j], k, 5);
            held += c && same_bytes(c->v, c->vl, &i, 4);
        }
        if (held != copies && (*bad_copies)++ < 3 && log) harness_logf("%c%u on %d survivors, not %d", tag, i, held, copies);
    }
    for (size_t i = 0; i < ns; i++) {
        kvs_free(&parts[i]);
        res_clear(&rs[i]);
    }
}

/* Writer {tag}'s n keys read back, and each is stored with that value on
 * `copies` of the survivors. A partition's state may still be on its way to
 * its new backup: replication is restored within a bounded time (the copies
 * are counted again for up to about a second), not at once. */
static void check_acked(cluster_dict *d, uint8_t tag, uint32_t n, const int32_t *survivors, size_t ns, int copies,
                        const kvs_t *all) {
    uint32_t missing = 0, bad_copies = 0;
    for (int attempt = 0; attempt < 50; attempt++) {
        count_acked(d, tag, n, survivors, ns, copies, all, false, &missing, &bad_copies);
        if (bad_copies == 0) break;
        sleep_ms(20);
    }
    count_acked(d, tag, n, survivors, ns, copies, all, true, &missing, &bad_copies);
    EXPECTF(missing == 0, "writer %c: %u of %u acknowledged writes lost", tag, missing, n);
    EXPECTF(bad_copies == 0, "writer %c: %u keys without %d copies (replication not restored)", tag, bad_copies, copies);
}

static void case_kill(void) {
    int32_t ids[4];
    addprocs(4, ids);
    REQUIRE(ids[3] == 5);
    cluster_dict *d = create(CLUSTER_DICT_DISTRIBUTED, CLUSTER_MEMBERS_WORKERS, NULL, 0, "d2", 0);
    cluster_dict *g = create(CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_WORKERS, NULL, 0, "g", 0);
    cluster_dict *r1 = create(CLUSTER_DICT_DISTRIBUTED, CLUSTER_MEMBERS_WORKERS, NULL, 0, "r1", 1);
    uint32_t rep = 0;
    EXPECT_OK(cluster_dict_info(d, NULL, &rep));
    EXPECT(rep == 2);
    EXPECT_OK(cluster_dict_info(r1, NULL, &rep));
    EXPECT(rep == 1);
    for (int i = 0; i < 64; i++) {
        char k[16];
        int kl = snprintf(k, sizeof k, "key%d", i);
        EXPECT_OK(cluster_dict_set(r1, (const uint8_t *)k, (size_t)kl, K("x")));
    }
    int32_t victim_os = 0;
    buf_t b = {0};
    REQUIRE_OK(call_fetch(5, "getpid", NULL, 0, &b, 5000));
    victim_os = payload_i32(b.p, b.len);
    buf_free(&b);
    REQUIRE(victim_os > 1);

    /* Writers across the kill: blocking on 2 and here, pipelined async on
     * 3 and here (to d), blocking on 4 (to g). */
    enum { MS = 1500 };
    struct {
        int32_t pid;
        cluster_dict *d;
        uint8_t tag;
        bool async;
    } remote[] = {{2, d, 'a', false}, {3, d, 'b', true}, {4, g, 'c', false}};
    cluster_future *rf[3];
    for (int i = 0; i < 3; i++) {
        buf_t a = handle_bytes(remote[i].d);
        buf_u32(&a, remote[i].tag);
        buf_u32(&a, remote[i].async);
        buf_u32(&a, MS);
        REQUIRE_OK(cluster_remotecall(g_ctx, remote[i].pid, "dict_write_seq", a.p, a.len, &rf[i]));
        buf_free(&a);
    }
    struct seq local[2] = {{.d = d, .tag = 'h', .async = false, .ms = MS}, {.d = d, .tag = 'p', .async = true, .ms = MS}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) REQUIRE(pthread_create(&th[i], NULL, write_seq, &local[i]) == 0);
    /* Kill 5 once the writers are well under way, not done: at 300 keys,
     * or a quarter of the way through on a slow machine. */
    int64_t t0 = now_ms();
    size_t n = 0;
    for (;;) {
        bool counted = cluster_dict_length(d, &n) == CLUSTER_OK;
        int64_t t = now_ms() - t0;
        if (t >= 10000 || (counted && (n >= 300 || (t >= MS / 4 && n > 0)))) break;
        sleep_ms(5);
    }
    harness_logf("killing 5 after %" PRId64 " ms, %zu keys in d", now_ms() - t0, n);
    REQUIRE(kill((pid_t)victim_os, SIGKILL) == 0);
    int64_t tk = now_ms();
    for (int i = 0; i < 3; i++) {
        bool ready = true;
        EXPECT_OK(cluster_future_isready(rf[i], &ready));
        EXPECTF(!ready, "writer on %d was done before the kill: nothing tested", remote[i].pid);
    }
    struct seq results[5];
    for (int i = 0; i < 3; i++) {
        buf_t out = {0};
        memset(&results[i], 0, sizeof results[i]);
        results[i].tag = remote[i].tag;
        results[i].d = remote[i].d;
        if (EXPECT_OK(fetch_future(rf[i], &out))) {
            rd_t rd = {out.p, out.len, false};
            results[i].n = rd_u32(&rd);
            results[i].nerr = rd_u32(&rd);
            results[i].first_st = (int32_t)rd_u32(&rd);
            size_t ml = 0;
            const uint8_t *m = rd_blob(&rd, &ml);
            EXPECT(!rd.bad);
            if (!rd.bad) snprintf(results[i].first_msg, sizeof results[i].first_msg, "%.*s", (int)ml, (const char *)m);
        } else {
            results[i].nerr = 1;
        }
        buf_free(&out);
        cluster_future_free(rf[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        results[3 + i] = local[i];
    }
    harness_logf("writers done %" PRId64 " ms after the kill", now_ms() - tk);
    /* The blocking and async forms retry on the new configuration: every
     * write is acknowledged, and on every survivor that should hold it. */
    static const int32_t survivors[] = {2, 3, 4};
    cluster_dict_entries *e = NULL;
    res_t rd_all = {0}, rg_all = {0};
    kvs_t d_all = listing_on(1, d, OP_PAIRS, &rd_all);
    kvs_t g_all_pairs = listing_on(1, g, OP_PAIRS, &rg_all);
    size_t d_total = 0;
    for (int i = 0; i < 5; i++) {
        struct seq *s = &results[i];
        harness_logf("writer %c: %u writes, %u failed", s->tag, s->n, s->nerr);
        EXPECTF(s->nerr == 0, "writer %c: %u failed, first: %s", s->tag, s->nerr, s->first_msg);
        EXPECT(s->n > 0);
        if (s->d == d) d_total += s->n;
        if (s->nerr == 0)
            check_acked(s->d, s->tag, s->n, survivors, 3, s->d == g ? 3 : 2, s->d == g ? &g_all_pairs : &d_all);
    }
    kvs_free(&d_all);
    kvs_free(&g_all_pairs);
    res_clear(&rd_all);
    res_clear(&rg_all);
    EXPECTF(length_of(d) == d_total, "d holds %zu, %zu were written", length_of(d), d_total);
    int32_t got[8];
    size_t count = 0;
    EXPECT_OK(cluster_dict_members(d, got, 8, &count));
    EXPECT(count == 3 && got[0] == 2 && got[2] == 4); /* the handle follows the new epoch */
    EXPECT_OK(cluster_dict_members(g, got, 8, &count));
    EXPECT(count == 3);

    /* Replication 1: the keys that lived on 5 are reported lost, naming it. */
    int lost = 0;
    char lost_key[16] = "";
    for (int i = 0; i < 64; i++) {
        char k[16];
        int kl = snprintf(k, sizeof k, "key%d", i);
        cluster_buffer v = {0};
        cluster_status st = cluster_dict_get(r1, (const uint8_t *)k, (size_t)kl, &v);
        if (st == CLUSTER_OK) {
            EXPECT(same_bytes(v.data, v.len, "x", 1));
            cluster_buffer_free(&v);
            continue;
        }
        EXPECTF(st == CLUSTER_ERR_PROCESS_EXITED && cluster_last_error_pid() == 5, "%s: %s (process %d): %s", k,
                cluster_status_str(st), cluster_last_error_pid(), cluster_last_error());
        EXPECT_LAST_ERROR_HAS("lost with process 5");
        if (!lost++) snprintf(lost_key, sizeof lost_key, "%s", k);
    }
    EXPECTF(lost > 0 && lost < 64, "%d of 64 keys lost", lost);
    if (lost) {
        cluster_future *f = NULL;
        cluster_status st = cluster_dict_get_async(r1, K(lost_key), &f);
        if (st == CLUSTER_OK) st = cluster_future_wait(f, 20000);
        EXPECT(st == CLUSTER_ERR_PROCESS_EXITED);
        int32_t pid = 0;
        if (f)
            EXPECT_OK(cluster_future_error(f, &pid, NULL));
        else
            pid = cluster_last_error_pid();
        EXPECT(pid == 5);
        cluster_future_free(f);
        EXPECT_ST(cluster_dict_set(r1, K(lost_key), K("y")), CLUSTER_ERR_PROCESS_EXITED);
        EXPECT(cluster_last_error_pid() == 5);
    }
    size_t len = 0;
    EXPECT_ST(cluster_dict_length(r1, &len), CLUSTER_ERR_PROCESS_EXITED); /* it would be wrong */
    EXPECT(cluster_last_error_pid() == 5);
    EXPECT_ST(cluster_dict_list(r1, CLUSTER_DICT_KEYS, &e), CLUSTER_ERR_PROCESS_EXITED);
    /* The survivors serve on. */
    cluster_future *f = NULL;
    REQUIRE_OK(cluster_dict_get_async(d, K("no such key"), &f));
    CHECK_FUTURE(f, CLUSTER_ERR_NOT_FOUND, NULL, 0);
    uint8_t k7[5] = {'p', 7, 0, 0, 0};
    uint32_t seven = 7;
    REQUIRE_OK(cluster_dict_pop_async(d, k7, 5, &f));
    CHECK_FUTURE(f, CLUSTER_OK, &seven, 4);
    OPS(3, d, OP_SET, "after", "kill", CLUSTER_OK, "");
    OPS(4, d, OP_GET, "after", NULL, CLUSTER_OK, "kill");
    for (int32_t p = 2; p <= 4; p++) OPS(p, g, OP_SET, "after", "kill", CLUSTER_OK, "");
    for (int32_t p = 2; p <= 4; p++) OPS(p, g, OP_GET_LOCAL, "after", NULL, CLUSTER_OK, "\001kill");

    EXPECT_OK(cluster_dict_release(d));
    EXPECT_OK(cluster_dict_release(g));
    EXPECT_OK(cluster_dict_release(r1));
    expect_nothing_held(g_all, NALL, "after the kill");
    cluster_dict_free(d);
    cluster_dict_free(g);
    cluster_dict_free(r1);
    shutdown_all();
}

/* ---- misuse: errors, never crashes ------------------------------------------------------ */

static void case_misuse(void) {
    /* A lone head: the default members (the workers) are the head itself. */
    cluster_dict_spec spec;
    EXPECT_ST(cluster_dict_spec_init(NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    REQUIRE_OK(cluster_dict_spec_init(&spec));
    spec.name = "m";
    cluster_dict *d = NULL;
    REQUIRE_OK(cluster_dict_create(g_ctx, &spec, &d));
    int32_t ids[4];
    size_t count = 0;
    EXPECT_OK(cluster_dict_members(d, ids, 4, &count));
    EXPECT(count == 1 && ids[0] == 1);
    EXPECT_ST(cluster_dict_members(d, ids, 0, &count), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(count == 1);
    EXPECT_ST(cluster_dict_members(d, ids, 4, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    uint32_t rep = 9;
    EXPECT_OK(cluster_dict_info(d, NULL, &rep));
    EXPECT(rep == 1); /* one member: one copy */
    EXPECT_OK(cluster_dict_info(d, NULL, NULL));
    char nm[8];
    size_t nl = 0;
    EXPECT_ST(cluster_dict_name(d, nm, 1, &nl), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT(nl == 1);
    EXPECT_ST(cluster_dict_name(d, NULL, 0, &nl), CLUSTER_ERR_BUFFER_TOO_SMALL);
    EXPECT_ST(cluster_dict_name(d, nm, sizeof nm, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_dict_name(d, nm, 2, &nl));
    EXPECT(strcmp(nm, "m") == 0);

    /* Bad specifications. */
    cluster_dict *x = NULL;
    cluster_future *f = NULL;
    EXPECT_ST(cluster_dict_create(g_ctx, NULL, &x), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_create(g_ctx, &spec, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_create(NULL, &spec, &x), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_create_async(g_ctx, &spec, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_create_async(g_ctx, NULL, &f), CLUSTER_ERR_INVALID_ARGUMENT);
    static const int32_t nobody[] = {42}, negative[] = {-3};
    const struct {
        int32_t kind, members;
        const int32_t *pids;
        size_t npids;
        const char *name;
        const uint8_t *tag;
        size_t tag_len;
        cluster_status want;
    } bad[] = {
        {2, CLUSTER_MEMBERS_WORKERS, NULL, 0, "b", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {-1, CLUSTER_MEMBERS_WORKERS, NULL, 0, "b", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_GLOBAL, 3, NULL, 0, "b", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_GLOBAL, -7, NULL, 0, "b", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_PIDS, NULL, 2, "b", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_PIDS, NULL, 0, "b", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_PIDS, negative, 1, "b", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_PIDS, nobody, 1, "b", NULL, 0, CLUSTER_ERR_NO_SUCH_PROCESS},
        {CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_ALL, NULL, 0, "\xff\xfe", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_ALL, NULL, 0, "b", NULL, 3, CLUSTER_ERR_INVALID_ARGUMENT},
        /* the name "m" is taken by another specification */
        {CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_WORKERS, NULL, 0, "m", NULL, 0, CLUSTER_ERR_INVALID_ARGUMENT},
        {CLUSTER_DICT_DISTRIBUTED, CLUSTER_MEMBERS_WORKERS, NULL, 0, "m", (const uint8_t *)"T", 1,
         CLUSTER_ERR_INVALID_ARGUMENT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cluster_dict_spec s;
        cluster_dict_spec_init(&s);
        s.kind = bad[i].kind;
        s.members = bad[i].members;
        s.pids = bad[i].pids;
        s.npids = bad[i].npids;
        s.name = bad[i].name;
        s.type_tag = bad[i].tag;
        s.type_tag_len = bad[i].tag_len;
        x = NULL;
        EXPECTF(cluster_dict_create(g_ctx, &s, &x) == bad[i].want, "bad spec %zu: %s", i, cluster_last_error());
        EXPECT(x == NULL);
        f = NULL;
        cluster_status st = cluster_dict_create_async(g_ctx, &s, &f);
        if (st == CLUSTER_OK) st = cluster_future_wait(f, 10000);
        EXPECTF(st == bad[i].want, "bad spec %zu as a future: %s", i, cluster_status_str(st));
        cluster_future_free(f);
    }
    EXPECT_OK(cluster_dict_create(g_ctx, &spec, &x)); /* the same spec: opens it */
    EXPECT_OK(cluster_dict_set(x, K("shared"), K("yes")));
    cluster_buffer b = {0};
    EXPECT_OK(cluster_dict_get(d, K("shared"), &b));
    EXPECT(same_bytes(b.data, b.len, "yes", 3));
    EXPECT_OK(cluster_buffer_free(&b));
    EXPECT_OK(cluster_dict_delete(x, K("shared")));
    EXPECT_OK(cluster_dict_free(x));

    /* Empty keys and values are keys and values. */
    EXPECT_OK(cluster_dict_set(d, NULL, 0, NULL, 0));
    bool has = false;
    EXPECT_OK(cluster_dict_haskey(d, NULL, 0, &has));
    EXPECT(has);
    EXPECT_OK(cluster_dict_get(d, NULL, 0, &b));
    EXPECT(b.len == 0 && b.handle != 0);
    EXPECT_OK(cluster_buffer_free(&b));
    EXPECT_OK(cluster_dict_delete(d, NULL, 0));

    /* NULL pointers. */
    bool held = false;
    int32_t pid = 0;
    size_t n = 0;
    cluster_dict_entries *e = NULL;
    EXPECT_ST(cluster_dict_set(d, NULL, 3, K("v")), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set(d, K("k"), NULL, 3), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set_async(d, K("k"), K("v"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set_async(d, NULL, 1, K("v"), &f), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get(d, NULL, 1, &b), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get_async(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get_local(d, K("k"), NULL, &b), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get_local(d, K("k"), &held, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_owner(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_owner(d, NULL, 1, &pid), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_haskey(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_haskey_async(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get_or_insert(d, K("k"), K("v"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get_or_insert(d, K("k"), NULL, 1, &b), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get_or_insert_async(d, K("k"), K("v"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_pop(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_pop_async(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_delete(d, NULL, 2), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_delete_async(d, K("k"), NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_length(d, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_length_async(d, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_list(d, CLUSTER_DICT_KEYS, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_list_async(d, CLUSTER_DICT_KEYS, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_localpart(d, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_local_names(g_ctx, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_local_names(NULL, &e), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_release_async(d, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_to_bytes(d, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set_with(d, K("k"), NULL, NULL, 0), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set_with(d, K("k"), "myid", NULL, 4), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set_with_async(d, K("k"), NULL, NULL, 0, &f), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_set_with_async(d, K("k"), "myid", NULL, 0, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_open(g_ctx, NULL, 4, &x), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_open(g_ctx, (const uint8_t *)"abcd", 4, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_open(NULL, (const uint8_t *)"abcd", 4, &x), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_register_value_fn(g_ctx, NULL, vf_myid, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_register_value_fn(g_ctx, "x", NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_register_value_fn(g_ctx, "", vf_myid, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_register_value_fn(NULL, "x", vf_myid, NULL), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_entries_decode(NULL, 4, CLUSTER_DICT_KEYS, &e), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_entries_decode((const uint8_t *)"abcd", 4, CLUSTER_DICT_KEYS, NULL),
              CLUSTER_ERR_INVALID_ARGUMENT);

    /* Bad listing values. */
    EXPECT_ST(cluster_dict_list(d, 3, &e), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_list(d, -1, &e), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_list_async(d, 7, &f), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_entries_decode((const uint8_t *)"", 0, 9, &e), CLUSTER_ERR_INVALID_ARGUMENT);

    /* Listings: out of range, garbage, the wrong `what`. */
    EXPECT_OK(cluster_dict_set(d, K("k1"), K("v1")));
    EXPECT_OK(cluster_dict_set(d, K("k2"), K("v2")));
    REQUIRE_OK(cluster_dict_list(d, CLUSTER_DICT_PAIRS, &e));
    EXPECT_OK(cluster_dict_entries_count(e, &n));
    EXPECT(n == 2);
    EXPECT_ST(cluster_dict_entries_count(e, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_dict_entries_get(e, 1, NULL, NULL, NULL, NULL));
    const uint8_t *kp = NULL;
    size_t kl = 0;
    EXPECT_ST(cluster_dict_entries_get(e, 2, &kp, &kl, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_entries_get(e, SIZE_MAX, &kp, &kl, NULL, NULL), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("no entry");
    REQUIRE_OK(cluster_dict_list_async(d, CLUSTER_DICT_PAIRS, &f));
    const uint8_t *data = NULL;
    size_t len = 0;
    REQUIRE_OK(cluster_future_fetch(f, 10000, &data, &len));
    cluster_dict_entries *e2 = NULL;
    EXPECT_ST(cluster_dict_entries_decode(data, len - 1, CLUSTER_DICT_PAIRS, &e2), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("not a dict listing");
    EXPECT_OK(cluster_dict_entries_decode(data, len, CLUSTER_DICT_PAIRS, &e2));
    EXPECT_OK(cluster_dict_entries_free(e2));
    EXPECT_OK(cluster_future_free(f));
    static const uint8_t garbage[][16] = {
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
        {0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3, 4, 5, 6, 7},
        {3, 1, 'a', 200, 'b'},
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        for (int32_t what = CLUSTER_DICT_KEYS; what <= CLUSTER_DICT_PAIRS; what++) {
            e2 = NULL;
            EXPECTF(cluster_dict_entries_decode(garbage[i], sizeof garbage[i], what, &e2) == CLUSTER_ERR_INVALID_ARGUMENT,
                    "garbage %zu decoded as listing %d", i, what);
            EXPECT(e2 == NULL);
        }
        x = NULL;
        EXPECT_ST(cluster_dict_open(g_ctx, garbage[i], sizeof garbage[i], &x), CLUSTER_ERR_INVALID_ARGUMENT);
        EXPECT(x == NULL);
    }
    EXPECT_ST(cluster_dict_open(g_ctx, (const uint8_t *)"", 0, &x), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_LAST_ERROR_HAS("not a dict handle");
    /* A handle's bytes cut short, or with a byte changed, are no handle or a
     * well-formed one: never a crash. */
    cluster_buffer hb = {0};
    REQUIRE_OK(cluster_dict_to_bytes(d, &hb));
    EXPECT_ST(cluster_dict_open(g_ctx, hb.data, hb.len - 1, &x), CLUSTER_ERR_INVALID_ARGUMENT);
    uint8_t *copy = malloc(hb.len);
    REQUIRE(copy != NULL);
    for (size_t i = 0; i < hb.len; i++) {
        memcpy(copy, hb.data, hb.len);
        copy[i] ^= 0x5a;
        x = NULL;
        cluster_status st = cluster_dict_open(g_ctx, copy, hb.len, &x);
        EXPECTF(st == CLUSTER_OK || st == CLUSTER_ERR_INVALID_ARGUMENT, "flipped byte %zu: %s", i, cluster_status_str(st));
        if (st == CLUSTER_OK) {
            /* Whatever it names, reading it here fails or works, cleanly. (Not
             * an operation that asks a member: one with a made-up epoch
             * is retried for 12 s.) */
            int32_t o = 0, ids2[8];
            size_t cnt = 0;
            char name2[64];
            cluster_dict_entries *lp = NULL;
            (void)cluster_dict_owner(x, K("k1"), &o);
            (void)cluster_dict_members(x, ids2, 8, &cnt);
            (void)cluster_dict_name(x, name2, sizeof name2, &cnt);
            (void)cluster_dict_info(x, &o, NULL);
            if (cluster_dict_localpart(x, &lp) == CLUSTER_OK) EXPECT_OK(cluster_dict_entries_free(lp));
            EXPECT_OK(cluster_dict_free(x));
        }
    }
    free(copy);
    EXPECT_OK(cluster_buffer_free(&hb));

    /* Wrong-kind handles: a dict is no channel, future, listing or value,
     * and the other way round; a wrong-kind free frees nothing. */
    int32_t out_pid = 0;
    EXPECT_ST(cluster_channel_pid((cluster_channel *)d, &out_pid), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_channel_free((cluster_channel *)d), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_future_wait((cluster_future *)d, 0), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_future_free((cluster_future *)d), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_entries_count((cluster_dict_entries *)d, &n), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_entries_free((cluster_dict_entries *)d), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_value_set((cluster_value *)d, K("v")), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_length((cluster_dict *)e, &n), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_free((cluster_dict *)e), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_set((cluster_dict *)g_ctx, K("k"), K("v")), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_create((cluster_ctx *)d, &spec, &x), CLUSTER_ERR_BAD_HANDLE);
    cluster_channel *ch = NULL;
    REQUIRE_OK(cluster_channel_new(g_ctx, 0, 1, &ch));
    EXPECT_ST(cluster_dict_get((cluster_dict *)ch, K("k1"), &b), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_free((cluster_dict *)ch), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_channel_free(ch));
    REQUIRE_OK(cluster_dict_length_async(d, &f));
    EXPECT_ST(cluster_dict_release((cluster_dict *)f), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_entries_get((cluster_dict_entries *)f, 0, NULL, NULL, NULL, NULL), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_ST(cluster_dict_get((cluster_dict *)(uintptr_t)0xdeadbeefcafeULL, K("k1"), &b), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_set(NULL, K("k"), K("v")), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_to_bytes(NULL, &hb), CLUSTER_ERR_BAD_HANDLE);
    /* The listing survived the wrong-kind free. */
    EXPECT_OK(cluster_dict_entries_count(e, &n));
    EXPECT(n == 2);

    /* Freed handles. */
    EXPECT_OK(cluster_dict_entries_free(e));
    EXPECT_ST(cluster_dict_entries_free(e), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_entries_get(e, 0, &kp, &kl, NULL, NULL), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_dict_entries_free(NULL));
    EXPECT_OK(cluster_dict_free(NULL));
    EXPECT_ST(cluster_dict_open(g_ctx, NULL, 0, &x), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster_dict *second = NULL;
    cluster_buffer hb2 = {0};
    REQUIRE_OK(cluster_dict_to_bytes(d, &hb2));
    REQUIRE_OK(cluster_dict_open(g_ctx, hb2.data, hb2.len, &second));
    cluster_buffer stale_copy = hb2;
    EXPECT_OK(cluster_buffer_free(&hb2));
    EXPECT_ST(cluster_buffer_free(&stale_copy), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_OK(cluster_dict_free(second));
    EXPECT_ST(cluster_dict_free(second), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_set(second, K("k"), K("v")), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_dict_get_async(second, K("k"), &f), CLUSTER_ERR_BAD_HANDLE);
    /* Freeing a handle leaves the dict: another handle still reads it. */
    EXPECT_OK(cluster_dict_get(d, K("k1"), &b));
    EXPECT(same_bytes(b.data, b.len, "v1", 2));
    EXPECT_OK(cluster_buffer_free(&b));

    /* Value functions: the unknown, the failing, and a cluster_value used
     * after its call. */
    EXPECT_ST(cluster_dict_set_with(d, K("k"), "nope", NULL, 0), CLUSTER_ERR_REMOTE);
    EXPECT_ST(cluster_dict_set_with(d, K("k"), "fail", NULL, 0), CLUSTER_ERR_REMOTE);
    EXPECT_OK(cluster_dict_set_with(d, K("k"), "keep", NULL, 0));
    EXPECT_OK(cluster_dict_get(d, K("k"), &b));
    EXPECT(same_bytes(b.data, b.len, "kept", 4));
    EXPECT_OK(cluster_buffer_free(&b));
    EXPECT(atomic_load(&g_bad_set_status) == CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_value_set(atomic_load(&g_kept_value), K("late")), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_ST(cluster_value_set(atomic_load(&g_kept_value), NULL, 0), CLUSTER_ERR_BAD_HANDLE);

    /* get_local on a distributed dict's member: not a copy to read. */
    EXPECT_OK(cluster_dict_get_local(d, K("k1"), &held, &b));
    EXPECT(!held && b.handle == 0);
    EXPECT_OK(cluster_dict_owner(d, K("k1"), &pid));
    EXPECT(pid == 1);

    /* A released dict: its handles fail, still need freeing. */
    REQUIRE_OK(cluster_dict_to_bytes(d, &hb));
    EXPECT_OK(cluster_dict_release(d));
    REQUIRE_OK(cluster_dict_local_names(g_ctx, &e));
    EXPECT_OK(cluster_dict_entries_count(e, &n));
    EXPECT(n == 0);
    EXPECT_OK(cluster_dict_entries_free(e));
    EXPECT_ST(cluster_dict_set(d, K("k"), K("v")), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_get(d, K("k1"), &b), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_ST(cluster_dict_length(d, &n), CLUSTER_ERR_INVALID_ARGUMENT);
    REQUIRE_OK(cluster_dict_get_async(d, K("k1"), &f));
    EXPECT_ST(cluster_future_wait(f, 10000), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_future_free(f));
    EXPECT_OK(cluster_dict_release(d)); /* released already: nothing to do */
    /* Its old bytes open a handle to nothing. */
    REQUIRE_OK(cluster_dict_open(g_ctx, hb.data, hb.len, &x));
    EXPECT_ST(cluster_dict_set(x, K("k"), K("v")), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_OK(cluster_dict_free(x));
    EXPECT_OK(cluster_buffer_free(&hb));

    /* After shutdown: errors, never crashes. */
    cluster_dict *late = create(CLUSTER_DICT_GLOBAL, CLUSTER_MEMBERS_ALL, NULL, 0, "late", 0);
    EXPECT_OK(cluster_shutdown(g_ctx, 5000));
    EXPECT(cluster_dict_set(late, K("k"), K("v")) != CLUSTER_OK);
    EXPECT(cluster_dict_set_async(late, K("k"), K("v"), &f) != CLUSTER_OK || cluster_future_wait(f, 5000) != CLUSTER_OK);
    cluster_future_free(f);
    EXPECT_ST(cluster_dict_create(g_ctx, &spec, &x), CLUSTER_ERR_SHUTDOWN);
    EXPECT_OK(cluster_dict_free(late));
    EXPECT_OK(cluster_dict_free(d));
    EXPECT_OK(cluster_free(g_ctx));
    g_ctx = NULL;
}

/* ---- main ----------------------------------------------------------------- */

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {
    {"matrix", case_matrix},   {"values", case_values}, {"concurrent", case_concurrent},
    {"kill", case_kill},       {"misuse", case_misuse},
};

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "";
    harness_name = which;
    void (*fn)(void) = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (strcmp(which, cases[i].name) == 0) fn = cases[i].fn;
    if (!fn) {
        fprintf(stderr, "usage: %s matrix|values|concurrent|kill|misuse\n", argv[0]);
        return 2;
    }
    cluster_config cfg;
    REQUIRE_OK(cluster_config_init(&cfg));
    cfg.startup_timeout_ms = 20000;
    REQUIRE_OK(cluster_init(&cfg, &g_ctx));
    REQUIRE_OK(cluster_myid(g_ctx, &g_me));
    register_all();
    bool head = false;
    REQUIRE_OK(cluster_is_head(g_ctx, &head));
    if (!head) {
        harness_name = "worker";
        harness_watchdog(60); /* never outlive a broken test */
        cluster_status st = cluster_serve(g_ctx);
        if (st != CLUSTER_OK && st != CLUSTER_ERR_HEAD_LOST) harness_logf("serve: %s", cluster_last_error());
        cluster_free(g_ctx);
        return harness_failures ? 1 : 0;
    }
    harness_watchdog(50);
    harness_logf("case %s", which);
    int64_t t0 = now_ms();
    fn();
    if (g_ctx) shutdown_all();
    harness_logf("case %s took %" PRId64 " ms", which, now_ms() - t0);
    return harness_finish();
}
