//! Types of the C API. Enum parameters cross the ABI as `int32_t` and are
//! validated, so a stray value is an error rather than undefined behaviour.

use crate::error::ErrorKind;
use std::ffi::{c_char, c_int, c_void};

/// Major version of this header and library.
pub const CLUSTER_VERSION_MAJOR: u32 = 0;
/// Minor version: additions only.
pub const CLUSTER_VERSION_MINOR: u32 = 1;
/// Patch version: fixes only.
pub const CLUSTER_VERSION_PATCH: u32 = 0;
/// `CLUSTER_VERSION_MAJOR << 16 | CLUSTER_VERSION_MINOR << 8 | CLUSTER_VERSION_PATCH`;
/// compare with `cluster_version()` to detect a header/library mismatch.
pub const CLUSTER_VERSION: u32 = (CLUSTER_VERSION_MAJOR << 16) | (CLUSTER_VERSION_MINOR << 8) | CLUSTER_VERSION_PATCH;

/// Target process for "any worker": the next one, round-robin.
pub const CLUSTER_ANY_WORKER: i32 = 0;
/// Timeout value meaning "wait for as long as it takes".
pub const CLUSTER_FOREVER: i64 = -1;
/// Id of the head process.
pub const CLUSTER_HEAD: i32 = 1;

/// Outcome of every call. Values are fixed and never renumbered.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_status {
    CLUSTER_OK = 0,
    /// A NULL, out-of-range or malformed argument.
    CLUSTER_ERR_INVALID_ARGUMENT = 1,
    /// A NULL, freed, stale or wrong-kind handle.
    CLUSTER_ERR_BAD_HANDLE = 2,
    /// Only process 1 (the head) may add and remove workers.
    CLUSTER_ERR_NOT_HEAD = 3,
    /// No process with that id is, or was, in the cluster.
    CLUSTER_ERR_NO_SUCH_PROCESS = 4,
    /// The remote function failed or is not registered there; see
    /// `cluster_future_error` / `cluster_last_error_pid` for the process.
    CLUSTER_ERR_REMOTE = 5,
    /// The process exited or died before answering.
    CLUSTER_ERR_PROCESS_EXITED = 6,
    /// The call was cancelled by `cluster_interrupt`.
    CLUSTER_ERR_INTERRUPTED = 7,
    CLUSTER_ERR_TIMEOUT = 8,
    /// Not allowed by the topology (worker-to-worker under master_worker).
    CLUSTER_ERR_TOPOLOGY = 9,
    /// A worker could not be started or did not become ready.
    CLUSTER_ERR_LAUNCH = 10,
    /// The peer could not prove the cluster cookie, or none was given.
    CLUSTER_ERR_AUTH = 11,
    CLUSTER_ERR_IO = 12,
    CLUSTER_ERR_PROTOCOL = 13,
    /// A message exceeds the configured maximum size.
    CLUSTER_ERR_TOO_LARGE = 14,
    /// The cluster was shut down.
    CLUSTER_ERR_SHUTDOWN = 15,
    /// A bug in libcluster was caught at the API boundary.
    CLUSTER_ERR_PANIC = 16,
    /// The result is not available yet.
    CLUSTER_ERR_NOT_READY = 17,
    /// Several processes failed (`cluster_everywhere`); the message lists each.
    CLUSTER_ERR_COMPOSITE = 18,
    /// Not available in this dispatch mode.
    CLUSTER_ERR_WRONG_MODE = 19,
    /// An output buffer is too small; the needed size was reported.
    CLUSTER_ERR_BUFFER_TOO_SMALL = 20,
    /// This worker's head went away (`cluster_serve` returns it).
    CLUSTER_ERR_HEAD_LOST = 21,
}

impl cluster_status {
    pub(crate) fn from_kind(k: ErrorKind) -> cluster_status {
        use cluster_status::*;
        match k {
            ErrorKind::InvalidArgument => CLUSTER_ERR_INVALID_ARGUMENT,
            ErrorKind::BadHandle => CLUSTER_ERR_BAD_HANDLE,
            ErrorKind::NotHead => CLUSTER_ERR_NOT_HEAD,
            ErrorKind::NoSuchProcess => CLUSTER_ERR_NO_SUCH_PROCESS,
            ErrorKind::Remote => CLUSTER_ERR_REMOTE,
            ErrorKind::ProcessExited => CLUSTER_ERR_PROCESS_EXITED,
            ErrorKind::Interrupted => CLUSTER_ERR_INTERRUPTED,
            ErrorKind::Timeout => CLUSTER_ERR_TIMEOUT,
            ErrorKind::Topology => CLUSTER_ERR_TOPOLOGY,
            ErrorKind::Launch => CLUSTER_ERR_LAUNCH,
            ErrorKind::Auth => CLUSTER_ERR_AUTH,
            ErrorKind::Io => CLUSTER_ERR_IO,
            ErrorKind::Protocol => CLUSTER_ERR_PROTOCOL,
            ErrorKind::TooLarge => CLUSTER_ERR_TOO_LARGE,
            ErrorKind::Shutdown => CLUSTER_ERR_SHUTDOWN,
            ErrorKind::Panic => CLUSTER_ERR_PANIC,
            ErrorKind::NotReady => CLUSTER_ERR_NOT_READY,
            ErrorKind::Composite => CLUSTER_ERR_COMPOSITE,
            ErrorKind::WrongMode => CLUSTER_ERR_WRONG_MODE,
            ErrorKind::BufferTooSmall => CLUSTER_ERR_BUFFER_TOO_SMALL,
            ErrorKind::HeadLost => CLUSTER_ERR_HEAD_LOST,
        }
    }
}

/// `cluster_config.topology` values.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_topology {
    /// Workers call each other; connections are made on first use.
    CLUSTER_TOPOLOGY_ALL_TO_ALL = 0,
    /// Workers talk only to the head.
    CLUSTER_TOPOLOGY_MASTER_WORKER = 1,
}

/// `cluster_config.dispatch` values: where handlers run.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_dispatch {
    /// On library threads (`handler_threads` calls at a time).
    CLUSTER_DISPATCH_THREADS = 0,
    /// Only inside `cluster_poll`, on the host's thread. No foreign code is
    /// ever called from a library thread, except the notify hook.
    CLUSTER_DISPATCH_HOST = 1,
}

/// Log levels, for `cluster_config.log_level` and the log callback.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_log_level {
    CLUSTER_LOG_OFF = 0,
    CLUSTER_LOG_ERROR = 1,
    CLUSTER_LOG_WARN = 2,
    CLUSTER_LOG_INFO = 3,
    CLUSTER_LOG_DEBUG = 4,
}

/// What happened to a worker, for the lifecycle callback and events.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_lifecycle {
    /// The worker connected and is ready for calls.
    CLUSTER_WORKER_STARTED = 0,
    /// The worker left when asked to (rmprocs, shutdown).
    CLUSTER_WORKER_EXITED = 1,
    /// The worker died: killed, crashed, or its connection broke.
    CLUSTER_WORKER_DIED = 2,
}

/// Kinds of `cluster_event`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_event_kind {
    /// `future_id` completed: its wait/fetch will not block now.
    CLUSTER_EVENT_FUTURE_READY = 0,
    /// `pid` started; see `lifecycle`.
    CLUSTER_EVENT_WORKER = 1,
    /// `cluster_interrupt` reached this process: cancel running calls.
    CLUSTER_EVENT_INTERRUPT = 2,
    /// The head asked this worker to stop, or went away.
    CLUSTER_EVENT_SHUTDOWN = 3,
}

/// One event reported by `cluster_poll`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_event {
    /// A `cluster_event_kind` value.
    pub kind: i32,
    /// For `CLUSTER_EVENT_WORKER`: a `cluster_lifecycle` value.
    pub lifecycle: i32,
    /// The worker concerned, or 0.
    pub pid: i32,
    /// For `CLUSTER_EVENT_FUTURE_READY`: see `cluster_future_id`.
    pub future_id: u64,
}

/// Settings for `cluster_init`. Fill with `cluster_config_init` first, then
/// change fields; strings are copied by `cluster_init`.
#[repr(C)]
pub struct cluster_config {
    /// `sizeof(cluster_config)`, set by `cluster_config_init`; lets later
    /// versions add fields without breaking older callers.
    pub struct_size: u32,
    /// Address to listen on. Default "127.0.0.1" (loopback only).
    pub listen_host: *const c_char,
    /// The cluster secret. NULL: random on a head; a launched worker reads
    /// it from its launcher, an elastic worker from `LIBCLUSTER_COOKIE`.
    pub cookie: *const c_char,
    /// "host:port" of a running head to join as an elastic worker, or NULL.
    pub join: *const c_char,
    /// A `cluster_topology` value. Default all_to_all.
    pub topology: i32,
    /// A `cluster_dispatch` value. Default threads.
    pub dispatch: i32,
    /// Calls run at once in threads mode. Default 1, as a Julia worker.
    pub handler_threads: u32,
    /// How long a worker tries to reach its head. Default 60000.
    pub startup_timeout_ms: u32,
    /// Largest message accepted on any connection. Default 1 GiB.
    pub max_message_bytes: u64,
    /// How long a waiting thread spins before it parks, in microseconds.
    pub spin_us: u32,
    /// A `cluster_log_level`, or -1 (default) for `LIBCLUSTER_LOG`, else off.
    pub log_level: i32,
    /// A launched worker exits when the head goes away. Default true.
    pub exit_on_head_loss: bool,
}

/// How `cluster_addprocs` starts workers on this machine. All fields may
/// be NULL; strings are copied before the call returns.
#[repr(C)]
pub struct cluster_launch_options {
    /// Program to run. NULL: the current executable.
    pub program: *const c_char,
    /// NULL-terminated argument list (without argv[0]). NULL: this
    /// process's own arguments when running the current executable, else none.
    pub argv: *const *const c_char,
    /// NULL-terminated list of "NAME=value" added to the environment.
    pub env: *const *const c_char,
    /// Working directory. NULL: the head's.
    pub dir: *const c_char,
}

/// Bytes owned by the library, e.g. a `cluster_remotecall_fetch` result.
/// Read `data[0..len)`; release with `cluster_buffer_free`.
#[repr(C)]
pub struct cluster_buffer {
    pub data: *const u8,
    pub len: usize,
    /// Opaque; 0 once freed.
    pub handle: u64,
}

/// The small, copyable form of a future that another process can import.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_future_ref {
    /// The process holding the value.
    pub owner: i32,
    pub id: u64,
}

/// A cluster: this process's membership and everything it owns.
pub struct cluster_ctx {
    _private: [u8; 0],
}

/// A pending or completed remote call result.
pub struct cluster_future {
    _private: [u8; 0],
}

/// An incoming call, passed to a handler.
pub struct cluster_call {
    _private: [u8; 0],
}

/// A registered function. Runs on a library thread (threads mode) or
/// inside `cluster_poll` (host mode). `call` is borrowed for the duration
/// of the handler unless it calls `cluster_call_defer`. Answer with
/// `cluster_call_reply` or `cluster_call_fail`; returning CLUSTER_OK
/// without either replies with no bytes, returning an error status fails
/// the call with that status's description.
pub type cluster_handler = Option<unsafe extern "C" fn(user_data: *mut c_void, call: *mut cluster_call) -> i32>;

/// Receives worker lifecycle changes. Threads mode: on a library thread.
/// Host mode: inside `cluster_poll`.
pub type cluster_lifecycle_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, pid: i32, what: cluster_lifecycle)>;

/// Receives log records instead of stderr. `message` is borrowed for the
/// call. Threads mode: on any library thread. Host mode: inside `cluster_poll`.
pub type cluster_log_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, level: cluster_log_level, message: *const c_char)>;

/// Called from a library thread when host-mode work becomes pending. It
/// must only signal the host (its signature matches `uv_async_send`).
pub type cluster_notify_fn = Option<unsafe extern "C" fn(user_data: *mut c_void) -> c_int>;
