//! Exported functions. Conventions for all of them:
//! - They return a `cluster_status`; on error, `cluster_last_error()` on
//!   the same thread describes it.
//! - Handles may be used from any thread; a freed handle is an error.
//! - Pointers passed in are borrowed for the duration of the call only.

use super::handles::{self, Kind};
use super::types::*;
use super::*;
use crate::cluster::Cluster;
use crate::node::{Config, DispatchMode, Lifecycle, Topology};
use crate::prelude::*;
use crate::error::{Error, ErrorKind};
use crate::launch::LaunchOptions;
use crate::log::Level;
use crate::node::{Future, FutureRef, Value};
use crate::service::rpc::Call;
use parking_lot::Mutex;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn cluster_of(ctx: *mut cluster_ctx) -> Result<Arc<Cluster>, Error> {
    handles::get::<Cluster>(Kind::Cluster, ctx as u64)
}

/// A future behind a handle, with room for its error text.
struct FutureObj {
    fut: Future,
    err_text: std::sync::OnceLock<std::ffi::CString>,
}

impl std::ops::Deref for FutureObj {
    type Target = Future;
    fn deref(&self) -> &Future {
        &self.fut
    }
}

fn future_of(f: *mut cluster_future) -> Result<Arc<FutureObj>, Error> {
    handles::get::<FutureObj>(Kind::Future, f as u64)
}

struct CallObj {
    call: Mutex<Option<Call>>,
    deferred: AtomicBool,
}

fn call_of(c: *mut cluster_call) -> Result<Arc<CallObj>, Error> {
    handles::get::<CallObj>(Kind::Call, c as u64)
}

fn pid_arg(pid: i32) -> Result<u32, Error> {
    if pid < 0 {
        Err(Error::new(ErrorKind::InvalidArgument, format!("process id {pid} is negative")))
    } else {
        Ok(pid as u32)
    }
}

fn timeout_arg(ms: i64) -> Option<Duration> {
    if ms < 0 {
        None
    } else {
        Some(Duration::from_millis(ms as u64))
    }
}

unsafe fn pid_list(ids: *const i32, n: usize) -> Result<Vec<u32>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ids.is_null() {
        return Err(null_arg("ids"));
    }
    std::slice::from_raw_parts(ids, n).iter().map(|&p| pid_arg(p)).collect()
}

/// Copies `ids` to `out[0..cap)`; `*count` gets the full number.
unsafe fn put_ids(ids: Vec<u32>, out: *mut i32, cap: usize, count: *mut usize) -> FfiResult {
    put(count, "count", ids.len())?;
    if ids.len() > cap {
        return Err(Error::new(ErrorKind::BufferTooSmall, format!("{} ids do not fit in {cap}", ids.len())));
    }
    if !ids.is_empty() {
        check_out(out, "out")?;
        for (i, id) in ids.iter().enumerate() {
            out.add(i).write(*id as i32);
        }
    }
    Ok(())
}

/// Copies `s` with a NUL into `buf[0..cap)`; `*len` gets strlen(s).
unsafe fn put_str(s: &str, buf: *mut c_char, cap: usize, len: *mut usize) -> FfiResult {
    put(len, "len", s.len())?;
    if s.len() + 1 > cap {
        return Err(Error::new(ErrorKind::BufferTooSmall, format!("{} bytes do not fit in {cap}", s.len() + 1)));
    }
    check_out(buf, "buf")?;
    std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, s.len());
    *buf.add(s.len()) = 0;
    Ok(())
}

fn new_future_handle(f: Future) -> *mut cluster_future {
    let obj = FutureObj { fut: f, err_text: std::sync::OnceLock::new() };
    handles::insert(Kind::Future, Arc::new(obj)) as *mut cluster_future
}

fn buffer_from(v: Value) -> cluster_buffer {
    let (data, len) = (v.as_ptr(), v.len());
    let handle = handles::insert(Kind::Buffer, Arc::new(v));
    cluster_buffer { data, len, handle }
}

// ---- version and errors ---------------------------------------------

/// The library's version as `CLUSTER_VERSION` encodes it. Never fails.
#[no_mangle]
pub extern "C" fn cluster_version() -> u32 {
    CLUSTER_VERSION
}

/// The library's version as "major.minor.patch". Static storage; never NULL.
#[no_mangle]
pub extern "C" fn cluster_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// A static, NUL-terminated description of `status`. Never NULL.
#[no_mangle]
pub extern "C" fn cluster_status_str(status: i32) -> *const c_char {
    let s: &'static str = match status {
        0 => "ok\0",
        1 => "invalid argument\0",
        2 => "invalid, freed or wrong-kind handle\0",
        3 => "only process 1 can add and remove workers\0",
        4 => "no such process\0",
        5 => "remote error\0",
        6 => "process exited\0",
        7 => "interrupted\0",
        8 => "timed out\0",
        9 => "not allowed by the cluster topology\0",
        10 => "worker launch failed\0",
        11 => "authentication failed\0",
        12 => "I/O error\0",
        13 => "protocol error\0",
        14 => "message too large\0",
        15 => "cluster is shut down\0",
        16 => "internal panic\0",
        17 => "not ready\0",
        18 => "several processes failed\0",
        19 => "not available in this dispatch mode\0",
        20 => "buffer too small\0",
        21 => "the head went away\0",
        _ => "unknown status\0",
    };
    s.as_ptr() as *const c_char
}

/// The message of the last failed call on this thread ("" if none).
/// Ownership: thread-local storage, valid until the next failing call on
/// this thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn cluster_last_error() -> *const c_char {
    last_error_ptr()
}

/// The process the last error on this thread concerns (e.g. the worker a
/// remote error came from), or 0.
#[no_mangle]
pub extern "C" fn cluster_last_error_pid() -> i32 {
    last_error_pid()
}

// ---- configuration and lifecycle ------------------------------------------

/// Fills `*config` with the defaults. Blocking: no. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_init(config: *mut cluster_config) -> cluster_status {
    guard(|| {
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
            },
        )
    })
}

unsafe fn config_from(c: *const cluster_config) -> Result<Config, Error> {
    let mut cfg = Config::default();
    if c.is_null() {
        return Ok(cfg);
    }
    let c = &*c;
    if c.struct_size as usize != std::mem::size_of::<cluster_config>() {
        return Err(Error::new(ErrorKind::InvalidArgument, "config was not filled by cluster_config_init"));
    }
    if let Some(h) = opt_cstr(c.listen_host, "listen_host")? {
        cfg.listen_host = h.to_string();
    }
    cfg.cookie = opt_cstr(c.cookie, "cookie")?.map(str::to_string);
    cfg.join = opt_cstr(c.join, "join")?.map(str::to_string);
    cfg.topology = match c.topology {
        0 => Topology::AllToAll,
        1 => Topology::MasterWorker,
        t => return Err(Error::new(ErrorKind::InvalidArgument, format!("unknown topology {t}"))),
    };
    cfg.dispatch = match c.dispatch {
        0 => DispatchMode::Threads,
        1 => DispatchMode::Host,
        d => return Err(Error::new(ErrorKind::InvalidArgument, format!("unknown dispatch mode {d}"))),
    };
    cfg.handler_threads = c.handler_threads as usize;
    cfg.startup_timeout = Duration::from_millis(c.startup_timeout_ms as u64);
    cfg.max_message_bytes = c.max_message_bytes;
    cfg.spin = Duration::from_micros(c.spin_us as u64);
    cfg.log_level = match c.log_level {
        -1 => None,
        0..=4 => Some(Level::from_u8(c.log_level as u8)),
        l => return Err(Error::new(ErrorKind::InvalidArgument, format!("unknown log level {l}"))),
    };
    cfg.exit_on_head_loss = c.exit_on_head_loss;
    Ok(cfg)
}

/// Starts this process's part of a cluster. A process started by
/// `cluster_addprocs` (or with `config->join` set) becomes a worker and
/// connects to its head; any other process becomes the head, id 1.
/// A launched worker that cannot reach its head within the startup
/// timeout exits the process (status 3) when `exit_on_head_loss` is set.
///
/// Ownership: `config` (may be NULL for defaults) is read during the call;
/// `*out` receives a new handle, released with `cluster_free`.
/// Blocking: a worker blocks until it has joined (up to the startup timeout).
/// Threads: any; each call makes an independent cluster.
#[no_mangle]
pub unsafe extern "C" fn cluster_init(config: *const cluster_config, out: *mut *mut cluster_ctx) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        let cfg = config_from(config)?;
        let c = Cluster::init(cfg)?;
        put(out, "out", handles::insert(Kind::Cluster, Arc::new(c)) as *mut cluster_ctx)
    })
}

/// Releases the handle and closes the cluster: connections close, pending
/// futures fail, and workers of a head exit when they see it gone. NULL is
/// accepted. Use `cluster_shutdown` first for an orderly stop.
/// Blocking: never; safe to call from a garbage-collector finalizer.
/// Threads: any. Futures of this cluster stay valid handles (they fail).
#[no_mangle]
pub extern "C" fn cluster_free(ctx: *mut cluster_ctx) -> cluster_status {
    if ctx.is_null() {
        return cluster_status::CLUSTER_OK;
    }
    guard(|| {
        let obj = handles::remove(Kind::Cluster, ctx as u64)?;
        if let Ok(c) = obj.downcast::<Cluster>() {
            c.close();
        }
        Ok(())
    })
}

/// On the head: stops every worker (as `cluster_rmprocs`), then closes.
/// On a worker: closes its connections. The handle stays valid until
/// `cluster_free`; later calls fail with CLUSTER_ERR_SHUTDOWN.
/// Blocking: up to `timeout_ms` (CLUSTER_FOREVER: no limit). Threads: any.
#[no_mangle]
pub extern "C" fn cluster_shutdown(ctx: *mut cluster_ctx, timeout_ms: i64) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        c.shutdown(timeout_arg(timeout_ms).unwrap_or(Duration::from_secs(3600 * 24 * 365)))
    })
}

/// Worker: tells the head this process has registered its functions; the
/// head's `cluster_addprocs` returns once every new worker is ready.
/// No-op on the head. Blocking: no. Threads: any.
#[no_mangle]
pub extern "C" fn cluster_ready(ctx: *mut cluster_ctx) -> cluster_status {
    guard(|| cluster_of(ctx)?.ready())
}

/// Worker, threads mode: `cluster_ready`, then serves calls until the head
/// asks this worker to stop (returns CLUSTER_OK) or goes away.
/// Blocking: yes, that is its purpose. Threads: any one thread.
#[no_mangle]
pub extern "C" fn cluster_serve(ctx: *mut cluster_ctx) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let node = Arc::clone(&c);
        drop(c);
        node.serve()
    })
}

/// `*out` = whether this process is the head. Blocking: no. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_is_head(ctx: *mut cluster_ctx, out: *mut bool) -> cluster_status {
    guard(|| put(out, "out", cluster_of(ctx)?.is_head()))
}

/// Copies the cluster cookie, NUL-terminated, into `buf[0..cap)`; `*len`
/// gets its length (also on CLUSTER_ERR_BUFFER_TOO_SMALL). Keep it secret:
/// it lets a process join (see `cluster_config.join`).
#[no_mangle]
pub unsafe extern "C" fn cluster_cookie(ctx: *mut cluster_ctx, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    guard(|| put_str(cluster_of(ctx)?.cookie(), buf, cap, len))
}

/// Copies this process's listening address ("host:port") into `buf`, as
/// `cluster_cookie`. Elastic workers join the head at this address.
#[no_mangle]
pub unsafe extern "C" fn cluster_address(ctx: *mut cluster_ctx, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    guard(|| put_str(cluster_of(ctx)?.address(), buf, cap, len))
}

// ---- membership ------------------------------------------------------

/// `*out` = this process's id (1 on the head). Blocking: no. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_myid(ctx: *mut cluster_ctx, out: *mut i32) -> cluster_status {
    guard(|| put(out, "out", cluster_of(ctx)?.myid() as i32))
}

/// `*out` = number of processes, this one included.
#[no_mangle]
pub unsafe extern "C" fn cluster_nprocs(ctx: *mut cluster_ctx, out: *mut usize) -> cluster_status {
    guard(|| put(out, "out", cluster_of(ctx)?.nprocs()))
}

/// `*out` = number of workers (1 when the head is alone, as Distributed).
#[no_mangle]
pub unsafe extern "C" fn cluster_nworkers(ctx: *mut cluster_ctx, out: *mut usize) -> cluster_status {
    guard(|| put(out, "out", cluster_of(ctx)?.nworkers()))
}

/// Writes the sorted ids of all processes to `out[0..cap)` and their number
/// to `*count` (also on CLUSTER_ERR_BUFFER_TOO_SMALL, to size a retry).
#[no_mangle]
pub unsafe extern "C" fn cluster_procs(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    guard(|| put_ids(cluster_of(ctx)?.procs(), out, cap, count))
}

/// As `cluster_procs`, for the workers (`[1]` when the head is alone).
#[no_mangle]
pub unsafe extern "C" fn cluster_workers(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    guard(|| put_ids(cluster_of(ctx)?.workers(), out, cap, count))
}

/// As `cluster_procs`, without this process.
#[no_mangle]
pub unsafe extern "C" fn cluster_other_procs(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    guard(|| put_ids(cluster_of(ctx)?.other_procs(), out, cap, count))
}

/// As `cluster_workers`, without this process.
#[no_mangle]
pub unsafe extern "C" fn cluster_other_workers(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    guard(|| put_ids(cluster_of(ctx)?.other_workers(), out, cap, count))
}

unsafe fn str_list(p: *const *const c_char, name: &str) -> Result<Option<Vec<String>>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    let mut v = Vec::new();
    let mut i = 0;
    loop {
        let s = *p.add(i);
        if s.is_null() {
            return Ok(Some(v));
        }
        v.push(cstr(s, name)?.to_string());
        i += 1;
        if i > 100_000 {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("{name} is not NULL-terminated")));
        }
    }
}

unsafe fn launch_options_from(o: *const cluster_launch_options) -> Result<LaunchOptions, Error> {
    let mut opts = LaunchOptions::default();
    if o.is_null() {
        return Ok(opts);
    }
    let o = &*o;
    opts.program = opt_cstr(o.program, "program")?.map(Into::into);
    opts.args = str_list(o.argv, "argv")?;
    for kv in str_list(o.env, "env")?.unwrap_or_default() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, format!("env entry {kv:?} is not NAME=value")))?;
        opts.env.push((k.to_string(), v.to_string()));
    }
    opts.dir = opt_cstr(o.dir, "dir")?.map(Into::into);
    Ok(opts)
}

/// Head only: starts `n` workers on this machine and writes their ids to
/// `out_ids[0..n)` once every one is connected and ready. Ids are never
/// reused. All or nothing: on failure no worker of this call is left
/// running and the error names each failed worker and why.
/// Ownership: `options` (may be NULL) is copied. Blocking: until ready or
/// the startup timeout. Threads: any, not from a handler of this process.
#[no_mangle]
pub unsafe extern "C" fn cluster_addprocs(
    ctx: *mut cluster_ctx,
    n: usize,
    options: *const cluster_launch_options,
    out_ids: *mut i32,
) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        if n > 0 {
            check_out(out_ids, "out_ids")?;
        }
        let opts = launch_options_from(options)?;
        let ids = c.addprocs(n, &opts)?;
        for (i, id) in ids.iter().enumerate() {
            out_ids.add(i).write(*id as i32);
        }
        Ok(())
    })
}

/// Head only: stops the workers `ids[0..n)`: asks them to leave, then
/// sends SIGTERM, then SIGKILL, each after a share of `timeout_ms`.
/// Blocking: until they are gone, or CLUSTER_ERR_TIMEOUT. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_rmprocs(ctx: *mut cluster_ctx, ids: *const i32, n: usize, timeout_ms: i64) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let ids = pid_list(ids, n)?;
        c.rmprocs(&ids, timeout_arg(timeout_ms).unwrap_or(Duration::from_secs(3600 * 24)))
    })
}

/// Head only, before the first `cluster_addprocs`: sets the topology
/// (a `cluster_topology` value).
#[no_mangle]
pub extern "C" fn cluster_set_topology(ctx: *mut cluster_ctx, topology: i32) -> cluster_status {
    guard(|| {
        let t = match topology {
            0 => Topology::AllToAll,
            1 => Topology::MasterWorker,
            t => return Err(Error::new(ErrorKind::InvalidArgument, format!("unknown topology {t}"))),
        };
        cluster_of(ctx)?.set_topology(t)
    })
}

/// Sets (or clears, with NULL `callback`) the worker lifecycle callback.
/// Threads mode: called on a library thread; host mode: inside
/// `cluster_poll`. `user_data` must stay valid until replaced.
#[no_mangle]
pub extern "C" fn cluster_set_lifecycle_callback(ctx: *mut cluster_ctx, callback: cluster_lifecycle_fn, user_data: *mut c_void) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let ud = UserData(user_data);
        let hook = callback.map(|cb| {
            Arc::new(move |pid: u32, ev: Lifecycle| {
                let ud = ud;
                // SAFETY: the host registered `cb` with this user data.
                unsafe { cb(ud.0, pid as i32, lifecycle_code(ev)) }
            }) as crate::node::LifecycleHook
        });
        c.set_lifecycle_hook(hook);
        Ok(())
    })
}

fn lifecycle_code(ev: Lifecycle) -> cluster_lifecycle {
    match ev {
        Lifecycle::Started => cluster_lifecycle::CLUSTER_WORKER_STARTED,
        Lifecycle::Exited { graceful: true } => cluster_lifecycle::CLUSTER_WORKER_EXITED,
        Lifecycle::Exited { graceful: false } => cluster_lifecycle::CLUSTER_WORKER_DIED,
    }
}

/// Routes log records to `callback` instead of stderr (NULL restores
/// stderr). Threads mode: any library thread may call it; host mode:
/// records are held and delivered inside `cluster_poll`.
#[no_mangle]
pub extern "C" fn cluster_set_log_callback(ctx: *mut cluster_ctx, callback: cluster_log_fn, user_data: *mut c_void) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let ud = UserData(user_data);
        let sink = callback.map(|cb| {
            Arc::new(move |level: Level, msg: &str| {
                let ud = ud;
                let text = std::ffi::CString::new(msg.replace('\0', " ")).unwrap_or_default();
                let lv = match level {
                    Level::Off => cluster_log_level::CLUSTER_LOG_OFF,
                    Level::Error => cluster_log_level::CLUSTER_LOG_ERROR,
                    Level::Warn => cluster_log_level::CLUSTER_LOG_WARN,
                    Level::Info => cluster_log_level::CLUSTER_LOG_INFO,
                    Level::Debug => cluster_log_level::CLUSTER_LOG_DEBUG,
                };
                // SAFETY: the host registered `cb` with this user data.
                unsafe { cb(ud.0, lv, text.as_ptr()) }
            }) as crate::log::Sink
        });
        c.log.set_sink(sink);
        Ok(())
    })
}

/// Sets the log level (a `cluster_log_level`). Blocking: no. Threads: any.
#[no_mangle]
pub extern "C" fn cluster_set_log_level(ctx: *mut cluster_ctx, level: i32) -> cluster_status {
    guard(|| {
        if !(0..=4).contains(&level) {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("unknown log level {level}")));
        }
        cluster_of(ctx)?.log.set_level(Level::from_u8(level as u8));
        Ok(())
    })
}

// ---- functions and calls --------------------------------------------------

/// Registers `handler` under `name` in this process (replacing an earlier
/// one). Remote processes call it by name. `name` is copied; `user_data`
/// is passed to every call and must stay valid while registered.
/// Blocking: no. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_register(ctx: *mut cluster_ctx, name: *const c_char, handler: cluster_handler, user_data: *mut c_void) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let name = cstr(name, "name")?;
        let h = handler.ok_or_else(|| null_arg("handler"))?;
        let ud = UserData(user_data);
        c.register(name, Arc::new(move |call: Call| run_c_handler(h, ud, call)))
    })
}

fn run_c_handler(h: unsafe extern "C" fn(*mut c_void, *mut cluster_call) -> i32, ud: UserData, call: Call) {
    let obj = Arc::new(CallObj { call: Mutex::new(Some(call)), deferred: AtomicBool::new(false) });
    let handle = handles::insert(Kind::Call, obj.clone());
    // SAFETY: the host registered `h` with `ud`; the handle is valid for the call.
    let status = unsafe { h(ud.0, handle as *mut cluster_call) };
    if obj.deferred.load(Ordering::Acquire) {
        return; // the host owns the handle now
    }
    let _ = handles::remove(Kind::Call, handle);
    let rest = obj.call.lock().take();
    if let Some(call) = rest {
        if status == cluster_status::CLUSTER_OK as i32 {
            call.reply(&[]);
        } else {
            // SAFETY: a static string.
            let what = unsafe { std::ffi::CStr::from_ptr(cluster_status_str(status)) }.to_string_lossy();
            call.fail(&format!("handler returned: {what}"));
        }
    }
}

/// Removes the function `name`; later calls to it fail remotely.
#[no_mangle]
pub unsafe extern "C" fn cluster_unregister(ctx: *mut cluster_ctx, name: *const c_char) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let name = cstr(name, "name")?;
        if c.unregister(name) {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::InvalidArgument, format!("{name} is not registered")))
        }
    })
}

/// Calls `name` on process `pid` (CLUSTER_ANY_WORKER: next worker,
/// round-robin) with `args[0..len)` and returns a future at once.
/// Calls to one process run in the order they were made.
/// Ownership: `args` is written to the socket before return, never kept;
/// `*out` is a new future, released with `cluster_future_free`.
/// Blocking: only while a large argument is written. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_remotecall(
    ctx: *mut cluster_ctx,
    pid: i32,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        let c = cluster_of(ctx)?;
        let f = c.remotecall(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", new_future_handle(f))
    })
}

/// Calls and waits for the value: one round trip. On success `*out` holds
/// the result, owned by the caller until `cluster_buffer_free`. On
/// CLUSTER_ERR_REMOTE, `cluster_last_error_pid()` names the failing process.
/// Blocking: until the result arrives (the caller's thread reads the reply
/// itself when it can). Threads: any; in host mode, not for calls that
/// need this process's own handlers.
#[no_mangle]
pub unsafe extern "C" fn cluster_remotecall_fetch(
    ctx: *mut cluster_ctx,
    pid: i32,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut cluster_buffer,
) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        let c = cluster_of(ctx)?;
        let v = c.remotecall_fetch(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", buffer_from(v))
    })
}

/// Calls and waits for completion; `*out` is the completed future, whose
/// value can be fetched or passed on. Ownership and blocking as above.
#[no_mangle]
pub unsafe extern "C" fn cluster_remotecall_wait(
    ctx: *mut cluster_ctx,
    pid: i32,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        let c = cluster_of(ctx)?;
        let f = c.remotecall(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?)?;
        let r = f.wait(None);
        let h = new_future_handle(f);
        match r {
            Ok(()) => put(out, "out", h),
            Err(e) => {
                cluster_future_free(h);
                Err(e)
            }
        }
    })
}

/// Fire and forget: calls `name` on `pid`; no result, and a failure is
/// only logged on the callee. `args` is not kept. Blocking: no. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_remote_do(ctx: *mut cluster_ctx, pid: i32, name: *const c_char, args: *const u8, len: usize) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        c.remote_do(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?)
    })
}

/// Calls `name` on each process of `pids[0..n)` (all processes, this one
/// included, when `pids` is NULL) and waits for all. If any fail, returns
/// CLUSTER_ERR_COMPOSITE with a message listing each failed process.
/// Blocking: up to `timeout_ms`. Threads: any; threads mode only when this
/// process is among the targets.
#[no_mangle]
pub unsafe extern "C" fn cluster_everywhere(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    n: usize,
    name: *const c_char,
    args: *const u8,
    len: usize,
    timeout_ms: i64,
) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let list = if pids.is_null() { None } else { Some(pid_list(pids, n)?) };
        c.everywhere(list.as_deref(), cstr(name, "name")?, bytes(args, len, "args")?, timeout_arg(timeout_ms))
    })
}

/// Cancels the calls running on `ids[0..n)`: their handlers see
/// `cluster_call_cancelled` and the calls fail with CLUSTER_ERR_INTERRUPTED.
/// Idle processes ignore it. Blocking: no. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_interrupt(ctx: *mut cluster_ctx, ids: *const i32, n: usize) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        c.interrupt(&pid_list(ids, n)?)
    })
}

// ---- futures ------------------------------------------------------------

/// Waits until the future completes or `timeout_ms` passes (CLUSTER_FOREVER:
/// no limit; 0: just check). Returns CLUSTER_OK, CLUSTER_ERR_TIMEOUT, or the
/// call's own error. Blocking: yes, up to the timeout. Threads: any.
#[no_mangle]
pub extern "C" fn cluster_future_wait(f: *mut cluster_future, timeout_ms: i64) -> cluster_status {
    guard(|| future_of(f)?.wait(timeout_arg(timeout_ms)))
}

/// `*out` = whether the future has completed (successfully or not).
/// Blocking: never. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_isready(f: *mut cluster_future, out: *mut bool) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        put(out, "out", future_of(f)?.is_ready())
    })
}

/// Waits as `cluster_future_wait`, then points `*data`/`*len` at the
/// value. The value is cached: fetching again costs nothing.
/// Ownership: the bytes belong to the future and stay valid until
/// `cluster_future_free`. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_fetch(f: *mut cluster_future, timeout_ms: i64, data: *mut *const u8, len: *mut usize) -> cluster_status {
    guard(|| {
        check_out(data, "data")?;
        check_out(len, "len")?;
        let fut = future_of(f)?;
        let v = fut.fetch(timeout_arg(timeout_ms))?;
        let (p, n) = (v.as_ptr(), v.len());
        put(data, "data", p)?;
        put(len, "len", n)
    })
}

/// For a future that failed: `*pid` = the process the error came from,
/// `*message` = its text (owned by the future, valid until it is freed).
/// Either out pointer may be NULL. CLUSTER_ERR_NOT_READY if still pending;
/// CLUSTER_OK with pid 0 and "" if it succeeded. Blocking: never.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_error(f: *mut cluster_future, pid: *mut i32, message: *mut *const c_char) -> cluster_status {
    guard(|| {
        let fut = future_of(f)?;
        if !fut.is_ready() {
            return Err(Error::new(ErrorKind::NotReady, "the future is still pending"));
        }
        let (p, m) = match fut.wait(Some(Duration::ZERO)) {
            Ok(()) => (0, std::ptr::null()),
            Err(e) => (e.pid as i32, error_text(&fut, &e)),
        };
        if !pid.is_null() {
            pid.write(p);
        }
        if !message.is_null() {
            message.write(if m.is_null() { c"".as_ptr() } else { m });
        }
        Ok(())
    })
}

/// The error text of a failed future, kept with its handle.
fn error_text(fut: &FutureObj, e: &Error) -> *const c_char {
    fut.err_text
        .get_or_init(|| std::ffi::CString::new(e.to_string().replace('\0', " ")).unwrap_or_default())
        .as_ptr()
}

/// `*out` = the future's id, unique in this process; host-mode
/// CLUSTER_EVENT_FUTURE_READY events name futures by it.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_id(f: *mut cluster_future, out: *mut u64) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        put(out, "out", future_of(f)?.id())
    })
}

/// `*out` = the process computing or holding the future's value.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_pid(f: *mut cluster_future, out: *mut i32) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        put(out, "out", future_of(f)?.pid() as i32)
    })
}

/// Makes a reference to send to another process (e.g. inside call
/// arguments), which imports it with `cluster_future_import`. The owner
/// keeps the value until every exported reference has been imported and
/// freed. Blocking: a round trip when this future is itself imported.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_export(f: *mut cluster_future, out: *mut cluster_future_ref) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        let r = future_of(f)?.export()?;
        put(out, "out", cluster_future_ref { owner: r.owner as i32, id: r.id })
    })
}

/// Turns a reference from `cluster_future_export` into a future of this
/// process. Import each exported reference once: freeing the imported
/// future releases it. Blocking: no. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_import(ctx: *mut cluster_ctx, r: *const cluster_future_ref, out: *mut *mut cluster_future) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        if r.is_null() {
            return Err(null_arg("ref"));
        }
        let r = &*r;
        let c = cluster_of(ctx)?;
        let f = c.import(FutureRef { owner: pid_arg(r.owner)?, id: r.id })?;
        put(out, "out", new_future_handle(f))
    })
}

/// Releases a future. NULL is accepted; a second free is an error, not a
/// crash. Blocking: never (safe from a finalizer). Threads: any.
#[no_mangle]
pub extern "C" fn cluster_future_free(f: *mut cluster_future) -> cluster_status {
    if f.is_null() {
        return cluster_status::CLUSTER_OK;
    }
    guard(|| handles::remove(Kind::Future, f as u64).map(drop))
}

/// Releases a buffer and zeroes `*buf`. NULL, and an already zeroed
/// buffer, are accepted. Blocking: never. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_buffer_free(buf: *mut cluster_buffer) -> cluster_status {
    if buf.is_null() || (*buf).handle == 0 {
        return cluster_status::CLUSTER_OK;
    }
    guard(|| {
        let b = &mut *buf;
        let r = handles::remove(Kind::Buffer, b.handle).map(drop);
        b.data = std::ptr::null();
        b.len = 0;
        b.handle = 0;
        r
    })
}

// ---- incoming calls -------------------------------------------------------

fn with_call<T>(c: *mut cluster_call, f: impl FnOnce(&Call) -> T) -> Result<T, Error> {
    let obj = call_of(c)?;
    let g = obj.call.lock();
    match g.as_ref() {
        Some(call) => Ok(f(call)),
        None => Err(Error::new(ErrorKind::InvalidArgument, "the call was already answered")),
    }
}

/// Points `*data`/`*len` at the call's arguments. Ownership: the bytes
/// belong to the call and stay valid until it is answered (or, for a
/// deferred call, freed). Blocking: never.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_args(c: *mut cluster_call, data: *mut *const u8, len: *mut usize) -> cluster_status {
    guard(|| {
        check_out(data, "data")?;
        check_out(len, "len")?;
        let (p, n) = with_call(c, |call| (call.args().as_ptr(), call.args().len()))?;
        put(data, "data", p)?;
        put(len, "len", n)
    })
}

/// `*out` = the id of the calling process.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_caller(c: *mut cluster_call, out: *mut i32) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        put(out, "out", with_call(c, |call| call.caller() as i32)?)
    })
}

/// Copies the called function's name into `buf`, as `cluster_cookie`.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_name(c: *mut cluster_call, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    guard(|| {
        let name = with_call(c, |call| call.name().to_string())?;
        put_str(&name, buf, cap, len)
    })
}

/// `*out` = whether `cluster_interrupt` cancelled this call; a long
/// handler should check it and return early. Blocking: never.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_cancelled(c: *mut cluster_call, out: *mut bool) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        put(out, "out", with_call(c, |call| call.is_cancelled())?)
    })
}

fn take_call(c: *mut cluster_call) -> Result<Call, Error> {
    call_of(c)?
        .call
        .lock()
        .take()
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "the call was already answered"))
}

/// Answers the call with `data[0..len)` (copied or sent before return).
/// A call is answered once. Blocking: only while sending. Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_reply(c: *mut cluster_call, data: *const u8, len: usize) -> cluster_status {
    guard(|| {
        let value = bytes(data, len, "data")?;
        take_call(c)?.reply(value);
        Ok(())
    })
}

/// Fails the call; the caller gets CLUSTER_ERR_REMOTE with `message`
/// (copied) and this process's id.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_fail(c: *mut cluster_call, message: *const c_char) -> cluster_status {
    guard(|| {
        let msg = opt_cstr(message, "message")?.unwrap_or("failed");
        take_call(c)?.fail(msg);
        Ok(())
    })
}

/// From inside a handler: keep the call past the handler's return. The
/// host then answers it later, from any thread, and must release it with
/// `cluster_call_free`. The handler slot is freed when the handler returns.
#[no_mangle]
pub extern "C" fn cluster_call_defer(c: *mut cluster_call) -> cluster_status {
    guard(|| {
        call_of(c)?.deferred.store(true, Ordering::Release);
        Ok(())
    })
}

/// Releases a deferred call; if it was not answered, the caller gets an
/// error. NULL is accepted. Blocking: never. Threads: any.
#[no_mangle]
pub extern "C" fn cluster_call_free(c: *mut cluster_call) -> cluster_status {
    if c.is_null() {
        return cluster_status::CLUSTER_OK;
    }
    guard(|| {
        let obj = call_of(c)?;
        if !obj.deferred.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::InvalidArgument, "only deferred calls are freed by the host"));
        }
        handles::remove(Kind::Call, c as u64).map(drop)
    })
}

// ---- host-driven mode -------------------------------------------------------

/// Host mode: `*out` = an eventfd that becomes readable when
/// `cluster_poll` has work. Owned by the cluster; do not close it.
#[no_mangle]
pub unsafe extern "C" fn cluster_event_fd(ctx: *mut cluster_ctx, out: *mut c_int) -> cluster_status {
    guard(|| {
        check_out(out, "out")?;
        put(out, "out", cluster_of(ctx)?.event_fd()?)
    })
}

/// Host mode: `notify(user_data)` is called from a library thread whenever
/// work becomes pending. It must only wake the host (e.g. `uv_async_send`
/// with the async handle as `user_data`). NULL clears it.
#[no_mangle]
pub extern "C" fn cluster_set_notify(ctx: *mut cluster_ctx, notify: cluster_notify_fn, user_data: *mut c_void) -> cluster_status {
    guard(|| {
        let c = cluster_of(ctx)?;
        let ud = UserData(user_data);
        let hook = notify.map(|n| {
            Arc::new(move || {
                let ud = ud;
                // SAFETY: the host registered `n` with this user data.
                unsafe { n(ud.0) };
            }) as crate::node::Notify
        });
        c.set_notify(hook)
    })
}

/// Host mode: runs the handlers of pending incoming calls on this thread,
/// delivers held log records and lifecycle callbacks, and writes up to
/// `cap` events to `events`, their number to `*count`. Events beyond `cap`
/// stay queued (the event fd stays signalled). Blocking: never, apart from
/// the handlers it runs. Threads: the host's thread.
#[no_mangle]
pub unsafe extern "C" fn cluster_poll(ctx: *mut cluster_ctx, events: *mut cluster_event, cap: usize, count: *mut usize) -> cluster_status {
    guard(|| {
        check_out(count, "count")?;
        if cap > 0 {
            check_out(events, "events")?;
        }
        let c = cluster_of(ctx)?;
        let node = Arc::clone(&c);
        drop(c);
        let evs = node.poll(cap)?;
        for (i, e) in evs.iter().enumerate() {
            use crate::node::events::core;
            let (kind, lifecycle, pid, future_id) = match (e.service, e.kind) {
                (core::SERVICE, core::FUTURE_READY) => (0, 0, 0, e.id),
                (core::SERVICE, core::WORKER_STARTED) => (1, 0, e.pid as i32, 0),
                (core::SERVICE, core::WORKER_EXITED) => (1, 1, e.pid as i32, 0),
                (core::SERVICE, core::WORKER_DIED) => (1, 2, e.pid as i32, 0),
                (core::SERVICE, _) => (3, 0, 0, 0),
                _ => (2, 0, 0, 0),
            };
            let ev = cluster_event { kind, lifecycle, pid, future_id };
            events.add(i).write(ev);
        }
        put(count, "count", evs.len())
    })
}
