//! Workers on other hosts over SSH: `cluster_addprocs_ssh` with a list of
//! `cluster_machine`s (Distributed's machine specs) and
//! `cluster_ssh_options`. The ctx's own launcher is unchanged: later
//! `cluster_addprocs` calls still start local workers.

use super::args::*;
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::status::cluster_status;
use crate::launch::{Count, Launcher, Machine, SshLauncher, SshOptions};
use crate::prelude::*;
use crate::{Error, LaunchOptions};
use std::ffi::c_char;
use std::sync::Arc;

/// `cluster_machine.count`: as many workers as the host has cores.
pub const CLUSTER_COUNT_AUTO: i32 = -1;

/// One machine: a spec as Distributed writes it (`"host"`,
/// `"user@host:port"`) and how many workers it runs (at least 1, or
/// CLUSTER_COUNT_AUTO).
#[repr(C)]
pub struct cluster_machine {
    pub spec: *const c_char,
    pub count: i32,
}

/// Settings for `cluster_addprocs_ssh`. Fill with `cluster_ssh_options_init`
/// first, then change fields; everything is copied by the call.
#[repr(C)]
pub struct cluster_ssh_options {
    /// `sizeof(cluster_ssh_options)`, set by `cluster_ssh_options_init`.
    pub struct_size: u32,
    /// The ssh program. NULL: "ssh".
    pub ssh: *const c_char,
    /// NULL-terminated extra ssh arguments (e.g. "-F", "config"), or NULL.
    pub ssh_flags: *const *const c_char,
    /// At most this many ssh connections set up at once. Default 10.
    pub max_parallel: usize,
    /// Connection multiplexing (ControlMaster). Default true.
    pub multiplex: bool,
    /// Workers reach the head through a reverse forward over ssh (the head
    /// may listen on loopback; use the master_worker topology). Default false.
    pub tunnel: bool,
    /// Return the workers that joined when some hosts fail (failures are
    /// logged); fail only when none joined. Default false: all or nothing.
    pub tolerate_failures: bool,
    /// The head's address as hosts reach it. NULL: the listening address,
    /// or on a wildcard the local address of the route to each host.
    pub head_addr: *const c_char,
    /// Where workers listen ("0.0.0.0", or "host:first-last" for a port
    /// range). NULL: every interface (127.0.0.1 with `tunnel`).
    pub worker_listen: *const c_char,
    /// The worker program on the hosts. NULL: this program's path.
    pub exename: *const c_char,
    /// NULL-terminated arguments (without argv[0]). NULL: this process's
    /// own when `exename` is NULL, else none.
    pub argv: *const *const c_char,
    /// Working directory on the hosts. NULL: the login directory.
    pub dir: *const c_char,
    /// NULL-terminated "NAME=value" entries for the workers, or NULL.
    pub env: *const *const c_char,
    /// How long this call's workers have to start and join, in
    /// milliseconds. 0 (the default): the cluster's `startup_timeout_ms`.
    pub startup_timeout_ms: u32,
}

/// Fills `*options` with the defaults.
///
/// Ownership: `*options` is the caller's; nothing is allocated.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_ssh_options_init(options: *mut cluster_ssh_options) -> cluster_status {
    ffi!({
        let d = SshOptions::default();
        put(
            options,
            "options",
            cluster_ssh_options {
                struct_size: std::mem::size_of::<cluster_ssh_options>() as u32,
                ssh: std::ptr::null(),
                ssh_flags: std::ptr::null(),
                max_parallel: d.max_parallel,
                multiplex: d.multiplex,
                tunnel: d.tunnel,
                tolerate_failures: false,
                head_addr: std::ptr::null(),
                worker_listen: std::ptr::null(),
                exename: std::ptr::null(),
                argv: std::ptr::null(),
                dir: std::ptr::null(),
                env: std::ptr::null(),
                startup_timeout_ms: 0,
            },
        )
    })
}

unsafe fn ssh_from(machines: *const cluster_machine, n: usize, o: *const cluster_ssh_options) -> Result<(Vec<Machine>, SshOptions, LaunchOptions), Error> {
    if n == 0 {
        return Err(invalid("no machines"));
    }
    if machines.is_null() {
        return Err(null_arg("machines"));
    }
    let mut ms = Vec::with_capacity(n);
    for m in std::slice::from_raw_parts(machines, n) {
        let count = match m.count {
            CLUSTER_COUNT_AUTO => Count::Auto,
            c if c >= 1 => Count::N(c as usize),
            c => return Err(invalid(format!("a machine's count is at least 1 or CLUSTER_COUNT_AUTO, not {c}"))),
        };
        ms.push(Machine::parse(cstr(m.spec, "spec")?)?.with_count(count));
    }
    let mut opts = SshOptions::default();
    let mut launch = LaunchOptions::default();
    if !o.is_null() {
        let o = &*o;
        if (o.struct_size as usize) < std::mem::size_of::<cluster_ssh_options>() {
            return Err(invalid("options were not filled by cluster_ssh_options_init"));
        }
        if let Some(s) = opt_cstr(o.ssh, "ssh")? {
            opts.ssh = s.into();
        }
        opts.ssh_flags = str_list(o.ssh_flags, "ssh_flags")?.unwrap_or_default();
        if o.max_parallel == 0 {
            return Err(invalid("max_parallel must be at least 1"));
        }
        opts.max_parallel = o.max_parallel;
        opts.multiplex = o.multiplex;
        opts.tunnel = o.tunnel;
        launch.tolerate_failures = o.tolerate_failures;
        launch.startup_timeout = timeout_ms(o.startup_timeout_ms);
        opts.head_addr = opt_cstr(o.head_addr, "head_addr")?.map(Into::into);
        opts.worker_listen = opt_cstr(o.worker_listen, "worker_listen")?.map(Into::into);
        opts.exename = opt_cstr(o.exename, "exename")?.map(Into::into);
        opts.args = str_list(o.argv, "argv")?;
        opts.dir = opt_cstr(o.dir, "dir")?.map(Into::into);
        opts.env = env_list(o.env, "env")?;
    }
    Ok((ms, opts, launch))
}

/// Head only: starts workers on `machines[0..n)` over SSH, one ssh per
/// host (see `cluster_ssh_options`), as many as the machines' counts add
/// up to, and writes their ids to `out_ids[0..cap)` (`*count` = how many
/// joined; CLUSTER_ERR_BUFFER_TOO_SMALL when more than `cap`). A host
/// that fails is named with ssh's reason (CLUSTER_ERR_LAUNCH); all or
/// nothing unless `tolerate_failures`.
///
/// Ownership: everything is copied; `out_ids` is the caller's.
/// Blocking: until every worker is ready, or the startup timeout.
/// Threads: any, not from a handler of this process.
#[no_mangle]
pub unsafe extern "C" fn cluster_addprocs_ssh(
    ctx: *mut cluster_ctx,
    machines: *const cluster_machine,
    n: usize,
    options: *const cluster_ssh_options,
    out_ids: *mut i32,
    cap: usize,
    count: *mut usize,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(count, "count")?;
        let f = start(c.node(), machines, n, options)?;
        let v = f.value()?;
        let ids: Vec<u32> = v.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        put_ids(ids, out_ids, cap, count)
    })
}

/// Head only: `cluster_addprocs_ssh` as a future, returned at once; its
/// value is the new ids, little-endian `int32_t`s.
///
/// Ownership: everything is copied; `*out` receives a new future,
/// released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_addprocs_ssh_async(
    ctx: *mut cluster_ctx,
    machines: *const cluster_machine,
    n: usize,
    options: *const cluster_ssh_options,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(start(c.node(), machines, n, options)?)?)
    })
}

unsafe fn start(node: &Arc<crate::Node>, machines: *const cluster_machine, n: usize, options: *const cluster_ssh_options) -> Result<crate::Future, Error> {
    node.require_head()?;
    let (ms, opts, launch) = ssh_from(machines, n, options)?;
    let make = Box::new(move || {
        let l = SshLauncher::new(ms, opts)?;
        let n = l.count();
        Ok((Arc::new(l) as Arc<dyn Launcher>, n))
    });
    node.addprocs_with_async(make, &launch)
}

/// A call's startup timeout: 0 is the cluster's.
pub(super) fn timeout_ms(ms: u32) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms as u64))
}
