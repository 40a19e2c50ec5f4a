//! Workers started by Slurm (SlurmClusterManager.jl's `SlurmManager`):
//! inside an allocation (`salloc`, `sbatch`: `SLURM_JOB_ID` is set) one
//! `srun` step starts every worker of an `addprocs` call; outside one,
//! srun makes the allocation itself.
//!
//! **Shape.** `srun -n <workers> --input=all [extra args] sh -c <script>`:
//! every task runs the same small script, which picks its worker id from
//! the call's ids by `SLURM_PROCID` and its secrets from standard input
//! (broadcast to every task: the cookie, then one launch key per worker;
//! each task keeps its own), then `exec`s the worker with them on the
//! worker's standard input. No file per worker, no output to parse:
//! workers connect back to the head, telling the address of the interface
//! that reaches it. The step's tasks die with it (`scancel`, srun killed),
//! and workers exit when they lose their head, which ends the step.
//!
//! **Starting.** Each task prints `lcstarted <id>` before it becomes its
//! worker (whose own output then goes to srun's standard error); the call
//! returns once every task has, and `addprocs` waits for the joins.
//!
//! **Failure.** An srun that exits before its tasks started (no such
//! partition, bad arguments, no allocation possible) fails the call with
//! its message; workers that start but never join are reported by
//! `addprocs` when its startup timeout passes.

use super::{sh_quote as quote, LaunchSpec, Launched, Launcher, ENV_COOKIE_STDIN, ENV_HEAD, ENV_JOIN_KEY_STDIN, ENV_STARTUP_TIMEOUT_MS};
use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the Slurm launcher runs.
#[derive(Clone, Debug)]
pub struct SlurmOptions {
    /// The srun program.
    pub srun: PathBuf,
    /// Extra srun arguments (e.g. `-p debug`, `--ntasks-per-node=4`).
    pub srun_args: Vec<String>,
    /// Environment for srun itself (e.g. `SLURM_CONF`).
    pub srun_env: Vec<(String, String)>,
    /// The worker program (default: this program's path) and its arguments
    /// (default: this process's own when `exename` is unset).
    pub exename: Option<String>,
    pub args: Option<Vec<String>>,
    /// Extra environment for the workers.
    pub env: Vec<(String, String)>,
    /// Where workers listen (`LIBCLUSTER_LISTEN`; default every interface).
    pub worker_listen: Option<String>,
    /// The head's address as the nodes reach it (default: its listening address).
    pub head_addr: Option<String>,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            srun: "srun".into(),
            srun_args: Vec::new(),
            srun_env: Vec::new(),
            exename: None,
            args: None,
            env: Vec::new(),
            worker_listen: None,
            head_addr: None,
        }
    }
}

/// Starts workers as the tasks of one srun step per `addprocs` call.
pub struct SlurmLauncher {
    opts: SlurmOptions,
    /// Each call's srun, kept while its step runs.
    steps: Mutex<Vec<Child>>,
}

impl SlurmLauncher {
    pub fn new(opts: SlurmOptions) -> SlurmLauncher {
        SlurmLauncher { opts, steps: Mutex::new(Vec::new()) }
    }

    /// The number of tasks of the allocation this process runs in
    /// (`SLURM_NTASKS`, else `SLURM_NPROCS`), when inside one: what
    /// `addprocs` is usually called with.
    pub fn allocation_tasks() -> Option<usize> {
        ["SLURM_NTASKS", "SLURM_NPROCS"].iter().find_map(|k| std::env::var(k).ok()?.parse().ok())
    }

    /// The job this process runs in, if any.
    pub fn job_id() -> Option<String> {
        std::env::var("SLURM_JOB_ID").ok().filter(|v| !v.is_empty())
    }

    /// The script every task runs.
    fn script(&self, specs: &[LaunchSpec]) -> String {
        let spec = &specs[0];
        let mut env: Vec<(String, String)> = vec![
            (ENV_HEAD.into(), self.opts.head_addr.clone().unwrap_or_else(|| head_on_nodes(&spec.head_addr))),
            (ENV_COOKIE_STDIN.into(), "1".into()),
            (ENV_STARTUP_TIMEOUT_MS.into(), spec.startup_timeout.as_millis().to_string()),
            ("LIBCLUSTER_LISTEN".into(), self.opts.worker_listen.clone().unwrap_or_else(|| "0.0.0.0".into())),
        ];
        if spec.join_key.is_some() {
            env.push((ENV_JOIN_KEY_STDIN.into(), "1".into()));
        }
        env.extend(spec.env.iter().cloned());
        env.extend(self.opts.env.iter().cloned());
        let (program, args) = super::remote_command(spec, &self.opts.exename, &self.opts.args);
        let ids: Vec<String> = specs.iter().map(|s| s.id.to_string()).collect();
        let mut s = format!("set -- {}\n", ids.join(" "));
        s += "i=${SLURM_PROCID:?not a Slurm task}\n";
        s += "[ \"$i\" -lt $# ] || { echo \"task $i: no worker for it\" >&2; exit 95; }\n";
        s += "shift \"$i\"; id=$1\n";
        s += "IFS= read -r cookie || exit 96\n";
        s += "k=0; while [ \"$k\" -le \"$i\" ]; do IFS= read -r key || exit 96; k=$((k + 1)); done\n";
        let feed = if spec.join_key.is_some() { "printf '%s\\n%s\\n' \"$cookie\" \"$key\"" } else { "printf '%s\\n' \"$cookie\"" };
        // Say the task started (the launcher counts these), then the
        // worker's output goes where srun's errors go.
        s += "echo \"lcstarted $id\"; exec 1>&2\n";
        s += &format!("{{ {feed}; }} | exec env LIBCLUSTER_ID=\"$id\"");
        for (k, v) in &env {
            s += &format!(" {}", quote(&format!("{k}={v}")));
        }
        s += &format!(" {}", quote(&program));
        for a in &args {
            s += &format!(" {}", quote(a));
        }
        s += "\n";
        s
    }

    /// What every task reads: the cookie, then each worker's launch key.
    fn secrets(specs: &[LaunchSpec]) -> String {
        let mut s = format!("{}\n", specs[0].cookie);
        for spec in specs {
            if let Some(line) = spec.stdin_secrets().lines().nth(1) {
                s += line;
                s.push('\n');
            }
        }
        s
    }

    fn reap(&self) {
        self.steps.lock().retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
}

/// The head's address as the allocation's nodes reach it: its listening
/// address, or on a wildcard this host's name with the port (the nodes
/// resolve it as Slurm itself does).
fn head_on_nodes(listening: &str) -> String {
    match listening.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("{}:{}", crate::sys::hostname(), a.port()),
        _ => listening.to_string(),
    }
}

impl Drop for SlurmLauncher {
    fn drop(&mut self) {
        self.reap();
        // A step still running ends with its workers: wait for its srun
        // there, so none is left a zombie.
        let left = std::mem::take(&mut *self.steps.lock());
        if !left.is_empty() {
            let _ = std::thread::Builder::new().name("cluster-srun-reap".into()).stack_size(64 * 1024).spawn(move || {
                for mut c in left {
                    let _ = c.wait();
                }
            });
        }
    }
}

impl Launcher for SlurmLauncher {
    fn launch(&self, spec: &LaunchSpec) -> Result<Launched> {
        self.launch_all(std::slice::from_ref(spec)).pop().expect("one result")
    }

    fn launch_all(&self, specs: &[LaunchSpec]) -> Vec<Result<Launched>> {
        self.reap();
        if specs.is_empty() {
            return Vec::new();
        }
        let fail_all = |e: Error| specs.iter().map(|s| Err(Error::at(e.kind, s.id, format!("worker {}: {}", s.id, e.message)))).collect();
        let mut cmd = Command::new(&self.opts.srun);
        cmd.arg(format!("--ntasks={}", specs.len())).arg("--input=all").arg("--kill-on-bad-exit=0");
        cmd.args(&self.opts.srun_args);
        cmd.envs(self.opts.srun_env.iter().map(|(k, v)| (k, v)));
        cmd.args(["sh", "-c", &self.script(specs)]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return fail_all(Error::new(ErrorKind::Launch, format!("cannot start {}: {e}", self.opts.srun.display()))),
        };
        let mut stdin = child.stdin.take().expect("piped");
        let _ = stdin.write_all(Self::secrets(specs).as_bytes());
        drop(stdin);
        // srun's own complaints come early; after that its stderr (the
        // workers' too) goes to ours.
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let _ = std::thread::Builder::new().name("cluster-srun-err".into()).stack_size(64 * 1024).spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if tx.send(buf[..n].to_vec()).is_err() {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
            }
        });
        // Every task says it started; srun exiting first is a failure.
        let stdout = child.stdout.take().expect("piped");
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let _ = std::thread::Builder::new().name("cluster-srun-out".into()).stack_size(64 * 1024).spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("lcstarted ") && started_tx.send(()).is_err() {
                    return;
                }
            }
        });
        let end = Instant::now() + specs.iter().map(|s| s.startup_timeout).max().unwrap_or(Duration::from_secs(60));
        let mut said = Vec::new();
        let mut started = 0;
        let exited = loop {
            while started_rx.try_recv().is_ok() {
                started += 1;
            }
            if started == specs.len() {
                break None;
            }
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= end {
                break None;
            }
            while let Ok(b) = rx.try_recv() {
                said.extend_from_slice(&b);
            }
            let _ = started_rx.recv_timeout(Duration::from_millis(10)).map(|()| started += 1);
        };
        // Past the start: the rest of srun's output is the user's.
        let drained: Vec<u8> = rx.try_iter().flatten().collect();
        said.extend_from_slice(&drained);
        drop(rx);
        match exited {
            Some(status) => {
                let text = String::from_utf8_lossy(&said);
                let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
                fail_all(Error::new(ErrorKind::Launch, format!("srun exited before its tasks started ({status}): {last}")))
            }
            None => {
                let _ = std::io::stderr().write_all(&said);
                self.steps.lock().push(child);
                specs.iter().map(|_| Ok(Launched { child: None, os_pid: None })).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_head_is_named_by_its_host_for_the_nodes() {
        assert_eq!(head_on_nodes("10.0.0.5:77"), "10.0.0.5:77");
        assert_eq!(head_on_nodes("0.0.0.0:77"), format!("{}:77", crate::sys::hostname()));
    }

    #[test]
    fn each_task_takes_its_own_id_and_key() {
        let dir = std::env::temp_dir().join(format!("lc-slurm-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let l = SlurmLauncher::new(SlurmOptions {
            exename: Some("sh".into()),
            args: Some(vec!["-c".into(), "echo \"$LIBCLUSTER_ID:$(cat | tr '\\n' ,)\" >> \"$OUT\"".into()]),
            env: vec![("OUT".into(), out.display().to_string())],
            ..Default::default()
        });
        let opts = super::super::LaunchOptions::default();
        let specs: Vec<LaunchSpec> =
            (0..3).map(|i| LaunchSpec::new(5 + i, &opts, "127.0.0.1:9", "ck", Duration::from_secs(5)).unwrap().with_join_key([i as u8 + 1; 32])).collect();
        let script = l.script(&specs);
        assert!(!script.contains("ck"), "no secret in the command");
        let secrets = SlurmLauncher::secrets(&specs);
        // Each "task" as srun would run it: the same script and stdin, its own SLURM_PROCID.
        for task in 0..3 {
            let mut c = Command::new("sh").arg("-c").arg(&script).env("SLURM_PROCID", task.to_string()).stdin(Stdio::piped()).spawn().unwrap();
            c.stdin.take().unwrap().write_all(secrets.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        }
        let mut c = Command::new("sh").arg("-c").arg(&script).env("SLURM_PROCID", "3").stdin(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        // It may refuse before reading: a broken pipe then.
        let _ = c.stdin.take().unwrap().write_all(secrets.as_bytes());
        assert_eq!(c.wait().unwrap().code(), Some(95), "a task beyond the workers refuses");
        let mut got: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(String::from).collect();
        got.sort();
        let key = |b: u8| std::iter::repeat_n(format!("{b:02x}"), 32).collect::<String>();
        assert_eq!(got, (0..3u8).map(|i| format!("{}:ck,{},", 5 + i, key(i + 1))).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
