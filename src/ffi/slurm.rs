//! Workers started by Slurm: `cluster_addprocs_slurm`, one srun step per
//! call (inside an allocation, a step of it). The ctx's own launcher is
//! unchanged.

use super::args::*;
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::status::cluster_status;
use crate::launch::{Launcher, SlurmLauncher, SlurmOptions};
use crate::prelude::*;
use crate::{Error, LaunchOptions};
use std::ffi::c_char;
use std::sync::Arc;

/// Settings for `cluster_addprocs_slurm`. Fill with
/// `cluster_slurm_options_init` first; everything is copied by the call.
#[repr(C)]
pub struct cluster_slurm_options {
    /// `sizeof(cluster_slurm_options)`, set by `cluster_slurm_options_init`.
    pub struct_size: u32,
    /// The srun program. NULL: "srun".
    pub srun: *const c_char,
    /// NULL-terminated extra srun arguments (e.g. "-p", "debug"), or NULL.
    pub srun_args: *const *const c_char,
    /// NULL-terminated "NAME=value" entries for srun itself (e.g. SLURM_CONF), or NULL.
    pub srun_env: *const *const c_char,
    /// The worker program. NULL: this program's path.
    pub exename: *const c_char,
    /// NULL-terminated arguments (without argv[0]). NULL: this process's
    /// own when `exename` is NULL, else none.
    pub argv: *const *const c_char,
    /// NULL-terminated "NAME=value" entries for the workers, or NULL.
    pub env: *const *const c_char,
    /// Where workers listen. NULL: every interface.
    pub worker_listen: *const c_char,
    /// The head's address as the nodes reach it. NULL: its listening address.
    pub head_addr: *const c_char,
    /// How long the step's workers have to start and join, in
    /// milliseconds. 0 (the default): the cluster's `startup_timeout_ms`.
    pub startup_timeout_ms: u32,
}

/// Fills `*options` with the defaults.
///
/// Ownership: `*options` is the caller's; nothing is allocated.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_slurm_options_init(options: *mut cluster_slurm_options) -> cluster_status {
    ffi!(put(
        options,
        "options",
        cluster_slurm_options {
            struct_size: std::mem::size_of::<cluster_slurm_options>() as u32,
            srun: std::ptr::null(),
            srun_args: std::ptr::null(),
            srun_env: std::ptr::null(),
            exename: std::ptr::null(),
            argv: std::ptr::null(),
            env: std::ptr::null(),
            worker_listen: std::ptr::null(),
            head_addr: std::ptr::null(),
            startup_timeout_ms: 0,
        },
    ))
}

unsafe fn slurm_from(o: *const cluster_slurm_options) -> Result<(SlurmOptions, LaunchOptions), Error> {
    let mut opts = SlurmOptions::default();
    if o.is_null() {
        return Ok((opts, LaunchOptions::default()));
    }
    let o = &*o;
    if (o.struct_size as usize) < std::mem::size_of::<cluster_slurm_options>() {
        return Err(invalid("options were not filled by cluster_slurm_options_init"));
    }
    if let Some(s) = opt_cstr(o.srun, "srun")? {
        opts.srun = s.into();
    }
    opts.srun_args = str_list(o.srun_args, "srun_args")?.unwrap_or_default();
    opts.srun_env = env_list(o.srun_env, "srun_env")?;
    opts.exename = opt_cstr(o.exename, "exename")?.map(Into::into);
    opts.args = str_list(o.argv, "argv")?;
    opts.env = env_list(o.env, "env")?;
    opts.worker_listen = opt_cstr(o.worker_listen, "worker_listen")?.map(Into::into);
    opts.head_addr = opt_cstr(o.head_addr, "head_addr")?.map(Into::into);
    let launch = LaunchOptions { startup_timeout: super::ssh::timeout_ms(o.startup_timeout_ms), ..Default::default() };
    Ok((opts, launch))
}

unsafe fn start(node: &Arc<crate::Node>, n: usize, o: *const cluster_slurm_options) -> Result<crate::Future, Error> {
    node.require_head()?;
    let (opts, launch) = slurm_from(o)?;
    let n = match n {
        0 => SlurmLauncher::allocation_tasks().ok_or_else(|| invalid("n is 0 outside a Slurm allocation (no SLURM_NTASKS)"))?,
        n => n,
    };
    let make = Box::new(move || Ok((Arc::new(SlurmLauncher::new(opts)) as Arc<dyn Launcher>, n)));
    node.addprocs_with_async(make, &launch)
}

/// Head only: starts `n` workers (0: the allocation's `SLURM_NTASKS`) as
/// the tasks of one srun step, and writes their ids to `out_ids[0..cap)`
/// (`*count` = how many; CLUSTER_ERR_BUFFER_TOO_SMALL when more than
/// `cap`). An srun that fails before its tasks start fails the call with
/// its message (CLUSTER_ERR_LAUNCH); the step's tasks die with it
/// (`scancel`), and workers exit when the head goes away.
///
/// Ownership: everything is copied; `out_ids` is the caller's.
/// Blocking: until every worker is ready, or the startup timeout.
/// Threads: any, not from a handler of this process.
#[no_mangle]
pub unsafe extern "C" fn cluster_addprocs_slurm(
    ctx: *mut cluster_ctx,
    n: usize,
    options: *const cluster_slurm_options,
    out_ids: *mut i32,
    cap: usize,
    count: *mut usize,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(count, "count")?;
        let v = start(c.node(), n, options)?.value()?;
        let ids: Vec<u32> = v.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        put_ids(ids, out_ids, cap, count)
    })
}

/// Head only: `cluster_addprocs_slurm` as a future, returned at once; its
/// value is the new ids, little-endian `int32_t`s.
///
/// Ownership: everything is copied; `*out` receives a new future,
/// released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_addprocs_slurm_async(
    ctx: *mut cluster_ctx,
    n: usize,
    options: *const cluster_slurm_options,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(start(c.node(), n, options)?)?)
    })
}
