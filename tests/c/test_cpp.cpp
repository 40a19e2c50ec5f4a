// Tests of the C++ wrapper (bindings/cpp/cluster.hpp): RAII owners, moves,
// exceptions, byte views, typed calls, callable handlers (state, return
// values, exceptions), deferred calls, callbacks, host mode, workers,
// channels, pools and the rest of work distribution, and cluster dicts
// (Dict, DictSpec, DictEntries, value functions), pfork and save/load (no
// cluster).
//
// Usage: test_cpp <case>. Like the C tests, the binary is its own worker.
#include "harness.h"

#include <cluster.hpp>

#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

// Runs `f`, expecting a cluster::Error with status `want`; returns it.
template <class F>
std::optional<cluster::Error> expect_error(const char *file, int line, const char *expr, cluster_status want, F &&f) {
    try {
        f();
    } catch (const cluster::Error &e) {
        if (e.status() == want) return e;
        harness_logf("%s:%d: %s threw status %d (%s), expected %d: %s", file, line, expr, (int)e.status(),
                     cluster_status_str(e.status()), (int)want, e.what());
        harness_failures++;
        return e;
    } catch (const std::exception &e) {
        harness_logf("%s:%d: %s threw a non-cluster exception: %s", file, line, expr, e.what());
        harness_failures++;
        return std::nullopt;
    }
    harness_logf("%s:%d: %s did not throw (expected %s)", file, line, expr, cluster_status_str(want));
    harness_failures++;
    return std::nullopt;
}

#define EXPECT_THROWS(expr, want) expect_error(__FILE__, __LINE__, #expr, want, [&] { (void)(expr); })

template <class F> bool no_throw(const char *file, int line, const char *expr, F &&f) {
    try {
        f();
        return true;
    } catch (const std::exception &e) {
        harness_logf("%s:%d: %s threw: %s", file, line, expr, e.what());
        harness_failures++;
        return false;
    }
}
#define EXPECT_NO_THROW(expr) no_throw(__FILE__, __LINE__, #expr, [&] { (void)(expr); })

cluster::Cluster *g_cluster = nullptr; // for handlers that call out
std::atomic<int> g_calls{0};

struct Point {
    std::int32_t x, y;
};

// Every process registers the same functions.
void register_all(cluster::Cluster &c) {
    c.register_function("echo", [](cluster::Call &call) { return call.args(); });
    // A server task's function: a count kept in the task's state slot.
    c.register_function("stk_count", [](cluster::Call &call) {
        cluster::StaskState st = cluster::StaskState::of(call);
        if (*st.state == nullptr) *st.state = new std::int32_t(0);
        auto *n = static_cast<std::int32_t *>(*st.state);
        return std::int32_t(st.task * 100 + ++*n);
    });
    c.register_function("stk_free", [](cluster::Call &call) {
        cluster::StaskState st = cluster::StaskState::of(call);
        delete static_cast<std::int32_t *>(*st.state);
        *st.state = nullptr;
        return std::int32_t(0);
    });
    // ClusterUtils: a variable doubled; an all-gather of this process's id
    // over the set in the arguments (tag 1), answered as the ids gathered.
    c.register_function("twice", [](cluster::Call &call) { return call.args_string() + call.args_string(); });
    c.register_function("ag_ids", [](cluster::Call &call) {
        cluster::Bytes a = call.args();
        std::vector<std::int32_t> pids(a.size() / 4);
        if (!pids.empty()) std::memcpy(pids.data(), a.data(), pids.size() * 4);
        auto got = cluster::allgather_values<std::int32_t>(*g_cluster, pids, 1, g_cluster->myid(), 20000);
        std::string out;
        for (auto v : got) out += std::to_string(v) + ",";
        return out;
    });
    c.register_function("upper", [](cluster::Call &call) {
        std::string s = call.args_string();
        for (auto &ch : s) ch = (char)toupper((unsigned char)ch);
        return s;
    });
    c.register_function("square", [](cluster::Call &call) { return call.args_as<std::int32_t>() * call.args_as<std::int32_t>(); });
    c.register_function("swap", [](cluster::Call &call) {
        auto p = call.args_as<Point>();
        return Point{p.y, p.x};
    });
    c.register_function("vec", [](cluster::Call &call) {
        std::vector<std::uint8_t> v(call.args_as<std::int32_t>());
        for (std::size_t i = 0; i < v.size(); i++) v[i] = (std::uint8_t)i;
        return v;
    });
    c.register_function("whoami", [](cluster::Call &) { return g_cluster->myid(); });
    c.register_function("getpid", [](cluster::Call &) { return (std::int32_t)getpid(); });
    c.register_function("nothing", [](cluster::Call &) { g_calls++; });
    c.register_function("throw_runtime", [](cluster::Call &) -> int { throw std::runtime_error("runtime trouble"); });
    c.register_function("throw_int", [](cluster::Call &) { throw 42; });
    c.register_function("throw_cluster", [](cluster::Call &) {
        throw cluster::Error(CLUSTER_ERR_INVALID_ARGUMENT, "bad input from C++");
    });
    c.register_function("explicit_fail", [](cluster::Call &call) { call.fail("explicit failure"); });
    c.register_function("reply_then_throw", [](cluster::Call &call) {
        call.reply(cluster::Bytes("ok"));
        throw std::runtime_error("after the reply: ignored");
    });
    c.register_function("fail_on", [](cluster::Call &call) {
        if (call.args_as<std::int32_t>() == g_cluster->myid()) throw std::runtime_error("failing on purpose");
    });
    c.register_function("introspect", [](cluster::Call &call) {
        std::string s = call.name() + "|" + std::to_string(call.caller()) + "|" + (call.cancelled() ? "c" : "-");
        return s;
    });
    c.register_function("sleep", [](cluster::Call &call) {
        auto ms = call.args_as<std::int32_t>();
        auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        while (std::chrono::steady_clock::now() < until) {
            if (call.cancelled()) throw std::runtime_error("cancelled");
            std::this_thread::sleep_for(5ms);
        }
        return std::string("slept");
    });
    // Deferred: answered from another thread after args ms.
    c.register_function("range_sum", [](cluster::Call &call) {
        cluster::Bytes a = call.args();
        std::int64_t lo = 0, hi = 0, sum = 0;
        std::memcpy(&lo, a.data(), 8);
        std::memcpy(&hi, a.data() + 8, 8);
        for (std::int64_t i = lo; i <= hi; i++) sum += i;
        return sum;
    });
    c.register_function("sleep_whoami", [](cluster::Call &call) {
        std::this_thread::sleep_for(std::chrono::milliseconds(call.args_as<std::int32_t>()));
        return g_cluster->myid();
    });
    c.register_function("odd_fails", [](cluster::Call &call) {
        auto x = call.args_as<std::int32_t>();
        if (x % 2) throw std::runtime_error("odd");
        return x * 2;
    });
    c.register_function("deferred", [](cluster::Call &call) {
        cluster::Call owned = call.defer();
        EXPECT(!call.valid());
        EXPECT(owned.valid() && owned.owned());
        std::thread([c = std::move(owned)]() mutable {
            auto ms = c.args_as<std::int32_t>();
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            c.reply(cluster::Bytes("deferred " + std::to_string(ms)));
            EXPECT(c.answered());
        }).detach(); // the owner frees the call when the thread ends
        return 0;    // ignored: the call was deferred
    });
    c.register_function("deferred_drop", [](cluster::Call &call) {
        std::thread([c = call.defer()]() mutable {
            std::this_thread::sleep_for(20ms);
            c.reset(); // unanswered: the caller gets an error
        }).detach();
    });
    // Dicts: a handle received in the arguments, used here.
    c.register_function("dict_use", [](cluster::Call &call) {
        cluster::Dict d = cluster::Dict::open(*g_cluster, call.args());
        std::int32_t me = g_cluster->myid();
        d.set("from" + std::to_string(me), me);
        return d.at("a") + "|" + std::to_string(d.size()) + "|" + std::to_string(d.localpart().size());
    });
    c.register_function("dict_local_count", [](cluster::Call &) {
        return static_cast<std::int32_t>(cluster::Dict::local_names(*g_cluster).size());
    });
    // This process's own copy of "id" (-1: no copy here, -2: no such key).
    c.register_function("dict_local_id", [](cluster::Call &call) {
        cluster::Dict d = cluster::Dict::open(*g_cluster, call.args());
        auto v = d.get_local<std::int32_t>("id");
        return !v ? std::int32_t(-1) : !*v ? std::int32_t(-2) : **v;
    });
    // Value functions: this process's id; a string; one that throws.
    c.register_value_fn("myid", [](cluster::Bytes) { return g_cluster->myid(); });
    c.register_value_fn("greet", [](cluster::Bytes args) { return "hello " + args.str() + " from " + std::to_string(g_cluster->myid()); });
    c.register_value_fn("throws", [](cluster::Bytes) -> std::string { throw std::runtime_error("no value here"); });
    c.register_value_fn("throws_cluster", [](cluster::Bytes) -> std::int32_t {
        throw cluster::Error(CLUSTER_ERR_INVALID_ARGUMENT, "a cluster error in a value function");
    });
}

// ---- single-process cases ----------------------------------------------------------------

void case_basics() {
    // versions
    EXPECT(cluster::version() == CLUSTER_VERSION);
    EXPECT(cluster::header_version == cluster::version());
    EXPECT(cluster::version_compatible());
    EXPECT(std::string(cluster::version_string()) == std::to_string(CLUSTER_VERSION_MAJOR) + "." +
                                                          std::to_string(CLUSTER_VERSION_MINOR) + "." +
                                                          std::to_string(CLUSTER_VERSION_PATCH));
    EXPECT(std::string(cluster::status_str(CLUSTER_OK)) == "ok");

    // Error carries status, message, pid; what() composes them.
    cluster::Error e(CLUSTER_ERR_REMOTE, "boom", 7);
    EXPECT(e.status() == CLUSTER_ERR_REMOTE && e.message() == "boom" && e.pid() == 7);
    EXPECT(std::string(e.what()).find("boom") != std::string::npos);
    EXPECT(std::string(e.what()).find("7") != std::string::npos);
    EXPECT_THROWS(cluster::check(CLUSTER_ERR_TIMEOUT), CLUSTER_ERR_TIMEOUT);
    EXPECT_NO_THROW(cluster::check(CLUSTER_OK));
    // Error::last reads this thread's last error.
    EXPECT(cluster_is_head(nullptr, nullptr) == CLUSTER_ERR_BAD_HANDLE);
    EXPECT(cluster::Error::last(CLUSTER_ERR_BAD_HANDLE).message() == cluster::last_error());
    EXPECT(cluster::last_error_pid() == 0);

    // Bytes: views of strings, vectors, raw memory, values.
    std::string s = "hello";
    cluster::Bytes b1(s);
    EXPECT(b1.size() == 5 && b1.data() == (const std::uint8_t *)s.data());
    EXPECT(b1.str() == "hello" && b1.view() == "hello" && b1[1] == 'e');
    std::vector<std::uint8_t> v{1, 2, 3};
    cluster::Bytes b2(v);
    EXPECT(b2.size() == 3 && b2.vec() == v);
    EXPECT(cluster::Bytes("lit").size() == 3);
    EXPECT(cluster::Bytes(static_cast<const char *>(nullptr)).empty());
    std::int64_t big = 0x0102030405060708;
    auto b3 = cluster::Bytes::of(big);
    EXPECT(b3.size() == 8 && b3.as<std::int64_t>() == big);
    EXPECT_THROWS(b3.as<std::int32_t>(), CLUSTER_ERR_PROTOCOL);
    int sum = 0;
    for (auto byte : b2) sum += byte;
    EXPECT(sum == 6);

    // Empty owners are harmless; using them throws BAD_HANDLE.
    cluster::Future nf;
    EXPECT(!nf.valid());
    EXPECT_THROWS(nf.ready(), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_THROWS(nf.wait(), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_THROWS(nf.fetch(0), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_THROWS(nf.id(), CLUSTER_ERR_BAD_HANDLE);
    cluster::Buffer nb;
    EXPECT(!nb && nb.size() == 0);
    cluster::Call ncall;
    EXPECT_THROWS(ncall.args(), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_THROWS(ncall.reply(cluster::Bytes("x")), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_THROWS(ncall.defer(), CLUSTER_ERR_BAD_HANDLE);

    // Config: bad values are refused by cluster_init.
    EXPECT_THROWS(cluster::Cluster(cluster::Config().handler_threads(0)), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_THROWS(cluster::Cluster(cluster::Config().cookie("")), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_THROWS(cluster::Cluster(cluster::Config().log_level(17)), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster::Config cfg;
    cfg.cookie("cpp-cookie").listen_host("127.0.0.1").handler_threads(2).log_level(CLUSTER_LOG_OFF);
    EXPECT(std::string(cfg.get()->cookie) == "cpp-cookie");
    cluster::Cluster c(cfg);
    EXPECT(c.cookie() == "cpp-cookie");
    EXPECT(c.address().rfind("127.0.0.1:", 0) == 0);
    EXPECT(c.is_head() && c.myid() == 1 && c.nprocs() == 1 && c.nworkers() == 1);
    EXPECT(c.procs() == std::vector<std::int32_t>{1});
    EXPECT(c.workers() == std::vector<std::int32_t>{1});
    EXPECT(c.other_procs().empty() && c.other_workers().empty());
    EXPECT_NO_THROW(c.ready());
    EXPECT_NO_THROW(c.set_log_level(CLUSTER_LOG_OFF));
    EXPECT_NO_THROW(c.set_topology(CLUSTER_TOPOLOGY_ALL_TO_ALL));

    // Moves: the Cluster moves with its handlers; the source is empty.
    cluster::Cluster moved(std::move(c));
    EXPECT(!c.valid() && moved.valid());
    EXPECT_THROWS(c.myid(), CLUSTER_ERR_BAD_HANDLE);
    EXPECT_THROWS(c.register_function("x", [](cluster::Call &) {}), CLUSTER_ERR_BAD_HANDLE);
    c.close(); // harmless on an empty object
    g_cluster = &moved;
    register_all(moved);
    EXPECT(moved.remotecall_fetch(1, "echo", "abc").str() == "abc");
    cluster::Cluster other;
    other = std::move(moved); // move-assign
    g_cluster = &other;
    EXPECT(other.remotecall_fetch_as<std::int32_t>(1, "whoami") == 1);
    other.close();
    other.close(); // idempotent
    EXPECT(!other.valid());
    g_cluster = nullptr;
}

void case_calls() {
    cluster::Cluster c;
    g_cluster = &c;
    register_all(c);

    // return types become replies
    EXPECT(c.remotecall_fetch(1, "upper", "shout").str() == "SHOUT");
    EXPECT(c.remotecall_fetch(1, "echo", std::string("str")).str() == "str");
    std::vector<std::uint8_t> raw{9, 8, 7};
    EXPECT(c.remotecall_fetch(1, "echo", raw).vec() == raw);
    EXPECT(c.remotecall_fetch(1, "echo", cluster::Bytes(raw.data(), 2)).size() == 2);
    EXPECT(c.remotecall_fetch(1, "echo").empty());
    EXPECT(c.remotecall_fetch_as<std::int32_t>(1, "square", 12) == 144);
    Point p = c.remotecall_fetch_as<Point>(1, "swap", Point{3, 4});
    EXPECT(p.x == 4 && p.y == 3);
    auto vb = c.remotecall_fetch(1, "vec", cluster::Bytes::of(std::int32_t(1000)));
    EXPECT(vb.size() == 1000 && vb.data()[999] == (std::uint8_t)999);
    int before = g_calls;
    EXPECT(c.remotecall_fetch(1, "nothing").empty());
    EXPECT(g_calls == before + 1);
    EXPECT(c.remotecall_fetch(1, "introspect").str() == "introspect|1|-");

    // size mismatch on the typed path: PROTOCOL, naming the callee
    auto err = EXPECT_THROWS(c.remotecall_fetch_as<std::int64_t>(1, "square", 3), CLUSTER_ERR_PROTOCOL);
    EXPECT(err && err->pid() == 1);
    // argument of the wrong size for the handler: its args_as throws -> remote error
    err = EXPECT_THROWS(c.remotecall_fetch_as<std::int32_t>(1, "square", std::int64_t(3)), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->message().find("bytes") != std::string::npos);

    // exceptions in handlers become remote errors with their text
    err = EXPECT_THROWS(c.remotecall_fetch(1, "throw_runtime"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->pid() == 1 && err->message().find("runtime trouble") != std::string::npos);
    err = EXPECT_THROWS(c.remotecall_fetch(1, "throw_int"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->message().find("unknown C++ exception") != std::string::npos);
    err = EXPECT_THROWS(c.remotecall_fetch(1, "throw_cluster"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->message().find("bad input from C++") != std::string::npos);
    err = EXPECT_THROWS(c.remotecall_fetch(1, "explicit_fail"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->message().find("explicit failure") != std::string::npos);
    EXPECT(c.remotecall_fetch(1, "reply_then_throw").str() == "ok");
    err = EXPECT_THROWS(c.remotecall_fetch(1, "not_registered"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->pid() == 1);
    EXPECT_THROWS(c.remotecall_fetch(99, "echo"), CLUSTER_ERR_NO_SUCH_PROCESS);
    EXPECT_THROWS(c.remotecall_fetch(1, ""), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_THROWS(c.unregister("not_registered"), CLUSTER_ERR_INVALID_ARGUMENT);

    // futures
    cluster::Future f = c.remotecall(1, "sleep", cluster::Bytes::of(std::int32_t(150)));
    EXPECT(f.valid() && f.pid() == 1);
    EXPECT(!f.wait_for(0));
    EXPECT(!f.wait_for(10ms));
    EXPECT_THROWS(f.error(), CLUSTER_ERR_NOT_READY);
    EXPECT_THROWS(f.fetch(0), CLUSTER_ERR_TIMEOUT);
    EXPECT(f.wait_for(5s));
    EXPECT(f.ready());
    EXPECT(f.fetch_string() == "slept");
    EXPECT(!f.error().has_value());
    std::uint64_t id = f.id();
    cluster::Future g = std::move(f);
    EXPECT(!f.valid() && g.id() == id);
    // A failed future: error() names the process and the text.
    cluster::Future bad = c.remotecall(1, "throw_runtime");
    EXPECT_THROWS(bad.wait(), CLUSTER_ERR_REMOTE);
    auto fe = bad.error();
    EXPECT(fe && fe->pid == 1 && fe->message.find("runtime trouble") != std::string::npos);
    EXPECT_THROWS(bad.fetch(), CLUSTER_ERR_REMOTE);
    // remotecall_wait returns a completed future
    cluster::Future w = c.remotecall_wait(1, "square", cluster::Bytes::of(std::int32_t(5)));
    EXPECT(w.ready() && w.fetch_as<std::int32_t>(0) == 25);
    // export / import on the owner
    cluster_future_ref ref = w.export_ref();
    EXPECT(ref.owner == 1);
    w.reset();
    cluster::Future imp = c.import_future(ref);
    EXPECT(imp.fetch_as<std::int32_t>(1000) == 25);
    // release / adopt
    cluster_future *rawf = imp.release();
    EXPECT(!imp.valid());
    cluster::Future adopted(rawf);
    EXPECT(adopted.fetch_as<std::int32_t>(0) == 25);

    // Buffer ownership: move, release, out()
    cluster::Buffer b1 = c.remotecall_fetch(1, "echo", "buffer");
    cluster::Buffer b2 = std::move(b1);
    EXPECT(!b1 && b2 && b2.str() == "buffer");
    cluster_buffer rawb = b2.release();
    EXPECT(!b2 && rawb.handle != 0);
    cluster::Buffer b3(rawb); // adopt again; freed by b3
    EXPECT(b3.view() == "buffer");
    b3 = c.remotecall_fetch(1, "echo", "again"); // move-assign frees the old one
    EXPECT(b3.str() == "again");
    EXPECT(cluster_buffer_free(&rawb) == CLUSTER_ERR_BAD_HANDLE); // b3 already freed that one

    // remote_do, everywhere on a lone head
    before = g_calls;
    c.remote_do(1, "nothing");
    for (int i = 0; i < 200 && g_calls == before; i++) std::this_thread::sleep_for(5ms);
    EXPECT(g_calls == before + 1);
    EXPECT_NO_THROW(c.everywhere("nothing"));
    EXPECT_NO_THROW(c.everywhere(std::vector<std::int32_t>{}, "nothing"));
    EXPECT_NO_THROW(c.everywhere(std::vector<std::int32_t>{1}, "nothing", {}, 5000));
    err = EXPECT_THROWS(c.everywhere("throw_runtime", {}, 5000), CLUSTER_ERR_COMPOSITE);
    EXPECT(err && err->message().find("process 1") != std::string::npos);

    // deferred calls, answered from a std::thread
    EXPECT(c.remotecall_fetch(1, "deferred", cluster::Bytes::of(std::int32_t(30))).str() == "deferred 30");
    EXPECT_THROWS(c.remotecall_fetch(1, "deferred_drop"), CLUSTER_ERR_REMOTE);

    // interrupt our own long call
    cluster::Future longf = c.remotecall(1, "sleep", cluster::Bytes::of(std::int32_t(10000)));
    std::this_thread::sleep_for(50ms);
    c.interrupt(1);
    EXPECT_THROWS(longf.wait_for(3s), CLUSTER_ERR_INTERRUPTED);

    // re-registering replaces; the old callable stays alive until close
    c.register_function("echo", [](cluster::Call &) { return std::string("replaced"); });
    EXPECT(c.remotecall_fetch(1, "echo", "x").str() == "replaced");
    c.unregister("echo");
    EXPECT_THROWS(c.remotecall_fetch(1, "echo"), CLUSTER_ERR_REMOTE);

    // raw registration
    static int raw_ud = 5;
    c.register_raw("raw", [](void *ud, cluster_call *call) -> std::int32_t {
        int v = *static_cast<int *>(ud);
        return cluster_call_reply(call, reinterpret_cast<const std::uint8_t *>(&v), sizeof v);
    }, &raw_ud);
    EXPECT(c.remotecall_fetch_as<int>(1, "raw") == 5);

    c.shutdown(2000);
    EXPECT_THROWS(c.addprocs(1), CLUSTER_ERR_SHUTDOWN);
    c.close();
    g_cluster = nullptr;
}

void case_callbacks() {
    cluster::Cluster c(cluster::Config().log_level(CLUSTER_LOG_ERROR));
    g_cluster = &c;
    std::mutex mu;
    std::vector<std::string> logs;
    c.on_log([&](cluster_log_level level, std::string_view msg) {
        std::lock_guard<std::mutex> g(mu);
        logs.push_back(std::to_string((int)level) + ":" + std::string(msg));
        if (msg.find("throw in log") != std::string_view::npos) throw std::runtime_error("swallowed");
    });
    c.remote_do(1, "no_such_fn");
    c.remote_do(1, "throw in log"); // the callback throws: swallowed
    auto has = [&](const char *needle) {
        for (int i = 0; i < 400; i++) {
            {
                std::lock_guard<std::mutex> g(mu);
                for (auto &l : logs)
                    if (l.find(needle) != std::string::npos) return true;
            }
            std::this_thread::sleep_for(5ms);
        }
        return false;
    };
    EXPECT(has("no_such_fn"));
    EXPECT(has("throw in log"));
    c.on_log(nullptr); // back to stderr
    c.set_log_level(CLUSTER_LOG_OFF);
    c.on_lifecycle([](std::int32_t, cluster_lifecycle) {});
    c.on_lifecycle(nullptr);
    // threads mode: host-only functions refuse
    EXPECT_THROWS(c.event_fd(), CLUSTER_ERR_WRONG_MODE);
    EXPECT_THROWS(c.poll(), CLUSTER_ERR_WRONG_MODE);
    EXPECT_THROWS(c.drive(1, 0), CLUSTER_ERR_WRONG_MODE);
    EXPECT_THROWS(c.cork(1, true), CLUSTER_ERR_WRONG_MODE);
    EXPECT_THROWS(c.on_notify([] {}), CLUSTER_ERR_WRONG_MODE);
    EXPECT_THROWS(c.set_notify(nullptr, nullptr), CLUSTER_ERR_WRONG_MODE);
    g_cluster = nullptr;
}

// Destroying a Cluster waits for its running handlers before freeing them.
void case_close_waits() {
    std::atomic<bool> started{false}, finished{false};
    {
        cluster::Cluster c;
        c.register_function("slow", [&](cluster::Call &) {
            started = true;
            std::this_thread::sleep_for(300ms);
            finished = true;
        });
        cluster::Future f = c.remotecall(1, "slow");
        while (!started) std::this_thread::sleep_for(1ms);
        auto t0 = std::chrono::steady_clock::now();
        c.close();
        auto took = std::chrono::steady_clock::now() - t0;
        EXPECT(finished);
        EXPECT(took >= 200ms);
        // the future of a freed cluster is still a valid handle; it fails or holds the value
        bool r = false;
        EXPECT(cluster_future_isready(f.get(), &r) == CLUSTER_OK);
    }
}

void case_host() {
    cluster::Cluster c(cluster::Config().dispatch(CLUSTER_DISPATCH_HOST));
    g_cluster = &c;
    register_all(c);
    std::atomic<int> notified{0};
    c.on_notify([&] { notified++; });
    const auto main_thread = std::this_thread::get_id();
    std::thread::id ran_on;
    c.register_function("where", [&](cluster::Call &) {
        ran_on = std::this_thread::get_id();
        return std::string("here");
    });
    EXPECT_THROWS(c.serve(), CLUSTER_ERR_WRONG_MODE);
    int fd = c.event_fd();
    EXPECT(fd >= 0);
    cluster::Future f = c.remotecall(1, "where");
    std::uint64_t want = f.id();
    bool got = false;
    for (int i = 0; i < 100 && !got; i++) {
        struct pollfd p = {fd, POLLIN, 0};
        ::poll(&p, 1, 50);
        for (const cluster_event &ev : c.poll(4))
            if (ev.service == CLUSTER_SERVICE_CORE && ev.kind == CLUSTER_EVENT_FUTURE_READY && ev.id == want) got = true;
    }
    EXPECT(got);
    EXPECT(ran_on == main_thread);
    EXPECT(notified > 0);
    EXPECT(f.fetch_string(0) == "here");
    cluster_event evs[2];
    EXPECT(c.poll(evs, 2) <= 2);
    EXPECT(!c.drive(99, 1000)); // no connection to 99: at once, nothing pending
    { auto d = c.drive_ex(99, 1000); EXPECT(!d.pending && !d.served); }
    c.cork(99, true);           // nothing to hold
    c.cork(99, false);
    c.on_notify(nullptr);
    c.set_notify(nullptr, nullptr);
    g_cluster = nullptr;
}

// ---- multi-process cases -----------------------------------------------------------------

// RemoteChannels: one kept here, one kept by worker `w`.
void channels(cluster::Cluster &c, std::int32_t w) {
    EXPECT(c.channel_count() == 0);
    cluster::Channel local = c.channel(); // this process, capacity 1
    EXPECT(local.valid() && local.pid() == c.myid() && c.channel_count() == 1);
    local.put_value(std::int32_t(7));
    EXPECT(!local.put_for(cluster::Bytes::of(std::int32_t(8)), 20)); // full
    cluster_channel_state st = local.state();
    EXPECT(st.n_avail == 1 && st.capacity == 1 && st.open);
    EXPECT(local.ready() && !local.empty() && local.open());
    EXPECT(local.fetch().as<std::int32_t>() == 7);
    EXPECT(local.take_as<std::int32_t>() == 7);
    EXPECT(!local.take_for(20).has_value());
    EXPECT(!local.wait_for(10));
    EXPECT_THROWS(local.take(10), CLUSTER_ERR_TIMEOUT);
    cluster::Future tf = local.take_async();
    local.put_nowait("now");
    EXPECT(tf.fetch_string(1000) == "now");
    cluster::Future wf = local.wait_async();
    cluster::Future ff = local.fetch_async();
    local.put("x");
    EXPECT(wf.wait_for(1000) && ff.fetch_string(1000) == "x");
    local.wait();
    EXPECT(cluster::Channel::state_of(local.state_async()).n_avail == 1);
    EXPECT(local.take().str() == "x");
    cluster::Channel moved = std::move(local);
    EXPECT(!local.valid() && moved.valid());
    moved.reset();
    EXPECT(c.channel_count() == 1); // its futures hold it too
    tf.reset();
    wf.reset();
    ff.reset();
    EXPECT(c.channel_count() == 0);

    // Kept by the worker; iterated until closed.
    cluster::Channel ch = c.channel(w, 8);
    EXPECT(ch.pid() == w);
    for (std::int32_t i = 0; i < 5; i++) ch.put_value(i);
    EXPECT(ch.put_async(cluster::Bytes::of(std::int32_t(5))).wait_for(5000));
    EXPECT(ch.put_for(cluster::Bytes::of(std::int32_t(6)), 5000));
    ch.close_async().wait();
    EXPECT_THROWS(ch.put("late"), CLUSTER_ERR_CHANNEL_CLOSED);
    std::vector<std::int32_t> got;
    for (cluster::Buffer &b : ch) got.push_back(b.as<std::int32_t>());
    EXPECT((got == std::vector<std::int32_t>{0, 1, 2, 3, 4, 5, 6}));
    EXPECT(!ch.open() && ch.empty() && !ch.ready());
    ch.close(); // again: nothing
    // References: exported (a round trip: this process is not the owner), imported here.
    cluster::Channel again = c.import_channel(ch.export_ref());
    cluster::Channel third = c.import_channel(cluster::Channel::ref_of(ch.export_ref_async(), 5000));
    EXPECT(again.pid() == w && third.pid() == w);
    EXPECT_THROWS(third.take(1000), CLUSTER_ERR_CHANNEL_CLOSED);
}

void case_workers() {
    cluster::Cluster &c = *g_cluster;
    std::mutex mu;
    std::map<std::int32_t, std::vector<cluster_lifecycle>> seen;
    c.on_lifecycle([&](std::int32_t pid, cluster_lifecycle what) {
        std::lock_guard<std::mutex> g(mu);
        seen[pid].push_back(what);
    });
    auto ids = c.addprocs(3);
    EXPECT(ids.size() == 3);
    EXPECT(c.nprocs() == 4 && c.workers() == ids);
    for (auto id : ids) EXPECT(c.remotecall_fetch_as<std::int32_t>(id, "whoami") == id);
    EXPECT(c.remotecall_fetch(ids[0], "upper", "worker").str() == "WORKER");
    Point p = c.remotecall_fetch_as<Point>(ids[1], "swap", Point{1, 2});
    EXPECT(p.x == 2 && p.y == 1);
    // round robin through any_worker
    std::map<std::int32_t, int> hits;
    for (int i = 0; i < 6; i++) hits[c.remotecall_fetch_as<std::int32_t>(cluster::any_worker, "whoami")]++;
    EXPECT(hits.size() == 3 && hits[ids[0]] == 2 && hits[ids[2]] == 2);
    // many futures
    std::vector<cluster::Future> fs;
    for (std::int32_t i = 0; i < 20; i++) fs.push_back(c.remotecall(ids[i % 3], "square", cluster::Bytes::of(i)));
    for (std::int32_t i = 0; i < 20; i++) EXPECT(fs[i].fetch_as<std::int32_t>(5000) == i * i);
    fs.clear();
    channels(c, ids[0]);
    // remote errors name the worker
    auto err = EXPECT_THROWS(c.remotecall_fetch(ids[2], "throw_runtime"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->pid() == ids[2]);
    err = EXPECT_THROWS(c.everywhere("fail_on", cluster::Bytes::of(ids[1]), 5000), CLUSTER_ERR_COMPOSITE);
    EXPECT(err && err->message().find("process " + std::to_string(ids[1])) != std::string::npos);
    // deferred on a worker
    EXPECT(c.remotecall_fetch(ids[0], "deferred", cluster::Bytes::of(std::int32_t(20))).str() == "deferred 20");
    // interrupt a worker's long call
    cluster::Future longf = c.remotecall(ids[1], "sleep", cluster::Bytes::of(std::int32_t(10000)));
    std::this_thread::sleep_for(100ms);
    auto t0 = std::chrono::steady_clock::now();
    c.interrupt(ids[1]);
    EXPECT_THROWS(longf.wait_for(3s), CLUSTER_ERR_INTERRUPTED);
    EXPECT(std::chrono::steady_clock::now() - t0 < 1500ms);
    // a worker killed mid-call; a channel bound to it closes
    cluster::Channel bound = c.channel(0, 2);
    bound.bind_async(ids[2]).wait();
    bound.bind(ids[1]);
    auto os_pid = c.remotecall_fetch_as<std::int32_t>(ids[2], "getpid");
    cluster::Future dying = c.remotecall(ids[2], "sleep", cluster::Bytes::of(std::int32_t(10000)));
    std::this_thread::sleep_for(50ms);
    ::kill(os_pid, SIGKILL);
    err = EXPECT_THROWS(dying.wait_for(3s), CLUSTER_ERR_PROCESS_EXITED);
    EXPECT(err && err->pid() == ids[2]);
    err = EXPECT_THROWS(bound.take(3000), CLUSTER_ERR_CHANNEL_CLOSED);
    EXPECT(err && err->pid() == ids[2]);
    bound.reset();
    // export a worker-computed future and fetch it through another worker
    cluster::Future sq = c.remotecall(ids[0], "square", cluster::Bytes::of(std::int32_t(9)));
    cluster_future_ref ref = sq.export_ref();
    sq.reset();
    cluster::Future back = c.import_future(ref);
    EXPECT(back.fetch_as<std::int32_t>(5000) == 81);
    cluster_future_ref again = back.export_ref_async().ref_value(5000);
    EXPECT(again.owner == ref.owner && again.id == ref.id);
    EXPECT(c.import_future(again).fetch_as<std::int32_t>(5000) == 81);
    // rmprocs
    c.rmprocs(ids[0], 5000);
    EXPECT_THROWS(c.remotecall_fetch(ids[0], "whoami"), CLUSTER_ERR_PROCESS_EXITED);
    // launch options
    cluster::LaunchOptions o;
    o.env = {"CPP_TEST_VAR=1"};
    auto more = c.addprocs(1, o);
    EXPECT(more.size() == 1 && c.remotecall_fetch_as<std::int32_t>(more[0], "whoami") == more[0]);
    // async forms
    cluster::Future added = c.addprocs_async(1);
    auto extra = cluster::Cluster::ids_of(added);
    EXPECT(extra.size() == 1 && extra[0] == more[0] + 1);
    cluster::Future all = c.everywhere_async(extra, "whoami", {}, 5000);
    EXPECT(all.wait_for(10000));
    cluster::Future w = c.remotecall(extra[0], "whoami");
    bool done = false;
    for (int i = 0; i < 100000 && !done; i++) done = w.drive(100);
    EXPECT(done && w.fetch_as<std::int32_t>(0) == extra[0]);
    EXPECT(c.rmprocs_async(extra, 5000).wait_for(10000));
    EXPECT(c.shutdown_async(10000).wait_for(20000));
    c.close_and_wait(5000);
    auto deadline = std::chrono::steady_clock::now() + 2s;
    auto count = [&](std::int32_t pid, cluster_lifecycle what) {
        std::lock_guard<std::mutex> g(mu);
        int n = 0;
        for (auto w : seen[pid]) n += w == what;
        return n;
    };
    while (std::chrono::steady_clock::now() < deadline && count(more[0], CLUSTER_WORKER_EXITED) == 0)
        std::this_thread::sleep_for(5ms);
    EXPECT(count(ids[0], CLUSTER_WORKER_STARTED) == 1);
    EXPECT(count(ids[0], CLUSTER_WORKER_EXITED) == 1);
    EXPECT(count(ids[2], CLUSTER_WORKER_DIED) == 1);
    EXPECT(count(more[0], CLUSTER_WORKER_EXITED) == 1);
    // worker-side checks ran through head-only functions in this same binary:
    EXPECT_THROWS(c.addprocs(1), CLUSTER_ERR_SHUTDOWN);
}

// pfork: typed values in order, ForkChild, a child's exception / crash /
// timeout as ForkError naming it, children writing a shared mapping,
// argument errors, moves. No cluster.
void case_fork() {
    auto squares = cluster::pfork(5, [](int i) { return static_cast<std::int64_t>(i) * i; });
    EXPECT((squares == std::vector<std::int64_t>{0, 1, 4, 9, 16}));
    auto names = cluster::pfork(3, [](int i) { return "child " + std::to_string(i); });
    EXPECT((names == std::vector<std::string>{"child 0", "child 1", "child 2"}));
    auto raw = cluster::pfork<std::string>(2, [](int i, cluster::ForkChild &c) { c.return_bytes(std::string(i + 1, 'x')); });
    EXPECT((raw == std::vector<std::string>{"x", "xx"}));
    EXPECT(cluster::pfork(0, [](int i) { return i; }).empty());

    // The first failing child is thrown, naming it and what happened.
    auto fails = [](int i) {
        if (i == 1) throw std::runtime_error("bad input 1");
        if (i == 2) std::abort();
        return i;
    };
    try {
        (void)cluster::pfork(3, fails);
        EXPECT(!"pfork did not throw");
    } catch (const cluster::ForkError &e) {
        EXPECT(e.index() == 1 && e.status() == CLUSTER_ERR_REMOTE && e.outcome().outcome == CLUSTER_FORK_FAILED);
        EXPECTF(std::strstr(e.what(), "child 1 (pid ") && std::strstr(e.what(), "failed: bad input 1"), "%s", e.what());
    }
    cluster::ForkResults all = cluster::ForkResults::run(3, fails);
    EXPECT(all.size() == 3 && all.ok(0) && !all.ok(1) && !all.ok(2));
    EXPECT(all.value_as<int>(0) == 0);
    cluster::ForkOutcome crashed = all.child(2);
    EXPECT(crashed.outcome == CLUSTER_FORK_SIGNALED && crashed.code == SIGABRT && crashed.os_pid > 0);
    EXPECTF(crashed.message.find("killed by signal 6 (SIGABRT)") != std::string::npos, "%s", crashed.message.c_str());
    auto e2 = EXPECT_THROWS(all.value(2), CLUSTER_ERR_PROCESS_EXITED);
    EXPECT_THROWS(all.check_all(), CLUSTER_ERR_REMOTE);
    EXPECT_THROWS(all.value(3), CLUSTER_ERR_INVALID_ARGUMENT);
    (void)e2;

    // ForkChild::fail, and a hung child killed at the timeout.
    cluster::ForkResults t = cluster::ForkResults::run(
        3,
        [](int i, cluster::ForkChild &c) {
            if (i == 0) c.fail("told to fail");
            if (i == 1) std::this_thread::sleep_for(60s);
            c.return_bytes("ok");
        },
        300);
    EXPECT(t.child(0).outcome == CLUSTER_FORK_FAILED && t.child(0).message.find("told to fail") != std::string::npos);
    EXPECT(t.child(1).outcome == CLUSTER_FORK_TIMED_OUT && t.child(1).code == SIGKILL);
    EXPECT_THROWS(t.value(1), CLUSTER_ERR_TIMEOUT);
    EXPECT(t.value(2).str() == "ok");

    // Void children writing into a shared mapping the parent reads.
    const std::size_t n = 4;
    auto *shared = static_cast<std::int32_t *>(
        mmap(nullptr, n * sizeof(std::int32_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    REQUIRE(shared != MAP_FAILED);
    cluster::ForkResults w = cluster::ForkResults::run(static_cast<int>(n), [shared](int i) { shared[i] = 100 + i; });
    w.check_all();
    for (std::size_t i = 0; i < n; i++) EXPECT(shared[i] == static_cast<std::int32_t>(100 + i));
    EXPECT(w.value(0).empty());
    munmap(shared, n * sizeof(std::int32_t));

    // Argument errors throw at once; the owner moves.
    EXPECT_THROWS(cluster::ForkResults::run(-1, [](int i) { return i; }), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster::ForkResults moved = std::move(w);
    EXPECT(moved && !w && moved.size() == n);
    moved.reset();
    EXPECT(!moved);
}

} // namespace

// Pools, pmap (typed, with strings, with errors, retries and progress),
// @distributed with a reducer, splitrange, worker sets and task queues.
void case_pools() {
    cluster::Cluster &c = *g_cluster;
    // A lone head: the default pool is the head itself.
    {
        cluster::Pool d = cluster::Pool::default_pool(c);
        EXPECT(d.length() == 1 && d.workers() == std::vector<std::int32_t>{1} && d.ready());
        auto sq = cluster::pmap<std::int32_t>(c, "square", std::vector<std::int32_t>{1, 2, 3});
        EXPECT((sq == std::vector<std::int32_t>{1, 4, 9}));
    }
    auto s = cluster::splitrange(1, 11, 3);
    EXPECT(s.size() == 3 && s[0].first == 1 && s[0].last == 4 && s[1].first == 5 && s[2].last == 11);
    auto ids = c.addprocs(4);
    // Pools.
    cluster::Pool p = cluster::Pool::of(c, {ids[0], ids[1]});
    EXPECT(p.length() == 2 && p.ready());
    std::int32_t a = p.take(1000);
    std::int32_t b = p.take(1000);
    EXPECT(a == ids[0] && b == ids[1] && !p.ready());
    cluster::Future t = p.take_async();
    EXPECT(!t.wait_for(10));
    p.put(a);
    EXPECT(cluster::Pool::taken(t, 5000) == a);
    p.put(a);
    p.put(b);
    p.push(ids[2]);
    EXPECT(p.workers().size() == 3);
    EXPECT(p.remotecall_fetch_as<std::int32_t>("square", std::int32_t(7)) == 49);
    EXPECT(p.remotecall_fetch("upper", "pool").str() == "POOL");
    EXPECT(p.remotecall_wait("whoami").ready());
    p.remote_do("nothing");
    EXPECT_THROWS(cluster::Pool::of(c, {}).take(0), CLUSTER_ERR_NO_SUCH_PROCESS);
    // Typed pmap over ints and strings, on the default pool and on p.
    std::vector<std::int32_t> xs(500);
    for (std::int32_t i = 0; i < 500; i++) xs[i] = i;
    auto sq = cluster::pmap<std::int32_t>(c, "square", xs);
    bool all = sq.size() == 500;
    for (std::int32_t i = 0; all && i < 500; i++) all = sq[i] == i * i;
    EXPECT(all);
    cluster::PmapOptions auto_b;
    auto_b.batch_size = cluster::PmapOptions::auto_batch;
    auto up = cluster::pmap<std::string>(c, "upper", std::vector<std::string>{"a", "bc", ""}, auto_b, &p);
    EXPECT((up == std::vector<std::string>{"A", "BC", ""}));
    // Errors: thrown without on_error, per element with it; a retry check; progress.
    EXPECT_THROWS(cluster::pmap<std::int32_t>(c, "odd_fails", xs), CLUSTER_ERR_REMOTE);
    std::atomic<int> checks{0};
    std::atomic<std::size_t> last_done{0};
    cluster::PmapOptions o;
    o.retry_delays_ms = {0, 1};
    o.retry_check = [&](const cluster::PmapRetry &r) {
        checks++;
        return r.status == CLUSTER_ERR_REMOTE && r.message.find("odd") != std::string_view::npos && r.attempt < 1;
    };
    o.progress = [&](std::size_t done, std::size_t, std::size_t total) {
        EXPECT(total == 500);
        last_done = done;
    };
    o.progress_interval_ms = 1;
    auto rs = cluster::pmap_results<std::int32_t>(c, "odd_fails", xs, o);
    int bad = 0;
    for (std::int32_t i = 0; i < 500; i++) {
        if (i % 2) {
            bad += !rs[i].ok() && rs[i].error && rs[i].error->message.find("odd") != std::string::npos;
        } else {
            EXPECT(rs[i].ok() && *rs[i].value == 2 * i);
        }
    }
    EXPECT(bad == 250);
    EXPECT(checks == 500 && last_done == 500); /* 250 odd elements, each checked twice */
    // A map destroyed while it runs is cancelled; its callbacks end with it.
    {
        std::vector<std::int32_t> slow(200, 20);
        cluster::PmapOptions po;
        po.progress = [&](std::size_t, std::size_t, std::size_t) { last_done = 7; };
        std::vector<cluster::Bytes> items;
        for (auto &v : slow) items.push_back(cluster::Bytes::of(v));
        cluster::Pmap m = cluster::Pmap::start(c, "sleep_whoami", items, po);
        std::this_thread::sleep_for(30ms);
        EXPECT(m.progress().first < 200);
    }
    // @distributed with a reducer, static and dynamic; without one, its map.
    std::int64_t total = cluster::distributed_reduce<std::int64_t>(
        c, "range_sum", 1, 1000, [](std::int64_t x, std::int64_t y) { return x + y; }, std::int64_t(0));
    EXPECT(total == 500500);
    total = cluster::distributed_reduce<std::int64_t>(
        c, "range_sum", 1, 1000, [](std::int64_t x, std::int64_t y) { return x + y; }, std::int64_t(0), 64);
    EXPECT(total == 500500);
    cluster::Pmap dm = cluster::Pmap::distributed(c, "range_sum", 1, 11, 0, {}, {}, &p);
    dm.wait();
    EXPECT(dm.size() == 3 && dm.batch_size() == 1 && dm.value_as<std::int64_t>(0) == 10 && !dm.error(0));
    EXPECT(dm.value(2).as<std::int64_t>() == 30 && dm.progress().first == 3);
    EXPECT(dm.future().wait_for(0));
    // Worker sets.
    cluster::WorkerSet rr = cluster::WorkerSet::of(c, {ids[0], ids[1], ids[2]}, CLUSTER_WS_MODE_RR);
    std::vector<std::int32_t> order;
    for (int i = 0; i < 4; i++) order.push_back(rr.remotecall_fetch_as<std::int32_t>("whoami"));
    EXPECT((order == std::vector<std::int32_t>{ids[0], ids[1], ids[2], ids[0]}));
    cluster::WorkerSet ff = cluster::WorkerSet::of(c, {ids[2], ids[3]}, CLUSTER_WS_MODE_FF);
    cluster::Future f1 = ff.remotecall("sleep_whoami", cluster::Bytes::of(std::int32_t(100)));
    cluster::Future f2 = ff.remotecall("sleep_whoami", cluster::Bytes::of(std::int32_t(150)));
    cluster::Future f3 = ff.remotecall("sleep_whoami", cluster::Bytes::of(std::int32_t(10))); // queued: gets the first free
    EXPECT(f3.fetch_as<std::int32_t>(5000) == f1.fetch_as<std::int32_t>(5000));
    EXPECT(f2.fetch_as<std::int32_t>(5000) == ids[3]);
    EXPECT(ff.remotecall_fetch("upper", "ff").str() == "FF");
    EXPECT(ff.remotecall_wait("whoami").ready());
    // Task queues: priorities, re-prioritising, dequeueing, callbacks.
    cluster::TaskQueue q(c);
    std::mutex mu;
    std::vector<std::uint64_t> ran;
    auto task = [&](std::int32_t ms, double prio) {
        cluster::Task t = cluster::Task::on("sleep_whoami", cluster::Bytes::of(ms), {ids[0]});
        t.priority = prio;
        t.callback = [&](std::uint64_t id, std::int32_t pid, cluster_status st, cluster::Bytes) {
            EXPECT(st == CLUSTER_OK && pid == ids[0]);
            std::lock_guard<std::mutex> g(mu);
            ran.push_back(id);
        };
        return t;
    };
    auto blocker = q.queue(task(200, 0));
    auto t1 = q.queue(task(1, 5));
    auto t2 = q.queue(task(1, 1));
    auto t3 = q.queue(task(1, 3));
    auto t4 = q.queue(task(1, 4));
    q.set_priority(t1.id, 0.5);
    EXPECT(q.dequeue(t4.id) && !q.dequeue(t4.id));
    EXPECT_THROWS(t4.future.wait(), CLUSTER_ERR_INTERRUPTED);
    q.set_priorities([&](const cluster_task_info &i) { return i.id == t3.id ? 0.7 : i.priority; });
    EXPECT(q.length().first == 3 && q.length().second == 1);
    t2.future.wait();
    blocker.future.wait();
    {
        std::lock_guard<std::mutex> g(mu);
        EXPECT((ran == std::vector<std::uint64_t>{blocker.id, t1.id, t3.id, t2.id}));
    }
    auto keep = q.queue(task(300, 0));
    auto dropped = q.queue(task(1, 1));
    EXPECT(q.dequeue_if([&](const cluster_task_info &i) { return i.id != dropped.id; }) == 1);
    EXPECT_THROWS(dropped.future.wait(), CLUSTER_ERR_INTERRUPTED);
    keep.future.wait();
    q.prep_remotes(false, 5000);
    EXPECT(q.prep_remotes_async(true).wait_for(5000));
    EXPECT(q.num_remotes() == 4);
    cluster::Task everyone("whoami", {}, CLUSTER_TARGET_ALL);
    EXPECT(q.execute(everyone, 5000).empty());
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    auto on_host = q.execute(cluster::Task::on_hosts("whoami", {}, {host}), 5000).as<std::int32_t>();
    EXPECT(on_host >= ids[0] && on_host <= ids[3]);
    c.shutdown(10000);
}

// Cluster dicts through the wrapper: creation and the spec builder, typed
// keys and values, every operation and its _async form, value functions,
// handles passed to workers, release.
void case_dicts() {
    cluster::Cluster &c = *g_cluster;
    auto ids = c.addprocs(3);
    // A global dict over everyone.
    cluster::Dict g = cluster::Dict::create(c, cluster::DictSpec::global().name("cpp-g").all());
    EXPECT(g.valid() && g.name() == "cpp-g" && g.kind() == CLUSTER_DICT_GLOBAL && g.replication() == 4);
    EXPECT((g.members() == std::vector<std::int32_t>{1, 2, 3, 4}));
    EXPECT(g.empty() && g.size() == 0);
    // Typed keys and values: strings, byte vectors, trivially copyable types.
    g.set("a", "1");
    g.set(std::string("b"), std::vector<std::uint8_t>{1, 2, 3});
    g.set(std::int32_t(7), Point{3, 4});
    g.set(Point{1, 2}, 2.5);
    EXPECT(g.at("a") == "1");
    EXPECT((g.at<std::vector<std::uint8_t>>("b") == std::vector<std::uint8_t>{1, 2, 3}));
    Point p = g.at<Point>(std::int32_t(7));
    EXPECT(p.x == 3 && p.y == 4);
    EXPECT(g.at<double>(Point{1, 2}) == 2.5);
    EXPECT(g.size() == 4 && !g.empty());
    // Missing keys: nullopt, a default, or NOT_FOUND for d[k].
    EXPECT(!g.get("missing").has_value());
    EXPECT(g.get_or<std::string>("missing", "dflt") == "dflt" && !g.haskey("missing"));
    auto err = EXPECT_THROWS(g.at("missing"), CLUSTER_ERR_NOT_FOUND);
    EXPECT(err && err->message().find("not found") != std::string::npos);
    EXPECT_THROWS(g.at<std::int64_t>("a"), CLUSTER_ERR_PROTOCOL); // 1 byte, not 8
    EXPECT(g.get<std::string>("a") == std::optional<std::string>("1"));
    EXPECT(g.contains("a") && g.haskey(std::int32_t(7)));
    // Batches, blocking and as a future.
    g.set_many(std::vector<std::pair<std::string, std::int32_t>>{{"m0", 10}, {"m1", 11}});
    g.set_many_async(std::vector<std::pair<std::string, std::int32_t>>{{"m2", 12}}).wait();
    EXPECT(g.at<std::int32_t>("m0") == 10 && g.at<std::int32_t>("m1") == 11 && g.at<std::int32_t>("m2") == 12);
    for (const char *k : {"m0", "m1", "m2"}) g.erase(std::string(k));
    // get! inserts once; pop; erase.
    EXPECT(g.get_or_insert<std::int32_t>("n", std::int32_t(5)) == 5);
    EXPECT(g.get_or_insert<std::int32_t>("n", std::int32_t(6)) == 5);
    EXPECT(g.pop<std::int32_t>("n") == std::optional<std::int32_t>(5));
    EXPECT(!g.pop("n").has_value());
    g.erase("n"); // absent: nothing
    g.erase(Point{1, 2});
    EXPECT(!g.haskey(Point{1, 2}) && g.size() == 3);
    // A member's own copy; the owner of a key.
    auto local = g.get_local("a");
    EXPECT(local && *local && **local == "1");
    auto none = g.get_local("missing");
    EXPECT(none && !*none);
    EXPECT(g.owner("a") >= 1 && g.owner("a") <= 4);
    // Listings.
    auto keys = g.keys();
    std::sort(keys.begin(), keys.end());
    EXPECT(keys.size() == 3 && keys[0] == std::string("\x07\0\0\0", 4) && keys[1] == "a" && keys[2] == "b");
    EXPECT(g.values<std::vector<std::uint8_t>>().size() == 3);
    auto items = g.items<std::string, std::vector<std::uint8_t>>();
    EXPECT(items.size() == 3);
    EXPECT((g.localpart<std::vector<std::uint8_t>, std::vector<std::uint8_t>>().size() == 3));
    cluster::DictEntries lp = g.localpart_entries();
    EXPECT(lp.size() == 3 && !lp.empty());
    EXPECT_THROWS(lp.at(3), CLUSTER_ERR_INVALID_ARGUMENT);
    // Value functions: each member's own id; a string; failures.
    g.set_with("id", "myid");
    EXPECT(g.at<std::int32_t>("id") == 1); // read here: the head's own copy
    std::vector<std::uint8_t> handle = g.to_bytes();
    for (auto id : ids) EXPECT(c.remotecall_fetch(id, "dict_local_id", handle).as<std::int32_t>() == id);
    g.set_with_async("hello", "greet", "you").wait();
    EXPECT(g.at("hello") == "hello you from 1");
    err = EXPECT_THROWS(g.set_with("bad", "throws"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->message().find("no value here") != std::string::npos && err->pid() >= 1);
    err = EXPECT_THROWS(g.set_with("bad", "throws_cluster"), CLUSTER_ERR_REMOTE);
    EXPECT(err && err->message().find("a cluster error in a value function") != std::string::npos);
    EXPECT_THROWS(g.set_with("bad", "unknown"), CLUSTER_ERR_REMOTE);
    EXPECT(!g.haskey("bad"));
    std::vector<std::pair<std::int32_t, std::vector<std::uint8_t>>> each;
    for (std::int32_t pid = 1; pid <= 4; pid++) each.push_back({pid, {std::uint8_t('0' + pid)}});
    g.set_with("each", CLUSTER_DICT_EACH, cluster::Dict::each(each));
    EXPECT(g.at("each") == "1");
    // Every _async form.
    g.set_async("x", std::int32_t(10)).wait();
    EXPECT(cluster::Dict::value_of<std::int32_t>(g.get_async("x")) == 10);
    EXPECT_THROWS(g.get_async("nope").wait(), CLUSTER_ERR_NOT_FOUND);
    EXPECT(cluster::Dict::has_of(g.haskey_async("x")) && !cluster::Dict::has_of(g.haskey_async("nope")));
    EXPECT(cluster::Dict::value_of(g.get_or_insert_async("y", "yy")) == "yy");
    EXPECT(cluster::Dict::value_of(g.get_or_insert_async("y", "zz")) == "yy");
    EXPECT(cluster::Dict::size_of(g.size_async()) == g.size());
    cluster::DictEntries ks = cluster::DictEntries::of(g.list_async(CLUSTER_DICT_KEYS), CLUSTER_DICT_KEYS);
    EXPECT(ks.size() == g.size() && ks.value(0).empty());
    cluster::DictEntries ps = cluster::DictEntries::of(g.list_async(CLUSTER_DICT_PAIRS), CLUSTER_DICT_PAIRS);
    EXPECT(ps.size() == g.size());
    EXPECT((ps.items<std::string, std::vector<std::uint8_t>>().size() == g.size()));
    cluster::Future vs = g.list_async(CLUSTER_DICT_VALUES);
    EXPECT(cluster::DictEntries::decode(vs.fetch(10000), CLUSTER_DICT_VALUES).values<std::vector<std::uint8_t>>().size() == g.size());
    EXPECT_THROWS(cluster::DictEntries::decode(cluster::Bytes("\xff\xff\xff"), CLUSTER_DICT_KEYS), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT(cluster::Dict::value_of<std::int32_t>(g.pop_async("x")) == 10);
    EXPECT_THROWS(g.pop_async("x").wait(), CLUSTER_ERR_NOT_FOUND);
    g.erase_async("y").wait();
    EXPECT(!g.haskey("y"));
    // The same spec opens it; another is an error.
    {
        cluster::Dict again = cluster::Dict::create(c, cluster::DictSpec::global().name("cpp-g").all());
        EXPECT(again.at("a") == "1");
        EXPECT_THROWS(cluster::Dict::create(c, cluster::DictSpec::distributed().name("cpp-g").all()), CLUSTER_ERR_INVALID_ARGUMENT);
        EXPECT_THROWS(cluster::Dict::create(c, cluster::DictSpec::global().name("cpp-g").all().type_tag("T")),
                      CLUSTER_ERR_INVALID_ARGUMENT);
    }
    // A distributed dict over two workers, made as a future; the head and a
    // third worker are not members and use it through handles.
    cluster::Future made = cluster::Dict::create_async(c, cluster::DictSpec().pids({ids[0], ids[1]}).replication(2));
    cluster::Dict d = cluster::Dict::open(c, made.fetch(20000));
    EXPECT(d.kind() == CLUSTER_DICT_DISTRIBUTED && d.replication() == 2 && d.name().rfind("dict-1-", 0) == 0);
    EXPECT((d.members() == std::vector<std::int32_t>{ids[0], ids[1]}));
    d.set("a", "A");
    EXPECT(d.localpart().empty()); // the head stores nothing
    EXPECT(!d.get_local("a").has_value());
    EXPECT(c.remotecall_fetch(ids[2], "dict_use", d.to_bytes()).str() == "A|2|0");
    EXPECT(d.at<std::int32_t>("from" + std::to_string(ids[2])) == ids[2]);
    EXPECT(c.remotecall_fetch(ids[0], "dict_use", d.to_bytes()).str() == "A|3|3"); // a member stores every key (r = 2)
    d.set_with("id", "myid");
    EXPECT(d.at<std::int32_t>("id") == d.owner("id"));
    for (std::int32_t i = 0; i < 50; i++) d.set_async(i, i * i).wait();
    EXPECT(d.size() == 54 && d.at<std::int32_t>(std::int32_t(7)) == 49);
    // Moves, take(), reset().
    cluster::Dict moved = std::move(d);
    EXPECT(!d.valid() && moved.valid() && moved.size() == 54);
    d = std::move(moved);
    cluster_dict *raw = d.take();
    EXPECT(!d.valid() && raw != nullptr);
    d = cluster::Dict(raw);
    EXPECT(d.size() == 54);
    // Release: nothing anywhere, the handles fail.
    d.release_async().wait();
    g.release();
    EXPECT(cluster::Dict::local_names(c).empty());
    for (auto id : ids) EXPECT(c.remotecall_fetch_as<std::int32_t>(id, "dict_local_count") == 0);
    EXPECT_THROWS(g.at("a"), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_THROWS(d.set("a", "b"), CLUSTER_ERR_INVALID_ARGUMENT);
    d.reset();
    EXPECT(!d.valid());
    EXPECT_THROWS(d.size(), CLUSTER_ERR_BAD_HANDLE); // an empty owner
    EXPECT_THROWS(cluster::Dict::open(c, cluster::Bytes("junk")), CLUSTER_ERR_INVALID_ARGUMENT);
    c.shutdown(10000);
}

// Server tasks through the wrapper: state kept per task, futures, stop.
void case_clusterutils() {
    cluster::Cluster &c = *g_cluster;
    auto ids = c.addprocs(3);
    // Hosts from membership.
    auto hosts = cluster::hosts(c);
    EXPECT(hosts.size() == 4 && hosts.count(1) == 1 && hosts[ids[0]] == hosts[1]);
    EXPECT(cluster::host_of(c, ids[2]) == hosts[1]);
    EXPECT_THROWS(cluster::host_of(c, 99), CLUSTER_ERR_NO_SUCH_PROCESS);
    // Loopback connections stay plain unless TLS is asked for everywhere.
    EXPECT(!cluster::connection_encrypted(c, ids[0]));
    EXPECT_THROWS(cluster::connection_encrypted(c, 99), CLUSTER_ERR_NO_SUCH_PROCESS);
    {
        cluster::Config tcfg;
        tcfg.tls(CLUSTER_TLS_ALWAYS);
        EXPECT(tcfg.get()->tls == CLUSTER_TLS_ALWAYS);
    }
    // Remote variables.
    cluster::Vars vars(c);
    std::vector<std::int32_t> all = {1, ids[0], ids[1], ids[2]};
    vars.set(all, "x", "ab");
    cluster::Parts got = vars.get({ids[2], 1}, "x");
    EXPECT(got.size() == 2 && got[0].pid == ids[2] && got[1].pid == 1 && got.at(1).str() == "ab");
    EXPECT_THROWS(got.at(42), CLUSTER_ERR_NOT_FOUND);
    for (auto &s : vars.apply(ids, "x", "twice").values<std::string>()) EXPECT(s == "abab");
    cluster::Future kept = vars.apply_async(ids, "x", "twice", std::string("y"));
    for (const cluster::Part &p : cluster::Parts::view(kept.fetch(10000))) EXPECT(p.bytes.empty());
    EXPECT(vars.get(ids, "y").values<std::string>() == std::vector<std::string>(3, "abab"));
    vars.set_value<std::int32_t>({ids[0]}, "n", 7);
    EXPECT(vars.get({ids[0]}, "n").values<std::int32_t>() == std::vector<std::int32_t>{7});
    cluster::Future g = vars.get_async(ids, "x");
    EXPECT(cluster::Parts::view(g.fetch(10000)).size() == 3);
    vars.set_async({1}, "z", "zz").wait();
    EXPECT(vars.local("z").str() == "zz");
    vars.set_local("w", "w1");
    EXPECT(vars.local("w").str() == "w1");
    vars.erase(ids, "y");
    EXPECT_THROWS(vars.get(ids, "y"), CLUSTER_ERR_NOT_FOUND);
    EXPECT_THROWS(vars.local("nope"), CLUSTER_ERR_NOT_FOUND);
    // All-gather among the workers and the head.
    std::vector<cluster::Future> calls;
    for (auto id : ids) calls.push_back(c.remotecall(id, "ag_ids", cluster::Bytes(all.data(), all.size() * 4)));
    auto mine = cluster::allgather_values<std::int32_t>(c, all, 1, c.myid(), 20000);
    EXPECT(mine == all);
    std::string want;
    for (auto v : all) want += std::to_string(v) + ",";
    for (auto &f : calls) EXPECT(f.fetch_string(20000) == want);
    cluster::Future af = cluster::allgather_async(c, {1}, 2, "solo");
    EXPECT(cluster::Parts::view(af.fetch(10000)).at(1).str() == "solo");
    EXPECT_THROWS(cluster::allgather(c, {ids[0]}, 3, "x"), CLUSTER_ERR_INVALID_ARGUMENT);
    // SSH: bad machine specs are refused before any ssh runs (the real
    // hosts are tested in C, tests/c/test_clusterutils.c, and Rust).
    EXPECT_THROWS(cluster::addprocs_ssh(c, {{"h:notaport", 1}}), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_THROWS(cluster::addprocs_ssh(c, {{"host", 0}}), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster::SshOptions so;
    so.max_parallel = 0;
    EXPECT_THROWS(cluster::addprocs_ssh_async(c, {{"host", 1}}, so), CLUSTER_ERR_INVALID_ARGUMENT);
    // Slurm: an srun that cannot start fails at once, naming it.
    cluster::SlurmOptions sl;
    sl.srun = "/nonexistent/srun";
    EXPECT_THROWS(cluster::addprocs_slurm(c, 1, sl), CLUSTER_ERR_LAUNCH);
    cluster::Future sf = cluster::addprocs_slurm_async(c, 1, sl);
    EXPECT_THROWS(sf.wait(), CLUSTER_ERR_LAUNCH);
}

void case_stasks() {
    cluster::Cluster &c = *g_cluster;
    auto ids = c.addprocs(2);
    cluster::ServerTasks h = cluster::ServerTasks::start(c);
    EXPECT(h.count() == 2 && h.pids() == ids);
    for (std::int32_t round = 1; round <= 2; round++) {
        auto out = h.pmap("stk_count", {cluster::Bytes(), cluster::Bytes()});
        EXPECT(out.size() == 2 && out[0].status == CLUSTER_OK && out[1].status == CLUSTER_OK);
        EXPECT(out[0].value.as<std::int32_t>() == round && out[1].value.as<std::int32_t>() == 100 + round);
    }
    EXPECT_THROWS(h.pmap("stk_count", {cluster::Bytes()}), CLUSTER_ERR_INVALID_ARGUMENT);
    auto fs = h.pmap_async("stk_count", {cluster::Bytes(), cluster::Bytes()});
    EXPECT(fs.size() == 2 && fs[1].fetch(10000).as<std::int32_t>() == 103);
    h.stop("stk_free");
    EXPECT(h.pmap("stk_count", {cluster::Bytes(), cluster::Bytes()})[0].status == CLUSTER_ERR_REMOTE);
    cluster::Future started;
    cluster::ServerTasks one = cluster::ServerTasks::start_async(c, started, {ids[1]});
    started.wait();
    EXPECT(one.pmap("stk_count", {cluster::Bytes()})[0].value.as<std::int32_t>() == 1);
    one.stop_async("stk_free").wait();
}

// Shared memory through the wrapper, in a lone head: typed creation, the
// span view, find, the async forms, unlink, the orphan cleaner.
void case_shm() {
    cluster::Cluster c;
    const std::string pfx = "cpp" + std::to_string(getpid());
    cluster::Shm s = cluster::Shm::create(c, cluster::ShmSpec::of<double>("grid", {8, 4}, pfx));
    EXPECT(s.valid() && s.size_bytes() == 8 * 4 * sizeof(double) && s.elem_type() == CLUSTER_ELEM_F64);
    EXPECT((s.dims() == std::vector<std::uint64_t>{8, 4}));
    EXPECT(s.os_name().find(pfx) != std::string::npos);
    auto grid = s.span<double>();
    EXPECT(grid.size() == 32);
    for (std::size_t i = 0; i < grid.size(); i++) grid[i] = double(i) / 2;
    auto again = cluster::Shm::find(c, "grid", pfx);
    EXPECT(again.has_value() && again->span<double>()[7] == 3.5);
    EXPECT_THROWS(s.span<float>(), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT(!cluster::Shm::find(c, "nope", pfx).has_value());
    EXPECT_THROWS(cluster::Shm::create(c, cluster::ShmSpec::of<double>("grid", {1}, pfx)), CLUSTER_ERR_INVALID_ARGUMENT);
    cluster::Future f = cluster::Shm::create_async(c, cluster::ShmSpec::of<std::int32_t>("ids", {3}, pfx));
    f.wait();
    EXPECT(cluster::Shm::find(c, "ids", pfx).has_value());
    EXPECT(cluster::shm_orphans(pfx).empty() && cluster::remove_shm_orphans(pfx).empty());
    EXPECT(cluster::shm_orphans("", true).size() >= cluster::shm_orphans(pfx).size());
    (void)cluster::remove_shm_orphans(pfx, false);
    cluster::Shm::unlink(c, "grid", pfx);
    cluster::Shm::unlink_async(c, "ids", pfx).wait();
    EXPECT(!cluster::Shm::find(c, "grid", pfx).has_value());
    EXPECT(grid[7] == 3.5); // still mapped while held
    EXPECT_THROWS(cluster::Shm::unlink(c, "grid", pfx), CLUSTER_ERR_NOT_FOUND);
}

// save/load (no cluster): round trip, overwrite, the errors thrown.
void case_savefile() {
    char dir[] = "/tmp/test_cpp_savefile.XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    const std::string p = std::string(dir) + "/state.bin";
    std::vector<std::uint8_t> payload(100000);
    for (std::size_t i = 0; i < payload.size(); i++) payload[i] = static_cast<std::uint8_t>(i * 7);
    cluster::save(p, "julia.serialization", payload);
    cluster::Loaded l = cluster::load(p);
    EXPECT(l.content_type == "julia.serialization" && l.data == payload);
    cluster::save(p, "", std::string("second")); // overwrite; empty content type
    l = cluster::load(p);
    EXPECT(l.content_type.empty() && l.data == std::vector<std::uint8_t>({'s', 'e', 'c', 'o', 'n', 'd'}));
    std::string ct = "unchanged";
    cluster::Buffer b = cluster::load_buffer(p, &ct);
    EXPECT(b.str() == "second" && ct.empty());
    EXPECT(cluster::load_buffer(p).size() == 6);
    cluster::save(p, "empty", cluster::Bytes());
    EXPECT(cluster::load(p).data.empty());
    // Errors.
    auto missing = EXPECT_THROWS(cluster::load(std::string(dir) + "/missing"), CLUSTER_ERR_IO);
    EXPECT(missing && missing->message().find("/missing") != std::string::npos);
    EXPECT_THROWS(cluster::save(std::string(dir) + "/no/such/f", "ct", "x"), CLUSTER_ERR_IO);
    EXPECT_THROWS(cluster::save(p, std::string(256, 't'), "x"), CLUSTER_ERR_INVALID_ARGUMENT);
    EXPECT_THROWS(cluster::save(p, std::string("a\0b", 3), "x"), CLUSTER_ERR_INVALID_ARGUMENT);
    {
        FILE *f = std::fopen(p.c_str(), "wb");
        REQUIRE(f != nullptr);
        std::fputs("not a save file\n", f);
        std::fclose(f);
    }
    auto foreign = EXPECT_THROWS(cluster::load(p), CLUSTER_ERR_CORRUPT);
    EXPECT(foreign && foreign->message().find("bad magic") != std::string::npos);
    cluster::save(p, "ct", payload);
    EXPECT(truncate(p.c_str(), 5000) == 0);
    auto cut = EXPECT_THROWS(cluster::load(p), CLUSTER_ERR_CORRUPT);
    EXPECT(cut && cut->message().find("truncated: expected 100062 bytes, found 5000") != std::string::npos);
    EXPECT(std::remove(p.c_str()) == 0 && rmdir(dir) == 0); // nothing else was left there
}

int main(int argc, char **argv) {
    const std::string which = argc > 1 ? argv[1] : "";
    harness_name = argc > 1 ? argv[1] : "test_cpp";
    if (which == "workers" || which == "pools" || which == "dicts" || which == "stasks" || which == "clusterutils") {
        try {
            cluster::Cluster c(cluster::Config().startup_timeout_ms(20000));
            g_cluster = &c;
            register_all(c);
            if (!c.is_head()) {
                harness_watchdog(60);
                // head-only functions refuse on a worker
                EXPECT_THROWS(c.addprocs(1), CLUSTER_ERR_NOT_HEAD);
                EXPECT_THROWS(c.rmprocs(1), CLUSTER_ERR_NOT_HEAD);
                EXPECT_THROWS(c.set_topology(CLUSTER_TOPOLOGY_ALL_TO_ALL), CLUSTER_ERR_NOT_HEAD);
                c.serve();
                g_cluster = nullptr;
                return harness_failures ? 1 : 0;
            }
            harness_watchdog(45);
            if (which == "workers")
                case_workers();
            else if (which == "dicts")
                case_dicts();
            else if (which == "stasks")
                case_stasks();
            else if (which == "clusterutils")
                case_clusterutils();
            else
                case_pools();
            g_cluster = nullptr;
        } catch (const std::exception &e) {
            harness_logf("uncaught exception: %s", e.what());
            return 1;
        }
        return harness_finish();
    }
    harness_watchdog(30);
    const std::map<std::string, void (*)()> cases = {
        {"basics", case_basics}, {"calls", case_calls}, {"callbacks", case_callbacks},
        {"close_waits", case_close_waits}, {"host", case_host}, {"shm", case_shm}, {"fork", case_fork},
        {"savefile", case_savefile},
    };
    auto it = cases.find(which);
    if (it == cases.end()) {
        fprintf(stderr, "usage: %s basics|calls|callbacks|close_waits|host|shm|fork|savefile|workers|pools|dicts|stasks|clusterutils\n", argv[0]);
        return 2;
    }
    try {
        it->second();
    } catch (const std::exception &e) {
        harness_logf("uncaught exception: %s", e.what());
        return 1;
    }
    return harness_finish();
}
