//! `cluster_ctx`, this process's part of a cluster: starting and stopping,
//! membership, launching and removing workers, callbacks and logging,
//! registering functions, remote calls, and host-driven polling.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from, cluster_buffer};
use super::call::run_c_handler;
use super::config::{cluster_config, cluster_launch_options, config_from, launch_options_from};
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::status::cluster_status;
use super::types::*;
use super::gate::Gate;
use super::UserData;
use crate::log::Level;
use crate::{Call, Cluster, Lifecycle};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;
use std::time::Duration;

/// A cluster: this process's membership and everything it owns.
pub struct cluster_ctx {
    _private: [u8; 0],
}

/// A cluster behind a handle, with the gate its callbacks pass.
pub(crate) struct CtxObj {
    cluster: Cluster,
    gate: Arc<Gate>,
}

impl CtxObj {
    /// The gate every host callback of this cluster passes.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl std::ops::Deref for CtxObj {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

c_handle!(cluster_ctx, Kind::Cluster, CtxObj);

// ---- starting and stopping ------------------------------------------------

/// Starts this process's part of a cluster. A process started by
/// `cluster_addprocs` (or with `config->join` set) becomes a worker and
/// connects to its head; any other process becomes the head, id 1.
/// A launched worker that cannot reach its head within the startup
/// timeout exits the process (status 3) when `exit_on_head_loss` is set.
///
/// Ownership: `config` (may be NULL for defaults) is read during the call,
/// its strings copied; `*out` receives a new handle, released with
/// `cluster_free`.
/// Blocking: a worker blocks until it has joined (up to the startup
/// timeout); a head does not.
/// Threads: any; each call makes an independent cluster.
#[no_mangle]
pub unsafe extern "C" fn cluster_init(config: *const cluster_config, out: *mut *mut cluster_ctx) -> cluster_status {
    ffi!({
        check_out(out, "out")?;
        super::fork::refuse_in_child("cluster_init")?;
        let cfg = config_from(config)?;
        let c = Cluster::init(cfg)?;
        let obj = CtxObj { cluster: c, gate: Arc::new(Gate::default()) };
        put(out, "out", handles::insert(Kind::Cluster, Arc::new(obj))? as *mut cluster_ctx)
    })
}

/// Releases the handle and closes the cluster: connections close, pending
/// futures fail, and workers of a head exit when they see it gone. NULL is
/// accepted. Use `cluster_shutdown` first for an orderly stop. Futures of
/// this cluster stay valid handles (they fail).
///
/// Ownership: the handle is gone after the call; callbacks registered on
/// it may still be running on library threads when it returns.
/// Blocking: no; safe to call from a garbage-collector finalizer.
/// Threads: any, once per cluster.
#[no_mangle]
pub extern "C" fn cluster_free(ctx: *mut cluster_ctx) -> cluster_status {
    ffi!({
        if ctx.is_null() {
            return Ok(());
        }
        let obj = handles::remove(Kind::Cluster, ctx.raw())?;
        if let Ok(c) = obj.downcast::<CtxObj>() {
            c.gate.close();
            c.close();
        }
        Ok(())
    })
}

/// On the head: stops every worker (as `cluster_rmprocs`), then closes.
/// On a worker: closes its connections. The handle stays valid until
/// `cluster_free`; later calls fail with CLUSTER_ERR_SHUTDOWN.
///
/// Ownership: `ctx` stays the caller's, to free.
/// Blocking: up to `timeout_ms` (CLUSTER_FOREVER: no limit) while workers stop.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_shutdown(ctx: *mut cluster_ctx, timeout_ms: i64) -> cluster_status {
    ffi!([ctx => c] c.shutdown_async(timeout_arg(timeout_ms).unwrap_or(Duration::from_secs(3600 * 24 * 365)))?.wait(None))
}

/// `cluster_shutdown` as a future, returned at once; it completes once the
/// workers are stopped and this cluster is closed.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shutdown_async(ctx: *mut cluster_ctx, timeout_ms: i64, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.shutdown_async(timeout_arg(timeout_ms).unwrap_or(Duration::from_secs(3600 * 24 * 365)))?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Closes the cluster (as `cluster_free` does, keeping the handle) and
/// waits until no handler, lifecycle, log or notify callback of it runs.
/// Once it returns CLUSTER_OK none will run again and no library thread
/// touches any `user_data` given to this cluster: the host may free them.
/// A callback that calls it does not wait for itself.
///
/// Ownership: `ctx` stays the caller's, to free with `cluster_free`.
/// Blocking: until running callbacks return, at most `timeout_ms`
/// (CLUSTER_FOREVER: no limit); CLUSTER_ERR_TIMEOUT if one still runs
/// (none starts any more).
/// Threads: any, also from a callback of this cluster.
#[no_mangle]
pub extern "C" fn cluster_close(ctx: *mut cluster_ctx, timeout_ms: i64) -> cluster_status {
    ffi!([ctx => c] {
        c.gate.close();
        c.close();
        if c.gate.close_and_wait(timeout_arg(timeout_ms)) {
            Ok(())
        } else {
            Err(crate::Error::new(crate::ErrorKind::Timeout, "a callback of this cluster is still running"))
        }
    })
}

/// Worker: tells the head this process has registered its functions; the
/// head's `cluster_addprocs` returns once every new worker is ready.
/// No-op on the head.
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: only while the message is written to the head.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_ready(ctx: *mut cluster_ctx) -> cluster_status {
    ffi!([ctx => c] c.ready())
}

/// Worker, threads mode: `cluster_ready`, then serves calls until the head
/// asks this worker to stop (returns CLUSTER_OK) or goes away (returns
/// CLUSTER_ERR_HEAD_LOST). The library never exits the process on its own
/// threads; a worker that should end with its head does so itself:
/// `if (cluster_serve(ctx) == CLUSTER_ERR_HEAD_LOST) exit(0);`. Host mode:
/// CLUSTER_ERR_WRONG_MODE (watch for CLUSTER_EVENT_HEAD_LOST instead).
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: yes, that is its purpose.
/// Threads: any one thread.
#[no_mangle]
pub extern "C" fn cluster_serve(ctx: *mut cluster_ctx) -> cluster_status {
    ffi!([ctx => c] c.serve())
}

// ---- identity and membership ------------------------------------------------

/// `*out` = whether this process is the head.
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_is_head(ctx: *mut cluster_ctx, out: *mut bool) -> cluster_status {
    ffi!([ctx => c] put(out, "out", c.is_head()))
}

/// Copies the cluster cookie, NUL-terminated, into `buf[0..cap)`; `*len`
/// gets its length (also on CLUSTER_ERR_BUFFER_TOO_SMALL). Keep it secret:
/// it lets a process join (see `cluster_config.join`).
///
/// Ownership: `buf` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_cookie(ctx: *mut cluster_ctx, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    ffi!([ctx => c] put_str(c.cookie(), buf, cap, len))
}

/// Copies this process's listening address ("host:port") into `buf`, as
/// `cluster_cookie`. Elastic workers join the head at this address.
///
/// Ownership: `buf` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_address(ctx: *mut cluster_ctx, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    ffi!([ctx => c] put_str(c.address(), buf, cap, len))
}

/// `*out` = this process's id (1 on the head).
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_myid(ctx: *mut cluster_ctx, out: *mut i32) -> cluster_status {
    ffi!([ctx => c] put(out, "out", c.myid() as i32))
}

/// `*out` = number of processes, this one included.
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_nprocs(ctx: *mut cluster_ctx, out: *mut usize) -> cluster_status {
    ffi!([ctx => c] put(out, "out", c.nprocs()))
}

/// `*out` = number of workers (1 when the head is alone, as Distributed).
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_nworkers(ctx: *mut cluster_ctx, out: *mut usize) -> cluster_status {
    ffi!([ctx => c] put(out, "out", c.nworkers()))
}

/// Writes the sorted ids of all processes to `out[0..cap)` and their number
/// to `*count` (also on CLUSTER_ERR_BUFFER_TOO_SMALL, to size a retry).
///
/// Ownership: `out` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_procs(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    ffi!([ctx => c] put_ids(c.procs(), out, cap, count))
}

/// The host process `pid` runs on into `*out` (its gethostname(), or its
/// LIBCLUSTER_HOSTNAME when set), as membership told this process: no
/// message. CLUSTER_ERR_PROCESS_EXITED / CLUSTER_ERR_NO_SUCH_PROCESS for
/// a process that left or never was.
///
/// Ownership: `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_host_of(ctx: *mut cluster_ctx, pid: i32, out: *mut cluster_buffer) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let h = c.node().host_of(pid_arg(pid)?)?;
        put(out, "out", super::buffer::buffer_from_vec(h.into_bytes())?)
    })
}

/// Whether this process's connection to `pid` runs under TLS, into
/// `*out`. CLUSTER_ERR_NOT_READY while there is no connection yet (a
/// worker connects to another on first use); CLUSTER_ERR_PROCESS_EXITED /
/// CLUSTER_ERR_NO_SUCH_PROCESS for a process that left or never was;
/// CLUSTER_ERR_INVALID_ARGUMENT for this process's own id.
///
/// Ownership: `*out` is the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_connection_encrypted(ctx: *mut cluster_ctx, pid: i32, out: *mut bool) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let pid = pid_arg(pid)?;
        let node = c.node();
        if pid == node.myid() {
            return Err(invalid("a process has no connection to itself"));
        }
        match node.connection_encrypted(pid) {
            Some(e) => put(out, "out", e),
            None => {
                // Say why there is none: gone, unknown, or not yet connected.
                node.host_of(pid)?;
                Err(crate::Error::at(crate::ErrorKind::NotReady, pid, format!("no connection to process {pid} yet")))
            }
        }
    })
}

/// Every live process with its host name into `*out`, in the parts layout
/// (`cluster_parts_next`), ascending by id: what ClusterUtils'
/// `describepids` groups, with no message.
///
/// Ownership: `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_hosts(ctx: *mut cluster_ctx, out: *mut cluster_buffer) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let hosts = c.node().hosts();
        let v = crate::wire::parts::encode_parts(hosts.iter().map(|(p, h)| (*p, h.as_bytes())));
        put(out, "out", super::buffer::buffer_from_vec(v)?)
    })
}

/// As `cluster_procs`, for the workers (`[1]` when the head is alone).
///
/// Ownership: `out` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_workers(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    ffi!([ctx => c] put_ids(c.workers(), out, cap, count))
}

/// As `cluster_procs`, without this process.
///
/// Ownership: `out` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_other_procs(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    ffi!([ctx => c] put_ids(c.other_procs(), out, cap, count))
}

/// As `cluster_workers`, without this process.
///
/// Ownership: `out` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_other_workers(ctx: *mut cluster_ctx, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    ffi!([ctx => c] put_ids(c.other_workers(), out, cap, count))
}

// ---- launching and removing workers -------------------------------------------

/// Head only: starts `n` workers on this machine and writes their ids to
/// `out_ids[0..n)` once every one is connected and ready. Ids are never
/// reused. All or nothing: on failure no worker of this call is left
/// running and the error names each failed worker and why.
///
/// Ownership: `options` (may be NULL) is copied; `out_ids` is the caller's.
/// Blocking: until every worker is ready, or the startup timeout.
/// Threads: any, not from a handler of this process.
#[no_mangle]
pub unsafe extern "C" fn cluster_addprocs(ctx: *mut cluster_ctx, n: usize, options: *const cluster_launch_options, out_ids: *mut i32) -> cluster_status {
    ffi!([ctx => c] {
        if n > 0 {
            check_out(out_ids, "out_ids")?;
        }
        let opts = launch_options_from(options)?;
        let v = c.addprocs_async(n, &opts)?.value()?;
        for (i, id) in v.chunks_exact(4).enumerate() {
            out_ids.add(i).write(i32::from_le_bytes(id.try_into().unwrap()));
        }
        Ok(())
    })
}

/// Head only: `cluster_addprocs` as a future, returned at once. Its value
/// is the new workers' ids, `n` little-endian `int32_t`s in order; it fails
/// as `cluster_addprocs` does.
///
/// Ownership: `options` (may be NULL) is copied; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_addprocs_async(
    ctx: *mut cluster_ctx,
    n: usize,
    options: *const cluster_launch_options,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let opts = launch_options_from(options)?;
        put(out, "out", new_future_handle(c.addprocs_async(n, &opts)?)?)
    })
}

/// Head only: stops the workers `ids[0..n)`: asks them to leave, then
/// sends SIGTERM, then SIGKILL, each after a share of `timeout_ms`.
///
/// Ownership: `ids` is read during the call.
/// Blocking: until they are gone, or CLUSTER_ERR_TIMEOUT.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_rmprocs(ctx: *mut cluster_ctx, ids: *const i32, n: usize, timeout_ms: i64) -> cluster_status {
    ffi!([ctx => c] {
        let ids = pid_list(ids, n)?;
        c.rmprocs_async(&ids, timeout_arg(timeout_ms).unwrap_or(Duration::from_secs(3600 * 24)))?.wait(None)
    })
}

/// Head only: `cluster_rmprocs` as a future, returned at once; it completes
/// (with no value) once the workers are gone, or fails as `cluster_rmprocs`.
///
/// Ownership: `ids` is read during the call; `*out` receives a new future.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_rmprocs_async(
    ctx: *mut cluster_ctx,
    ids: *const i32,
    n: usize,
    timeout_ms: i64,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let ids = pid_list(ids, n)?;
        let f = c.rmprocs_async(&ids, timeout_arg(timeout_ms).unwrap_or(Duration::from_secs(3600 * 24)))?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Head only, before the first `cluster_addprocs`: sets the topology
/// (a `cluster_topology` value).
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_set_topology(ctx: *mut cluster_ctx, topology: i32) -> cluster_status {
    ffi!({
        let t = topology_from(topology)?;
        ctx.object()?.set_topology(t)
    })
}

// ---- callbacks and logging ------------------------------------------------------

/// Sets (or clears, with NULL `callback`) the worker lifecycle callback.
/// Threads mode: called on a library thread; host mode: inside
/// `cluster_poll`.
///
/// Ownership: `user_data` is passed to every call and must stay valid until
/// the callback is replaced or cleared and calls already running return.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_set_lifecycle_callback(ctx: *mut cluster_ctx, callback: cluster_lifecycle_fn, user_data: *mut c_void) -> cluster_status {
    ffi!([ctx => c] {
        let ud = UserData(user_data);
        let gate = c.gate.clone();
        let hook = callback.map(|cb| {
            Arc::new(move |pid: u32, ev: Lifecycle| {
                let ud = ud;
                if let Some(_pass) = gate.enter() {
                    // SAFETY: the host registered `cb` with this user data.
                    unsafe { cb(ud.0, pid as i32, lifecycle_code(ev)) }
                }
            }) as Arc<dyn Fn(u32, Lifecycle) + Send + Sync>
        });
        c.set_lifecycle_hook(hook);
        Ok(())
    })
}

/// Routes log records to `callback` instead of stderr (NULL restores
/// stderr). Threads mode: any library thread may call it; host mode:
/// records are held and delivered inside `cluster_poll`.
///
/// Ownership: `user_data` must stay valid until the callback is replaced or
/// cleared and calls already running return; `message` is lent to each call.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_set_log_callback(ctx: *mut cluster_ctx, callback: cluster_log_fn, user_data: *mut c_void) -> cluster_status {
    ffi!([ctx => c] {
        let ud = UserData(user_data);
        let gate = c.gate.clone();
        let sink = callback.map(|cb| {
            Arc::new(move |level: Level, msg: &str| {
                let ud = ud;
                let Some(_pass) = gate.enter() else { return };
                let text = CString::new(msg.replace('\0', " ")).unwrap_or_default();
                // SAFETY: the host registered `cb` with this user data.
                unsafe { cb(ud.0, level_code(level), text.as_ptr()) }
            }) as Arc<dyn Fn(Level, &str) + Send + Sync>
        });
        c.log.set_sink(sink);
        Ok(())
    })
}

/// Sets the log level (a `cluster_log_level`).
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_set_log_level(ctx: *mut cluster_ctx, level: i32) -> cluster_status {
    ffi!({
        let level = level_from(level)?;
        ctx.object()?.log.set_level(level);
        Ok(())
    })
}

// ---- functions ----------------------------------------------------------------

/// Registers `handler` under `name` in this process (replacing an earlier
/// one). Remote processes call it by name.
///
/// Ownership: `name` is copied; `user_data` is passed to every call and
/// must stay valid while registered and calls already running return.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_register(ctx: *mut cluster_ctx, name: *const c_char, handler: cluster_handler, user_data: *mut c_void) -> cluster_status {
    ffi!([ctx => c] {
        let name = cstr(name, "name")?;
        let h = handler.ok_or_else(|| null_arg("handler"))?;
        let ud = UserData(user_data);
        let gate = c.gate.clone();
        c.register(name, Arc::new(move |call: Call| run_c_handler(h, ud, &gate, call)))
    })
}

/// Removes the function `name`; later calls to it fail remotely. Calls
/// already running finish.
///
/// Ownership: `name` is read during the call.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_unregister(ctx: *mut cluster_ctx, name: *const c_char) -> cluster_status {
    ffi!([ctx => c] {
        let name = cstr(name, "name")?;
        if c.unregister(name) {
            Ok(())
        } else {
            Err(invalid(format!("{name} is not registered")))
        }
    })
}

// ---- remote calls -----------------------------------------------------------------

/// Calls `name` on process `pid` (CLUSTER_ANY_WORKER: next worker,
/// round-robin) with `args[0..len)` and returns a future at once.
/// Calls to one process run in the order they were made.
///
/// Ownership: `args` is written to the socket before return, never kept;
/// `*out` is a new future, released with `cluster_future_free`.
/// Blocking: only while a large argument is written.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_remotecall(
    ctx: *mut cluster_ctx,
    pid: i32,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.remotecall(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Calls and waits for the value: one round trip. On success `*out` holds
/// the result. On CLUSTER_ERR_REMOTE, `cluster_last_error_pid()` names the
/// failing process.
///
/// Ownership: `args` is never kept; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: until the result arrives (the caller's thread reads the reply
/// itself when it can).
/// Threads: any; in host mode, not for calls that need this process's own
/// handlers.
#[no_mangle]
pub unsafe extern "C" fn cluster_remotecall_fetch(
    ctx: *mut cluster_ctx,
    pid: i32,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let v = c.remotecall_fetch(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", buffer_from(v)?)
    })
}

/// Calls and waits for completion; `*out` is the completed future, whose
/// value can be fetched or passed on. On failure no future is made.
///
/// Ownership: `args` is never kept; `*out` is a new future, released with
/// `cluster_future_free`.
/// Blocking: until the call completes.
/// Threads: any; in host mode, not for calls that need this process's own
/// handlers.
#[no_mangle]
pub unsafe extern "C" fn cluster_remotecall_wait(
    ctx: *mut cluster_ctx,
    pid: i32,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.remotecall(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?)?;
        f.wait(None)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Fire and forget: calls `name` on `pid`; no result, and a failure is
/// only logged on the callee.
///
/// Ownership: `args` is written before return, never kept.
/// Blocking: only while a large argument is written.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_remote_do(ctx: *mut cluster_ctx, pid: i32, name: *const c_char, args: *const u8, len: usize) -> cluster_status {
    ffi!([ctx => c] c.remote_do(pid_arg(pid)?, cstr(name, "name")?, bytes(args, len, "args")?))
}

/// Calls `name` on each process of `pids[0..n)` (all processes, this one
/// included, when `pids` is NULL) and waits for all. If any fail, returns
/// CLUSTER_ERR_COMPOSITE with a message listing each failed process.
///
/// Ownership: `pids` and `args` are read during the call, never kept.
/// Blocking: up to `timeout_ms` (CLUSTER_FOREVER: no limit).
/// Threads: any; threads mode only when this process is among the targets.
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
    ffi!([ctx => c] {
        let list = if pids.is_null() { None } else { Some(pid_list(pids, n)?) };
        c.everywhere(list.as_deref(), cstr(name, "name")?, bytes(args, len, "args")?, timeout_arg(timeout_ms))
    })
}

/// `cluster_everywhere` as a future, returned at once: it completes once
/// every call has, or fails with CLUSTER_ERR_COMPOSITE listing each failed
/// process (a process that did not answer within `timeout_ms` is listed as
/// timed out). In host mode this process may be among the targets.
///
/// Ownership: `pids` and `args` are read during the call, never kept;
/// `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no (arguments are written to the sockets before it returns).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_everywhere_async(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    n: usize,
    name: *const c_char,
    args: *const u8,
    len: usize,
    timeout_ms: i64,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let list = if pids.is_null() { None } else { Some(pid_list(pids, n)?) };
        let f = c.everywhere_async(list.as_deref(), cstr(name, "name")?, bytes(args, len, "args")?, timeout_arg(timeout_ms))?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Cancels the calls running on `ids[0..n)`: their handlers see
/// `cluster_call_cancelled` and the calls fail with CLUSTER_ERR_INTERRUPTED.
/// Idle processes ignore it.
///
/// Ownership: `ids` is read during the call.
/// Blocking: only while the requests are written.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_interrupt(ctx: *mut cluster_ctx, ids: *const i32, n: usize) -> cluster_status {
    ffi!([ctx => c] c.interrupt(&pid_list(ids, n)?))
}

// ---- host-driven mode -------------------------------------------------------

/// Host mode: `*out` = an eventfd that becomes readable when
/// `cluster_poll` has work. Threads mode: CLUSTER_ERR_WRONG_MODE. It also
/// becomes readable (and the notify hook runs) with nothing queued when a
/// library thread answered a request for this process while the host was
/// not reading (a dictionary read, say): `cluster_poll` then returns no
/// event, and a host that reads its callers' connections for a while
/// (`cluster_drive_ex`) answers the next such request with no wake-up.
///
/// Ownership: the fd is owned by the cluster; do not close it.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_event_fd(ctx: *mut cluster_ctx, out: *mut c_int) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        put(out, "out", c.event_fd()?)
    })
}

/// Host mode: `notify(user_data)` is called from a library thread whenever
/// work becomes pending. It must only wake the host (e.g. `uv_async_send`
/// with the async handle as `user_data`). NULL clears it.
///
/// Ownership: `user_data` must stay valid until the hook is replaced or
/// cleared and calls already running return.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_set_notify(ctx: *mut cluster_ctx, notify: cluster_notify_fn, user_data: *mut c_void) -> cluster_status {
    ffi!([ctx => c] {
        let ud = UserData(user_data);
        let gate = c.gate.clone();
        let hook = notify.map(|n| {
            Arc::new(move || {
                let ud = ud;
                if let Some(_pass) = gate.enter() {
                    // SAFETY: the host registered `n` with this user data.
                    unsafe { n(ud.0) };
                }
            }) as Arc<dyn Fn() + Send + Sync>
        });
        c.set_notify(hook)
    })
}

/// Host mode: reads this process's connection to process `pid` on the
/// calling thread for up to `spin_us` microseconds, or until work is
/// pending for `cluster_poll` (an incoming call, an event), and sets
/// `*pending`. What it reads is handled as a library thread would (calls
/// queued for `cluster_poll`, replies completing futures). A host runtime
/// calls it when it has nothing else to run, e.g. after serving a call from
/// `pid`, so that the next call from `pid` costs no thread wake-up. Without
/// an open connection to `pid` it returns at once.
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no; busy for at most `spin_us`, never parks.
/// Threads: the host's thread.
#[no_mangle]
pub unsafe extern "C" fn cluster_drive(ctx: *mut cluster_ctx, pid: i32, spin_us: u32, pending: *mut bool) -> cluster_status {
    ffi!([ctx => c] {
        check_out(pending, "pending")?;
        let pid = u32::try_from(pid).map_err(|_| invalid(format!("bad process id {pid}")))?;
        put(pending, "pending", c.drive_peer(pid, Duration::from_micros(spin_us as u64))?)
    })
}

/// `cluster_drive`, also setting `*served` to whether it handled traffic
/// on the connection (requests the library's services answered on this
/// thread, such as dictionary reads): a host keeps reading after such
/// traffic as after a call, or the next request waits for a library
/// thread's wake-up. Unlike `cluster_drive`, work this call queues itself
/// (an incoming call it read) signals neither the event fd nor the notify
/// hook: when `*pending` is set the caller must call `cluster_poll` before
/// it waits on them (an event loop polls then anyway; this saves it a
/// system call and a wake-up per call).
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no; busy for at most `spin_us`, never parks.
/// Threads: the host's thread.
#[no_mangle]
pub unsafe extern "C" fn cluster_drive_ex(ctx: *mut cluster_ctx, pid: i32, spin_us: u32, pending: *mut bool, served: *mut bool) -> cluster_status {
    ffi!([ctx => c] {
        check_out(pending, "pending")?;
        check_out(served, "served")?;
        let pid = u32::try_from(pid).map_err(|_| invalid(format!("bad process id {pid}")))?;
        let (p, sv) = c.drive_peer_served(pid, Duration::from_micros(spin_us as u64), true)?;
        put(pending, "pending", p)?;
        put(served, "served", sv)
    })
}

/// Host mode: while `on`, the replies this thread sends to process `pid`
/// (`cluster_call_reply`, `cluster_call_fail`) are held and written
/// together when corking ends: `on` false, or corking another process. A
/// host that answers a batch of calls read together then pays one write,
/// not one per reply. Held replies are written anyway within about a
/// millisecond (by a library thread), so a slow host delays them no
/// longer. Without an open connection to `pid` nothing is held.
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no (ending the cork writes what the socket takes at once; the
/// rest is queued).
/// Threads: any; it concerns the replies of the calling thread only.
#[no_mangle]
pub extern "C" fn cluster_cork(ctx: *mut cluster_ctx, pid: i32, on: bool) -> cluster_status {
    ffi!([ctx => c] {
        let pid = u32::try_from(pid).map_err(|_| invalid(format!("bad process id {pid}")))?;
        c.cork_peer(on.then_some(pid))
    })
}

/// Host mode: runs the handlers of pending incoming calls on this thread,
/// delivers held log records and lifecycle callbacks, and writes up to
/// `cap` events to `events`, their number to `*count`. Events beyond `cap`
/// stay queued (the event fd stays signalled).
///
/// Ownership: `events[0..cap)` is the caller's; nothing is kept.
/// Blocking: no, apart from the handlers and callbacks it runs.
/// Threads: the host's thread.
#[no_mangle]
pub unsafe extern "C" fn cluster_poll(ctx: *mut cluster_ctx, events: *mut cluster_event, cap: usize, count: *mut usize) -> cluster_status {
    ffi!({
        check_out(count, "count")?;
        if cap > 0 {
            check_out(events, "events")?;
        }
        let c = ctx.object()?;
        let evs = c.poll(cap)?;
        for (i, e) in evs.iter().enumerate() {
            let ev = cluster_event::from(e);
            events.add(i).write(ev);
        }
        put(count, "count", evs.len())
    })
}
