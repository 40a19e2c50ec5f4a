//! Workers on other hosts, started over SSH (Distributed's `SSHManager`).
//!
//! **Shape.** Machines are given as Distributed writes them: `"host"`,
//! `"user@host:port"`, with a count (`("host", 4)`) or `Count::Auto` (the
//! host's cores, asked once). `addprocs` hands the launcher every worker
//! of the call at once (`Launcher::launch_all`); it groups them by host
//! and starts **one `ssh` per host**, at most `max_parallel` connecting at
//! once (sshd's MaxStartups defaults to 10), with connection multiplexing
//! (`ControlMaster`) on by default so later calls reuse the connection.
//!
//! **The remote command** is a small `sh` script: for each worker of the
//! host it reads the worker's two secret lines (the cookie and its launch
//! key) from its standard input, which ssh forwards from ours, and starts
//! the worker with them on the worker's own standard input, its
//! environment (`LIBCLUSTER_HEAD`, `LIBCLUSTER_ID`, ... and the user's),
//! in `dir`, then prints `lcstarted <id> <pid>`. Secrets never appear on a
//! command line or in an environment. Workers' output goes to ssh's
//! standard error, which is the head's: it reads only the started lines.
//!
//! **Failure.** A host whose ssh fails (unreachable, key refused, no such
//! program) fails its workers with an error naming the host and ssh's own
//! message (`ssh -E` keeps it); a host that does not report its workers
//! started within the startup timeout fails them too and its ssh is
//! killed. Workers exit when they lose their head, so none is left
//! behind on a host once the head (or the call) gives up on it.
//!
//! **Addresses.** Workers listen on every interface (or `worker_listen`,
//! e.g. a port range) and tell the head the address of the interface that
//! reaches it (`node::reachable_addr`). The head's address given to a host
//! is `head_addr` when set, else, when the head listens on a wildcard,
//! the local address of the route to that host. With `tunnel`, workers
//! reach the head through a reverse forward of its port over the same ssh
//! (`-R`), at 127.0.0.1 on their host.

use super::{sh_quote as quote, LaunchSpec, Launched, Launcher, ENV_COOKIE_STDIN, ENV_HEAD, ENV_ID, ENV_JOIN_KEY_STDIN, ENV_STARTUP_TIMEOUT_MS};
use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How many workers a machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    N(usize),
    /// As many as the host has cores (`nproc` there, asked once).
    Auto,
}

/// One machine of an SSH cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub count: Count,
}

impl Machine {
    /// Distributed's machine spec: `[user@]host[:port]`, with one worker.
    pub fn parse(spec: &str) -> Result<Machine> {
        let bad = |why: &str| Error::new(ErrorKind::InvalidArgument, format!("machine spec {spec:?}: {why}"));
        let spec_t = spec.trim();
        // A bind address after a space (Distributed's "host bind_addr")
        // is not used: workers tell their own reachable address.
        let first = spec_t.split_whitespace().next().ok_or_else(|| bad("empty"))?;
        let (user, rest) = match first.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err(bad("empty user")),
            None => (None, first),
        };
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, tail) = r.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
                None if tail.is_empty() => None,
                None => return Err(bad("junk after ]")),
            };
            (h.to_string(), port)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().map_err(|_| bad("bad port"))?)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() || host.starts_with('-') {
            return Err(bad("no host"));
        }
        Ok(Machine { user, host, port, count: Count::N(1) })
    }

    pub fn with_count(mut self, count: Count) -> Machine {
        self.count = count;
        self
    }

    /// `user@host` as ssh takes it.
    fn target(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    fn label(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.target()),
            None => self.target(),
        }
    }
}

/// How the SSH launcher runs.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// The ssh program.
    pub ssh: PathBuf,
    /// Extra ssh arguments (e.g. `-F config`, `-i key`), before the host.
    pub ssh_flags: Vec<String>,
    /// At most this many ssh connections being set up at once.
    pub max_parallel: usize,
    /// Connection multiplexing (ControlMaster, kept 60 s).
    pub multiplex: bool,
    /// Workers reach the head through a reverse forward over the ssh.
    pub tunnel: bool,
    /// The head's address as the hosts reach it (default: see the module doc).
    pub head_addr: Option<String>,
    /// Where workers listen (`LIBCLUSTER_LISTEN`): default every interface
    /// (127.0.0.1 with `tunnel`); `host:first-last` for a port range.
    pub worker_listen: Option<String>,
    /// The worker program on the hosts (default: this program's path).
    pub exename: Option<String>,
    /// Its arguments (default: this process's own when `exename` is unset).
    pub args: Option<Vec<String>>,
    /// The working directory there.
    pub dir: Option<String>,
    /// Extra environment for the workers.
    pub env: Vec<(String, String)>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            ssh: "ssh".into(),
            ssh_flags: Vec::new(),
            max_parallel: 10,
            multiplex: true,
            tunnel: false,
            head_addr: None,
            worker_listen: None,
            exename: None,
            args: None,
            dir: None,
            env: Vec::new(),
        }
    }
}

/// Starts workers on machines over SSH.
pub struct SshLauncher {
    machines: Vec<Machine>,
    opts: SshOptions,
    /// Where the multiplexed connections' sockets live.
    control_dir: PathBuf,
    /// The next machine slot a worker goes to, across calls.
    next: AtomicUsize,
    /// Each host's ssh, kept while its workers run (reaped when they end).
    sessions: Mutex<Vec<Child>>,
}

impl SshLauncher {
    /// A launcher over `machines`; `Count::Auto` counts are asked of the
    /// hosts now (one ssh each, in parallel).
    pub fn new(machines: Vec<Machine>, opts: SshOptions) -> Result<SshLauncher> {
        if machines.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "no machines"));
        }
        if opts.max_parallel == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "max_parallel must be at least 1"));
        }
        let r = crate::net::auth::random_key()?;
        let control_dir = std::env::temp_dir().join(format!("lc-ssh-{}-{:02x}{:02x}{:02x}{:02x}", std::process::id(), r[0], r[1], r[2], r[3]));
        std::fs::create_dir_all(&control_dir).map_err(|e| Error::io("ssh control directory", e))?;
        let mut l = SshLauncher { machines, opts, control_dir, next: AtomicUsize::new(0), sessions: Mutex::new(Vec::new()) };
        l.resolve_auto()?;
        Ok(l)
    }

    /// Workers one round over the machines starts (the sum of counts):
    /// what `addprocs` is usually called with.
    pub fn count(&self) -> usize {
        self.machines.iter().map(|m| if let Count::N(n) = m.count { n } else { 0 }).sum()
    }

    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    fn resolve_auto(&mut self) -> Result<()> {
        let auto: Vec<usize> = (0..self.machines.len()).filter(|&i| self.machines[i].count == Count::Auto).collect();
        let counts = parallel(self.opts.max_parallel, auto.clone(), |&i| {
            let m = &self.machines[i];
            let out = self.ssh_command(m).arg(m.target()).arg("nproc").stdin(Stdio::null()).stderr(Stdio::piped()).output().map_err(|e| Error::io("ssh", e))?;
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim().parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                Error::new(ErrorKind::Launch, format!("host {}: cannot count its cores: {}", m.label(), String::from_utf8_lossy(&out.stderr).trim()))
            })
        });
        for (i, c) in auto.into_iter().zip(counts) {
            self.machines[i].count = Count::N(c?);
        }
        Ok(())
    }

    /// ssh with the common options for machine `m`.
    fn ssh_command(&self, m: &Machine) -> Command {
        let mut c = Command::new(&self.opts.ssh);
        c.args(["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]);
        if self.opts.multiplex {
            c.args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"]);
            c.arg("-o").arg(format!("ControlPath={}/%C", self.control_dir.display()));
        }
        if let Some(p) = m.port {
            c.args(["-p", &p.to_string()]);
        }
        c.args(&self.opts.ssh_flags);
        c
    }

    /// The head's address as host `m` reaches it.
    fn head_for(&self, m: &Machine, spec_head: &str) -> Result<String> {
        if let Some(h) = &self.opts.head_addr {
            return Ok(h.clone());
        }
        let head: SocketAddr = spec_head.parse().map_err(|_| Error::new(ErrorKind::InvalidArgument, format!("bad head address {spec_head}")))?;
        if self.opts.tunnel {
            return Ok(format!("127.0.0.1:{}", head.port()));
        }
        if !head.ip().is_unspecified() && !head.ip().is_loopback() {
            return Ok(head.to_string());
        }
        if head.ip().is_loopback() {
            return Err(Error::new(
                ErrorKind::Launch,
                format!(
                    "host {}: the head listens on {head}, which other hosts cannot reach: listen on an interface (Config::listen_host, e.g. 0.0.0.0)",
                    m.label()
                ),
            ));
        }
        // Wildcard: the local address of the route to the host (a UDP
        // "connection" sends nothing).
        let target = (m.host.as_str(), m.port.unwrap_or(22))
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Error::new(ErrorKind::Launch, format!("host {}: cannot resolve it", m.label())))?;
        let s = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).map_err(|e| Error::io("udp", e))?;
        s.connect(target).map_err(|e| Error::io(&format!("route to {}", m.label()), e))?;
        let local = s.local_addr().map_err(|e| Error::io("udp", e))?;
        Ok(SocketAddr::new(local.ip(), head.port()).to_string())
    }

    /// The script that starts `specs` on one host.
    fn script(&self, specs: &[&LaunchSpec], head: &str) -> String {
        let mut s = String::from("exec 3>&1 1>&2\n");
        if let Some(d) = &self.opts.dir {
            s += &format!("cd {} || {{ echo 'cannot cd to {}' >&2; exit 97; }}\n", quote(d), d.replace('\'', ""));
        }
        let listen = self.opts.worker_listen.clone().unwrap_or_else(|| if self.opts.tunnel { "127.0.0.1".into() } else { "0.0.0.0".into() });
        for spec in specs {
            let mut env: Vec<(String, String)> = vec![
                (ENV_HEAD.into(), head.into()),
                (ENV_ID.into(), spec.id.to_string()),
                (ENV_COOKIE_STDIN.into(), "1".into()),
                (ENV_STARTUP_TIMEOUT_MS.into(), spec.startup_timeout.as_millis().to_string()),
                ("LIBCLUSTER_LISTEN".into(), listen.clone()),
            ];
            if spec.join_key.is_some() {
                env.push((ENV_JOIN_KEY_STDIN.into(), "1".into()));
            }
            env.extend(spec.env.iter().cloned());
            env.extend(self.opts.env.iter().cloned());
            let (program, args) = super::remote_command(spec, &self.opts.exename, &self.opts.args);
            let lines = if spec.join_key.is_some() { 2 } else { 1 };
            s += "IFS= read -r s1 || exit 96\n";
            if lines == 2 {
                s += "IFS= read -r s2 || exit 96\n";
                s += "{ printf '%s\\n%s\\n' \"$s1\" \"$s2\"; } | ";
            } else {
                s += "{ printf '%s\\n' \"$s1\"; } | ";
            }
            s += "env";
            for (k, v) in &env {
                s += &format!(" {}", quote(&format!("{k}={v}")));
            }
            s += &format!(" {}", quote(&program));
            for a in &args {
                s += &format!(" {}", quote(a));
            }
            s += &format!(" &\necho lcstarted {} $! >&3\n", spec.id);
        }
        s += "exec 3>&-\nwait\n";
        s
    }

    /// Starts `specs` on machine `m` with one ssh; Ok once every worker
    /// has started there (its remote pid per worker).
    fn start_host(&self, m: &Machine, specs: &[&LaunchSpec]) -> Result<Vec<u32>> {
        let head = self.head_for(m, &specs[0].head_addr)?;
        let log = self.control_dir.join(format!("ssh-{}-{}.log", m.host.replace(['/', ':'], "_"), specs[0].id));
        let mut cmd = self.ssh_command(m);
        cmd.arg("-E").arg(&log);
        if self.opts.tunnel {
            let port = head.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
            let local: SocketAddr = specs[0].head_addr.parse().map_err(|_| Error::new(ErrorKind::InvalidArgument, "bad head address"))?;
            let to = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
            cmd.arg("-R").arg(format!("{port}:{to}:{}", local.port()));
        }
        cmd.arg(m.target()).arg("--").arg(format!("sh -c {}", quote(&self.script(specs, &head))));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let failed = |why: String| Error::at(ErrorKind::Launch, specs[0].id, format!("host {}: {why}", m.label()));
        let mut child = cmd.spawn().map_err(|e| failed(format!("cannot start {}: {e}", self.opts.ssh.display())))?;
        let mut stdin = child.stdin.take().expect("piped");
        let secrets: String = specs.iter().map(|s| s.stdin_secrets()).collect();
        // A host that fails before reading shows in ssh's exit below.
        let _ = stdin.write_all(secrets.as_bytes()).and_then(|_| stdin.flush());
        drop(stdin);
        let stdout = child.stdout.take().expect("piped");
        let timeout = specs.iter().map(|s| s.startup_timeout).max().unwrap_or(Duration::from_secs(60));
        match read_started(stdout, specs.len(), timeout) {
            Ok(pids) => {
                self.sessions.lock().push(child);
                Ok(pids)
            }
            Err(why) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let said = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
                let how = match status.and_then(|s| s.code()) {
                    Some(255) => "ssh failed".to_string(),
                    Some(96) => "the remote script got no secrets".to_string(),
                    Some(97) => "cannot change to the working directory".to_string(),
                    Some(c) => format!("the remote command exited with status {c}"),
                    None => why,
                };
                Err(failed(if said.is_empty() { how } else { format!("{how}: {said}") }))
            }
        }
    }

    /// Reaps the ssh sessions whose workers have all exited.
    fn reap(&self) {
        self.sessions.lock().retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
}

impl Drop for SshLauncher {
    fn drop(&mut self) {
        self.reap();
        // A master still carrying the sessions of running workers stays:
        // their standard error is that session's, and closing it would
        // fail every write of theirs (EPIPE). It leaves by itself
        // (ControlPersist) once its last session ended.
        if self.opts.multiplex && self.sessions.lock().is_empty() {
            for m in &self.machines {
                let _ = self.ssh_command(m).args(["-O", "exit"]).arg(m.target()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.control_dir);
        // Each ssh still running ends with its host's workers: wait for
        // them there, so none is left a zombie (one short-lived thread).
        let left = std::mem::take(&mut *self.sessions.lock());
        if !left.is_empty() {
            let _ = std::thread::Builder::new().name("cluster-ssh-reap".into()).stack_size(64 * 1024).spawn(move || {
                for mut c in left {
                    let _ = c.wait();
                }
            });
        }
    }
}

/// Reads `n` "lcstarted <id> <pid>" lines within `timeout`.
fn read_started(stdout: ChildStdout, n: usize, timeout: Duration) -> std::result::Result<Vec<u32>, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("cluster-ssh-read".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for _ in 0..n {
                match lines.next() {
                    Some(Ok(l)) => {
                        let pid = l.strip_prefix("lcstarted ").and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
                        if tx.send(pid.ok_or(format!("unexpected output: {l}"))).is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = tx.send(Err("ssh ended before the workers started".into()));
                        return;
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let end = Instant::now() + timeout;
    let mut pids = Vec::with_capacity(n);
    while pids.len() < n {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(Ok(p)) => pids.push(p),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("the workers did not start within the startup timeout of {timeout:?}")),
        }
    }
    Ok(pids)
}

/// Runs `f` over `items` on at most `width` threads; results in order.
fn parallel<T: Sync, R: Send>(width: usize, items: Vec<T>, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.is_empty() {
        return Vec::new();
    }
    let queue = Mutex::new((0..items.len()).collect::<VecDeque<usize>>());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..width.min(items.len()) {
            s.spawn(|| loop {
                let Some(i) = queue.lock().pop_front() else { return };
                let r = f(&items[i]);
                results.lock()[i] = Some(r);
            });
        }
    });
    results.into_inner().into_iter().map(|r| r.expect("every item ran")).collect()
}

impl Launcher for SshLauncher {
    fn launch(&self, spec: &LaunchSpec) -> Result<Launched> {
        self.launch_all(std::slice::from_ref(spec)).pop().expect("one result")
    }

    fn launch_all(&self, specs: &[LaunchSpec]) -> Vec<Result<Launched>> {
        self.reap();
        // Each worker to the next machine slot, round the machines' counts.
        let slots: Vec<usize> =
            self.machines.iter().enumerate().flat_map(|(i, m)| std::iter::repeat_n(i, if let Count::N(n) = m.count { n } else { 0 })).collect();
        if slots.is_empty() {
            return specs.iter().map(|_| Err(Error::new(ErrorKind::InvalidArgument, "every machine has a count of 0"))).collect();
        }
        let base = self.next.fetch_add(specs.len(), Ordering::Relaxed);
        let mut by_host: Vec<Vec<usize>> = vec![Vec::new(); self.machines.len()];
        for i in 0..specs.len() {
            by_host[slots[(base + i) % slots.len()]].push(i);
        }
        let hosts: Vec<usize> = (0..self.machines.len()).filter(|&h| !by_host[h].is_empty()).collect();
        let started = parallel(self.opts.max_parallel, hosts.clone(), |&h| {
            let mine: Vec<&LaunchSpec> = by_host[h].iter().map(|&i| &specs[i]).collect();
            self.start_host(&self.machines[h], &mine)
        });
        let mut out: Vec<Option<Result<Launched>>> = (0..specs.len()).map(|_| None).collect();
        for (h, r) in hosts.into_iter().zip(started) {
            for &i in &by_host[h] {
                out[i] = Some(match &r {
                    // The remote pid is no local process: nothing to reap
                    // or signal here.
                    Ok(_pids) => Ok(Launched { child: None, os_pid: None }),
                    Err(e) => Err(Error::at(e.kind, specs[i].id, format!("worker {}: {}", specs[i].id, e.message))),
                });
            }
        }
        out.into_iter().map(|r| r.expect("every worker placed")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_specs_parse_as_distributed_writes_them() {
        assert_eq!(Machine::parse("node1").unwrap(), Machine { user: None, host: "node1".into(), port: None, count: Count::N(1) });
        let m = Machine::parse("alice@node2:2222").unwrap();
        assert_eq!((m.user.as_deref(), m.host.as_str(), m.port), (Some("alice"), "node2", Some(2222)));
        let m = Machine::parse("bob@[fe80::1]:22").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("fe80::1", Some(22)));
        let m = Machine::parse("  h3 10.0.0.3  ").unwrap();
        assert_eq!(m.host, "h3", "a bind address after a space is ignored");
        for bad in ["", "@h", "h:port", "h:70000", "[::1", "-oProxyCommand=x"] {
            assert!(Machine::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Machine::parse("h").unwrap().with_count(Count::Auto).count, Count::Auto);
    }

    #[test]
    fn quoting_survives_any_byte_but_nul() {
        let out = Command::new("sh").arg("-c").arg(format!("printf %s {}", quote("a 'b' $c \"d\" `e` \\f"))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a 'b' $c \"d\" `e` \\f");
    }

    #[test]
    fn parallel_keeps_order_and_bounds_threads() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let r = parallel(3, (0..20).collect(), |&i: &i32| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(r, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn the_remote_script_starts_each_worker_with_its_secrets_on_stdin() {
        // Run the script with sh here, as ssh would there: each "worker"
        // (sh printing its id and stdin) must see its own two lines.
        let dir = std::env::temp_dir().join(format!("lc-ssh-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = SshLauncher {
            machines: vec![Machine::parse("x").unwrap()],
            opts: SshOptions {
                multiplex: false,
                exename: Some("sh".into()),
                args: Some(vec!["-c".into(), "echo \"$LIBCLUSTER_ID:$(cat | tr '\\n' ,)\" >> \"$OUT\"".into()]),
                ..Default::default()
            },
            control_dir: dir.join("control"),
            next: AtomicUsize::new(0),
            sessions: Mutex::new(Vec::new()),
        };
        let out = dir.join("out");
        let opts = super::super::LaunchOptions { env: vec![("OUT".into(), out.display().to_string())], ..Default::default() };
        let a = LaunchSpec::new(2, &opts, "10.0.0.1:5", "cookie-x", Duration::from_secs(5)).unwrap().with_join_key([1; 32]);
        let b = LaunchSpec::new(3, &opts, "10.0.0.1:5", "cookie-x", Duration::from_secs(5)).unwrap().with_join_key([2; 32]);
        let script = l.script(&[&a, &b], "10.0.0.1:5");
        assert!(!script.contains("cookie-x"), "no secret in the command");
        let mut child = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(format!("{}{}", a.stdin_secrets(), b.stdin_secrets()).as_bytes()).unwrap();
        let pids = read_started(child.stdout.take().unwrap(), 2, Duration::from_secs(5)).unwrap();
        assert_eq!(pids.len(), 2);
        child.wait().unwrap();
        let mut got: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(String::from).collect();
        got.sort();
        let key = |b: u8| std::iter::repeat_n(format!("{b:02x}"), 32).collect::<String>();
        assert_eq!(got, vec![format!("2:cookie-x,{},", key(1)), format!("3:cookie-x,{},", key(2))]);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
