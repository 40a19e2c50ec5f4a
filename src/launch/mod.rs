//! Launching workers. A `Launcher` turns a `LaunchSpec` into a running
//! process that will connect back to the head; the local launcher starts a
//! command line on this machine. SSH and Slurm launchers plug in here.
//!
//! What a worker learns, and how: the head's address, its id and the
//! startup timeout through environment variables; the cookie through its
//! standard input, so it never shows on a command line or in the
//! environment of the process.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ENV_HEAD: &str = "LIBCLUSTER_HEAD";
pub const ENV_ID: &str = "LIBCLUSTER_ID";
pub const ENV_COOKIE_STDIN: &str = "LIBCLUSTER_COOKIE_STDIN";
pub const ENV_COOKIE: &str = "LIBCLUSTER_COOKIE";
pub const ENV_STARTUP_TIMEOUT_MS: &str = "LIBCLUSTER_STARTUP_TIMEOUT_MS";
/// The launching process: a worker that finds it gone before joining gives up.
pub const ENV_PARENT: &str = "LIBCLUSTER_PARENT_PID";

/// What the caller of `addprocs` may set per launch.
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// Program to run; `None` runs the current executable.
    pub program: Option<PathBuf>,
    /// Arguments; `None` repeats this process's own arguments when the
    /// program is the current executable, and passes none otherwise.
    pub args: Option<Vec<String>>,
    /// Extra environment variables for the worker.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` keeps the head's.
    pub dir: Option<PathBuf>,
}

/// Everything a launcher needs to start one worker.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub id: u32,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: Option<PathBuf>,
    pub head_addr: String,
    pub cookie: String,
    pub startup_timeout: Duration,
}

impl LaunchSpec {
    pub fn new(id: u32, opts: &LaunchOptions, head_addr: &str, cookie: &str, startup_timeout: Duration) -> Result<LaunchSpec> {
        let (program, args) = match &opts.program {
            Some(p) => (p.clone(), opts.args.clone().unwrap_or_default()),
            None => {
                let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
                let args = opts.args.clone().unwrap_or_else(|| std::env::args().skip(1).collect());
                (exe, args)
            }
        };
        Ok(LaunchSpec {
            id,
            program,
            args,
            env: opts.env.clone(),
            dir: opts.dir.clone(),
            head_addr: head_addr.to_string(),
            cookie: cookie.to_string(),
            startup_timeout,
        })
    }

    /// The variables that tell a process it is worker `id` of this head.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            (ENV_HEAD.into(), self.head_addr.clone()),
            (ENV_ID.into(), self.id.to_string()),
            (ENV_COOKIE_STDIN.into(), "1".into()),
            (ENV_STARTUP_TIMEOUT_MS.into(), self.startup_timeout.as_millis().to_string()),
            (ENV_PARENT.into(), std::process::id().to_string()),
        ]
    }
}

/// A started worker process, as far as the launcher can tell.
pub struct Launched {
    /// Set when the process is a child of this one: the head reaps it.
    pub child: Option<Child>,
    pub os_pid: Option<u32>,
}

pub trait Launcher: Send + Sync {
    fn launch(&self, spec: &LaunchSpec) -> Result<Launched>;
}

/// Starts workers as child processes of the head.
pub struct LocalLauncher;

impl Launcher for LocalLauncher {
    fn launch(&self, spec: &LaunchSpec) -> Result<Launched> {
        // The cookie goes through a socket as stdin: a write to a child that
        // already exited then fails with EPIPE instead of raising SIGPIPE
        // in the host process.
        let (ours, theirs) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args).stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::inherit()).stderr(Stdio::inherit());
        for (k, v) in spec.worker_env().into_iter().chain(spec.env.iter().cloned()) {
            cmd.env(k, v);
        }
        cmd.env_remove(ENV_COOKIE);
        if let Some(d) = &spec.dir {
            cmd.current_dir(d);
        }
        let child = cmd.spawn().map_err(|e| {
            Error::at(ErrorKind::Launch, spec.id, format!("worker {}: cannot start {}: {e}", spec.id, spec.program.display()))
        })?;
        drop(cmd);
        let os_pid = child.id();
        // A failed write means the child closed its stdin or exited; the
        // head then reports how it exited, which says more than EPIPE.
        let line = format!("{}\n", spec.cookie);
        let _ = sys::write_all_vectored(ours.as_raw_fd(), &[line.as_bytes()]);
        drop(ours);
        Ok(Launched { child: Some(child), os_pid: Some(os_pid) })
    }
}

/// Reads the cookie line a launcher wrote to standard input, one byte at a
/// time so nothing after it is consumed.
pub fn read_cookie_from_stdin() -> Result<String> {
    use std::io::Read;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the cookie from stdin", e)),
        }
        if line.len() > 4096 {
            return Err(Error::new(ErrorKind::Auth, "cookie on stdin is too long"));
        }
    }
    let s = String::from_utf8(line).map_err(|_| Error::new(ErrorKind::Auth, "cookie on stdin is not UTF-8"))?;
    if s.is_empty() {
        return Err(Error::new(ErrorKind::Auth, "no cookie on stdin"));
    }
    Ok(s)
}
