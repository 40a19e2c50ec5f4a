//! The Slurm launcher against a real one-node Slurm (munged, slurmctld,
//! slurmd started by scripts/test-slurm.sh): workers as the tasks of one
//! srun step, a step cancelled with scancel (its workers leave the
//! cluster), an srun refused at once (a partition that does not exist),
//! and a head inside an allocation (salloc) filling it. Skipped (with a
//! message) where Slurm cannot run.

use cluster::launch::{SlurmLauncher, SlurmOptions};
use cluster::prelude::*;
use cluster::{Cluster, Config, ErrorKind, LaunchOptions};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

/// One Slurm for the whole file: its tests take turns.
static SLURM: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/test-slurm.sh")
}

struct Slurm {
    env: Vec<(String, String)>,
}

impl Slurm {
    fn up() -> Option<Slurm> {
        let check = Command::new(script()).arg("check").output().ok()?;
        if !check.status.success() {
            eprintln!("SKIPPED: Slurm cannot run here: {}", String::from_utf8_lossy(&check.stdout).trim());
            return None;
        }
        let out = Command::new(script()).arg("up").output().expect("test-slurm.sh up");
        assert!(out.status.success(), "test-slurm.sh up failed: {}", String::from_utf8_lossy(&out.stderr));
        let path = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string();
        let env = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("env file {path}: {e}"))
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        Some(Slurm { env })
    }

    fn opts(&self) -> SlurmOptions {
        SlurmOptions { srun_env: self.env.clone(), exename: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").status();
    }
}

fn env_of(c: &Cluster, p: u32, var: &str) -> String {
    String::from_utf8_lossy(&c.remotecall_fetch(p, "env_var", var.as_bytes()).unwrap()).into_owned()
}

#[test]
fn workers_are_the_tasks_of_one_step_and_die_with_it() {
    let _turn = SLURM.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = Slurm::up() else { return };
    let c = Cluster::init(Config { startup_timeout: Duration::from_secs(30), ..Config::default() }).unwrap();
    let l = Arc::new(SlurmLauncher::new(s.opts()));
    let t0 = Instant::now();
    let ids = c.addprocs_with(l.clone(), 4, &LaunchOptions::default()).unwrap();
    eprintln!("4 workers through srun: {:?}", t0.elapsed());
    let job = env_of(&c, ids[0], "SLURM_JOB_ID");
    assert!(!job.is_empty(), "the workers run in a Slurm job");
    let mut ranks: Vec<String> = ids.iter().map(|&p| env_of(&c, p, "SLURM_PROCID")).collect();
    ranks.sort();
    assert_eq!(ranks, ["0", "1", "2", "3"], "one task per worker, one step");
    assert!(ids.iter().all(|&p| env_of(&c, p, "SLURM_JOB_ID") == job));
    for &p in &ids {
        assert_eq!(c.remotecall_fetch(p, "myid", &[]).unwrap().as_ref(), &p.to_le_bytes());
    }
    // Worker to worker.
    assert_eq!(c.remotecall_fetch(ids[0], "call_peer", &ids[3].to_le_bytes()).unwrap().as_ref(), &ids[3].to_le_bytes());
    // scancel ends the step: every worker leaves the cluster.
    let st = s.command("scancel").arg(&job).status().unwrap();
    assert!(st.success());
    let end = Instant::now() + Duration::from_secs(20);
    while ids.iter().any(|p| c.node().procs().contains(p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ids.iter().all(|p| !c.node().procs().contains(p)), "cancelled workers left: {:?}", c.node().procs());
    assert_eq!(c.remotecall_fetch(ids[1], "myid", &[]).unwrap_err().kind, ErrorKind::ProcessExited);
    // An srun refused at once fails the call with its reason.
    let bad = Arc::new(SlurmLauncher::new(SlurmOptions { srun_args: vec!["-p".into(), "nosuchpartition".into()], ..s.opts() }));
    let t0 = Instant::now();
    let e = c.addprocs_with(bad, 2, &LaunchOptions::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Launch, "{e}");
    assert!(e.message.contains("srun") && e.message.to_lowercase().contains("partition"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Not a test on its own: the head run inside `salloc` by
/// `a_head_inside_an_allocation_fills_it`.
#[test]
fn slurm_head_child() {
    let Ok(conf) = std::env::var("SLURM_TEST_HEAD") else { return };
    let n = SlurmLauncher::allocation_tasks().expect("inside an allocation");
    assert!(SlurmLauncher::job_id().is_some());
    let c = Cluster::init(Config::default()).unwrap();
    let opts = SlurmOptions { srun_env: vec![("SLURM_CONF".into(), conf)], exename: Some(WORKER.into()), args: Some(vec![]), ..Default::default() };
    let ids = c.addprocs_with(Arc::new(SlurmLauncher::new(opts)), n, &LaunchOptions::default()).unwrap();
    let job = std::env::var("SLURM_JOB_ID").unwrap();
    for &p in &ids {
        assert_eq!(env_of(&c, p, "SLURM_JOB_ID"), job, "the step runs in the head's allocation");
    }
    println!("joined {}", ids.len());
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_head_inside_an_allocation_fills_it() {
    let _turn = SLURM.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = Slurm::up() else { return };
    let conf = s.env.iter().find(|(k, _)| k == "SLURM_CONF").map(|(_, v)| v.clone()).unwrap();
    let out = s
        .command("salloc")
        .args(["-n", "3", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "slurm_head_child", "--nocapture", "--test-threads=1"])
        .env("SLURM_TEST_HEAD", &conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("joined 3"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
}
