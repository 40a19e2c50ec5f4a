//! `cluster_taskqueue`: PTools' queued tasks (`QueuedWorkerTask`,
//! `queue_worker_task`, `execute_worker_task`, `dequeue_worker_task`,
//! `set_priorities`, `prep_remotes`, `num_remotes`) over registered names.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::status::cluster_status;
use super::gate::Gate;
use super::UserData;
use crate::service::pool::{QueueKey, Target, TaskDone, TaskInfo, TaskQueue, TaskSpec};
use crate::Error;
use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

/// A queue of tasks for workers, run in priority order (PTools' queued tasks).
pub struct cluster_taskqueue {
    _private: [u8; 0],
}

/// A queue behind a handle, with the gate its callbacks pass.
pub(crate) struct TqObj {
    q: Arc<TaskQueue>,
    gate: Arc<Gate>,
}

impl std::ops::Deref for TqObj {
    type Target = TaskQueue;
    fn deref(&self) -> &TaskQueue {
        &self.q
    }
}

c_handle!(cluster_taskqueue, Kind::TaskQueue, TqObj);

/// `cluster_task_spec.target`: where a task may run.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_task_target {
    /// Any worker (PTools' `:wrkr_any`).
    CLUSTER_TARGET_ANY = 0,
    /// Every worker there is when it is queued, once on each (`:wrkr_all`).
    CLUSTER_TARGET_ALL = 1,
    /// One of `pids[0..npids)` (a process id or a list of them); runs once.
    CLUSTER_TARGET_PIDS = 2,
    /// A worker on one of `hosts[0..nhosts)` (host names, their first
    /// label, or addresses, as `cluster_taskqueue_prep_remotes` learned
    /// them); runs once.
    CLUSTER_TARGET_HOSTS = 3,
}

/// The queue a task entry waits in, in `cluster_task_info.queue`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_task_queue {
    /// The any-worker queue (PTools' `:wrkr_any`).
    CLUSTER_QUEUE_ANY = 0,
    /// Process `pid`'s queue.
    CLUSTER_QUEUE_PID = 1,
    /// Host `host`'s queue.
    CLUSTER_QUEUE_HOST = 2,
}

/// A task's result, once per run: `status` CLUSTER_OK with the value in
/// `data[0..len)`, or an error status with its message there (both
/// borrowed for the call); `pid` is the worker. Threads mode: on a library
/// thread; host mode: inside `cluster_poll`.
pub type cluster_task_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, task: u64, pid: i32, status: i32, data: *const u8, len: usize)>;

/// A queued task entry, as `cluster_taskqueue_set_priorities` and
/// `cluster_taskqueue_dequeue_if` see it (strings borrowed for the call).
#[repr(C)]
pub struct cluster_task_info {
    pub id: u64,
    /// The function's name.
    pub name: *const c_char,
    /// A `cluster_task_queue`: the queue of this entry.
    pub queue: i32,
    /// The process, for CLUSTER_QUEUE_PID (else 0).
    pub pid: i32,
    /// The host, for CLUSTER_QUEUE_HOST (else "").
    pub host: *const c_char,
    pub priority: f64,
    /// When it was queued, seconds since the Unix epoch (PTools' `qtime`).
    pub queued_at: f64,
    /// A task for every worker.
    pub all: bool,
}

/// PTools' `calc_prio(target, task, priority)`: the entry's new priority.
pub type cluster_priority_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, info: *const cluster_task_info) -> f64>;

/// PTools' `dequeue_worker_task(filter_fn)` filter: false dequeues the task.
pub type cluster_task_filter_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, info: *const cluster_task_info) -> bool>;

/// A task (PTools' `QueuedWorkerTask(task, method, callback, target)`).
/// Fill with `cluster_task_spec_init`, then set fields.
#[repr(C)]
pub struct cluster_task_spec {
    /// `sizeof(cluster_task_spec)`, set by `cluster_task_spec_init`.
    pub struct_size: u32,
    /// The registered function (PTools' `remote_method`).
    pub name: *const c_char,
    /// Its argument (PTools' `WorkerTask`), copied when queued.
    pub args: *const u8,
    pub len: usize,
    /// A `cluster_task_target`. Default CLUSTER_TARGET_ANY.
    pub target: i32,
    pub pids: *const i32,
    pub npids: usize,
    pub hosts: *const *const c_char,
    pub nhosts: usize,
    /// Lower runs first; among equals, the older. Default infinity
    /// (PTools' `Inf`).
    pub priority: f64,
    /// Called once per run (NULL: none).
    pub callback: cluster_task_fn,
    pub user_data: *mut c_void,
}

/// Fills `*spec` with the defaults (any worker, priority infinity).
///
/// Ownership: `*spec` is the caller's; nothing is allocated.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_task_spec_init(spec: *mut cluster_task_spec) -> cluster_status {
    ffi!({
        put(
            spec,
            "spec",
            cluster_task_spec {
                struct_size: std::mem::size_of::<cluster_task_spec>() as u32,
                name: std::ptr::null(),
                args: std::ptr::null(),
                len: 0,
                target: cluster_task_target::CLUSTER_TARGET_ANY as i32,
                pids: std::ptr::null(),
                npids: 0,
                hosts: std::ptr::null(),
                nhosts: 0,
                priority: f64::INFINITY,
                callback: None,
                user_data: std::ptr::null_mut(),
            },
        )
    })
}

unsafe fn spec_from(gate: &Arc<Gate>, s: *const cluster_task_spec) -> Result<TaskSpec, Error> {
    if s.is_null() {
        return Err(null_arg("spec"));
    }
    let s = &*s;
    if s.struct_size as usize != std::mem::size_of::<cluster_task_spec>() {
        return Err(invalid("spec was not filled by cluster_task_spec_init"));
    }
    let target = match s.target {
        0 => Target::Any,
        1 => Target::All,
        2 => {
            let pids = pid_list(s.pids, s.npids)?;
            match pids.len() {
                0 => return Err(invalid("CLUSTER_TARGET_PIDS needs at least one pid")),
                1 => Target::Pid(pids[0]),
                _ => Target::Pids(pids),
            }
        }
        3 => {
            if s.nhosts == 0 {
                return Err(invalid("CLUSTER_TARGET_HOSTS needs at least one host"));
            }
            if s.hosts.is_null() {
                return Err(null_arg("hosts"));
            }
            let hosts =
                std::slice::from_raw_parts(s.hosts, s.nhosts).iter().map(|&h| cstr(h, "hosts[i]").map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
            if hosts.len() == 1 {
                Target::Host(hosts[0].clone())
            } else {
                Target::Hosts(hosts)
            }
        }
        t => return Err(invalid(format!("unknown task target {t}"))),
    };
    let mut spec = TaskSpec::new(cstr(s.name, "name")?, bytes(s.args, s.len, "args")?, target);
    spec.priority = s.priority;
    if let Some(cb) = s.callback {
        let ud = UserData(s.user_data);
        let gate = gate.clone();
        spec.callback = Some(Arc::new(move |d: &TaskDone| {
            let ud = ud;
            let Some(_pass) = gate.enter() else { return };
            let (status, data, len) = match d.outcome {
                Ok(v) => (cluster_status::CLUSTER_OK as i32, v.as_ptr(), v.len()),
                Err(e) => (cluster_status::from_kind(e.kind) as i32, e.message.as_ptr(), e.message.len()),
            };
            // SAFETY: the host registered `cb` with this user data.
            unsafe { cb(ud.0, d.id, d.pid as i32, status, data, len) }
        }));
    }
    Ok(spec)
}

/// Calls `f` with `info` as a `cluster_task_info`.
fn with_info<R>(i: &TaskInfo, f: impl FnOnce(&cluster_task_info) -> R) -> R {
    let name = CString::new(i.name.replace('\0', " ")).unwrap_or_default();
    let (queue, pid, host) = match &i.queue {
        QueueKey::Any => (cluster_task_queue::CLUSTER_QUEUE_ANY, 0, String::new()),
        QueueKey::Pid(p) => (cluster_task_queue::CLUSTER_QUEUE_PID, *p as i32, String::new()),
        QueueKey::Host(h) => (cluster_task_queue::CLUSTER_QUEUE_HOST, 0, h.clone()),
    };
    let host = CString::new(host.replace('\0', " ")).unwrap_or_default();
    let c = cluster_task_info {
        id: i.id,
        name: name.as_ptr(),
        queue: queue as i32,
        pid,
        host: host.as_ptr(),
        priority: i.priority,
        queued_at: i.queued_at,
        all: i.all,
    };
    f(&c)
}

/// A task queue over this cluster's workers (tasks for any or all
/// workers use the workers there are when they run or are queued).
///
/// Ownership: `*out` is a new handle, released with `cluster_taskqueue_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_new(ctx: *mut cluster_ctx, out: *mut *mut cluster_taskqueue) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let obj = TqObj { q: c.task_queue()?, gate: c.gate().clone() };
        put(out, "out", handles::insert(Kind::TaskQueue, Arc::new(obj))? as *mut cluster_taskqueue)
    })
}

/// PTools' `prep_remotes(force)` as a future, returned at once: learns
/// each worker's host name and address (for CLUSTER_TARGET_HOSTS); done
/// once unless `force`. It completes once every worker has answered.
///
/// Ownership: `*out` is a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_prep_remotes_async(tq: *mut cluster_taskqueue, force: bool, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([tq => q] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(q.prep_remotes_async(force)?)?)
    })
}

/// PTools' `prep_remotes(force)`: `cluster_taskqueue_prep_remotes_async`
/// and wait.
///
/// Ownership: `tq` stays the caller's.
/// Blocking: until every worker answered, at most `timeout_ms`.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_taskqueue_prep_remotes(tq: *mut cluster_taskqueue, force: bool, timeout_ms: i64) -> cluster_status {
    ffi!([tq => q] q.prep_remotes_async(force)?.wait(timeout_arg(timeout_ms)))
}

/// `*out` = PTools' `num_remotes()`: the workers `prep_remotes` learned of
/// (PTools counts the head too, which runs tasks there; here only workers do).
///
/// Ownership: `tq` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_num_remotes(tq: *mut cluster_taskqueue, out: *mut usize) -> cluster_status {
    ffi!([tq => q] put(out, "out", q.num_remotes()))
}

/// PTools' `queue_worker_task`: queues a task and writes its id to `*id`
/// and, if `out` is not NULL, a future of its result to `*out` (for
/// CLUSTER_TARGET_ALL: no value once every run succeeded, else
/// CLUSTER_ERR_COMPOSITE listing the failed runs; a dequeued task's future
/// fails with CLUSTER_ERR_INTERRUPTED; one whose targets all died, with
/// CLUSTER_ERR_PROCESS_EXITED). Targets that are not live fail the call.
///
/// Ownership: `spec` and what it points to are copied; `*out` is a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_queue(
    tq: *mut cluster_taskqueue,
    spec: *const cluster_task_spec,
    id: *mut u64,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([tq => q] {
        check_out(id, "id")?;
        let spec = spec_from(&q.gate, spec)?;
        let (tid, f) = q.queue(spec)?;
        put(id, "id", tid)?;
        if !out.is_null() {
            out.write(new_future_handle(f)?);
        }
        Ok(())
    })
}

/// PTools' `execute_worker_task`: queues the task and waits for its
/// result; its failure is returned as the status.
///
/// Ownership: `spec` is copied; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: until the task has run, at most `timeout_ms` (the task stays
/// queued on timeout).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_execute(
    tq: *mut cluster_taskqueue,
    spec: *const cluster_task_spec,
    timeout_ms: i64,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([tq => q] {
        check_out(out, "out")?;
        let f = q.execute(spec_from(&q.gate, spec)?)?;
        f.wait(timeout_arg(timeout_ms))?;
        put(out, "out", buffer_from(f.value()?)?)
    })
}

/// PTools' `dequeue_worker_task(task)`: removes a task that has not started
/// (for CLUSTER_TARGET_ALL, its runs that have not); `*removed` = whether
/// anything was (may be NULL).
///
/// Ownership: `tq` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_dequeue(tq: *mut cluster_taskqueue, id: u64, removed: *mut bool) -> cluster_status {
    ffi!([tq => q] {
        let r = q.dequeue(id);
        if !removed.is_null() {
            removed.write(r);
        }
        Ok(())
    })
}

/// PTools' `dequeue_worker_task(filter_fn)`: dequeues every queued task
/// for which `filter` returns false; `*count` = how many (may be NULL).
/// `filter` runs on this thread, before this returns.
///
/// Ownership: `user_data` is only used during the call.
/// Blocking: no, apart from `filter`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_dequeue_if(
    tq: *mut cluster_taskqueue,
    filter: cluster_task_filter_fn,
    user_data: *mut c_void,
    count: *mut usize,
) -> cluster_status {
    ffi!([tq => q] {
        let f = filter.ok_or_else(|| null_arg("filter"))?;
        let n = q.dequeue_if(|i| with_info(i, |c| unsafe { f(user_data, c) }));
        if !count.is_null() {
            count.write(n);
        }
        Ok(())
    })
}

/// Sets every queued entry of task `id` to `priority` (lower runs first).
/// CLUSTER_ERR_INVALID_ARGUMENT if it is not queued (any more), or for NaN.
///
/// Ownership: `tq` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_taskqueue_set_priority(tq: *mut cluster_taskqueue, id: u64, priority: f64) -> cluster_status {
    ffi!([tq => q] q.set_priority(id, priority))
}

/// PTools' `set_priorities(calc_prio)`: each queued entry gets the priority
/// `calc` returns for it (NaN leaves it). `calc` runs on this thread, once
/// per entry, before this returns.
///
/// Ownership: `user_data` is only used during the call.
/// Blocking: no, apart from `calc`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_set_priorities(tq: *mut cluster_taskqueue, calc: cluster_priority_fn, user_data: *mut c_void) -> cluster_status {
    ffi!([tq => q] {
        let f = calc.ok_or_else(|| null_arg("calc"))?;
        q.set_priorities(|i| with_info(i, |c| unsafe { f(user_data, c) }));
        Ok(())
    })
}

/// `*queued` = tasks waiting to start, `*running` = tasks started and not
/// finished. Either may be NULL.
///
/// Ownership: `tq` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_taskqueue_length(tq: *mut cluster_taskqueue, queued: *mut usize, running: *mut usize) -> cluster_status {
    ffi!([tq => q] {
        let waiting = q.queued().len();
        let all = q.len();
        if !queued.is_null() {
            queued.write(waiting);
        }
        if !running.is_null() {
            running.write(all - waiting.min(all));
        }
        Ok(())
    })
}

/// Releases a task queue and drops the tasks still queued: their futures
/// fail with CLUSTER_ERR_SHUTDOWN; tasks running finish on their workers.
/// No result callback of the queue runs once it returns: their
/// `user_data` may be freed. NULL is accepted.
///
/// Ownership: the handle is gone after the call.
/// Blocking: only while a callback of the queue runs on another thread.
/// Threads: any, once per handle; not from the queue's own callback.
#[no_mangle]
pub extern "C" fn cluster_taskqueue_free(tq: *mut cluster_taskqueue) -> cluster_status {
    ffi!({
        if tq.is_null() {
            return Ok(());
        }
        let q = tq.object()?;
        tq.remove()?;
        q.silence();
        Ok(())
    })
}
