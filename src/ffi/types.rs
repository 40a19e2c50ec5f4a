//! Constants, enums and callback types shared by several C objects. Enum
//! parameters cross the ABI as `int32_t` and are validated, so a stray
//! value is an error rather than undefined behaviour.

use crate::log::Level;
use crate::{Error, Lifecycle, TlsMode, Topology};
use std::ffi::{c_char, c_int, c_void};

use super::args::invalid;
use super::call::cluster_call;

/// Target process for "any worker": the next one, round-robin.
pub const CLUSTER_ANY_WORKER: i32 = 0;
/// Timeout value meaning "wait for as long as it takes".
pub const CLUSTER_FOREVER: i64 = -1;
/// Id of the head process.
pub const CLUSTER_HEAD: i32 = 1;

/// `cluster_config.topology` values.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_topology {
    /// Workers call each other; connections are made on first use.
    CLUSTER_TOPOLOGY_ALL_TO_ALL = 0,
    /// Workers talk only to the head.
    CLUSTER_TOPOLOGY_MASTER_WORKER = 1,
}

pub(crate) fn topology_from(t: i32) -> Result<Topology, Error> {
    match t {
        0 => Ok(Topology::AllToAll),
        1 => Ok(Topology::MasterWorker),
        t => Err(invalid(format!("unknown topology {t}"))),
    }
}

/// `cluster_config.tls` values: which connections this process asks to
/// run under TLS. Either end asking is enough; every member derives the
/// same key from the cookie, so nothing else needs to be handed out.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_tls {
    /// Asks for none (a peer may still ask).
    CLUSTER_TLS_OFF = 0,
    /// Connections that are not on loopback: those that cross hosts.
    CLUSTER_TLS_CROSS_HOST = 1,
    /// Every connection, loopback too.
    CLUSTER_TLS_ALWAYS = 2,
}

pub(crate) fn tls_from(t: i32) -> Result<TlsMode, Error> {
    match t {
        0 => Ok(TlsMode::Off),
        1 => Ok(TlsMode::CrossHost),
        2 => Ok(TlsMode::Always),
        t => Err(invalid(format!("unknown TLS mode {t}"))),
    }
}

pub(crate) fn tls_code(t: TlsMode) -> cluster_tls {
    match t {
        TlsMode::Off => cluster_tls::CLUSTER_TLS_OFF,
        TlsMode::CrossHost => cluster_tls::CLUSTER_TLS_CROSS_HOST,
        TlsMode::Always => cluster_tls::CLUSTER_TLS_ALWAYS,
    }
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

pub(crate) fn level_from(level: i32) -> Result<Level, Error> {
    match level {
        0..=4 => Ok(Level::from_u8(level as u8)),
        l => Err(invalid(format!("unknown log level {l}"))),
    }
}

pub(crate) fn level_code(level: Level) -> cluster_log_level {
    match level {
        Level::Off => cluster_log_level::CLUSTER_LOG_OFF,
        Level::Error => cluster_log_level::CLUSTER_LOG_ERROR,
        Level::Warn => cluster_log_level::CLUSTER_LOG_WARN,
        Level::Info => cluster_log_level::CLUSTER_LOG_INFO,
        Level::Debug => cluster_log_level::CLUSTER_LOG_DEBUG,
    }
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

pub(crate) fn lifecycle_code(ev: Lifecycle) -> cluster_lifecycle {
    match ev {
        Lifecycle::Started => cluster_lifecycle::CLUSTER_WORKER_STARTED,
        Lifecycle::Exited { graceful: true } => cluster_lifecycle::CLUSTER_WORKER_EXITED,
        Lifecycle::Exited { graceful: false } => cluster_lifecycle::CLUSTER_WORKER_DIED,
    }
}

/// Services, as named by `cluster_event.service`. Each service numbers
/// its own event kinds; a new service adds kinds, never fields.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_service {
    /// The node core: futures and membership.
    CLUSTER_SERVICE_CORE = 0,
    /// Remote calls.
    CLUSTER_SERVICE_RPC = 2,
}

/// Kinds of `cluster_event` of `CLUSTER_SERVICE_CORE`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_event_kind {
    /// The future `id` completed (`status`: CLUSTER_OK or its error): its
    /// wait and fetch no longer block. See `cluster_future_id`.
    CLUSTER_EVENT_FUTURE_READY = 0,
    /// Worker `pid` joined and is ready.
    CLUSTER_EVENT_WORKER_STARTED = 1,
    /// Worker `pid` left when asked to (rmprocs, shutdown).
    CLUSTER_EVENT_WORKER_EXITED = 2,
    /// Worker `pid` died: killed, crashed, hung, or its connection broke.
    CLUSTER_EVENT_WORKER_DIED = 3,
    /// The head asked this worker to stop.
    CLUSTER_EVENT_SHUTDOWN = 4,
    /// This worker's head went away.
    CLUSTER_EVENT_HEAD_LOST = 5,
}

/// Kinds of `cluster_event` of `CLUSTER_SERVICE_RPC`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_rpc_event_kind {
    /// `cluster_interrupt` reached this process: cancel running calls.
    CLUSTER_EVENT_RPC_INTERRUPT = 0,
}

/// One event reported by `cluster_poll`: the same shape for every service.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_event {
    /// A `cluster_service` value: whose event it is.
    pub service: i32,
    /// The service's kind (`cluster_event_kind` for CLUSTER_SERVICE_CORE).
    pub kind: i32,
    /// The object concerned (a future id for CLUSTER_EVENT_FUTURE_READY), or 0.
    pub id: u64,
    /// The process concerned, or 0.
    pub pid: i32,
    /// CLUSTER_OK, or the error status of what the event reports.
    pub status: i32,
}

impl From<&crate::node::Event> for cluster_event {
    fn from(e: &crate::node::Event) -> cluster_event {
        cluster_event { service: e.service as i32, kind: e.kind as i32, id: e.id, pid: e.pid as i32, status: e.status }
    }
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
