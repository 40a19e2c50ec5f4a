// cluster.hpp: header-only C++17 wrapper of libcluster's C API (cluster.h).
//
//   #include <cluster.hpp>
//   cluster::Cluster c;                                   // head, unless launched as a worker
//   c.register_function("square", [](cluster::Call& call) { auto x = call.args_as<int>(); return x * x; });
//   if (!c.is_head()) { c.serve(); return 0; }
//   auto ids = c.addprocs(4);
//   int y = c.remotecall_fetch_as<int>(ids[0], "square", 7);   // 49
//   c.shutdown(10000);
//
// Ownership. Every C handle has one move-only owner: `Cluster` (cluster_ctx),
// `Future` (cluster_future), `Buffer` (cluster_buffer), `Channel`
// (cluster_channel), `Dict` (cluster_dict), `DictEntries`
// (cluster_dict_entries), `ForkResults` (cluster_fork_results), the
// work-distribution owners below and a deferred `Call` (cluster_call). Destructors release the handle and never throw; a moved-from
// owner is empty and safe to destroy. `Bytes` is a non-owning view (pointer +
// length), like std::span<const std::uint8_t>: it is only valid while what it
// points into lives (a std::string, a Buffer, a Future, a Call's arguments).
//
// Errors. Failures throw `cluster::Error`, carrying the C status (`status()`),
// the library's message (`message()`) and the process it concerns (`pid()`,
// e.g. the worker a remote error came from). Waiting with a timeout reports a
// timeout as `false` instead of throwing where noted.
//
// Threading. As the C API: any method may be called from any thread, except
// that a single owner object must not be destroyed, moved or assigned while
// another thread uses it. Handlers run on library threads (threads dispatch,
// `handler_threads` at a time) or inside `Cluster::poll` on the polling thread
// (host dispatch); a callable shared by several handler threads must be
// thread-safe. Exceptions thrown by a handler are caught in the trampoline and
// turned into `cluster_call_fail` (the caller gets CLUSTER_ERR_REMOTE with the
// exception's text); exceptions from lifecycle/log/notify callbacks are
// swallowed (they cannot cross the C boundary).
//
// Layout. One section per C object, as the C API is one file per object in
// src/ffi: cluster_status (versions, status strings, last error, Error),
// byte views (C++ only), cluster_buffer (Buffer), cluster_future (Future),
// cluster_channel (Channel), cluster_call (Call), cluster_config and
// cluster_launch_options (Config, LaunchOptions), cluster_ctx (Cluster, with
// its callback trampolines), then work distribution: cluster_pool (Pool),
// cluster_pmap (Pmap, PmapOptions,
// the typed pmap<R>() / pmap_results<R>() / distributed_reduce(), and
// splitrange()), cluster_workerset (WorkerSet), cluster_taskqueue (TaskQueue,
// Task), cluster_dict (Dict, DictSpec, DictEntries; value functions are
// registered on the Cluster), cluster_shm (Shm, ShmSpec, Span<T>, and the
// orphan cleaner shm_orphans() / remove_shm_orphans()), cluster_stasks
// (ServerTasks, StaskState), then cluster_pfork (pfork(), ForkResults,
// ForkChild, ForkError; no Cluster needed), then cluster_save / cluster_load
// (save(), load(), load_buffer(), Loaded; no Cluster needed). The order is the one C++ needs:
// an object comes after those it uses.
//
// Work distribution owns its callbacks: a Pmap keeps its retry check and
// progress callables (destroying a running map cancels it and waits for its
// end, after which none runs); a TaskQueue keeps its tasks' callbacks until it
// is destroyed (after which none runs).
//
// Callback lifetime. The Cluster keeps every registered callable alive until it
// is closed, including ones replaced by a later registration (a library thread
// may still be running the old one). `close()` / the destructor unregisters the
// handlers, clears the callbacks, frees the cluster, then waits for callables
// already running to return before destroying them.
#ifndef LIBCLUSTER_CLUSTER_HPP
#define LIBCLUSTER_CLUSTER_HPP

#include "cluster.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace cluster {

// ==== cluster_status: versions, status strings, the last error =============

/// The version this header was generated with (CLUSTER_VERSION encoding).
inline constexpr std::uint32_t header_version = CLUSTER_VERSION;

/// The loaded library's version, encoded as CLUSTER_VERSION.
inline std::uint32_t version() noexcept { return cluster_version(); }

/// The loaded library's version as "major.minor.patch".
inline const char *version_string() noexcept { return cluster_version_string(); }

/// True when the loaded library can serve this header: same major version and
/// at least this header's minor (minor versions only add).
inline bool version_compatible() noexcept {
    const std::uint32_t lib = cluster_version();
    return (lib >> 16) == (header_version >> 16) && ((lib >> 8) & 0xff) >= ((header_version >> 8) & 0xff);
}

/// Static description of a status (any value; unknown ones say so).
inline const char *status_str(std::int32_t st) noexcept { return cluster_status_str(st); }

/// The calling thread's last error message and process ("" and 0 if none).
inline std::string last_error() { return cluster_last_error(); }
inline std::int32_t last_error_pid() noexcept { return cluster_last_error_pid(); }

inline constexpr std::int32_t any_worker = CLUSTER_ANY_WORKER;
inline constexpr std::int32_t head_id = CLUSTER_HEAD;
inline constexpr std::int64_t forever = CLUSTER_FOREVER;

// -- errors (a failed status, with the last error) --

/// A failed libcluster call.
class Error : public std::runtime_error {
public:
    Error(cluster_status status, std::string message, std::int32_t pid = 0)
        : std::runtime_error(compose(status, message, pid)), status_(status), message_(std::move(message)),
          pid_(pid) {}

    /// Builds the error from this thread's last error (call right after the failure).
    static Error last(cluster_status status) { return Error(status, cluster_last_error(), cluster_last_error_pid()); }

    cluster_status status() const noexcept { return status_; }
    const std::string &message() const noexcept { return message_; }
    /// The process the error came from or concerns, or 0.
    std::int32_t pid() const noexcept { return pid_; }

private:
    static std::string compose(cluster_status st, const std::string &msg, std::int32_t pid) {
        std::string s = cluster_status_str(st);
        if (!msg.empty()) s += ": " + msg;
        if (pid != 0) s += " (process " + std::to_string(pid) + ")";
        return s;
    }
    cluster_status status_;
    std::string message_;
    std::int32_t pid_;
};

/// Throws `Error::last(st)` unless `st` is CLUSTER_OK.
inline void check(cluster_status st) {
    if (st != CLUSTER_OK) throw Error::last(st);
}

// ==== byte views (C++ only, no C object) ====================================

/// A non-owning view of bytes: a pointer and a length.
class Bytes {
public:
    constexpr Bytes() noexcept = default;
    constexpr Bytes(const std::uint8_t *data, std::size_t size) noexcept : data_(data), size_(size) {}
    Bytes(const void *data, std::size_t size) noexcept : data_(static_cast<const std::uint8_t *>(data)), size_(size) {}
    Bytes(const std::string &s) noexcept : Bytes(s.data(), s.size()) {}
    Bytes(std::string_view s) noexcept : Bytes(s.data(), s.size()) {}
    Bytes(const char *s) noexcept : Bytes(s, s ? std::strlen(s) : 0) {}
    Bytes(const std::vector<std::uint8_t> &v) noexcept : Bytes(v.data(), v.size()) {}

    /// The object representation of a trivially copyable value.
    template <class T> static Bytes of(const T &value) noexcept {
        static_assert(std::is_trivially_copyable_v<T>, "Bytes::of needs a trivially copyable type");
        return Bytes(&value, sizeof(T));
    }

    const std::uint8_t *data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    const std::uint8_t *begin() const noexcept { return data_; }
    const std::uint8_t *end() const noexcept { return data_ + size_; }
    std::uint8_t operator[](std::size_t i) const noexcept { return data_[i]; }

    std::string_view view() const noexcept { return {reinterpret_cast<const char *>(data_), size_}; }
    std::string str() const { return std::string(view()); }
    std::vector<std::uint8_t> vec() const { return std::vector<std::uint8_t>(begin(), end()); }

    /// Copies the bytes into a T; throws Error(CLUSTER_ERR_PROTOCOL) unless
    /// the size is exactly sizeof(T).
    template <class T> T as(std::int32_t pid = 0) const {
        static_assert(std::is_trivially_copyable_v<T>, "Bytes::as needs a trivially copyable type");
        static_assert(std::is_default_constructible_v<T>, "Bytes::as needs a default-constructible type");
        if (size_ != sizeof(T))
            throw Error(CLUSTER_ERR_PROTOCOL,
                        "expected a value of " + std::to_string(sizeof(T)) + " bytes, got " + std::to_string(size_),
                        pid);
        T v{};
        if (size_) std::memcpy(&v, data_, sizeof(T));
        return v;
    }

private:
    const std::uint8_t *data_ = nullptr;
    std::size_t size_ = 0;
};

// ==== cluster_buffer: Buffer ================================================

/// Owns a cluster_buffer (bytes owned by the library, e.g. a fetched result).
class Buffer {
public:
    Buffer() noexcept = default;
    /// Adopts `b`; it is released by this object.
    explicit Buffer(cluster_buffer b) noexcept : b_(b) {}
    Buffer(Buffer &&o) noexcept : b_(o.b_) { o.b_ = cluster_buffer{}; }
    Buffer &operator=(Buffer &&o) noexcept {
        if (this != &o) {
            reset();
            b_ = o.b_;
            o.b_ = cluster_buffer{};
        }
        return *this;
    }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    ~Buffer() { reset(); }

    const std::uint8_t *data() const noexcept { return b_.data; }
    std::size_t size() const noexcept { return b_.len; }
    bool empty() const noexcept { return b_.len == 0; }
    /// True while it holds a library buffer.
    explicit operator bool() const noexcept { return b_.handle != 0; }
    Bytes bytes() const noexcept { return Bytes(b_.data, b_.len); }
    std::string_view view() const noexcept { return bytes().view(); }
    std::string str() const { return bytes().str(); }
    std::vector<std::uint8_t> vec() const { return bytes().vec(); }
    template <class T> T as(std::int32_t pid = 0) const { return bytes().as<T>(pid); }

    /// Releases the buffer now (cluster_buffer_free).
    void reset() noexcept {
        if (b_.handle != 0) cluster_buffer_free(&b_);
        b_ = cluster_buffer{};
    }
    /// Gives up ownership; the caller must cluster_buffer_free the result.
    cluster_buffer release() noexcept {
        cluster_buffer b = b_;
        b_ = cluster_buffer{};
        return b;
    }
    /// For C calls that fill a cluster_buffer: releases the current one first.
    cluster_buffer *out() noexcept {
        reset();
        return &b_;
    }

private:
    cluster_buffer b_{};
};

// ==== cluster_future, cluster_future_ref: Future ============================

/// Why a future failed: the process the error came from and its text.
struct FutureError {
    std::int32_t pid = 0;
    std::string message;
};

/// Owns a cluster_future: a pending or completed remote call result.
class Future {
public:
    Future() noexcept = default;
    /// Adopts `f`; it is released by this object.
    explicit Future(cluster_future *f) noexcept : f_(f) {}
    Future(Future &&o) noexcept : f_(std::exchange(o.f_, nullptr)) {}
    Future &operator=(Future &&o) noexcept {
        if (this != &o) {
            reset();
            f_ = std::exchange(o.f_, nullptr);
        }
        return *this;
    }
    Future(const Future &) = delete;
    Future &operator=(const Future &) = delete;
    ~Future() { reset(); }

    bool valid() const noexcept { return f_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    cluster_future *get() const noexcept { return f_; }
    /// Gives up ownership; the caller must cluster_future_free the result.
    cluster_future *release() noexcept { return std::exchange(f_, nullptr); }
    /// Releases the future now (cluster_future_free); never blocks.
    void reset() noexcept {
        if (f_) cluster_future_free(f_);
        f_ = nullptr;
    }

    /// Waits up to `timeout_ms` (0: just check). Returns false on timeout;
    /// throws the call's own error if it failed.
    bool wait_for(std::int64_t timeout_ms) const {
        cluster_status st = cluster_future_wait(f_, timeout_ms);
        if (st == CLUSTER_ERR_TIMEOUT) return false;
        check(st);
        return true;
    }
    template <class Rep, class Period> bool wait_for(std::chrono::duration<Rep, Period> d) const {
        return wait_for(static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()));
    }
    /// Waits without limit; throws the call's error if it failed.
    void wait() const { check(cluster_future_wait(f_, CLUSTER_FOREVER)); }

    /// Reads the reply on this thread for up to `spin_us` microseconds,
    /// never parking; whether it completed.
    bool drive(std::uint32_t spin_us) const {
        bool r = false;
        check(cluster_future_drive(f_, spin_us, &r));
        return r;
    }

    /// Whether it completed (successfully or not). Never blocks.
    bool ready() const {
        bool r = false;
        check(cluster_future_isready(f_, &r));
        return r;
    }

    /// Waits (CLUSTER_ERR_TIMEOUT is thrown on timeout) and views the value.
    /// The bytes belong to this future: valid until it is reset/destroyed.
    Bytes fetch(std::int64_t timeout_ms = CLUSTER_FOREVER) const {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        check(cluster_future_fetch(f_, timeout_ms, &d, &n));
        return Bytes(d, n);
    }
    std::string fetch_string(std::int64_t timeout_ms = CLUSTER_FOREVER) const { return fetch(timeout_ms).str(); }
    std::vector<std::uint8_t> fetch_vector(std::int64_t timeout_ms = CLUSTER_FOREVER) const {
        return fetch(timeout_ms).vec();
    }
    /// Fetches a trivially copyable value; size checked (CLUSTER_ERR_PROTOCOL).
    template <class T> T fetch_as(std::int64_t timeout_ms = CLUSTER_FOREVER) const {
        return fetch(timeout_ms).template as<T>(pid());
    }

    /// nullopt if it succeeded; the failure otherwise. Throws
    /// Error(CLUSTER_ERR_NOT_READY) while it is pending.
    std::optional<FutureError> error() const {
        std::int32_t pid = 0;
        const char *msg = nullptr;
        check(cluster_future_error(f_, &pid, &msg));
        if (pid == 0 && (msg == nullptr || msg[0] == '\0')) return std::nullopt;
        return FutureError{pid, msg ? msg : ""};
    }

    /// Unique among this process's futures; names it in host-mode events.
    std::uint64_t id() const {
        std::uint64_t v = 0;
        check(cluster_future_id(f_, &v));
        return v;
    }
    /// The process computing or holding the value.
    std::int32_t pid() const {
        std::int32_t v = 0;
        check(cluster_future_pid(f_, &v));
        return v;
    }
    /// A reference another process can import (Cluster::import_future).
    /// Each exported reference must be imported exactly once.
    cluster_future_ref export_ref() const {
        cluster_future_ref r{};
        check(cluster_future_export(f_, &r));
        return r;
    }
    /// export_ref as a future (never waits); its value is the reference.
    Future export_ref_async() const {
        cluster_future *f = nullptr;
        check(cluster_future_export_async(f_, &f));
        return Future(f);
    }
    /// The reference an export_ref_async future holds.
    cluster_future_ref ref_value(std::int64_t timeout_ms = CLUSTER_FOREVER) const {
        Bytes b = fetch(timeout_ms);
        if (b.size() != 12) throw Error(CLUSTER_ERR_PROTOCOL, "not a reference", pid());
        cluster_future_ref r{};
        std::memcpy(&r.owner, b.data(), 4);
        std::memcpy(&r.id, b.data() + 4, 8);
        return r;
    }

private:
    cluster_future *f_ = nullptr;
};

// ==== cluster_channel, cluster_channel_ref: Channel =========================

/// Owns a cluster_channel: one reference to a RemoteChannel, a FIFO queue of
/// byte elements kept by one process (its owner) and usable from any
/// process. Make one with Cluster::channel, or import a reference with
/// Cluster::import_channel. Waiting operations take a timeout in ms
/// (cluster::forever: none) and have an _async form returning a Future.
/// A timed-out put or take is withdrawn on the owner: the element did not
/// go in, or no element was taken. Iterating takes elements until the
/// channel is closed and empty:
///
///     for (cluster::Buffer &b : ch) use(b.view());
class Channel {
public:
    Channel() noexcept = default;
    /// Adopts `c`; it is released by this object.
    explicit Channel(cluster_channel *c) noexcept : c_(c) {}
    Channel(Channel &&o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
    Channel &operator=(Channel &&o) noexcept {
        if (this != &o) {
            reset();
            c_ = std::exchange(o.c_, nullptr);
        }
        return *this;
    }
    Channel(const Channel &) = delete;
    Channel &operator=(const Channel &) = delete;
    ~Channel() { reset(); }

    bool valid() const noexcept { return c_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    cluster_channel *get() const noexcept { return c_; }
    /// Gives up ownership; the caller must cluster_channel_free the result.
    cluster_channel *release() noexcept { return std::exchange(c_, nullptr); }
    /// Releases this reference now (cluster_channel_free); never blocks.
    void reset() noexcept {
        if (c_) cluster_channel_free(c_);
        c_ = nullptr;
    }

    /// The process keeping the channel.
    std::int32_t pid() const {
        std::int32_t v = 0;
        check(cluster_channel_pid(c_, &v));
        return v;
    }

    // -- put --
    /// Puts `data`, waiting while the channel is full; throws
    /// CLUSTER_ERR_TIMEOUT (the element did not go in) after `timeout_ms`.
    void put(Bytes data, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        check(cluster_channel_put(c_, data.data(), data.size(), timeout_ms));
    }
    /// As put; false instead of throwing when it timed out.
    bool put_for(Bytes data, std::int64_t timeout_ms) {
        cluster_status st = cluster_channel_put(c_, data.data(), data.size(), timeout_ms);
        if (st == CLUSTER_ERR_TIMEOUT) return false;
        check(st);
        return true;
    }
    /// Puts the bytes of a trivially copyable value.
    template <class T> void put_value(const T &value, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        static_assert(std::is_trivially_copyable_v<T>, "put_value needs a trivially copyable type");
        put(Bytes::of(value), timeout_ms);
    }
    /// put as a future (no value); destroying it does not withdraw the put.
    Future put_async(Bytes data) {
        cluster_future *f = nullptr;
        check(cluster_channel_put_async(c_, data.data(), data.size(), &f));
        return Future(f);
    }
    /// Puts without asking for an answer: never waits (no back-pressure);
    /// a failure on the owner is only logged there.
    void put_nowait(Bytes data) { check(cluster_channel_put_nowait(c_, data.data(), data.size())); }

    // -- take, fetch, wait --
    /// Takes the first element, waiting while there is none; throws
    /// CLUSTER_ERR_CHANNEL_CLOSED once closed and empty, CLUSTER_ERR_TIMEOUT
    /// (nothing taken) after `timeout_ms`.
    Buffer take(std::int64_t timeout_ms = CLUSTER_FOREVER) {
        Buffer b;
        check(cluster_channel_take(c_, timeout_ms, b.out()));
        return b;
    }
    /// As take; nullopt instead of throwing when it timed out.
    std::optional<Buffer> take_for(std::int64_t timeout_ms) {
        Buffer b;
        cluster_status st = cluster_channel_take(c_, timeout_ms, b.out());
        if (st == CLUSTER_ERR_TIMEOUT) return std::nullopt;
        check(st);
        return b;
    }
    /// Takes an element as a trivially copyable value; size checked.
    template <class T> T take_as(std::int64_t timeout_ms = CLUSTER_FOREVER) { return take(timeout_ms).template as<T>(pid()); }
    /// take as a future whose value is the element. Destroyed before it
    /// completes, it withdraws the take (an element it got goes back first
    /// in line); destroyed after, it drops the element it holds.
    Future take_async() {
        cluster_future *f = nullptr;
        check(cluster_channel_take_async(c_, &f));
        return Future(f);
    }
    /// A copy of the first element, left in the channel.
    Buffer fetch(std::int64_t timeout_ms = CLUSTER_FOREVER) {
        Buffer b;
        check(cluster_channel_fetch(c_, timeout_ms, b.out()));
        return b;
    }
    Future fetch_async() {
        cluster_future *f = nullptr;
        check(cluster_channel_fetch_async(c_, &f));
        return Future(f);
    }
    /// Waits until an element is there; false when `timeout_ms` passed.
    bool wait_for(std::int64_t timeout_ms) {
        cluster_status st = cluster_channel_wait(c_, timeout_ms);
        if (st == CLUSTER_ERR_TIMEOUT) return false;
        check(st);
        return true;
    }
    void wait() { check(cluster_channel_wait(c_, CLUSTER_FOREVER)); }
    Future wait_async() {
        cluster_future *f = nullptr;
        check(cluster_channel_wait_async(c_, &f));
        return Future(f);
    }

    // -- state --
    /// Elements available, capacity (CLUSTER_CHANNEL_UNBOUNDED: none), open.
    cluster_channel_state state() const {
        cluster_channel_state s{};
        check(cluster_channel_query(c_, &s));
        return s;
    }
    /// state as a future; read it with state_of().
    Future state_async() const {
        cluster_future *f = nullptr;
        check(cluster_channel_query_async(c_, &f));
        return Future(f);
    }
    /// The state a state_async future holds.
    static cluster_channel_state state_of(const Future &f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        Bytes b = f.fetch(timeout_ms);
        cluster_channel_state s{};
        check(cluster_channel_state_decode(b.data(), b.size(), &s));
        return s;
    }
    /// An element is there (a take would not wait).
    bool ready() const {
        bool v = false;
        check(cluster_channel_isready(c_, &v));
        return v;
    }
    /// No element is there; never takes one.
    bool empty() const {
        bool v = false;
        check(cluster_channel_isempty(c_, &v));
        return v;
    }
    bool open() const {
        bool v = false;
        check(cluster_channel_isopen(c_, &v));
        return v;
    }

    // -- close, bind --
    /// Closes: waiting puts fail, takes fail once empty; buffered elements
    /// can still be taken.
    void close() { check(cluster_channel_close(c_)); }
    Future close_async() {
        cluster_future *f = nullptr;
        check(cluster_channel_close_async(c_, &f));
        return Future(f);
    }
    /// Closes the channel when process `pid` leaves (a producer's death
    /// then ends its consumers' loops instead of hanging them).
    void bind(std::int32_t pid) { check(cluster_channel_bind(c_, pid)); }
    Future bind_async(std::int32_t pid) {
        cluster_future *f = nullptr;
        check(cluster_channel_bind_async(c_, pid, &f));
        return Future(f);
    }

    // -- references --
    /// A reference another process imports (Cluster::import_channel) once.
    cluster_channel_ref export_ref() const {
        cluster_channel_ref r{};
        check(cluster_channel_export(c_, &r));
        return r;
    }
    /// export_ref as a future (never waits); read it with ref_of().
    Future export_ref_async() const {
        cluster_future *f = nullptr;
        check(cluster_channel_export_async(c_, &f));
        return Future(f);
    }
    /// The reference an export_ref_async future holds.
    static cluster_channel_ref ref_of(const Future &f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        Bytes b = f.fetch(timeout_ms);
        if (b.size() != 12) throw Error(CLUSTER_ERR_PROTOCOL, "not a channel reference", f.pid());
        cluster_channel_ref r{};
        std::memcpy(&r.owner, b.data(), 4);
        std::memcpy(&r.id, b.data() + 4, 8);
        return r;
    }

    // -- iteration: takes until closed and empty --
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Buffer;
        using difference_type = std::ptrdiff_t;
        using pointer = Buffer *;
        using reference = Buffer &;

        iterator() noexcept = default;
        explicit iterator(Channel *ch) : ch_(ch) { next(); }
        Buffer &operator*() noexcept { return cur_; }
        Buffer *operator->() noexcept { return &cur_; }
        iterator &operator++() {
            next();
            return *this;
        }
        bool operator==(const iterator &o) const noexcept { return ch_ == o.ch_; }
        bool operator!=(const iterator &o) const noexcept { return ch_ != o.ch_; }

    private:
        void next() {
            cluster_status st = cluster_channel_take(ch_->get(), CLUSTER_FOREVER, cur_.out());
            if (st == CLUSTER_ERR_CHANNEL_CLOSED) {
                ch_ = nullptr;
                return;
            }
            check(st);
        }
        Channel *ch_ = nullptr;
        Buffer cur_;
    };
    iterator begin() { return iterator(this); }
    iterator end() noexcept { return iterator(); }

private:
    cluster_channel *c_ = nullptr;
};

// ==== cluster_call: Call ====================================================

/// An incoming call. A handler receives a borrowed `Call&`, valid until it
/// returns. `defer()` moves the call into a new owning `Call` that may be
/// answered later from any thread; destroying an owning Call releases it
/// (cluster_call_free: an unanswered call fails for its caller).
class Call {
public:
    Call() noexcept = default;
    /// Wraps `c`; `owned` only for deferred calls (released on destruction).
    Call(cluster_call *c, bool owned) noexcept : c_(c), owned_(owned) {}
    Call(Call &&o) noexcept
        : c_(std::exchange(o.c_, nullptr)), owned_(std::exchange(o.owned_, false)),
          answered_(o.answered_.load()) {}
    Call &operator=(Call &&o) noexcept {
        if (this != &o) {
            reset();
            c_ = std::exchange(o.c_, nullptr);
            owned_ = std::exchange(o.owned_, false);
            answered_ = o.answered_.load();
        }
        return *this;
    }
    Call(const Call &) = delete;
    Call &operator=(const Call &) = delete;
    ~Call() { reset(); }

    bool valid() const noexcept { return c_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    bool owned() const noexcept { return owned_; }
    /// True once reply() or fail() succeeded through this object.
    bool answered() const noexcept { return answered_; }
    cluster_call *get() const noexcept { return c_; }

    /// The arguments; valid until the call is answered (or freed, if deferred).
    Bytes args() const {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        check(cluster_call_args(c_, &d, &n));
        return Bytes(d, n);
    }
    std::string args_string() const { return args().str(); }
    /// The arguments as a trivially copyable value; size checked.
    template <class T> T args_as() const { return args().template as<T>(caller()); }

    /// The calling process.
    std::int32_t caller() const {
        std::int32_t v = 0;
        check(cluster_call_caller(c_, &v));
        return v;
    }
    /// The called function's name.
    std::string name() const {
        std::string s(32, '\0');
        for (;;) {
            std::size_t len = 0;
            cluster_status st = cluster_call_name(c_, s.data(), s.size(), &len);
            if (st == CLUSTER_ERR_BUFFER_TOO_SMALL) {
                s.assign(len + 1, '\0');
                continue;
            }
            check(st);
            s.resize(len);
            return s;
        }
    }
    /// Whether cluster_interrupt cancelled this call: a long handler should
    /// poll it and return early.
    bool cancelled() const {
        bool v = false;
        check(cluster_call_cancelled(c_, &v));
        return v;
    }

    /// Answers with `data` (copied or sent before return). Answer once: a call
    /// that was not deferred is gone once answered (using it again throws
    /// CLUSTER_ERR_BAD_HANDLE); a deferred one lives until it is released.
    void reply(Bytes data) {
        check(cluster_call_reply(c_, data.data(), data.size()));
        answered_ = true;
    }
    /// Answers with the bytes of a trivially copyable value.
    template <class T> void reply_value(const T &value) {
        static_assert(std::is_trivially_copyable_v<T>, "reply_value needs a trivially copyable type");
        reply(Bytes::of(value));
    }
    /// Fails the call: the caller gets CLUSTER_ERR_REMOTE with `message`.
    void fail(const std::string &message) {
        check(cluster_call_fail(c_, message.c_str()));
        answered_ = true;
    }

    /// From inside a handler: keeps the call past the handler's return and
    /// returns its owner; this object becomes empty.
    Call defer() {
        check(cluster_call_defer(c_));
        Call owner(std::exchange(c_, nullptr), true);
        owner.answered_ = answered_.load();
        owned_ = false;
        return owner;
    }

    /// Releases an owned (deferred) call now; forgets a borrowed one.
    void reset() noexcept {
        if (c_ && owned_) cluster_call_free(c_);
        c_ = nullptr;
        owned_ = false;
    }

private:
    cluster_call *c_ = nullptr;
    bool owned_ = false;
    std::atomic<bool> answered_{false};
};

// ==== cluster_config, cluster_launch_options: Config, LaunchOptions =========

/// cluster_config with owned strings; set fields with the chaining setters.
class Config {
public:
    Config() { check(cluster_config_init(&c_)); }

    Config &listen_host(std::string v) { return set(listen_host_, std::move(v)); }
    Config &cookie(std::string v) { return set(cookie_, std::move(v)); }
    Config &join(std::string v) { return set(join_, std::move(v)); }
    Config &topology(cluster_topology t) { return c_.topology = static_cast<std::int32_t>(t), *this; }
    Config &dispatch(cluster_dispatch d) { return c_.dispatch = static_cast<std::int32_t>(d), *this; }
    Config &handler_threads(std::uint32_t n) { return c_.handler_threads = n, *this; }
    Config &startup_timeout_ms(std::uint32_t ms) { return c_.startup_timeout_ms = ms, *this; }
    Config &max_message_bytes(std::uint64_t n) { return c_.max_message_bytes = n, *this; }
    Config &spin_us(std::uint32_t us) { return c_.spin_us = us, *this; }
    /// A cluster_log_level, or -1 for LIBCLUSTER_LOG.
    Config &log_level(std::int32_t level) { return c_.log_level = level, *this; }
    Config &exit_on_head_loss(bool v) { return c_.exit_on_head_loss = v, *this; }
    /// Which connections this process asks to run under TLS.
    Config &tls(cluster_tls t) { return c_.tls = static_cast<std::int32_t>(t), *this; }

    /// The C struct, with string fields pointing into this object.
    const cluster_config *get() const noexcept {
        c_.listen_host = listen_host_ ? listen_host_->c_str() : nullptr;
        c_.cookie = cookie_ ? cookie_->c_str() : nullptr;
        c_.join = join_ ? join_->c_str() : nullptr;
        return &c_;
    }
    /// Direct access to the non-string fields.
    cluster_config &raw() noexcept { return c_; }

private:
    Config &set(std::optional<std::string> &field, std::string v) {
        field = std::move(v);
        return *this;
    }
    mutable cluster_config c_{};
    std::optional<std::string> listen_host_, cookie_, join_;
};

/// How addprocs starts workers; empty fields mean the library's defaults.
struct LaunchOptions {
    std::string program;                          ///< empty: the current executable
    std::optional<std::vector<std::string>> argv; ///< without argv[0]; nullopt: default
    std::vector<std::string> env;                 ///< "NAME=value" entries
    std::string dir;                              ///< empty: the head's working directory
};

// ==== cluster_ctx: Cluster ==================================================

// -- callback boxes and trampolines (what the Cluster registers with C) --
namespace detail {

/// The registered callables of one Cluster, and how many are running.
struct State {
    std::mutex mu;
    std::vector<std::shared_ptr<void>> keep; // every callable ever registered
    std::vector<std::string> names;          // registered function names
    std::atomic<int> inflight{0};
};

struct Inflight {
    explicit Inflight(State *s) noexcept : s_(s) { s_->inflight.fetch_add(1, std::memory_order_acq_rel); }
    ~Inflight() { s_->inflight.fetch_sub(1, std::memory_order_acq_rel); }
    State *s_;
};

struct HandlerBox {
    State *state;
    std::function<void(Call &)> fn;
};

struct LifecycleBox {
    State *state;
    std::function<void(std::int32_t, cluster_lifecycle)> fn;
};

struct LogBox {
    State *state;
    std::function<void(cluster_log_level, std::string_view)> fn;
};

struct NotifyBox {
    State *state;
    std::function<void()> fn;
};

inline void fail_quietly(Call &call, const char *message) noexcept {
    if (call.valid() && !call.answered()) cluster_call_fail(call.get(), message);
}

// Returns int32_t, as cluster_handler does (a status value).
inline std::int32_t handler_trampoline(void *ud, cluster_call *c) noexcept {
    auto *box = static_cast<HandlerBox *>(ud);
    Inflight guard(box->state);
    Call call(c, false);
    try {
        box->fn(call);
    } catch (const Error &e) {
        fail_quietly(call, e.message().empty() ? e.what() : e.message().c_str());
    } catch (const std::exception &e) {
        fail_quietly(call, e.what());
    } catch (...) {
        fail_quietly(call, "unknown C++ exception in handler");
    }
    return CLUSTER_OK;
}

inline void lifecycle_trampoline(void *ud, std::int32_t pid, cluster_lifecycle what) noexcept {
    auto *box = static_cast<LifecycleBox *>(ud);
    Inflight guard(box->state);
    try {
        box->fn(pid, what);
    } catch (...) {
    }
}

inline void log_trampoline(void *ud, cluster_log_level level, const char *message) noexcept {
    auto *box = static_cast<LogBox *>(ud);
    Inflight guard(box->state);
    try {
        box->fn(level, message ? std::string_view(message) : std::string_view());
    } catch (...) {
    }
}

inline int notify_trampoline(void *ud) noexcept {
    auto *box = static_cast<NotifyBox *>(ud);
    Inflight guard(box->state);
    try {
        box->fn();
    } catch (...) {
    }
    return 0;
}

/// What a handler's return value becomes: its reply bytes.
template <class R> void reply_with(Call &call, R &&r) {
    using T = std::decay_t<R>;
    if (!call.valid() || call.answered()) return; // answered, failed or deferred by the handler
    if constexpr (std::is_same_v<T, Buffer>) {
        call.reply(r.bytes());
    } else if constexpr (std::is_convertible_v<R, Bytes>) {
        call.reply(Bytes(r));
    } else {
        static_assert(std::is_trivially_copyable_v<T>,
                      "a handler returns void, bytes (std::string, std::vector<uint8_t>, Bytes, Buffer) "
                      "or a trivially copyable value");
        call.reply(Bytes::of(r));
    }
}

/// A dict value function (Cluster::register_value_fn): computes the value
/// to store from its arguments and puts it into `value`.
struct ValueFnBox {
    State *state;
    std::function<void(Bytes, cluster_value *)> fn;
};

inline std::int32_t value_fn_trampoline(void *ud, const std::uint8_t *args, std::size_t len, cluster_value *value) noexcept {
    auto *box = static_cast<ValueFnBox *>(ud);
    Inflight guard(box->state);
    auto fail = [value](const char *msg) {
        cluster_value_set(value, reinterpret_cast<const std::uint8_t *>(msg), std::strlen(msg));
        return std::int32_t(1);
    };
    try {
        box->fn(Bytes(args, len), value);
        return 0;
    } catch (const Error &e) {
        return fail(e.message().empty() ? e.what() : e.message().c_str());
    } catch (const std::exception &e) {
        return fail(e.what());
    } catch (...) {
        return fail("unknown C++ exception in a value function");
    }
}

/// What a value function's return value becomes: the value stored.
template <class R> void put_value(cluster_value *value, const R &r) {
    using T = std::decay_t<R>;
    Bytes b;
    if constexpr (std::is_same_v<T, Buffer>) {
        b = r.bytes();
    } else if constexpr (std::is_convertible_v<const T &, Bytes>) {
        b = Bytes(r);
    } else {
        static_assert(std::is_trivially_copyable_v<T>,
                      "a value function returns bytes (std::string, std::vector<uint8_t>, Bytes, Buffer) "
                      "or a trivially copyable value");
        b = Bytes::of(r);
    }
    check(cluster_value_set(value, b.data(), b.size()));
}

template <class Fn> std::vector<std::int32_t> ids(Fn fn) {
    std::vector<std::int32_t> v(8);
    for (;;) {
        std::size_t count = 0;
        cluster_status st = fn(v.data(), v.size(), &count);
        if (st == CLUSTER_ERR_BUFFER_TOO_SMALL) {
            v.resize(count + 4);
            continue;
        }
        check(st);
        v.resize(count);
        return v;
    }
}

template <class Fn> std::string text(Fn fn) {
    std::string s(64, '\0');
    for (;;) {
        std::size_t len = 0;
        cluster_status st = fn(s.data(), s.size(), &len);
        if (st == CLUSTER_ERR_BUFFER_TOO_SMALL) {
            s.assign(len + 1, '\0');
            continue;
        }
        check(st);
        s.resize(len);
        return s;
    }
}

} // namespace detail

// -- the cluster --

/// Owns a cluster_ctx: this process's part of a cluster.
class Cluster {
public:
    /// Starts with the default configuration: the head, or a worker when this
    /// process was launched by cluster_addprocs.
    Cluster() : Cluster(nullptr) {}
    explicit Cluster(const Config &config) : Cluster(config.get()) {}
    explicit Cluster(const cluster_config *config) : state_(std::make_unique<detail::State>()) {
        check(cluster_init(config, &ctx_));
    }
    Cluster(Cluster &&o) noexcept : ctx_(std::exchange(o.ctx_, nullptr)), state_(std::move(o.state_)) {}
    Cluster &operator=(Cluster &&o) noexcept {
        if (this != &o) {
            close();
            ctx_ = std::exchange(o.ctx_, nullptr);
            state_ = std::move(o.state_);
        }
        return *this;
    }
    Cluster(const Cluster &) = delete;
    Cluster &operator=(const Cluster &) = delete;
    ~Cluster() { close(); }

    /// Frees the cluster (without the orderly stop of shutdown(); workers of a
    /// head exit when they see it gone), then waits up to `wait` for callables
    /// already running on library threads. If some still run after that, the
    /// callables are leaked rather than destroyed under them. Idempotent.
    void close(std::chrono::milliseconds wait = std::chrono::seconds(30)) noexcept {
        if (!ctx_) return;
        if (state_) {
            std::vector<std::string> names;
            {
                std::lock_guard<std::mutex> g(state_->mu);
                names = state_->names;
            }
            for (const auto &n : names) cluster_unregister(ctx_, n.c_str());
            cluster_set_lifecycle_callback(ctx_, nullptr, nullptr);
            cluster_set_log_callback(ctx_, nullptr, nullptr);
            cluster_set_notify(ctx_, nullptr, nullptr); // CLUSTER_ERR_WRONG_MODE in threads mode: fine
        }
        cluster_free(ctx_);
        ctx_ = nullptr;
        if (state_) {
            auto deadline = std::chrono::steady_clock::now() + wait;
            while (state_->inflight.load(std::memory_order_acquire) > 0) {
                if (std::chrono::steady_clock::now() > deadline) {
                    (void)state_.release(); // still in use by a library thread: leak, never free under it
                    return;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
            state_.reset();
        }
    }

    bool valid() const noexcept { return ctx_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    cluster_ctx *get() const noexcept { return ctx_; }

    // -- identity and membership --
    bool is_head() const {
        bool v = false;
        check(cluster_is_head(ctx_, &v));
        return v;
    }
    std::int32_t myid() const {
        std::int32_t v = 0;
        check(cluster_myid(ctx_, &v));
        return v;
    }
    std::size_t nprocs() const {
        std::size_t v = 0;
        check(cluster_nprocs(ctx_, &v));
        return v;
    }
    std::size_t nworkers() const {
        std::size_t v = 0;
        check(cluster_nworkers(ctx_, &v));
        return v;
    }
    std::vector<std::int32_t> procs() const {
        return detail::ids([&](std::int32_t *o, std::size_t c, std::size_t *n) { return cluster_procs(ctx_, o, c, n); });
    }
    std::vector<std::int32_t> workers() const {
        return detail::ids(
            [&](std::int32_t *o, std::size_t c, std::size_t *n) { return cluster_workers(ctx_, o, c, n); });
    }
    std::vector<std::int32_t> other_procs() const {
        return detail::ids(
            [&](std::int32_t *o, std::size_t c, std::size_t *n) { return cluster_other_procs(ctx_, o, c, n); });
    }
    std::vector<std::int32_t> other_workers() const {
        return detail::ids(
            [&](std::int32_t *o, std::size_t c, std::size_t *n) { return cluster_other_workers(ctx_, o, c, n); });
    }
    /// The cluster secret (keep it secret: it lets a process join).
    std::string cookie() const {
        return detail::text([&](char *b, std::size_t c, std::size_t *n) { return cluster_cookie(ctx_, b, c, n); });
    }
    /// This process's "host:port".
    std::string address() const {
        return detail::text([&](char *b, std::size_t c, std::size_t *n) { return cluster_address(ctx_, b, c, n); });
    }

    // -- lifecycle --
    /// Worker: tells the head this process registered its functions.
    void ready() { check(cluster_ready(ctx_)); }
    /// Worker, threads mode: ready(), then serves until asked to stop.
    void serve() { check(cluster_serve(ctx_)); }
    /// Head: stops every worker, then closes; worker: closes. The object
    /// stays valid (later calls throw CLUSTER_ERR_SHUTDOWN) until close().
    void shutdown(std::int64_t timeout_ms = CLUSTER_FOREVER) { check(cluster_shutdown(ctx_, timeout_ms)); }

    /// Head: starts `n` workers (the current executable, same argv) and
    /// returns their ids once all are ready.
    std::vector<std::int32_t> addprocs(std::size_t n) {
        std::vector<std::int32_t> ids(n);
        check(cluster_addprocs(ctx_, n, nullptr, ids.data()));
        return ids;
    }
    std::vector<std::int32_t> addprocs(std::size_t n, const LaunchOptions &o) {
        std::vector<const char *> argv, env;
        if (o.argv) {
            for (const auto &a : *o.argv) argv.push_back(a.c_str());
            argv.push_back(nullptr);
        }
        for (const auto &e : o.env) env.push_back(e.c_str());
        env.push_back(nullptr);
        cluster_launch_options c{};
        c.program = o.program.empty() ? nullptr : o.program.c_str();
        c.argv = o.argv ? argv.data() : nullptr;
        c.env = env.data();
        c.dir = o.dir.empty() ? nullptr : o.dir.c_str();
        std::vector<std::int32_t> ids(n);
        check(cluster_addprocs(ctx_, n, &c, ids.data()));
        return ids;
    }
    /// Head: addprocs as a future (its value: the new ids, n int32_t);
    /// see ids_of().
    Future addprocs_async(std::size_t n) {
        cluster_future *f = nullptr;
        check(cluster_addprocs_async(ctx_, n, nullptr, &f));
        return Future(f);
    }
    /// The ids an addprocs_async future holds.
    static std::vector<std::int32_t> ids_of(const Future &f) {
        Bytes b = f.fetch();
        std::vector<std::int32_t> ids(b.size() / sizeof(std::int32_t));
        if (!ids.empty()) std::memcpy(ids.data(), b.data(), ids.size() * sizeof(std::int32_t));
        return ids;
    }
    /// Head: rmprocs as a future.
    Future rmprocs_async(const std::vector<std::int32_t> &ids, std::int64_t timeout_ms = 10000) {
        cluster_future *f = nullptr;
        check(cluster_rmprocs_async(ctx_, ids.data(), ids.size(), timeout_ms, &f));
        return Future(f);
    }
    /// shutdown as a future.
    Future shutdown_async(std::int64_t timeout_ms = CLUSTER_FOREVER) {
        cluster_future *f = nullptr;
        check(cluster_shutdown_async(ctx_, timeout_ms, &f));
        return Future(f);
    }
    /// Closes, then waits (up to `timeout_ms`) until no callback of this
    /// cluster runs; none runs afterwards. The object stays to be destroyed.
    void close_and_wait(std::int64_t timeout_ms = CLUSTER_FOREVER) { check(cluster_close(ctx_, timeout_ms)); }
    /// Head: stops the given workers (ask, then SIGTERM, then SIGKILL).
    void rmprocs(const std::vector<std::int32_t> &ids, std::int64_t timeout_ms = 10000) {
        check(cluster_rmprocs(ctx_, ids.data(), ids.size(), timeout_ms));
    }
    void rmprocs(std::int32_t id, std::int64_t timeout_ms = 10000) { rmprocs(std::vector<std::int32_t>{id}, timeout_ms); }
    /// Head, before the first addprocs.
    void set_topology(cluster_topology t) { check(cluster_set_topology(ctx_, static_cast<std::int32_t>(t))); }

    // -- callbacks --
    /// Worker lifecycle changes (library thread in threads mode, inside poll()
    /// in host mode). An empty function clears it.
    void on_lifecycle(std::function<void(std::int32_t, cluster_lifecycle)> fn) {
        if (!fn) {
            check(cluster_set_lifecycle_callback(ctx_, nullptr, nullptr));
            return;
        }
        auto box = keep(std::make_shared<detail::LifecycleBox>(detail::LifecycleBox{state_.get(), std::move(fn)}));
        check(cluster_set_lifecycle_callback(ctx_, &detail::lifecycle_trampoline, box));
    }
    /// Log records instead of stderr. An empty function restores stderr.
    void on_log(std::function<void(cluster_log_level, std::string_view)> fn) {
        if (!fn) {
            check(cluster_set_log_callback(ctx_, nullptr, nullptr));
            return;
        }
        auto box = keep(std::make_shared<detail::LogBox>(detail::LogBox{state_.get(), std::move(fn)}));
        check(cluster_set_log_callback(ctx_, &detail::log_trampoline, box));
    }
    void set_log_level(cluster_log_level level) { check(cluster_set_log_level(ctx_, static_cast<std::int32_t>(level))); }

    // -- functions --
    /// Registers a callable under `name`, replacing an earlier one. It is
    /// called with a `Call&` and may return void (answer with call.reply /
    /// call.fail / call.defer, or nothing for an empty reply), bytes
    /// (std::string, std::vector<uint8_t>, Bytes, Buffer) or a trivially
    /// copyable value, which becomes the reply. A thrown exception fails the
    /// call with its message.
    template <class F> void register_function(const std::string &name, F &&f) {
        static_assert(std::is_invocable_v<F &, Call &>, "a handler is called as f(cluster::Call&)");
        std::function<void(Call &)> fn;
        if constexpr (std::is_void_v<std::invoke_result_t<F &, Call &>>) {
            fn = std::forward<F>(f);
        } else {
            fn = [g = std::forward<F>(f)](Call &call) mutable { detail::reply_with(call, g(call)); };
        }
        auto box = keep(std::make_shared<detail::HandlerBox>(detail::HandlerBox{state_.get(), std::move(fn)}));
        check(cluster_register(ctx_, name.c_str(), &detail::handler_trampoline, box));
        std::lock_guard<std::mutex> g(state_->mu);
        state_->names.push_back(name);
    }
    /// Registers a raw C handler; `user_data` must outlive the registration.
    void register_raw(const std::string &name, cluster_handler handler, void *user_data) {
        check(cluster_register(ctx_, name.c_str(), handler, user_data));
    }
    void unregister(const std::string &name) { check(cluster_unregister(ctx_, name.c_str())); }

    /// Registers the dict value function `name` (Dict::set_with), replacing
    /// an earlier one: called as f(Bytes args) on the process storing the
    /// value (each member of a global dict, a distributed key's owner), it
    /// returns the value to store: bytes (std::string, std::vector<uint8_t>,
    /// Bytes, Buffer) or a trivially copyable value. A thrown exception
    /// fails the write (CLUSTER_ERR_REMOTE with its text). It runs on a
    /// library thread holding the key's partition: quick, never waiting,
    /// never using the dict. Every process storing such values needs it.
    template <class F> void register_value_fn(const std::string &name, F &&f) {
        static_assert(std::is_invocable_v<F &, Bytes>, "a value function is called as f(cluster::Bytes args)");
        using R = std::invoke_result_t<F &, Bytes>;
        static_assert(!std::is_void_v<R>, "a value function returns the value to store");
        std::function<void(Bytes, cluster_value *)> fn = [g = std::forward<F>(f)](Bytes args, cluster_value *v) mutable {
            detail::put_value(v, g(args));
        };
        auto box = keep(std::make_shared<detail::ValueFnBox>(detail::ValueFnBox{state_.get(), std::move(fn)}));
        check(cluster_dict_register_value_fn(ctx_, name.c_str(), &detail::value_fn_trampoline, box));
    }

    // -- calls --
    /// Calls `name` on `pid` (any_worker: round robin); returns at once.
    Future remotecall(std::int32_t pid, const std::string &name, Bytes args = {}) {
        cluster_future *f = nullptr;
        check(cluster_remotecall(ctx_, pid, name.c_str(), args.data(), args.size(), &f));
        return Future(f);
    }
    /// Calls and waits for the value (one round trip).
    Buffer remotecall_fetch(std::int32_t pid, const std::string &name, Bytes args = {}) {
        Buffer b;
        check(cluster_remotecall_fetch(ctx_, pid, name.c_str(), args.data(), args.size(), b.out()));
        return b;
    }
    /// Calls and waits for completion; returns the completed future.
    Future remotecall_wait(std::int32_t pid, const std::string &name, Bytes args = {}) {
        cluster_future *f = nullptr;
        check(cluster_remotecall_wait(ctx_, pid, name.c_str(), args.data(), args.size(), &f));
        return Future(f);
    }
    /// Fire and forget.
    void remote_do(std::int32_t pid, const std::string &name, Bytes args = {}) {
        check(cluster_remote_do(ctx_, pid, name.c_str(), args.data(), args.size()));
    }
    /// Calls `name` on every process (this one included) and waits for all;
    /// throws CLUSTER_ERR_COMPOSITE listing every failed process.
    void everywhere(const std::string &name, Bytes args = {}, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        check(cluster_everywhere(ctx_, nullptr, 0, name.c_str(), args.data(), args.size(), timeout_ms));
    }
    void everywhere(const std::vector<std::int32_t> &pids, const std::string &name, Bytes args = {},
                    std::int64_t timeout_ms = CLUSTER_FOREVER) {
        // An empty list means no process; the C API's NULL means all of them.
        static const std::int32_t none = 0;
        check(cluster_everywhere(ctx_, pids.empty() ? &none : pids.data(), pids.size(), name.c_str(), args.data(),
                                 args.size(), timeout_ms));
    }
    /// everywhere as a future; this process may be among `pids` in host mode.
    Future everywhere_async(const std::vector<std::int32_t> &pids, const std::string &name, Bytes args = {},
                            std::int64_t timeout_ms = CLUSTER_FOREVER) {
        static const std::int32_t none = 0;
        cluster_future *f = nullptr;
        check(cluster_everywhere_async(ctx_, pids.empty() ? &none : pids.data(), pids.size(), name.c_str(),
                                       args.data(), args.size(), timeout_ms, &f));
        return Future(f);
    }
    /// Cancels the calls running on `pids` (their handlers see Call::cancelled()).
    void interrupt(const std::vector<std::int32_t> &pids) { check(cluster_interrupt(ctx_, pids.data(), pids.size())); }
    void interrupt(std::int32_t pid) { interrupt(std::vector<std::int32_t>{pid}); }

    /// Typed one round trip: sends the bytes of `value`, returns the reply as
    /// an R. Both must be trivially copyable; the reply size is checked at
    /// run time (Error with CLUSTER_ERR_PROTOCOL and the callee's id).
    template <class R, class A> R remotecall_fetch_as(std::int32_t pid, const std::string &name, const A &value) {
        static_assert(std::is_trivially_copyable_v<A>, "remotecall_fetch_as: the argument must be trivially copyable");
        static_assert(std::is_trivially_copyable_v<R>, "remotecall_fetch_as: the result must be trivially copyable");
        Future f = remotecall(pid, name, Bytes::of(value));
        return f.fetch_as<R>();
    }
    template <class R> R remotecall_fetch_as(std::int32_t pid, const std::string &name) {
        static_assert(std::is_trivially_copyable_v<R>, "remotecall_fetch_as: the result must be trivially copyable");
        Future f = remotecall(pid, name);
        return f.fetch_as<R>();
    }

    // -- channels --
    /// A new RemoteChannel kept by process `pid` (0: this one) with room for
    /// `capacity` elements (CLUSTER_CHANNEL_UNBOUNDED: no limit; 0:
    /// unbuffered). Returns at once, without a round trip.
    Channel channel(std::int32_t pid = 0, std::size_t capacity = CLUSTER_CHANNEL_DEFAULT_CAPACITY) {
        cluster_channel *ch = nullptr;
        check(cluster_channel_new(ctx_, pid, capacity, &ch));
        return Channel(ch);
    }
    /// Turns a reference from Channel::export_ref (made by any process)
    /// into a channel of this process.
    Channel import_channel(const cluster_channel_ref &r) {
        cluster_channel *ch = nullptr;
        check(cluster_channel_import(ctx_, &r, &ch));
        return Channel(ch);
    }
    /// How many channels this process keeps (0 once no reference is left).
    std::size_t channel_count() const {
        std::size_t n = 0;
        check(cluster_channel_count(ctx_, &n));
        return n;
    }

    /// Turns a reference from Future::export_ref (possibly made by another
    /// process) into a future of this process.
    Future import_future(const cluster_future_ref &r) {
        cluster_future *f = nullptr;
        check(cluster_future_import(ctx_, &r, &f));
        return Future(f);
    }

    // -- host-driven dispatch (Config::dispatch(CLUSTER_DISPATCH_HOST)) --
    /// An fd that becomes readable when poll() has work. Owned by the cluster.
    int event_fd() const {
        int fd = -1;
        check(cluster_event_fd(ctx_, &fd));
        return fd;
    }
    /// Raw notify hook, called from a library thread: it must only signal.
    void set_notify(cluster_notify_fn fn, void *user_data) { check(cluster_set_notify(ctx_, fn, user_data)); }
    /// As set_notify, with a callable (which must only signal the host).
    void on_notify(std::function<void()> fn) {
        if (!fn) {
            check(cluster_set_notify(ctx_, nullptr, nullptr));
            return;
        }
        auto box = keep(std::make_shared<detail::NotifyBox>(detail::NotifyBox{state_.get(), std::move(fn)}));
        check(cluster_set_notify(ctx_, &detail::notify_trampoline, box));
    }
    /// Runs pending handlers and callbacks on this thread; returns up to
    /// `max_events` events (more stay queued, the fd stays readable).
    std::vector<cluster_event> poll(std::size_t max_events = 64) {
        std::vector<cluster_event> ev(max_events);
        std::size_t n = 0;
        check(cluster_poll(ctx_, ev.data(), ev.size(), &n));
        ev.resize(n);
        return ev;
    }
    std::size_t poll(cluster_event *events, std::size_t cap) {
        std::size_t n = 0;
        check(cluster_poll(ctx_, events, cap, &n));
        return n;
    }
    /// Host mode: reads the connection to `pid` on this thread for up to
    /// `spin_us`, until poll() has work; never parks. Whether work is pending.
    bool drive(std::int32_t pid, std::uint32_t spin_us) {
        bool pending = false;
        check(cluster_drive(ctx_, pid, spin_us, &pending));
        return pending;
    }
    /// drive(), also saying whether it served traffic (requests the library
    /// answered on this thread): keep reading then, as after a call.
    struct Driven {
        bool pending;
        bool served;
    };
    Driven drive_ex(std::int32_t pid, std::uint32_t spin_us) {
        Driven d{false, false};
        check(cluster_drive_ex(ctx_, pid, spin_us, &d.pending, &d.served));
        return d;
    }
    /// Host mode: hold the replies this thread sends to `pid` and write them
    /// together when corking ends (`on` false).
    void cork(std::int32_t pid, bool on) { check(cluster_cork(ctx_, pid, on)); }

private:
    template <class Box> Box *keep(std::shared_ptr<Box> box) {
        if (!state_) throw Error(CLUSTER_ERR_BAD_HANDLE, "the cluster was closed or moved from");
        std::lock_guard<std::mutex> g(state_->mu);
        state_->keep.push_back(box);
        return box.get();
    }

    cluster_ctx *ctx_ = nullptr;
    std::unique_ptr<detail::State> state_;
};

// ==== cluster_pool: Pool ====================================================

/// Owns a cluster_pool: Distributed's WorkerPool. Calls on a pool run on a
/// free worker and give it back when they complete.
class Pool {
public:
    Pool() noexcept = default;
    /// Adopts `p`; it is released by this object.
    explicit Pool(cluster_pool *p) noexcept : p_(p) {}
    Pool(Pool &&o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    Pool &operator=(Pool &&o) noexcept {
        if (this != &o) {
            reset();
            p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }
    Pool(const Pool &) = delete;
    Pool &operator=(const Pool &) = delete;
    ~Pool() { reset(); }

    /// WorkerPool(pids).
    static Pool of(Cluster &c, const std::vector<std::int32_t> &pids) {
        cluster_pool *p = nullptr;
        check(cluster_pool_new(c.get(), pids.data(), pids.size(), &p));
        return Pool(p);
    }
    /// default_worker_pool(): every worker (the head while it has none).
    static Pool default_pool(Cluster &c) {
        cluster_pool *p = nullptr;
        check(cluster_pool_default(c.get(), &p));
        return Pool(p);
    }

    bool valid() const noexcept { return p_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    cluster_pool *get() const noexcept { return p_; }
    void reset() noexcept {
        if (p_) cluster_pool_free(p_);
        p_ = nullptr;
    }

    /// push!(pool, pid).
    void push(std::int32_t pid) { check(cluster_pool_push(p_, pid)); }
    /// put!(pool, pid).
    void put(std::int32_t pid) { check(cluster_pool_put(p_, pid)); }
    /// take!(pool): waits for a free worker; throws CLUSTER_ERR_TIMEOUT
    /// after `timeout_ms`, CLUSTER_ERR_NO_SUCH_PROCESS when none is left.
    std::int32_t take(std::int64_t timeout_ms = CLUSTER_FOREVER) {
        std::int32_t pid = 0;
        check(cluster_pool_take(p_, timeout_ms, &pid));
        return pid;
    }
    /// take! as a future; see taken().
    Future take_async() {
        cluster_future *f = nullptr;
        check(cluster_pool_take_async(p_, &f));
        return Future(f);
    }
    /// The worker a take_async future holds.
    static std::int32_t taken(const Future &f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        return f.fetch_as<std::int32_t>(timeout_ms);
    }
    /// length(pool): the live members, free or busy.
    std::size_t length() const {
        std::size_t n = 0;
        check(cluster_pool_length(p_, &n));
        return n;
    }
    /// isready(pool): whether a take would not wait.
    bool ready() const {
        bool r = false;
        check(cluster_pool_isready(p_, &r));
        return r;
    }
    std::vector<std::int32_t> workers() const {
        return detail::ids(
            [&](std::int32_t *o, std::size_t c, std::size_t *n) { return cluster_pool_workers(p_, o, c, n); });
    }

    Future remotecall(const std::string &name, Bytes args = {}) {
        cluster_future *f = nullptr;
        check(cluster_pool_remotecall(p_, name.c_str(), args.data(), args.size(), &f));
        return Future(f);
    }
    Buffer remotecall_fetch(const std::string &name, Bytes args = {}) {
        Buffer b;
        check(cluster_pool_remotecall_fetch(p_, name.c_str(), args.data(), args.size(), b.out()));
        return b;
    }
    Future remotecall_wait(const std::string &name, Bytes args = {}) {
        cluster_future *f = nullptr;
        check(cluster_pool_remotecall_wait(p_, name.c_str(), args.data(), args.size(), &f));
        return Future(f);
    }
    void remote_do(const std::string &name, Bytes args = {}) {
        check(cluster_pool_remote_do(p_, name.c_str(), args.data(), args.size()));
    }
    template <class R, class A> R remotecall_fetch_as(const std::string &name, const A &value) {
        static_assert(std::is_trivially_copyable_v<A>, "remotecall_fetch_as: the argument must be trivially copyable");
        return remotecall(name, Bytes::of(value)).template fetch_as<R>();
    }

private:
    cluster_pool *p_ = nullptr;
};

// ==== cluster_pmap: Pmap, PmapOptions, pmap<R>(), splitrange() ===============

/// An element about to be retried, as a retry check sees it.
struct PmapRetry {
    std::size_t index;
    std::uint32_t attempt;
    cluster_status status;
    std::int32_t pid;
    std::string_view message;
};

/// pmap's keyword arguments.
struct PmapOptions {
    /// Elements per call; auto_batch (0) is Distributed's `:auto`.
    std::size_t batch_size = 1;
    static constexpr std::size_t auto_batch = CLUSTER_BATCH_AUTO;
    /// on_error: failed elements keep their error and the map goes on.
    bool on_error = false;
    /// retry_delays, in milliseconds.
    std::vector<std::uint32_t> retry_delays_ms;
    /// retry_check (empty: retry every failure). Runs on a library thread
    /// (inside poll() in host mode); must not wait for the map.
    std::function<bool(const PmapRetry &)> retry_check;
    /// Progress reports (done, failed, total), at most every
    /// progress_interval_ms and once at the end; same threads as retry_check.
    std::function<void(std::size_t, std::size_t, std::size_t)> progress;
    std::uint32_t progress_interval_ms = 100;
    /// The most calls in flight per worker (1: Distributed's); see
    /// cluster_pmap_options.max_in_flight.
    std::uint32_t max_in_flight = 16;
};

namespace detail {

struct PmapBox {
    std::function<bool(const PmapRetry &)> retry_check;
    std::function<void(std::size_t, std::size_t, std::size_t)> progress;
};

inline bool pmap_retry_trampoline(void *ud, std::size_t index, std::uint32_t attempt, std::int32_t status,
                                  std::int32_t pid, const char *message) noexcept {
    auto *box = static_cast<PmapBox *>(ud);
    try {
        return box->retry_check(PmapRetry{index, attempt, static_cast<cluster_status>(status), pid,
                                          message ? std::string_view(message) : std::string_view()});
    } catch (...) {
        return false;
    }
}

inline void pmap_progress_trampoline(void *ud, std::size_t done, std::size_t failed, std::size_t total) noexcept {
    auto *box = static_cast<PmapBox *>(ud);
    try {
        box->progress(done, failed, total);
    } catch (...) {
    }
}

/// The C options for `o`, pointing into `box` and `o`.
inline cluster_pmap_options pmap_options(const PmapOptions &o, PmapBox *box) {
    cluster_pmap_options c{};
    check(cluster_pmap_options_init(&c));
    c.batch_size = o.batch_size;
    c.on_error = o.on_error;
    c.retry_delays_ms = o.retry_delays_ms.empty() ? nullptr : o.retry_delays_ms.data();
    c.retries = o.retry_delays_ms.size();
    if (o.retry_check) {
        c.retry_check = &pmap_retry_trampoline;
        c.retry_user_data = box;
    }
    if (o.progress) {
        c.progress = &pmap_progress_trampoline;
        c.progress_user_data = box;
    }
    c.progress_interval_ms = o.progress_interval_ms;
    c.max_in_flight = o.max_in_flight;
    return c;
}

/// An element as bytes: a trivially copyable value or a string.
template <class T> Bytes element_bytes(const T &v) {
    if constexpr (std::is_convertible_v<const T &, std::string_view>) {
        return Bytes(std::string_view(v));
    } else {
        static_assert(std::is_trivially_copyable_v<T>, "pmap elements are trivially copyable or strings");
        return Bytes::of(v);
    }
}

/// A result from bytes: std::string, or a trivially copyable value (size checked).
template <class R> R element_value(Bytes b, std::int32_t pid = 0) {
    if constexpr (std::is_same_v<R, std::string>) {
        return b.str();
    } else if constexpr (std::is_same_v<R, std::vector<std::uint8_t>>) {
        return b.vec();
    } else {
        static_assert(std::is_trivially_copyable_v<R>, "pmap results are trivially copyable, std::string or bytes");
        return b.as<R>(pid);
    }
}

} // namespace detail

/// Owns a cluster_pmap: a map under way or done, with its callbacks.
/// Destroying a map that still runs cancels it and waits for its end (so
/// no callback outlives it).
class Pmap {
public:
    Pmap() noexcept = default;
    Pmap(Pmap &&o) noexcept : m_(std::exchange(o.m_, nullptr)), box_(std::move(o.box_)) {}
    Pmap &operator=(Pmap &&o) noexcept {
        if (this != &o) {
            reset();
            m_ = std::exchange(o.m_, nullptr);
            box_ = std::move(o.box_);
        }
        return *this;
    }
    Pmap(const Pmap &) = delete;
    Pmap &operator=(const Pmap &) = delete;
    ~Pmap() { reset(); }

    /// Starts pmap of `name` over `items` on `pool` (null: the default pool).
    static Pmap start(Cluster &c, const std::string &name, const std::vector<Bytes> &items, const PmapOptions &o = {},
                      const Pool *pool = nullptr) {
        Pmap m;
        m.box_ = std::make_unique<detail::PmapBox>(detail::PmapBox{o.retry_check, o.progress});
        cluster_pmap_options co = detail::pmap_options(o, m.box_.get());
        std::vector<cluster_bytes> v(items.size());
        for (std::size_t i = 0; i < items.size(); i++) v[i] = cluster_bytes{items[i].data(), items[i].size()};
        check(cluster_pmap_async(c.get(), pool ? pool->get() : nullptr, name.c_str(), v.data(), v.size(), &co, &m.m_));
        return m;
    }
    /// Runs pmap to its end (at most `timeout_ms`); throws the error that
    /// ended it (the results of the elements done stay readable through a
    /// map started with start()).
    static Pmap run(Cluster &c, const std::string &name, const std::vector<Bytes> &items, const PmapOptions &o = {},
                    const Pool *pool = nullptr, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        Pmap m;
        m.box_ = std::make_unique<detail::PmapBox>(detail::PmapBox{o.retry_check, o.progress});
        cluster_pmap_options co = detail::pmap_options(o, m.box_.get());
        std::vector<cluster_bytes> v(items.size());
        for (std::size_t i = 0; i < items.size(); i++) v[i] = cluster_bytes{items[i].data(), items[i].size()};
        check(cluster_pmap_run(c.get(), pool ? pool->get() : nullptr, name.c_str(), v.data(), v.size(), &co, timeout_ms,
                               &m.m_));
        return m;
    }
    /// Starts @distributed over first..=last: `name` gets each chunk's bounds
    /// (two int64_t) then `args`; chunk 0: splitrange over the workers.
    static Pmap distributed(Cluster &c, const std::string &name, std::int64_t first, std::int64_t last,
                            std::size_t chunk = 0, Bytes args = {}, const PmapOptions &o = {},
                            const Pool *pool = nullptr) {
        Pmap m;
        m.box_ = std::make_unique<detail::PmapBox>(detail::PmapBox{o.retry_check, o.progress});
        cluster_pmap_options co = detail::pmap_options(o, m.box_.get());
        check(cluster_distributed_async(c.get(), pool ? pool->get() : nullptr, name.c_str(), cluster_range{first, last},
                                        chunk, args.data(), args.size(), &co, &m.m_));
        return m;
    }

    bool valid() const noexcept { return m_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    cluster_pmap *get() const noexcept { return m_; }
    /// Releases the map; one still running is cancelled and waited for.
    void reset() noexcept {
        if (!m_) return;
        if (box_ && cluster_pmap_wait(m_, 0) == CLUSTER_ERR_TIMEOUT) {
            cluster_pmap_cancel(m_);
            cluster_pmap_wait(m_, CLUSTER_FOREVER);
        }
        cluster_pmap_free(m_);
        m_ = nullptr;
        box_.reset();
    }

    /// Waits for the end; throws the error that ended the map.
    void wait() const { check(cluster_pmap_wait(m_, CLUSTER_FOREVER)); }
    /// false on timeout.
    bool wait_for(std::int64_t timeout_ms) const {
        cluster_status st = cluster_pmap_wait(m_, timeout_ms);
        if (st == CLUSTER_ERR_TIMEOUT) return false;
        check(st);
        return true;
    }
    /// A future of the map's end.
    Future future() const {
        cluster_future *f = nullptr;
        check(cluster_pmap_future(m_, &f));
        return Future(f);
    }
    void cancel() { check(cluster_pmap_cancel(m_)); }

    std::size_t size() const {
        std::size_t n = 0;
        check(cluster_pmap_length(m_, &n));
        return n;
    }
    std::size_t batch_size() const {
        std::size_t n = 0;
        check(cluster_pmap_batch_size(m_, &n));
        return n;
    }
    /// Element `i`'s value (throws its error, or CLUSTER_ERR_NOT_READY).
    /// The bytes belong to the map.
    Bytes value(std::size_t i) const {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        check(cluster_pmap_result(m_, i, &d, &n));
        return Bytes(d, n);
    }
    template <class R> R value_as(std::size_t i) const {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        check(cluster_pmap_result(m_, i, &d, &n));
        return detail::element_value<R>(Bytes(d, n));
    }
    /// nullopt if element `i` succeeded, its failure otherwise.
    std::optional<FutureError> error(std::size_t i) const {
        std::int32_t pid = 0;
        const char *msg = nullptr;
        check(cluster_pmap_error(m_, i, &pid, &msg));
        if (pid == 0 && (msg == nullptr || msg[0] == '\0')) return std::nullopt;
        return FutureError{pid, msg ? msg : ""};
    }
    /// Elements done, and of them failed.
    std::pair<std::size_t, std::size_t> progress() const {
        std::size_t done = 0, failed = 0;
        check(cluster_pmap_progress(m_, &done, &failed));
        return {done, failed};
    }

private:
    cluster_pmap *m_ = nullptr;
    std::unique_ptr<detail::PmapBox> box_;
};

/// One element's outcome, for pmap_results().
template <class R> struct PmapResult {
    std::optional<R> value;
    std::optional<FutureError> error;
    bool ok() const noexcept { return value.has_value(); }
};

/// Typed pmap: `name` over trivially copyable or string elements, results
/// of type R (trivially copyable, std::string or std::vector<uint8_t>) in
/// input order; throws the first failure (after retries).
template <class R, class T>
std::vector<R> pmap(Cluster &c, const std::string &name, const std::vector<T> &xs, PmapOptions o = {},
                    const Pool *pool = nullptr) {
    std::vector<Bytes> items;
    items.reserve(xs.size());
    for (const auto &x : xs) items.push_back(detail::element_bytes(x));
    o.on_error = false;
    Pmap m = Pmap::run(c, name, items, o, pool);
    std::vector<R> out;
    out.reserve(xs.size());
    for (std::size_t i = 0; i < xs.size(); i++) out.push_back(m.value_as<R>(i));
    return out;
}

/// Typed pmap with on_error: every element's value or error, in input order.
template <class R, class T>
std::vector<PmapResult<R>> pmap_results(Cluster &c, const std::string &name, const std::vector<T> &xs, PmapOptions o = {},
                                        const Pool *pool = nullptr) {
    std::vector<Bytes> items;
    items.reserve(xs.size());
    for (const auto &x : xs) items.push_back(detail::element_bytes(x));
    o.on_error = true;
    Pmap m = Pmap::start(c, name, items, o, pool);
    m.wait();
    std::vector<PmapResult<R>> out(xs.size());
    for (std::size_t i = 0; i < xs.size(); i++) {
        if (auto e = m.error(i))
            out[i].error = std::move(e);
        else
            out[i].value = m.value_as<R>(i);
    }
    return out;
}

/// @distributed (reducer) for i in first:last: partial results (of type R)
/// per chunk on the workers, combined here with `op` from `init`.
template <class R, class Op>
R distributed_reduce(Cluster &c, const std::string &name, std::int64_t first, std::int64_t last, Op op, R init,
                     std::size_t chunk = 0, Bytes args = {}, const Pool *pool = nullptr) {
    Pmap m = Pmap::distributed(c, name, first, last, chunk, args, PmapOptions{}, pool);
    m.wait();
    R acc = std::move(init);
    for (std::size_t i = 0; i < m.size(); i++) acc = op(std::move(acc), m.value_as<R>(i));
    return acc;
}

/// Distributed's splitrange(first, last, np).
inline std::vector<cluster_range> splitrange(std::int64_t first, std::int64_t last, std::size_t np) {
    std::vector<cluster_range> v(np > 0 ? np : 1);
    std::size_t n = 0;
    check(cluster_splitrange(cluster_range{first, last}, np, v.data(), v.size(), &n));
    v.resize(n);
    return v;
}

// ==== cluster_workerset: WorkerSet ==========================================

/// Owns a cluster_workerset: PTools' WorkerSet (WS_MODE_RR / WS_MODE_FF).
class WorkerSet {
public:
    WorkerSet() noexcept = default;
    explicit WorkerSet(cluster_workerset *w) noexcept : w_(w) {}
    WorkerSet(WorkerSet &&o) noexcept : w_(std::exchange(o.w_, nullptr)) {}
    WorkerSet &operator=(WorkerSet &&o) noexcept {
        if (this != &o) {
            reset();
            w_ = std::exchange(o.w_, nullptr);
        }
        return *this;
    }
    WorkerSet(const WorkerSet &) = delete;
    WorkerSet &operator=(const WorkerSet &) = delete;
    ~WorkerSet() { reset(); }

    static WorkerSet of(Cluster &c, const std::vector<std::int32_t> &pids, cluster_ws_mode mode = CLUSTER_WS_MODE_RR) {
        cluster_workerset *w = nullptr;
        check(cluster_workerset_new(c.get(), pids.data(), pids.size(), static_cast<std::int32_t>(mode), &w));
        return WorkerSet(w);
    }
    cluster_workerset *get() const noexcept { return w_; }
    void reset() noexcept {
        if (w_) cluster_workerset_free(w_);
        w_ = nullptr;
    }

    Future remotecall(const std::string &name, Bytes args = {}) {
        cluster_future *f = nullptr;
        check(cluster_workerset_remotecall(w_, name.c_str(), args.data(), args.size(), &f));
        return Future(f);
    }
    Buffer remotecall_fetch(const std::string &name, Bytes args = {}) {
        Buffer b;
        check(cluster_workerset_remotecall_fetch(w_, name.c_str(), args.data(), args.size(), b.out()));
        return b;
    }
    Future remotecall_wait(const std::string &name, Bytes args = {}) {
        cluster_future *f = nullptr;
        check(cluster_workerset_remotecall_wait(w_, name.c_str(), args.data(), args.size(), &f));
        return Future(f);
    }
    template <class R> R remotecall_fetch_as(const std::string &name, Bytes args = {}) {
        return remotecall(name, args).template fetch_as<R>();
    }

private:
    cluster_workerset *w_ = nullptr;
};

// ==== cluster_taskqueue: TaskQueue, Task ====================================

/// PTools' QueuedWorkerTask(task, method, callback, target).
struct Task {
    std::string name;                     ///< the registered function (remote_method)
    std::vector<std::uint8_t> args;       ///< its argument (the WorkerTask)
    cluster_task_target target = CLUSTER_TARGET_ANY;
    std::vector<std::int32_t> pids;       ///< for CLUSTER_TARGET_PIDS
    std::vector<std::string> hosts;       ///< for CLUSTER_TARGET_HOSTS
    double priority = std::numeric_limits<double>::infinity(); ///< lower runs first
    /// Called once per run: (task id, worker, status, value or error message).
    std::function<void(std::uint64_t, std::int32_t, cluster_status, Bytes)> callback;

    Task() = default;
    Task(std::string n, Bytes a, cluster_task_target t = CLUSTER_TARGET_ANY) : name(std::move(n)), args(a.vec()), target(t) {}
    static Task on(std::string n, Bytes a, std::vector<std::int32_t> pids) {
        Task t(std::move(n), a, CLUSTER_TARGET_PIDS);
        t.pids = std::move(pids);
        return t;
    }
    static Task on_hosts(std::string n, Bytes a, std::vector<std::string> hosts) {
        Task t(std::move(n), a, CLUSTER_TARGET_HOSTS);
        t.hosts = std::move(hosts);
        return t;
    }
};

/// A queued task: its id, and a future of its result.
struct QueuedTask {
    std::uint64_t id = 0;
    Future future;
};

namespace detail {
struct TaskBox {
    std::function<void(std::uint64_t, std::int32_t, cluster_status, Bytes)> fn;
};
inline void task_trampoline(void *ud, std::uint64_t task, std::int32_t pid, std::int32_t status, const std::uint8_t *data,
                            std::size_t len) noexcept {
    auto *box = static_cast<TaskBox *>(ud);
    try {
        box->fn(task, pid, static_cast<cluster_status>(status), Bytes(data, len));
    } catch (...) {
    }
}
template <class F> double priority_trampoline(void *ud, const cluster_task_info *info) noexcept {
    try {
        return (*static_cast<F *>(ud))(*info);
    } catch (...) {
        return info->priority;
    }
}
template <class F> bool filter_trampoline(void *ud, const cluster_task_info *info) noexcept {
    try {
        return (*static_cast<F *>(ud))(*info);
    } catch (...) {
        return true;
    }
}
} // namespace detail

/// Owns a cluster_taskqueue: PTools' queued tasks. Destroying it drops the
/// tasks still queued (their futures fail) and their callbacks.
class TaskQueue {
public:
    TaskQueue() = default;
    explicit TaskQueue(Cluster &c) { check(cluster_taskqueue_new(c.get(), &q_)); }
    TaskQueue(TaskQueue &&o) noexcept : q_(std::exchange(o.q_, nullptr)), boxes_(std::move(o.boxes_)) {}
    TaskQueue &operator=(TaskQueue &&o) noexcept {
        if (this != &o) {
            reset();
            q_ = std::exchange(o.q_, nullptr);
            boxes_ = std::move(o.boxes_);
        }
        return *this;
    }
    TaskQueue(const TaskQueue &) = delete;
    TaskQueue &operator=(const TaskQueue &) = delete;
    ~TaskQueue() { reset(); }

    cluster_taskqueue *get() const noexcept { return q_; }
    /// Frees the queue (no callback runs afterwards), then its callbacks.
    void reset() noexcept {
        if (q_) cluster_taskqueue_free(q_);
        q_ = nullptr;
        std::lock_guard<std::mutex> g(mu_);
        boxes_.clear();
    }

    /// prep_remotes(force).
    void prep_remotes(bool force = false, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        check(cluster_taskqueue_prep_remotes(q_, force, timeout_ms));
    }
    Future prep_remotes_async(bool force = false) {
        cluster_future *f = nullptr;
        check(cluster_taskqueue_prep_remotes_async(q_, force, &f));
        return Future(f);
    }
    /// num_remotes().
    std::size_t num_remotes() const {
        std::size_t n = 0;
        check(cluster_taskqueue_num_remotes(q_, &n));
        return n;
    }
    /// queue_worker_task(t).
    QueuedTask queue(const Task &t) {
        std::vector<const char *> hosts;
        cluster_task_spec s = spec(t, hosts);
        QueuedTask q;
        cluster_future *f = nullptr;
        check(cluster_taskqueue_queue(q_, &s, &q.id, &f));
        q.future = Future(f);
        return q;
    }
    /// execute_worker_task(t): queue and wait for the value; throws the
    /// task's failure (CLUSTER_ERR_TIMEOUT after `timeout_ms`).
    Buffer execute(const Task &t, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        std::vector<const char *> hosts;
        cluster_task_spec s = spec(t, hosts);
        Buffer b;
        check(cluster_taskqueue_execute(q_, &s, timeout_ms, b.out()));
        return b;
    }
    /// dequeue_worker_task(t): whether it was still queued.
    bool dequeue(std::uint64_t id) {
        bool r = false;
        check(cluster_taskqueue_dequeue(q_, id, &r));
        return r;
    }
    /// dequeue_worker_task(filter_fn): dequeues those `keep` rejects.
    template <class F> std::size_t dequeue_if(F keep) {
        std::size_t n = 0;
        check(cluster_taskqueue_dequeue_if(q_, &detail::filter_trampoline<F>, &keep, &n));
        return n;
    }
    void set_priority(std::uint64_t id, double priority) { check(cluster_taskqueue_set_priority(q_, id, priority)); }
    /// set_priorities(calc_prio): calc(const cluster_task_info&) -> double.
    template <class F> void set_priorities(F calc) {
        check(cluster_taskqueue_set_priorities(q_, &detail::priority_trampoline<F>, &calc));
    }
    /// (queued, running).
    std::pair<std::size_t, std::size_t> length() const {
        std::size_t a = 0, b = 0;
        check(cluster_taskqueue_length(q_, &a, &b));
        return {a, b};
    }

private:
    /// The C spec of `t` (pointing into `t` and `hosts`), its callback kept.
    cluster_task_spec spec(const Task &t, std::vector<const char *> &hosts) {
        for (const auto &h : t.hosts) hosts.push_back(h.c_str());
        cluster_task_spec s{};
        check(cluster_task_spec_init(&s));
        s.name = t.name.c_str();
        s.args = t.args.data();
        s.len = t.args.size();
        s.target = static_cast<std::int32_t>(t.target);
        s.pids = t.pids.data();
        s.npids = t.pids.size();
        s.hosts = hosts.data();
        s.nhosts = hosts.size();
        s.priority = t.priority;
        if (t.callback) {
            auto box = std::make_unique<detail::TaskBox>(detail::TaskBox{t.callback});
            s.callback = &detail::task_trampoline;
            s.user_data = box.get();
            std::lock_guard<std::mutex> g(mu_);
            boxes_.push_back(std::move(box));
        }
        return s;
    }
    cluster_taskqueue *q_ = nullptr;
    std::mutex mu_;
    std::vector<std::unique_ptr<detail::TaskBox>> boxes_;
};

// ==== cluster_dict, cluster_dict_spec, cluster_dict_entries: Dict, DictSpec, DictEntries ====

/// What a dict is created with (cluster_dict_spec, with owned strings):
///
///     auto d = cluster::Dict::create(c, cluster::DictSpec::global().name("g").all());
///
/// The defaults (DictSpec()): a distributed dict over the workers, a
/// generated name, replication 2 when it has at least 2 members.
class DictSpec {
public:
    DictSpec() { check(cluster_dict_spec_init(&s_)); }
    static DictSpec global() { return DictSpec().kind(CLUSTER_DICT_GLOBAL); }
    static DictSpec distributed() { return DictSpec().kind(CLUSTER_DICT_DISTRIBUTED); }

    DictSpec &kind(cluster_dict_kind k) { return s_.kind = static_cast<std::int32_t>(k), *this; }
    /// Unique in the cluster; empty: the head makes one up.
    DictSpec &name(std::string n) { return name_ = std::move(n), *this; }
    /// Every process, the head included.
    DictSpec &all() { return s_.members = CLUSTER_MEMBERS_ALL, *this; }
    /// Every worker (the head alone when there are none): the default.
    DictSpec &workers() { return s_.members = CLUSTER_MEMBERS_WORKERS, *this; }
    DictSpec &pids(std::vector<std::int32_t> ids) {
        pids_ = std::move(ids);
        return s_.members = CLUSTER_MEMBERS_PIDS, *this;
    }
    /// Copies of each key of a distributed dict (0: the default).
    DictSpec &replication(std::uint32_t r) { return s_.replication = r, *this; }
    /// Opaque bytes that are part of the specification (e.g. key and value types).
    DictSpec &type_tag(Bytes tag) { return tag_ = tag.vec(), *this; }

    /// The C struct, pointing into this object.
    const cluster_dict_spec *get() const noexcept {
        s_.name = name_.empty() ? nullptr : name_.c_str();
        s_.pids = pids_.empty() ? nullptr : pids_.data();
        s_.npids = s_.members == CLUSTER_MEMBERS_PIDS ? pids_.size() : 0;
        s_.type_tag = tag_.empty() ? nullptr : tag_.data();
        s_.type_tag_len = tag_.size();
        return &s_;
    }
    /// Direct access to the plain fields (kind, members, replication).
    cluster_dict_spec &raw() noexcept { return s_; }

private:
    mutable cluster_dict_spec s_{};
    std::string name_;
    std::vector<std::int32_t> pids_;
    std::vector<std::uint8_t> tag_;
};

namespace detail {

/// A dict key or value as bytes: std::string, std::string_view, const
/// char *, std::vector<uint8_t>, Bytes, or a trivially copyable value's
/// object representation.
template <class T> Bytes dict_bytes(const T &v) {
    if constexpr (std::is_same_v<T, Buffer>) {
        return v.bytes();
    } else if constexpr (std::is_convertible_v<const T &, Bytes>) {
        return Bytes(v);
    } else {
        static_assert(std::is_trivially_copyable_v<T>,
                      "dict keys and values are bytes (std::string, std::vector<uint8_t>, Bytes) or trivially copyable");
        return Bytes::of(v);
    }
}

} // namespace detail

/// Owns a cluster_dict_entries: a listing of keys, values or pairs (a
/// listing of keys has empty values, one of values empty keys). The bytes
/// belong to the listing.
class DictEntries {
public:
    DictEntries() noexcept = default;
    explicit DictEntries(cluster_dict_entries *e) noexcept : e_(e) {}
    DictEntries(DictEntries &&o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
    DictEntries &operator=(DictEntries &&o) noexcept {
        if (this != &o) {
            reset();
            e_ = std::exchange(o.e_, nullptr);
        }
        return *this;
    }
    DictEntries(const DictEntries &) = delete;
    DictEntries &operator=(const DictEntries &) = delete;
    ~DictEntries() { reset(); }

    /// The listing a Dict::list_async future holds, made with `what`.
    static DictEntries of(const Future &f, cluster_dict_listing what, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        return decode(f.fetch(timeout_ms), what);
    }
    /// A listing from a list_async future's value.
    static DictEntries decode(Bytes data, cluster_dict_listing what) {
        cluster_dict_entries *e = nullptr;
        check(cluster_dict_entries_decode(data.data(), data.size(), static_cast<std::int32_t>(what), &e));
        return DictEntries(e);
    }

    cluster_dict_entries *get() const noexcept { return e_; }
    void reset() noexcept {
        if (e_) cluster_dict_entries_free(e_);
        e_ = nullptr;
    }
    std::size_t size() const {
        std::size_t n = 0;
        check(cluster_dict_entries_count(e_, &n));
        return n;
    }
    bool empty() const { return size() == 0; }
    /// Entry i's key and value (CLUSTER_ERR_INVALID_ARGUMENT past the end).
    std::pair<Bytes, Bytes> at(std::size_t i) const {
        const std::uint8_t *k = nullptr, *v = nullptr;
        std::size_t kl = 0, vl = 0;
        check(cluster_dict_entries_get(e_, i, &k, &kl, &v, &vl));
        return {Bytes(k, kl), Bytes(v, vl)};
    }
    Bytes key(std::size_t i) const { return at(i).first; }
    Bytes value(std::size_t i) const { return at(i).second; }
    /// Every key, value or pair as K / V (std::string, std::vector<uint8_t>
    /// or trivially copyable, size checked).
    template <class K = std::string> std::vector<K> keys() const {
        std::vector<K> out;
        for (std::size_t i = 0, n = size(); i < n; i++) out.push_back(detail::element_value<K>(key(i)));
        return out;
    }
    template <class V = std::string> std::vector<V> values() const {
        std::vector<V> out;
        for (std::size_t i = 0, n = size(); i < n; i++) out.push_back(detail::element_value<V>(value(i)));
        return out;
    }
    template <class K = std::string, class V = std::string> std::vector<std::pair<K, V>> items() const {
        std::vector<std::pair<K, V>> out;
        for (std::size_t i = 0, n = size(); i < n; i++) {
            auto [k, v] = at(i);
            out.emplace_back(detail::element_value<K>(k), detail::element_value<V>(v));
        }
        return out;
    }

private:
    cluster_dict_entries *e_ = nullptr;
};

/// Owns a cluster_dict: one handle to a cluster dictionary (ClusterDicts'
/// GlobalDict or DistributedDict), usable from any process. Destroying it
/// frees the handle only; release() removes the dict from every member.
/// Keys and values are bytes: std::string, std::vector<uint8_t>, Bytes, or
/// any trivially copyable type (its object representation); reads take
/// the type to return (default std::string, sizes checked):
///
///     auto d = cluster::Dict::create(c, cluster::DictSpec::distributed().name("scores"));
///     d.set("alice", 3);
///     int a = d.at<int>("alice");                   // throws CLUSTER_ERR_NOT_FOUND when missing
///     std::optional<int> b = d.get<int>("bob");     // nullopt
///     int n = d.get_or_insert<int>("carol", 0);     // atomic get!
///
/// Every operation that waits has an _async form returning a Future; read
/// its value with value_of<V>() (get, get_or_insert, pop), has_of()
/// (haskey), size_of() (size) or DictEntries::of() (list). Failures throw
/// cluster::Error with the status and the process (e.g. a member that
/// died: CLUSTER_ERR_PROCESS_EXITED naming it).
class Dict {
public:
    Dict() noexcept = default;
    /// Adopts `d`; it is freed by this object.
    explicit Dict(cluster_dict *d) noexcept : d_(d) {}
    Dict(Dict &&o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
    Dict &operator=(Dict &&o) noexcept {
        if (this != &o) {
            reset();
            d_ = std::exchange(o.d_, nullptr);
        }
        return *this;
    }
    Dict(const Dict &) = delete;
    Dict &operator=(const Dict &) = delete;
    ~Dict() { reset(); }

    // -- creating, opening, passing on --
    /// Creates the dict, or opens the one of that name with the same
    /// specification (another one: CLUSTER_ERR_INVALID_ARGUMENT); returns
    /// once every member holds it.
    static Dict create(Cluster &c, const DictSpec &spec = DictSpec()) {
        cluster_dict *d = nullptr;
        check(cluster_dict_create(c.get(), spec.get(), &d));
        return Dict(d);
    }
    /// create as a future; its value is the handle's bytes: open(c, f.fetch()).
    static Future create_async(Cluster &c, const DictSpec &spec = DictSpec()) {
        cluster_future *f = nullptr;
        check(cluster_dict_create_async(c.get(), spec.get(), &f));
        return Future(f);
    }
    /// A handle from to_bytes() (or a create_async value), made in any process.
    static Dict open(Cluster &c, Bytes handle) {
        cluster_dict *d = nullptr;
        check(cluster_dict_open(c.get(), handle.data(), handle.size(), &d));
        return Dict(d);
    }
    /// The handle as bytes, to pass to another process (e.g. in call arguments).
    std::vector<std::uint8_t> to_bytes() const {
        Buffer b;
        check(cluster_dict_to_bytes(d_, b.out()));
        return b.vec();
    }
    /// local_dicts(): the dicts this process holds state for, sorted.
    static std::vector<std::string> local_names(Cluster &c) {
        cluster_dict_entries *e = nullptr;
        check(cluster_dict_local_names(c.get(), &e));
        return DictEntries(e).keys<std::string>();
    }

    bool valid() const noexcept { return d_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    cluster_dict *get() const noexcept { return d_; }
    /// Gives up ownership of the handle; the caller must cluster_dict_free
    /// it. (release() is the dict's delete!.)
    cluster_dict *take() noexcept { return std::exchange(d_, nullptr); }
    /// Frees the handle now (the dict stays); never blocks.
    void reset() noexcept {
        if (d_) cluster_dict_free(d_);
        d_ = nullptr;
    }

    // -- what it is --
    std::string name() const {
        return detail::text([&](char *b, std::size_t c, std::size_t *n) { return cluster_dict_name(d_, b, c, n); });
    }
    cluster_dict_kind kind() const {
        std::int32_t k = 0;
        check(cluster_dict_info(d_, &k, nullptr));
        return static_cast<cluster_dict_kind>(k);
    }
    /// Copies of each key (a global dict: its member count).
    std::uint32_t replication() const {
        std::uint32_t r = 0;
        check(cluster_dict_info(d_, nullptr, &r));
        return r;
    }
    /// The members now (the survivors, once one died), ascending.
    std::vector<std::int32_t> members() const {
        return detail::ids([&](std::int32_t *o, std::size_t c, std::size_t *n) { return cluster_dict_members(d_, o, c, n); });
    }
    /// The process owning `key` now (its partition's primary).
    template <class K> std::int32_t owner(const K &key) const {
        Bytes k = detail::dict_bytes(key);
        std::int32_t pid = 0;
        check(cluster_dict_owner(d_, k.data(), k.size(), &pid));
        return pid;
    }

    // -- keys --
    /// d[k] = v on every replica.
    template <class K, class V> void set(const K &key, const V &value) {
        Bytes k = detail::dict_bytes(key), v = detail::dict_bytes(value);
        check(cluster_dict_set(d_, k.data(), k.size(), v.data(), v.size()));
    }
    template <class K, class V> Future set_async(const K &key, const V &value) {
        Bytes k = detail::dict_bytes(key), v = detail::dict_bytes(value);
        cluster_future *f = nullptr;
        check(cluster_dict_set_async(d_, k.data(), k.size(), v.data(), v.size(), &f));
        return Future(f);
    }
    /// Many pairs at once: one request to each primary concerned (each
    /// pair still a write of its own); returns once all are on every replica.
    template <class K, class V> void set_many(const std::vector<std::pair<K, V>> &pairs) {
        Batch b(pairs);
        check(cluster_dict_set_many(d_, b.keys.data(), b.values.data(), b.keys.size()));
    }
    template <class K, class V> Future set_many_async(const std::vector<std::pair<K, V>> &pairs) {
        Batch b(pairs);
        cluster_future *f = nullptr;
        check(cluster_dict_set_many_async(d_, b.keys.data(), b.values.data(), b.keys.size(), &f));
        return Future(f);
    }
    /// ValueF: sets `key` to what the value function `fn` (registered with
    /// Cluster::register_value_fn, or CLUSTER_DICT_EACH) computes from
    /// `args` where the value is stored.
    template <class K> void set_with(const K &key, const std::string &fn, Bytes args = {}) {
        Bytes k = detail::dict_bytes(key);
        check(cluster_dict_set_with(d_, k.data(), k.size(), fn.c_str(), args.data(), args.size()));
    }
    template <class K> Future set_with_async(const K &key, const std::string &fn, Bytes args = {}) {
        Bytes k = detail::dict_bytes(key);
        cluster_future *f = nullptr;
        check(cluster_dict_set_with_async(d_, k.data(), k.size(), fn.c_str(), args.data(), args.size(), &f));
        return Future(f);
    }
    /// CLUSTER_DICT_EACH's arguments: a value per process, stored by that one.
    static std::vector<std::uint8_t> each(const std::vector<std::pair<std::int32_t, std::vector<std::uint8_t>>> &values) {
        std::vector<std::uint8_t> out;
        for (const auto &[pid, v] : values) {
            for (int i = 0; i < 4; i++) out.push_back(static_cast<std::uint8_t>(static_cast<std::uint32_t>(pid) >> (8 * i)));
            for (int i = 0; i < 8; i++) out.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(v.size()) >> (8 * i)));
            out.insert(out.end(), v.begin(), v.end());
        }
        return out;
    }

    /// The value of `key`, nullopt when it is not there.
    template <class V = std::string, class K> std::optional<V> get(const K &key) const {
        Bytes k = detail::dict_bytes(key);
        Buffer b;
        cluster_status st = cluster_dict_get(d_, k.data(), k.size(), b.out());
        if (st == CLUSTER_ERR_NOT_FOUND) return std::nullopt;
        check(st);
        return detail::element_value<V>(b.bytes());
    }
    /// d[k]: the value; throws Error(CLUSTER_ERR_NOT_FOUND) when it is not there.
    template <class V = std::string, class K> V at(const K &key) const {
        Bytes k = detail::dict_bytes(key);
        Buffer b;
        check(cluster_dict_get(d_, k.data(), k.size(), b.out()));
        return detail::element_value<V>(b.bytes());
    }
    /// get(d, k, default): nothing is stored.
    template <class V = std::string, class K> V get_or(const K &key, V dflt) const {
        std::optional<V> v = get<V>(key);
        return v ? std::move(*v) : std::move(dflt);
    }
    /// This process's own copy, never waiting: nullopt unless this process
    /// is a member of a global dict; then the value, or nullopt when missing.
    template <class V = std::string, class K> std::optional<std::optional<V>> get_local(const K &key) const {
        Bytes k = detail::dict_bytes(key);
        Buffer b;
        bool held = false;
        cluster_status st = cluster_dict_get_local(d_, k.data(), k.size(), &held, b.out());
        if (st == CLUSTER_ERR_NOT_FOUND && held) return std::optional<std::optional<V>>(std::in_place); // held, missing
        check(st);
        if (!held) return std::nullopt;
        return std::optional<std::optional<V>>(std::in_place, detail::element_value<V>(b.bytes()));
    }
    /// get as a future (value: the value; a missing key fails it with
    /// CLUSTER_ERR_NOT_FOUND); see value_of().
    template <class K> Future get_async(const K &key) const {
        Bytes k = detail::dict_bytes(key);
        cluster_future *f = nullptr;
        check(cluster_dict_get_async(d_, k.data(), k.size(), &f));
        return Future(f);
    }
    /// The value a get, get_or_insert or pop future holds.
    template <class V = std::string> static V value_of(const Future &f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        return detail::element_value<V>(f.fetch(timeout_ms), f.pid());
    }

    template <class K> bool haskey(const K &key) const {
        Bytes k = detail::dict_bytes(key);
        bool v = false;
        check(cluster_dict_haskey(d_, k.data(), k.size(), &v));
        return v;
    }
    template <class K> bool contains(const K &key) const { return haskey(key); }
    /// haskey as a future; see has_of().
    template <class K> Future haskey_async(const K &key) const {
        Bytes k = detail::dict_bytes(key);
        cluster_future *f = nullptr;
        check(cluster_dict_haskey_async(d_, k.data(), k.size(), &f));
        return Future(f);
    }
    static bool has_of(const Future &f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        return f.fetch_as<std::uint8_t>(timeout_ms) != 0;
    }

    /// get!(d, k, default): the value there, or `dflt` inserted everywhere
    /// (atomic: concurrent callers all get the one value stored).
    template <class V = std::string, class K, class D> V get_or_insert(const K &key, const D &dflt) {
        Bytes k = detail::dict_bytes(key), v = detail::dict_bytes(dflt);
        Buffer b;
        check(cluster_dict_get_or_insert(d_, k.data(), k.size(), v.data(), v.size(), b.out()));
        return detail::element_value<V>(b.bytes());
    }
    template <class K, class D> Future get_or_insert_async(const K &key, const D &dflt) {
        Bytes k = detail::dict_bytes(key), v = detail::dict_bytes(dflt);
        cluster_future *f = nullptr;
        check(cluster_dict_get_or_insert_async(d_, k.data(), k.size(), v.data(), v.size(), &f));
        return Future(f);
    }

    /// pop!(d, k): removes `key` everywhere; the value it had, nullopt when
    /// it was not there.
    template <class V = std::string, class K> std::optional<V> pop(const K &key) {
        Bytes k = detail::dict_bytes(key);
        Buffer b;
        cluster_status st = cluster_dict_pop(d_, k.data(), k.size(), b.out());
        if (st == CLUSTER_ERR_NOT_FOUND) return std::nullopt;
        check(st);
        return detail::element_value<V>(b.bytes());
    }
    /// pop as a future (a missing key fails it with CLUSTER_ERR_NOT_FOUND).
    template <class K> Future pop_async(const K &key) {
        Bytes k = detail::dict_bytes(key);
        cluster_future *f = nullptr;
        check(cluster_dict_pop_async(d_, k.data(), k.size(), &f));
        return Future(f);
    }
    /// delete!(d, k): nothing when it is not there.
    template <class K> void erase(const K &key) {
        Bytes k = detail::dict_bytes(key);
        check(cluster_dict_delete(d_, k.data(), k.size()));
    }
    template <class K> Future erase_async(const K &key) {
        Bytes k = detail::dict_bytes(key);
        cluster_future *f = nullptr;
        check(cluster_dict_delete_async(d_, k.data(), k.size(), &f));
        return Future(f);
    }

    // -- the whole dict --
    /// length(d): the pairs of every member.
    std::size_t size() const {
        std::size_t n = 0;
        check(cluster_dict_length(d_, &n));
        return n;
    }
    bool empty() const { return size() == 0; }
    /// size as a future; see size_of().
    Future size_async() const {
        cluster_future *f = nullptr;
        check(cluster_dict_length_async(d_, &f));
        return Future(f);
    }
    static std::size_t size_of(const Future &f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        return static_cast<std::size_t>(f.fetch_as<std::uint64_t>(timeout_ms));
    }
    /// The keys, values or pairs, in no particular order.
    DictEntries list(cluster_dict_listing what) const {
        cluster_dict_entries *e = nullptr;
        check(cluster_dict_list(d_, static_cast<std::int32_t>(what), &e));
        return DictEntries(e);
    }
    /// list as a future; read it with DictEntries::of(f, what).
    Future list_async(cluster_dict_listing what) const {
        cluster_future *f = nullptr;
        check(cluster_dict_list_async(d_, static_cast<std::int32_t>(what), &f));
        return Future(f);
    }
    template <class K = std::string> std::vector<K> keys() const { return list(CLUSTER_DICT_KEYS).keys<K>(); }
    template <class V = std::string> std::vector<V> values() const { return list(CLUSTER_DICT_VALUES).values<V>(); }
    /// Iteration as pairs.
    template <class K = std::string, class V = std::string> std::vector<std::pair<K, V>> items() const {
        return list(CLUSTER_DICT_PAIRS).items<K, V>();
    }
    /// localpart(d): the pairs this process stores (none on a non-member).
    DictEntries localpart_entries() const {
        cluster_dict_entries *e = nullptr;
        check(cluster_dict_localpart(d_, &e));
        return DictEntries(e);
    }
    template <class K = std::string, class V = std::string> std::vector<std::pair<K, V>> localpart() const {
        return localpart_entries().items<K, V>();
    }

    /// delete!(d): removes the dict from every member; the name is free
    /// and this handle (still to be destroyed) fails from now on.
    void release() { check(cluster_dict_release(d_)); }
    Future release_async() {
        cluster_future *f = nullptr;
        check(cluster_dict_release_async(d_, &f));
        return Future(f);
    }

private:
    /// A batch's keys and values as bytes, with views the C call reads.
    struct Batch {
        std::vector<Bytes> owned;
        std::vector<cluster_bytes> keys, values;
        template <class K, class V> explicit Batch(const std::vector<std::pair<K, V>> &pairs) {
            owned.reserve(pairs.size() * 2);
            for (const auto &p : pairs) {
                owned.push_back(detail::dict_bytes(p.first));
                owned.push_back(detail::dict_bytes(p.second));
            }
            for (std::size_t i = 0; i < owned.size(); i += 2) {
                keys.push_back(cluster_bytes{owned[i].data(), owned[i].size()});
                values.push_back(cluster_bytes{owned[i + 1].data(), owned[i + 1].size()});
            }
        }
    };
    cluster_dict *d_ = nullptr;
};

// ---- cluster_shm ---------------------------------------------------------------

/// A typed view of shared memory: `size()` elements of T from `data()`.
/// Other processes write the same memory: synchronizing is the caller's.
template <class T> class Span {
public:
    Span(T *data, std::size_t n) noexcept : p_(data), n_(n) {}
    T *data() const noexcept { return p_; }
    std::size_t size() const noexcept { return n_; }
    T &operator[](std::size_t i) const noexcept { return p_[i]; }
    T *begin() const noexcept { return p_; }
    T *end() const noexcept { return p_ + n_; }

private:
    T *p_;
    std::size_t n_;
};

namespace detail {
template <class T> constexpr std::int32_t elem_type_of() {
    if constexpr (std::is_same_v<T, std::uint8_t>) return CLUSTER_ELEM_U8;
    else if constexpr (std::is_same_v<T, std::int8_t>) return CLUSTER_ELEM_I8;
    else if constexpr (std::is_same_v<T, std::uint16_t>) return CLUSTER_ELEM_U16;
    else if constexpr (std::is_same_v<T, std::int16_t>) return CLUSTER_ELEM_I16;
    else if constexpr (std::is_same_v<T, std::uint32_t>) return CLUSTER_ELEM_U32;
    else if constexpr (std::is_same_v<T, std::int32_t>) return CLUSTER_ELEM_I32;
    else if constexpr (std::is_same_v<T, std::uint64_t>) return CLUSTER_ELEM_U64;
    else if constexpr (std::is_same_v<T, std::int64_t>) return CLUSTER_ELEM_I64;
    else if constexpr (std::is_same_v<T, float>) return CLUSTER_ELEM_F32;
    else if constexpr (std::is_same_v<T, double>) return CLUSTER_ELEM_F64;
    else if constexpr (std::is_same_v<T, bool>) return CLUSTER_ELEM_BOOL;
    else return CLUSTER_ELEM_OPAQUE;
}

/// Names, each NUL-terminated, one after another, as a vector.
inline std::vector<std::string> split_names(const Buffer &b) {
    std::vector<std::string> v;
    const char *p = reinterpret_cast<const char *>(b.data());
    for (std::size_t at = 0; at < b.size();) {
        std::string n(p + at);
        at += n.size() + 1;
        v.push_back(std::move(n));
    }
    return v;
}
} // namespace detail

/// What a creator asks for: ShmSpec::of<double>("svar", {100, 100}, "myjob").
class ShmSpec {
public:
    ShmSpec(std::string name, std::int32_t elem_type, std::uint32_t elem_size, std::vector<std::uint64_t> dims, std::string prefix = "")
        : name_(std::move(name)), prefix_(std::move(prefix)), dims_(std::move(dims)) {
        s_.elem_type = elem_type;
        s_.elem_size = elem_size;
    }
    /// Elements of type T (trivially copyable), tagged for the bindings.
    template <class T> static ShmSpec of(std::string name, std::vector<std::uint64_t> dims, std::string prefix = "") {
        static_assert(std::is_trivially_copyable_v<T>, "shared memory holds trivially copyable types");
        return ShmSpec(std::move(name), detail::elem_type_of<T>(), sizeof(T), std::move(dims), std::move(prefix));
    }
    const cluster_shm_spec *get() const {
        s_.name = name_.c_str();
        s_.prefix = prefix_.c_str();
        s_.dims = dims_.data();
        s_.ndims = dims_.size();
        return &s_;
    }

private:
    std::string name_, prefix_;
    std::vector<std::uint64_t> dims_;
    mutable cluster_shm_spec s_{};
};

/// A shared-memory segment mapped in this process (PTools' ShmCfg /
/// pmap_shm_create): move-only; the mapping stays valid while this object
/// lives, even once the segment is unlinked.
class Shm {
public:
    Shm() noexcept = default;
    explicit Shm(cluster_shm *s) noexcept : s_(s) {}
    Shm(Shm &&o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    Shm &operator=(Shm &&o) noexcept {
        if (this != &o) {
            reset();
            s_ = std::exchange(o.s_, nullptr);
        }
        return *this;
    }
    Shm(const Shm &) = delete;
    Shm &operator=(const Shm &) = delete;
    ~Shm() { reset(); }

    /// Creates it here and has `pids` map it (empty: every local process).
    static Shm create(Cluster &c, const ShmSpec &spec, const std::vector<std::int32_t> &pids = {}) {
        cluster_shm *s = nullptr;
        check(cluster_shm_create(c.get(), spec.get(), pids.empty() ? nullptr : pids.data(), pids.size(), &s));
        return Shm(s);
    }
    /// create as a future (exists here at once; find() it).
    static Future create_async(Cluster &c, const ShmSpec &spec, const std::vector<std::int32_t> &pids = {}) {
        cluster_future *f = nullptr;
        check(cluster_shm_create_async(c.get(), spec.get(), pids.empty() ? nullptr : pids.data(), pids.size(), &f));
        return Future(f);
    }
    /// The segment this process maps by that name; nullopt when none.
    static std::optional<Shm> find(Cluster &c, const std::string &name, const std::string &prefix = "") {
        cluster_shm *s = nullptr;
        cluster_status st = cluster_shm_find(c.get(), name.c_str(), prefix.c_str(), &s);
        if (st == CLUSTER_ERR_NOT_FOUND) return std::nullopt;
        check(st);
        return Shm(s);
    }
    /// unlink_shm: removed from /dev/shm and from every process.
    static void unlink(Cluster &c, const std::string &name, const std::string &prefix = "") { check(cluster_shm_unlink(c.get(), name.c_str(), prefix.c_str())); }
    static Future unlink_async(Cluster &c, const std::string &name, const std::string &prefix = "") {
        cluster_future *f = nullptr;
        check(cluster_shm_unlink_async(c.get(), name.c_str(), prefix.c_str(), &f));
        return Future(f);
    }

    bool valid() const noexcept { return s_ != nullptr; }
    cluster_shm *get() const noexcept { return s_; }
    void *data() const {
        void *d = nullptr;
        std::size_t n = 0;
        check(cluster_shm_data(s_, &d, &n));
        return d;
    }
    std::size_t size_bytes() const {
        void *d = nullptr;
        std::size_t n = 0;
        check(cluster_shm_data(s_, &d, &n));
        return n;
    }
    std::int32_t elem_type() const {
        std::int32_t t = 0;
        check(cluster_shm_info(s_, &t, nullptr, nullptr, 0, nullptr));
        return t;
    }
    std::vector<std::uint64_t> dims() const {
        std::size_t n = 0;
        check(cluster_shm_info(s_, nullptr, nullptr, nullptr, 0, &n));
        std::vector<std::uint64_t> d(n);
        check(cluster_shm_info(s_, nullptr, nullptr, d.data(), d.size(), &n));
        return d;
    }
    /// The elements as T; the element size must be sizeof(T).
    template <class T> Span<T> span() const {
        static_assert(std::is_trivially_copyable_v<T>, "shared memory holds trivially copyable types");
        std::uint32_t es = 0;
        check(cluster_shm_info(s_, nullptr, &es, nullptr, 0, nullptr));
        if (es != sizeof(T)) throw Error(CLUSTER_ERR_INVALID_ARGUMENT, "the segment's elements are not of this size", 0);
        return Span<T>(static_cast<T *>(data()), size_bytes() / sizeof(T));
    }
    /// The name in /dev/shm.
    std::string os_name() const {
        return detail::text([&](char *b, std::size_t c, std::size_t *n) { return cluster_shm_os_name(s_, b, c, n); });
    }

private:
    void reset() noexcept {
        if (s_) cluster_shm_free(std::exchange(s_, nullptr));
    }
    cluster_shm *s_ = nullptr;
};

/// Segments of clusters whose head is gone (`prefix` only, unless empty
/// and `any_prefix`), by their /dev/shm names.
inline std::vector<std::string> shm_orphans(const std::string &prefix, bool any_prefix = false) {
    Buffer b;
    check(cluster_shm_orphans(any_prefix ? nullptr : prefix.c_str(), b.out(), nullptr));
    return detail::split_names(b);
}
/// Unlinks what shm_orphans lists; returns what it removed.
inline std::vector<std::string> remove_shm_orphans(const std::string &prefix, bool any_prefix = false) {
    Buffer b;
    check(cluster_shm_remove_orphans(any_prefix ? nullptr : prefix.c_str(), b.out(), nullptr));
    return detail::split_names(b);
}

// ---- hosts, remote variables, all-gather (ClusterUtils) -------------------------

/// One process's share of a result that holds one byte string per process
/// (the parts layout): a view into the Parts that holds it.
struct Part {
    std::int32_t pid = 0;
    Bytes bytes;
};

/// A result in the parts layout (cluster_vars_get, cluster_allgather,
/// cluster_hosts), owning its buffer: the parts in order, viewed in place.
class Parts {
public:
    Parts() = default;
    /// Adopts `b` and walks it (CLUSTER_ERR_CORRUPT when it is not the layout).
    explicit Parts(Buffer b) : buf_(std::move(b)) { walk(buf_.bytes()); }
    /// Views a future's value, which must outlive these parts.
    static Parts view(Bytes b) {
        Parts p;
        p.walk(b);
        return p;
    }

    std::size_t size() const noexcept { return parts_.size(); }
    bool empty() const noexcept { return parts_.empty(); }
    const Part &operator[](std::size_t i) const noexcept { return parts_[i]; }
    std::vector<Part>::const_iterator begin() const noexcept { return parts_.begin(); }
    std::vector<Part>::const_iterator end() const noexcept { return parts_.end(); }
    /// Process `pid`'s part; throws Error(CLUSTER_ERR_NOT_FOUND) without one.
    Bytes at(std::int32_t pid) const {
        for (const Part &p : parts_)
            if (p.pid == pid) return p.bytes;
        throw Error(CLUSTER_ERR_NOT_FOUND, "no part of process " + std::to_string(pid), pid);
    }
    /// Every part as T (trivially copyable, std::string, bytes), in order.
    template <class T> std::vector<T> values() const {
        std::vector<T> out;
        out.reserve(parts_.size());
        for (const Part &p : parts_) out.push_back(detail::element_value<T>(p.bytes, p.pid));
        return out;
    }

private:
    void walk(Bytes b) {
        std::size_t off = 0;
        for (;;) {
            std::int32_t pid = 0;
            const std::uint8_t *d = nullptr;
            std::size_t n = 0;
            cluster_status st = cluster_parts_next(b.data(), b.size(), &off, &pid, &d, &n);
            if (st == CLUSTER_ERR_NOT_FOUND) return;
            check(st);
            parts_.push_back(Part{pid, Bytes(d, n)});
        }
    }
    Buffer buf_;
    std::vector<Part> parts_;
};

/// The host process `pid` runs on, from membership (no message).
inline std::string host_of(const Cluster &c, std::int32_t pid) {
    Buffer b;
    check(cluster_host_of(c.get(), pid, b.out()));
    return b.str();
}

/// Whether this process's connection to `pid` runs under TLS
/// (CLUSTER_ERR_NOT_READY while there is none yet).
inline bool connection_encrypted(const Cluster &c, std::int32_t pid) {
    bool enc = false;
    check(cluster_connection_encrypted(c.get(), pid, &enc));
    return enc;
}

/// Every live process with its host, ascending by id.
inline std::map<std::int32_t, std::string> hosts(const Cluster &c) {
    Buffer b;
    check(cluster_hosts(c.get(), b.out()));
    std::map<std::int32_t, std::string> out;
    for (const Part &p : Parts(std::move(b))) out.emplace(p.pid, p.bytes.str());
    return out;
}

/// Remote variables of a cluster (ClusterUtils' sow / reap over bytes):
/// named byte values each process holds. A view: the Cluster must outlive it.
class Vars {
public:
    explicit Vars(const Cluster &c) noexcept : ctx_(c.get()) {}

    /// Sets `name` to `value` on every process of `pids`.
    void set(const std::vector<std::int32_t> &pids, const std::string &name, Bytes value) const {
        check(cluster_vars_set(ctx_, pids.data(), pids.size(), name.c_str(), value.data(), value.size()));
    }
    Future set_async(const std::vector<std::int32_t> &pids, const std::string &name, Bytes value) const {
        cluster_future *f = nullptr;
        check(cluster_vars_set_async(ctx_, pids.data(), pids.size(), name.c_str(), value.data(), value.size(), &f));
        return Future(f);
    }
    /// A trivially copyable value or a string.
    template <class T> void set_value(const std::vector<std::int32_t> &pids, const std::string &name, const T &v) const {
        set(pids, name, detail::element_bytes(v));
    }
    /// `name` from each of `pids`, in their order (CLUSTER_ERR_NOT_FOUND
    /// naming a process without it).
    Parts get(const std::vector<std::int32_t> &pids, const std::string &name) const {
        Buffer b;
        check(cluster_vars_get(ctx_, pids.data(), pids.size(), name.c_str(), b.out()));
        return Parts(std::move(b));
    }
    /// A future whose value is the parts layout (Parts::view(f.fetch())).
    Future get_async(const std::vector<std::int32_t> &pids, const std::string &name) const {
        cluster_future *f = nullptr;
        check(cluster_vars_get_async(ctx_, pids.data(), pids.size(), name.c_str(), &f));
        return Future(f);
    }
    /// Calls the registered function `fn` with `name`'s value on each of
    /// `pids`: the results, or (keep_as given) each kept there and empty parts.
    Parts apply(const std::vector<std::int32_t> &pids, const std::string &name, const std::string &fn,
                const std::optional<std::string> &keep_as = std::nullopt) const {
        Buffer b;
        check(cluster_vars_apply(ctx_, pids.data(), pids.size(), name.c_str(), fn.c_str(),
                                 keep_as ? keep_as->c_str() : nullptr, b.out()));
        return Parts(std::move(b));
    }
    Future apply_async(const std::vector<std::int32_t> &pids, const std::string &name, const std::string &fn,
                       const std::optional<std::string> &keep_as = std::nullopt) const {
        cluster_future *f = nullptr;
        check(cluster_vars_apply_async(ctx_, pids.data(), pids.size(), name.c_str(), fn.c_str(),
                                       keep_as ? keep_as->c_str() : nullptr, &f));
        return Future(f);
    }
    void erase(const std::vector<std::int32_t> &pids, const std::string &name) const {
        check(cluster_vars_delete(ctx_, pids.data(), pids.size(), name.c_str()));
    }
    /// This process's own `name`, without a message.
    Buffer local(const std::string &name) const {
        Buffer b;
        check(cluster_vars_local_get(ctx_, name.c_str(), b.out()));
        return b;
    }
    void set_local(const std::string &name, Bytes value) const {
        check(cluster_vars_local_set(ctx_, name.c_str(), value.data(), value.size()));
    }

private:
    cluster_ctx *ctx_;
};

/// All-gather over `pids` (holding this process; the same set everywhere):
/// everyone's `data`, in the order of `pids`. See cluster_allgather.
inline Parts allgather(const Cluster &c, const std::vector<std::int32_t> &pids, std::uint64_t tag, Bytes data,
                       std::int64_t timeout_ms = CLUSTER_FOREVER) {
    Buffer b;
    check(cluster_allgather(c.get(), pids.data(), pids.size(), tag, data.data(), data.size(), timeout_ms, b.out()));
    return Parts(std::move(b));
}

/// allgather as a future (its value: the parts layout; Parts::view reads it).
inline Future allgather_async(const Cluster &c, const std::vector<std::int32_t> &pids, std::uint64_t tag, Bytes data,
                              std::int64_t timeout_ms = CLUSTER_FOREVER) {
    cluster_future *f = nullptr;
    check(cluster_allgather_async(c.get(), pids.data(), pids.size(), tag, data.data(), data.size(), timeout_ms, &f));
    return Future(f);
}

/// Typed all-gather of one value per process (trivially copyable or std::string).
template <class T>
std::vector<T> allgather_values(const Cluster &c, const std::vector<std::int32_t> &pids, std::uint64_t tag, const T &v,
                                std::int64_t timeout_ms = CLUSTER_FOREVER) {
    return allgather(c, pids, tag, detail::element_bytes(v), timeout_ms).template values<T>();
}

// ---- workers on other hosts over SSH (cluster_addprocs_ssh) -----------------------

/// A machine as Distributed writes it ("host", "user@host:port") and how
/// many workers it runs (Machine::auto_count: its cores).
struct Machine {
    static constexpr std::int32_t auto_count = CLUSTER_COUNT_AUTO;
    std::string spec;
    std::int32_t count = 1;
};

/// cluster_ssh_options, with owned strings. See cluster.h for each field.
struct SshOptions {
    std::optional<std::string> ssh;
    std::vector<std::string> ssh_flags;
    std::size_t max_parallel = 10;
    bool multiplex = true;
    bool tunnel = false;
    bool tolerate_failures = false;
    /// This call's startup timeout in ms; 0: the cluster's.
    std::uint32_t startup_timeout_ms = 0;
    std::optional<std::string> head_addr, worker_listen, exename, dir;
    std::optional<std::vector<std::string>> argv;
    std::vector<std::string> env;
};

namespace detail {
/// The C views of SshOptions and machines, alive as long as this object.
struct SshCall {
    std::vector<const char *> flags, argv, env;
    std::vector<cluster_machine> machines;
    cluster_ssh_options o{};
    SshCall(const std::vector<Machine> &ms, const SshOptions &so) {
        check(cluster_ssh_options_init(&o));
        auto list = [](const std::vector<std::string> &v, std::vector<const char *> &out) {
            for (const auto &x : v) out.push_back(x.c_str());
            out.push_back(nullptr);
            return out.data();
        };
        auto opt = [](const std::optional<std::string> &v) { return v ? v->c_str() : nullptr; };
        o.ssh = opt(so.ssh);
        o.ssh_flags = list(so.ssh_flags, flags);
        o.max_parallel = so.max_parallel;
        o.multiplex = so.multiplex;
        o.tunnel = so.tunnel;
        o.tolerate_failures = so.tolerate_failures;
        o.startup_timeout_ms = so.startup_timeout_ms;
        o.head_addr = opt(so.head_addr);
        o.worker_listen = opt(so.worker_listen);
        o.exename = opt(so.exename);
        o.dir = opt(so.dir);
        o.argv = so.argv ? list(*so.argv, argv) : nullptr;
        o.env = list(so.env, env);
        for (const auto &m : ms) machines.push_back(cluster_machine{m.spec.c_str(), m.count});
    }
};
} // namespace detail

/// Head only: workers on `machines` over SSH, one ssh per host; their ids
/// once all joined (or, with tolerate_failures, those that did). Throws
/// Error(CLUSTER_ERR_LAUNCH) naming a failed host and why.
inline std::vector<std::int32_t> addprocs_ssh(const Cluster &c, const std::vector<Machine> &machines, const SshOptions &o = {}) {
    detail::SshCall call(machines, o);
    // Room for every worker at once: a retry would launch them again.
    std::size_t cap = 0;
    for (const auto &m : machines) cap += m.count > 0 ? static_cast<std::size_t>(m.count) : 4096;
    std::vector<std::int32_t> v(cap);
    std::size_t n = 0;
    check(cluster_addprocs_ssh(c.get(), call.machines.data(), call.machines.size(), &call.o, v.data(), v.size(), &n));
    v.resize(n);
    return v;
}

/// addprocs_ssh as a future (its value: the ids, int32_t each).
inline Future addprocs_ssh_async(const Cluster &c, const std::vector<Machine> &machines, const SshOptions &o = {}) {
    detail::SshCall call(machines, o);
    cluster_future *f = nullptr;
    check(cluster_addprocs_ssh_async(c.get(), call.machines.data(), call.machines.size(), &call.o, &f));
    return Future(f);
}

// ---- workers started by Slurm (cluster_addprocs_slurm) --------------------------

/// cluster_slurm_options, with owned strings. See cluster.h for each field.
struct SlurmOptions {
    /// This call's startup timeout in ms; 0: the cluster's.
    std::uint32_t startup_timeout_ms = 0;
    std::optional<std::string> srun, exename, worker_listen, head_addr;
    std::vector<std::string> srun_args, srun_env, env;
    std::optional<std::vector<std::string>> argv;
};

namespace detail {
struct SlurmCall {
    std::vector<const char *> args, senv, argv, env;
    cluster_slurm_options o{};
    explicit SlurmCall(const SlurmOptions &so) {
        check(cluster_slurm_options_init(&o));
        auto list = [](const std::vector<std::string> &v, std::vector<const char *> &out) {
            for (const auto &x : v) out.push_back(x.c_str());
            out.push_back(nullptr);
            return out.data();
        };
        auto opt = [](const std::optional<std::string> &v) { return v ? v->c_str() : nullptr; };
        o.srun = opt(so.srun);
        o.startup_timeout_ms = so.startup_timeout_ms;
        o.exename = opt(so.exename);
        o.worker_listen = opt(so.worker_listen);
        o.head_addr = opt(so.head_addr);
        o.srun_args = list(so.srun_args, args);
        o.srun_env = list(so.srun_env, senv);
        o.env = list(so.env, env);
        o.argv = so.argv ? list(*so.argv, argv) : nullptr;
    }
};
} // namespace detail

/// Head only: `n` workers (0: the allocation's SLURM_NTASKS) as the tasks
/// of one srun step; their ids once all joined.
inline std::vector<std::int32_t> addprocs_slurm(const Cluster &c, std::size_t n, const SlurmOptions &o = {}) {
    detail::SlurmCall call(o);
    // Room for every worker at once: a retry would launch them again.
    std::vector<std::int32_t> v(n ? n : 65536);
    std::size_t count = 0;
    check(cluster_addprocs_slurm(c.get(), n, &call.o, v.data(), v.size(), &count));
    v.resize(count);
    return v;
}

/// addprocs_slurm as a future (its value: the ids, int32_t each).
inline Future addprocs_slurm_async(const Cluster &c, std::size_t n, const SlurmOptions &o = {}) {
    detail::SlurmCall call(o);
    cluster_future *f = nullptr;
    check(cluster_addprocs_slurm_async(c.get(), n, &call.o, &f));
    return Future(f);
}

// ---- cluster_stasks --------------------------------------------------------------

/// What a server task's function finds (inside the handler only): its
/// task index, its arguments and the task's state slot, a pointer kept
/// from call to call (null at first).
struct StaskState {
    std::size_t task = 0;
    Bytes args;
    void **state = nullptr;
    /// The state of the call `call` (CLUSTER_ERR_INVALID_ARGUMENT when it is
    /// not a server task's).
    static StaskState of(const Call &call) {
        StaskState s;
        const std::uint8_t *a = nullptr;
        std::size_t n = 0;
        check(cluster_stask_state(call.get(), &s.task, &a, &n, &s.state));
        s.args = Bytes(a, n);
        return s;
    }
};

/// A set of server tasks (PTools' start_stasks): move-only; destroying it
/// frees the handle, not the tasks (stop() does).
class ServerTasks {
public:
    ServerTasks() noexcept = default;
    explicit ServerTasks(cluster_stasks *h) noexcept : h_(h) {}
    ServerTasks(ServerTasks &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    ServerTasks &operator=(ServerTasks &&o) noexcept {
        if (this != &o) {
            reset();
            h_ = std::exchange(o.h_, nullptr);
        }
        return *this;
    }
    ServerTasks(const ServerTasks &) = delete;
    ServerTasks &operator=(const ServerTasks &) = delete;
    ~ServerTasks() { reset(); }

    /// A task on each of `pids` (empty: every worker, or this process alone).
    static ServerTasks start(Cluster &c, const std::vector<std::int32_t> &pids = {}) {
        cluster_stasks *h = nullptr;
        check(cluster_stasks_start(c.get(), pids.empty() ? nullptr : pids.data(), pids.size(), &h));
        return ServerTasks(h);
    }
    /// start as a future: the set is usable once `started` completes.
    static ServerTasks start_async(Cluster &c, Future &started, const std::vector<std::int32_t> &pids = {}) {
        cluster_stasks *h = nullptr;
        cluster_future *f = nullptr;
        check(cluster_stasks_start_async(c.get(), pids.empty() ? nullptr : pids.data(), pids.size(), &h, &f));
        started = Future(f);
        return ServerTasks(h);
    }

    cluster_stasks *get() const noexcept { return h_; }
    /// count_stasks(h).
    std::size_t count() const {
        std::size_t n = 0;
        check(cluster_stasks_count(h_, &n));
        return n;
    }
    std::vector<std::int32_t> pids() const {
        return detail::ids([&](std::int32_t *o, std::size_t c, std::size_t *n) { return cluster_stasks_pids(h_, o, c, n); });
    }
    /// One outcome per task, in task order.
    struct Outcome {
        cluster_status status;
        Buffer value; // the error's message when status is not CLUSTER_OK
    };
    /// pmap_stasks: the function `fn` on every task, task i with args[i].
    std::vector<Outcome> pmap(const std::string &fn, const std::vector<Bytes> &args) const {
        std::vector<cluster_bytes> a = views(args);
        std::vector<cluster_buffer> res(a.size(), cluster_buffer{nullptr, 0, 0});
        std::vector<cluster_status> st(a.size(), CLUSTER_OK);
        check(cluster_stasks_pmap(h_, fn.c_str(), a.data(), a.size(), res.data(), st.data()));
        std::vector<Outcome> out;
        for (std::size_t i = 0; i < a.size(); i++) out.push_back(Outcome{st[i], Buffer(res[i])});
        return out;
    }
    std::vector<Future> pmap_async(const std::string &fn, const std::vector<Bytes> &args) const {
        std::vector<cluster_bytes> a = views(args);
        std::vector<cluster_future *> fs(a.size(), nullptr);
        check(cluster_stasks_pmap_async(h_, fn.c_str(), a.data(), a.size(), fs.data()));
        std::vector<Future> out;
        for (auto *f : fs) out.emplace_back(f);
        return out;
    }
    /// stop_stasks: `free_fn` (if not empty) on every task, then drops them.
    void stop(const std::string &free_fn = "") const { check(cluster_stasks_stop(h_, free_fn.empty() ? nullptr : free_fn.c_str())); }
    Future stop_async(const std::string &free_fn = "") const {
        cluster_future *f = nullptr;
        check(cluster_stasks_stop_async(h_, free_fn.empty() ? nullptr : free_fn.c_str(), &f));
        return Future(f);
    }

private:
    static std::vector<cluster_bytes> views(const std::vector<Bytes> &args) {
        std::vector<cluster_bytes> a;
        for (const auto &b : args) a.push_back(cluster_bytes{b.data(), b.size()});
        return a;
    }
    void reset() noexcept {
        if (h_) cluster_stasks_free(std::exchange(h_, nullptr));
    }
    cluster_stasks *h_ = nullptr;
};


// ==== cluster_pfork, cluster_fork_results, cluster_fork_child: pfork(), ForkResults, ForkChild ====
//
// PTools' pfork: n children forked from the calling process, child i running
// f(i) on a copy of this process's memory (shared mappings stay shared). No
// Cluster is needed. In a child, use no libcluster object (every handle is
// refused there with CLUSTER_ERR_WRONG_MODE): only the child's own work, then
// return its value (see the README's *Fork* section).

/// In a pfork child, during its function: where it returns its bytes or an
/// error (a function taking `(int index, ForkChild &child)` uses it directly).
class ForkChild {
public:
    explicit ForkChild(cluster_fork_child *c) noexcept : c_(c) {}
    /// The child's value (copied; replaces what was given before).
    void return_bytes(Bytes b) const { check(cluster_fork_return(c_, b.data(), b.size())); }
    /// The child fails with `message`, whatever it returns afterwards.
    void fail(const std::string &message) const { check(cluster_fork_fail(c_, message.c_str())); }
    cluster_fork_child *get() const noexcept { return c_; }

private:
    cluster_fork_child *c_;
};

/// How one child ended (cluster_fork_results_child).
struct ForkOutcome {
    /// A cluster_fork_outcome.
    std::int32_t outcome = CLUSTER_FORK_RETURNED;
    /// The exit status (CLUSTER_FORK_EXITED) or signal (SIGNALED, TIMED_OUT), else 0.
    std::int32_t code = 0;
    std::int32_t os_pid = 0;
    /// "" for a value, else the error naming the child and what happened.
    std::string message;
    bool ok() const noexcept { return outcome == CLUSTER_FORK_RETURNED; }
};

/// A child that returned no value: thrown by pfork() and ForkResults::value().
class ForkError : public Error {
public:
    ForkError(cluster_status status, std::size_t index, ForkOutcome o)
        : Error(status, o.message), index_(index), outcome_(std::move(o)) {}
    std::size_t index() const noexcept { return index_; }
    const ForkOutcome &outcome() const noexcept { return outcome_; }

private:
    std::size_t index_;
    ForkOutcome outcome_;
};

namespace detail {

/// A child's value as bytes: a trivially copyable value, a string, bytes.
template <class T> Bytes fork_bytes(const T &v) {
    if constexpr (std::is_same_v<T, std::vector<std::uint8_t>> || std::is_same_v<T, Bytes>) {
        return Bytes(v);
    } else {
        return element_bytes(v);
    }
}

/// What f(int) returns, or void when f takes (int, ForkChild &).
template <class F, class = void> struct fork_result { using type = void; };
template <class F> struct fork_result<F, std::enable_if_t<std::is_invocable_v<F &, int>>> {
    using type = std::invoke_result_t<F &, int>;
};

/// Runs in the child: f(i), its value to the parent, an exception as the child's error.
template <class F> std::int32_t fork_trampoline(void *ud, std::int32_t index, cluster_fork_child *c) noexcept {
    F &f = *static_cast<F *>(ud);
    ForkChild child(c);
    try {
        if constexpr (std::is_invocable_v<F &, int, ForkChild &>) {
            f(static_cast<int>(index), child);
        } else {
            using R = typename fork_result<F>::type;
            if constexpr (std::is_void_v<R>) {
                f(static_cast<int>(index));
            } else {
                const R value = f(static_cast<int>(index));
                child.return_bytes(fork_bytes(value));
            }
        }
        return 0;
    } catch (const std::exception &e) {
        cluster_fork_fail(c, e.what());
    } catch (...) {
        cluster_fork_fail(c, "unknown C++ exception");
    }
    return 1;
}

} // namespace detail

/// Owns a cluster_fork_results: every child's outcome, in index order.
class ForkResults {
public:
    ForkResults() noexcept = default;
    explicit ForkResults(cluster_fork_results *r) noexcept : r_(r) {}
    ForkResults(ForkResults &&o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
    ForkResults &operator=(ForkResults &&o) noexcept {
        if (this != &o) {
            reset();
            r_ = std::exchange(o.r_, nullptr);
        }
        return *this;
    }
    ForkResults(const ForkResults &) = delete;
    ForkResults &operator=(const ForkResults &) = delete;
    ~ForkResults() { reset(); }

    /// cluster_pfork: forks n children running `f(i)` (returning the value:
    /// trivially copyable, std::string, bytes, or void for none) or
    /// `f(i, child)` (returning through `child`); an exception is the
    /// child's error. Returns once every child is reaped; a child's failure
    /// is not thrown here (value(), check()), an argument error is.
    template <class F> static ForkResults run(int n, F &&f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
        using Fn = std::remove_reference_t<F>;
        ForkResults r;
        void *ud = const_cast<void *>(static_cast<const void *>(std::addressof(f)));
        cluster_status st = cluster_pfork(n, &detail::fork_trampoline<Fn>, ud, timeout_ms, &r.r_);
        if (!r.r_) throw Error::last(st);
        return r;
    }

    cluster_fork_results *get() const noexcept { return r_; }
    explicit operator bool() const noexcept { return r_ != nullptr; }
    void reset() noexcept {
        if (r_) cluster_fork_results_free(r_);
        r_ = nullptr;
    }

    std::size_t size() const {
        std::size_t n = 0;
        check(cluster_fork_results_count(r_, &n));
        return n;
    }
    /// How child `i` ended.
    ForkOutcome child(std::size_t i) const {
        ForkOutcome o;
        const char *msg = nullptr;
        check(cluster_fork_results_child(r_, i, &o.outcome, &o.code, &o.os_pid, &msg));
        o.message = msg ? msg : "";
        return o;
    }
    bool ok(std::size_t i) const { return child(i).ok(); }
    /// Child `i`'s bytes (owned by the results); throws ForkError when it
    /// returned none.
    Bytes value(std::size_t i) const {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        cluster_status st = cluster_fork_results_get(r_, i, &d, &n);
        if (st == CLUSTER_OK) return Bytes(d, n);
        if (st == CLUSTER_ERR_INVALID_ARGUMENT || st == CLUSTER_ERR_BAD_HANDLE) throw Error::last(st);
        throw ForkError(st, i, child(i));
    }
    /// Child `i`'s value as R (trivially copyable, std::string, bytes).
    template <class R> R value_as(std::size_t i) const { return detail::element_value<R>(value(i)); }
    /// Throws the first child's failure, if any.
    void check_all() const {
        for (std::size_t i = 0, n = size(); i < n; i++) (void)value(i);
    }

private:
    cluster_fork_results *r_ = nullptr;
};

/// Typed pfork: the n children's values in index order, of f's result type
/// (or R when given: `pfork<std::string>(n, f)`); throws ForkError for the
/// first child that returned none (an exception, exit, crash, kill, timeout).
template <class R = void, class F> auto pfork(int n, F &&f, std::int64_t timeout_ms = CLUSTER_FOREVER) {
    using T = std::conditional_t<std::is_void_v<R>, typename detail::fork_result<std::remove_reference_t<F>>::type, R>;
    static_assert(!std::is_void_v<T>, "pfork needs a value type: a function returning one, or pfork<R>(...)");
    ForkResults r = ForkResults::run(n, f, timeout_ms);
    std::vector<T> out;
    out.reserve(n > 0 ? static_cast<std::size_t>(n) : 0);
    for (std::size_t i = 0, k = r.size(); i < k; i++) out.push_back(r.template value_as<T>(i));
    return out;
}

// ==== cluster_save / cluster_load: save(), load() ============================

/// A loaded container (`load`): its content type and payload.
struct Loaded {
    std::string content_type;
    std::vector<std::uint8_t> data;
};

/// Saves `bytes` to the file `path`, tagged with `content_type` (at most 255
/// bytes), atomically: a crash mid-save leaves the old file (cluster_save).
/// Throws Error (CLUSTER_ERR_IO, CLUSTER_ERR_INVALID_ARGUMENT).
inline void save(const std::string &path, const std::string &content_type, Bytes bytes) {
    if (path.find('\0') != std::string::npos || content_type.find('\0') != std::string::npos)
        throw Error(CLUSTER_ERR_INVALID_ARGUMENT, "a path or content type holds no NUL");
    check(cluster_save(path.c_str(), content_type.c_str(), bytes.data(), bytes.size()));
}

/// Loads the file `path` written by save() into a Buffer (no copy of the
/// payload); `*content_type` (may be null) receives its content type.
/// Throws Error: CLUSTER_ERR_IO (missing, unreadable), CLUSTER_ERR_CORRUPT
/// (not this format, a newer version, truncated, damaged: the message says which).
inline Buffer load_buffer(const std::string &path, std::string *content_type = nullptr) {
    Buffer data, ct;
    check(cluster_load(path.c_str(), data.out(), content_type ? ct.out() : nullptr));
    if (content_type) *content_type = ct.str();
    return data;
}

/// Loads the file `path` written by save(); throws as load_buffer().
inline Loaded load(const std::string &path) {
    Loaded l;
    Buffer data = load_buffer(path, &l.content_type);
    l.data = data.vec();
    return l;
}

} // namespace cluster

#endif // LIBCLUSTER_CLUSTER_HPP
