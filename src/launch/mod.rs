//! Launching workers. A `Launcher` turns a `LaunchSpec` into a running
//! process that will connect back to the head; the local launcher starts a
//! command line on this machine. SSH and Slurm launchers plug in here.
//!
//! What a worker learns, and how: the head's address, its id and the
//! startup timeout through environment variables; the cookie and its
//! launch key (with which it proves to the head that it is the process
//! launched as that id) through its standard input, one line each, so
//! they never show on a command line or in the environment of the process.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod slurm;
pub mod ssh;
pub use slurm::{SlurmLauncher, SlurmOptions};
pub use ssh::{Count, Machine, SshLauncher, SshOptions};

pub const ENV_HEAD: &str = "LIBCLUSTER_HEAD";
pub const ENV_ID: &str = "LIBCLUSTER_ID";
pub const ENV_COOKIE_STDIN: &str = "LIBCLUSTER_COOKIE_STDIN";
pub const ENV_COOKIE: &str = "LIBCLUSTER_COOKIE";
pub const ENV_STARTUP_TIMEOUT_MS: &str = "LIBCLUSTER_STARTUP_TIMEOUT_MS";
/// The launching process: a worker that finds it gone before joining gives up.
pub const ENV_PARENT: &str = "LIBCLUSTER_PARENT_PID";
/// Set when a launch key follows the cookie on standard input.
pub const ENV_JOIN_KEY_STDIN: &str = "LIBCLUSTER_JOIN_KEY_STDIN";

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
    /// `addprocs` returns the workers that joined when others failed
    /// (each failure logged as a warning) instead of stopping them all;
    /// it fails only when none joined.
    pub tolerate_failures: bool,
    /// How long the workers of this call have to join; `None`: the
    /// cluster's `Config::startup_timeout`.
    pub startup_timeout: Option<Duration>,
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
    /// What the worker proves its id with when it joins (set by the head).
    pub join_key: Option<[u8; 32]>,
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
            join_key: None,
        })
    }

    pub fn with_join_key(mut self, key: [u8; 32]) -> LaunchSpec {
        self.join_key = Some(key);
        self
    }

    /// The worker asks for TLS as the head does (unless the caller's
    /// environment for it says otherwise), so that connections between
    /// workers on different hosts are encrypted too. `off` is passed as
    /// well: a worker that inherits the head's environment must not ask
    /// for what its LIBCLUSTER_TLS says when the head's config overrode it.
    pub fn with_tls(mut self, mode: crate::TlsMode) -> LaunchSpec {
        if !self.env.iter().any(|(k, _)| k == crate::node::ENV_TLS) {
            self.env.push((crate::node::ENV_TLS.into(), mode.as_str().into()));
        }
        self
    }

    /// What a launcher writes to the worker's standard input: the cookie,
    /// then the launch key when there is one, a line each.
    pub fn stdin_secrets(&self) -> String {
        match &self.join_key {
            Some(k) => format!("{}\n{}\n", self.cookie, hex(k)),
            None => format!("{}\n", self.cookie),
        }
    }

    /// The variables that tell a process it is worker `id` of this head.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (ENV_HEAD.into(), self.head_addr.clone()),
            (ENV_ID.into(), self.id.to_string()),
            (ENV_COOKIE_STDIN.into(), "1".into()),
            (ENV_STARTUP_TIMEOUT_MS.into(), self.startup_timeout.as_millis().to_string()),
            (ENV_PARENT.into(), std::process::id().to_string()),
        ];
        if self.join_key.is_some() {
            v.push((ENV_JOIN_KEY_STDIN.into(), "1".into()));
        }
        v
    }
}

/// A started worker process, as far as the launcher can tell.
pub struct Launched {
    /// Set when the process is a child of this one: the head reaps it.
    pub child: Option<Child>,
    pub os_pid: Option<u32>,
}

/// Starts one worker for `LaunchSpec`: a process that has the variables
/// of `worker_env` (plus `env`) and reads `stdin_secrets` on its standard
/// input.
pub trait Launcher: Send + Sync {
    fn launch(&self, spec: &LaunchSpec) -> Result<Launched>;
    /// Starts the workers of one `addprocs` call, a result per spec in
    /// order. Launchers that start a group at once (one ssh per host)
    /// override it; it returns once each has started or failed to.
    fn launch_all(&self, specs: &[LaunchSpec]) -> Vec<Result<Launched>> {
        specs.iter().map(|s| self.launch(s)).collect()
    }
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
        let child =
            cmd.spawn().map_err(|e| Error::at(ErrorKind::Launch, spec.id, format!("worker {}: cannot start {}: {e}", spec.id, spec.program.display())))?;
        drop(cmd);
        let os_pid = child.id();
        // A failed write means the child closed its stdin or exited; the
        // head then reports how it exited, which says more than EPIPE.
        let _ = sys::write_all_vectored(ours.as_raw_fd(), &[spec.stdin_secrets().as_bytes()]);
        drop(ours);
        Ok(Launched { child: Some(child), os_pid: Some(os_pid) })
    }
}

/// `s` quoted for sh (remote launchers' scripts).
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What a remote launcher runs for `spec`: `exename` and `args` when
/// given (no arguments with an `exename` alone), else the spec's own.
pub(crate) fn remote_command(spec: &LaunchSpec, exename: &Option<String>, args: &Option<Vec<String>>) -> (String, Vec<String>) {
    let program = exename.clone().unwrap_or_else(|| spec.program.display().to_string());
    let args = match (args, exename) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => spec.args.clone(),
    };
    (program, args)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads the cookie line a launcher wrote to standard input.
pub fn read_cookie_from_stdin() -> Result<String> {
    read_stdin_line("cookie")
}

/// Reads the launch-key line that follows the cookie on standard input.
pub fn read_join_key_from_stdin() -> Result<[u8; 32]> {
    let line = read_stdin_line("launch key")?;
    let bad = || Error::new(ErrorKind::Auth, "the launch key on stdin is not 64 hex digits");
    if line.len() != 64 {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&line[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(k)
}

/// Reads one line of standard input, one byte at a time so nothing after
/// it is consumed.
fn read_stdin_line(what: &str) -> Result<String> {
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
            Err(e) => return Err(Error::io(&format!("reading the {what} from stdin"), e)),
        }
        if line.len() > 4096 {
            return Err(Error::new(ErrorKind::Auth, format!("the {what} on stdin is too long")));
        }
    }
    let s = String::from_utf8(line).map_err(|_| Error::new(ErrorKind::Auth, format!("the {what} on stdin is not UTF-8")))?;
    if s.is_empty() {
        return Err(Error::new(ErrorKind::Auth, format!("no {what} on stdin")));
    }
    Ok(s)
}
