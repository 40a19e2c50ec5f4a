//! The plain structs a caller fills: `cluster_config` (for `cluster_init`)
//! and `cluster_launch_options` (for `cluster_addprocs`), and their
//! conversions into the core's `Config` and `LaunchOptions`.

use super::args::*;
use super::status::cluster_status;
use super::types::*;
use crate::{Config, DispatchMode, Error, LaunchOptions};
use std::ffi::c_char;
use std::time::Duration;

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
    /// A launched worker that cannot reach its head exits the process from
    /// `cluster_init` (status 3). Default true. Head loss later never exits
    /// on a library thread: it is CLUSTER_EVENT_HEAD_LOST, and
    /// `cluster_serve` returns CLUSTER_ERR_HEAD_LOST; a worker wanting the
    /// old behaviour exits then itself.
    pub exit_on_head_loss: bool,
    /// A peer that sends nothing for this long is declared dead (its calls
    /// fail; a worker this head launched is killed). The library answers
    /// heartbeats itself, whatever the host does. Default 5000; 0: never.
    pub heartbeat_timeout_ms: u32,
    /// Total time a new connection has to authenticate and say who it is.
    /// Default 5000.
    pub handshake_timeout_ms: u32,
    /// A `cluster_tls` value: which connections this process asks to run
    /// under TLS. Default from LIBCLUSTER_TLS ("off", "on" for
    /// cross-host, "always"), else CLUSTER_TLS_OFF. A head passes its
    /// setting to the workers it launches.
    pub tls: i32,
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

/// Fills `*config` with the defaults (string fields NULL).
///
/// Ownership: `*config` is the caller's; nothing is allocated.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_init(config: *mut cluster_config) -> cluster_status {
    ffi!({
        let d = Config::default();
        put(
            config,
            "config",
            cluster_config {
                struct_size: std::mem::size_of::<cluster_config>() as u32,
                listen_host: std::ptr::null(),
                cookie: std::ptr::null(),
                join: std::ptr::null(),
                topology: cluster_topology::CLUSTER_TOPOLOGY_ALL_TO_ALL as i32,
                dispatch: cluster_dispatch::CLUSTER_DISPATCH_THREADS as i32,
                handler_threads: d.handler_threads as u32,
                startup_timeout_ms: d.startup_timeout.as_millis() as u32,
                max_message_bytes: d.max_message_bytes,
                spin_us: d.spin.as_micros() as u32,
                log_level: -1,
                exit_on_head_loss: true,
                heartbeat_timeout_ms: d.heartbeat_timeout.as_millis() as u32,
                handshake_timeout_ms: d.handshake_timeout.as_millis() as u32,
                tls: tls_code(d.tls) as i32,
            },
        )
    })
}

/// The core's configuration from `*c` (NULL: the defaults).
pub(crate) unsafe fn config_from(c: *const cluster_config) -> Result<Config, Error> {
    let mut cfg = Config::default();
    if c.is_null() {
        return Ok(cfg);
    }
    let c = &*c;
    if c.struct_size as usize != std::mem::size_of::<cluster_config>() {
        return Err(invalid("config was not filled by cluster_config_init"));
    }
    if let Some(h) = opt_cstr(c.listen_host, "listen_host")? {
        cfg.listen_host = h.to_string();
    }
    cfg.cookie = opt_cstr(c.cookie, "cookie")?.map(str::to_string);
    cfg.join = opt_cstr(c.join, "join")?.map(str::to_string);
    cfg.topology = topology_from(c.topology)?;
    cfg.dispatch = match c.dispatch {
        0 => DispatchMode::Threads,
        1 => DispatchMode::Host,
        d => return Err(invalid(format!("unknown dispatch mode {d}"))),
    };
    cfg.handler_threads = c.handler_threads as usize;
    cfg.startup_timeout = Duration::from_millis(c.startup_timeout_ms as u64);
    cfg.max_message_bytes = c.max_message_bytes;
    cfg.spin = Duration::from_micros(c.spin_us as u64);
    cfg.log_level = match c.log_level {
        -1 => None,
        l => Some(level_from(l)?),
    };
    cfg.exit_on_head_loss = c.exit_on_head_loss;
    cfg.heartbeat_timeout = Duration::from_millis(c.heartbeat_timeout_ms as u64);
    if c.handshake_timeout_ms == 0 {
        return Err(invalid("handshake_timeout_ms must be positive"));
    }
    cfg.handshake_timeout = Duration::from_millis(c.handshake_timeout_ms as u64);
    cfg.tls = tls_from(c.tls)?;
    Ok(cfg)
}

/// The core's launch options from `*o` (NULL: the defaults).
pub(crate) unsafe fn launch_options_from(o: *const cluster_launch_options) -> Result<LaunchOptions, Error> {
    let mut opts = LaunchOptions::default();
    if o.is_null() {
        return Ok(opts);
    }
    let o = &*o;
    opts.program = opt_cstr(o.program, "program")?.map(Into::into);
    opts.args = str_list(o.argv, "argv")?;
    opts.env = env_list(o.env, "env")?;
    opts.dir = opt_cstr(o.dir, "dir")?.map(Into::into);
    Ok(opts)
}
