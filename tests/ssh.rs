//! The SSH launcher against real sshds: hosts are network namespaces on a
//! bridge, each with its own address, host name and sshd
//! (scripts/test-hosts.sh), the head in the root namespace. Covers
//! addprocs to 3 hosts, calls across hosts and between workers on
//! different hosts, hosts told apart, a worker killed on a remote host, a
//! host whose sshd refuses the key, an unreachable host, tolerating a
//! failed host, tunnel mode and multiplexing off, TLS across hosts (and
//! a plain client refused where it is required). Skipped (with a message)
//! where the harness cannot run (not root, no sshd).

use cluster::launch::{Count, Machine, SshLauncher, SshOptions};
use cluster::prelude::*;
use cluster::net::auth::{self, Side};
use cluster::{Cluster, Config, ErrorKind, LaunchOptions, TlsMode, Topology};
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/test-hosts.sh")
}

/// Hosts up for one test; down when dropped.
struct Hosts {
    name: String,
    dir: PathBuf,
    /// (host name, address), host i at index i - 1.
    hosts: Vec<(String, String)>,
}

impl Hosts {
    fn up(name: &str, n: usize, bad_key: Option<usize>) -> Option<Hosts> {
        let check = Command::new(script()).arg("check").output().ok()?;
        if !check.status.success() {
            eprintln!("SKIPPED: the test hosts cannot run here: {}", String::from_utf8_lossy(&check.stdout).trim());
            return None;
        }
        let mut cmd = Command::new(script());
        cmd.args(["up", name, &n.to_string()]);
        if let Some(b) = bad_key {
            cmd.args(["--bad-key", &b.to_string()]);
        }
        let out = cmd.output().expect("test-hosts.sh up");
        assert!(out.status.success(), "test-hosts.sh up failed: {}", String::from_utf8_lossy(&out.stderr));
        let hosts = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(h, a)| (h.trim().to_string(), a.trim().to_string())))
            .collect::<Vec<_>>();
        assert_eq!(hosts.len(), n, "{}", String::from_utf8_lossy(&out.stdout));
        let dir = std::env::var("LC_HOSTS_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(format!("/tmp/lc-hosts-{name}")));
        Some(Hosts { name: name.into(), dir, hosts })
    }

    fn opts(&self) -> SshOptions {
        SshOptions {
            ssh_flags: vec!["-F".into(), self.dir.join("ssh_config").display().to_string()],
            exename: Some(WORKER.into()),
            args: Some(vec![]),
            ..Default::default()
        }
    }

    fn machine(&self, i: usize) -> Machine {
        Machine::parse(&format!("root@{}", self.hosts[i - 1].1)).unwrap()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.name]).status();
    }
}

fn head(topology: Topology, listen: &str) -> Cluster {
    let c = Cluster::init(Config { listen_host: listen.into(), startup_timeout: Duration::from_secs(20), ..Config::default() }).unwrap();
    c.set_topology(topology).unwrap();
    c
}

fn getpid(c: &Cluster, p: u32) -> u32 {
    let v = c.remotecall_fetch(p, "getpid", &[]).unwrap();
    u32::from_le_bytes(v[..4].try_into().unwrap())
}

#[test]
fn ssh_to_three_hosts_calls_across_them_and_fails_clearly() {
    let Some(h) = Hosts::up("ssha", 4, Some(4)) else { return };
    let c = head(Topology::AllToAll, "0.0.0.0");
    let machines: Vec<Machine> = (1..=3).map(|i| h.machine(i).with_count(Count::N(if i == 1 { 2 } else { 1 }))).collect();
    let l = Arc::new(SshLauncher::new(machines, h.opts()).unwrap());
    assert_eq!(l.count(), 4);
    c.set_launcher(l.clone()).unwrap();
    let t0 = Instant::now();
    let ids = c.addprocs(l.count(), &LaunchOptions::default()).unwrap();
    eprintln!("addprocs over ssh to 3 hosts, 4 workers: {:?}", t0.elapsed());
    // Each worker on its host, known to every process.
    let want = [&h.hosts[0].0, &h.hosts[0].0, &h.hosts[1].0, &h.hosts[2].0];
    let mut got: Vec<String> = ids.iter().map(|&p| c.node().host_of(p).unwrap()).collect();
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    for &p in &ids {
        assert_eq!(c.remotecall_fetch(p, "hostname", &[]).unwrap().as_ref(), c.node().host_of(p).unwrap().as_bytes(), "the worker says so itself");
        // Worker to worker, across hosts.
        for &q in &ids {
            if q != p {
                assert_eq!(c.remotecall_fetch(p, "call_peer", &q.to_le_bytes()).unwrap().as_ref(), &q.to_le_bytes());
            }
        }
    }
    // A worker killed on its host: the head sees it exit, naming it.
    let victim = ids[3];
    cluster::sys::kill(getpid(&c, victim), cluster::sys::SIGKILL);
    let end = Instant::now() + Duration::from_secs(15);
    while c.node().procs().contains(&victim) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!c.node().procs().contains(&victim), "the killed worker left the cluster");
    assert_eq!(c.remotecall_fetch(victim, "myid", &[]).unwrap_err().kind, ErrorKind::ProcessExited);
    // A host whose sshd refuses the key: the call fails naming it and why.
    let bad = Arc::new(SshLauncher::new(vec![h.machine(4)], h.opts()).unwrap());
    c.set_launcher(bad).unwrap();
    let t0 = Instant::now();
    let e = c.addprocs(1, &LaunchOptions::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Launch, "{e}");
    assert!(e.message.contains(&h.hosts[3].1) && e.message.contains("Permission denied"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(15), "failed promptly: {:?}", t0.elapsed());
    // An unreachable host.
    let net = h.hosts[0].1.rsplit_once('.').unwrap().0.to_string();
    let gone = Arc::new(SshLauncher::new(vec![Machine::parse(&format!("root@{net}.250")).unwrap()], h.opts()).unwrap());
    c.set_launcher(gone).unwrap();
    let e = c.addprocs(1, &LaunchOptions::default()).unwrap_err();
    assert!(e.message.contains(&format!("{net}.250")), "{e}");
    // Tolerating failures: the good host's worker joins, the bad one is
    // reported (logged), not fatal.
    let mixed = Arc::new(SshLauncher::new(vec![h.machine(2), h.machine(4)], h.opts()).unwrap());
    c.set_launcher(mixed).unwrap();
    let joined = c.addprocs(2, &LaunchOptions { tolerate_failures: true, ..Default::default() }).unwrap();
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!(c.node().host_of(joined[0]).unwrap(), h.hosts[1].0);
    let e = c.addprocs(2, &LaunchOptions::default()).unwrap_err();
    assert!(e.message.contains("Permission denied"), "without tolerance, all or nothing: {e}");
    // The survivors serve on.
    for &p in ids[..3].iter().chain(&joined) {
        assert_eq!(c.remotecall_fetch(p, "myid", &[]).unwrap().as_ref(), &p.to_le_bytes());
    }
    c.shutdown(Duration::from_secs(10)).unwrap();
    // No worker is left on any host.
    let end = Instant::now() + Duration::from_secs(10);
    for (i, (host, _)) in h.hosts.iter().enumerate().take(3) {
        let ns = format!("lc-{}-h{}", h.name, i + 1);
        loop {
            let pids = Command::new("ip").args(["netns", "pids", &ns]).output().unwrap();
            let left: Vec<String> = String::from_utf8_lossy(&pids.stdout)
                .split_whitespace()
                .filter(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("cluster-test-worker")))
                .map(String::from)
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < end, "workers left on {host}: {left:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn tunnel_mode_and_multiplexing_off() {
    let Some(h) = Hosts::up("sshb", 2, None) else { return };
    // `Count::Auto`: the host's cores, asked over ssh once.
    let cores = std::thread::available_parallelism().unwrap().get();
    let auto = SshLauncher::new(vec![h.machine(1).with_count(Count::Auto)], h.opts()).unwrap();
    assert_eq!(auto.count(), cores, "the namespaced host has this machine's cores");
    drop(auto);
    // A port range for the workers' listeners.
    let c = head(Topology::AllToAll, "0.0.0.0");
    let ranged = SshOptions { worker_listen: Some("0.0.0.0:47310-47320".into()), ..h.opts() };
    let l = Arc::new(SshLauncher::new(vec![h.machine(2).with_count(Count::N(2))], ranged).unwrap());
    let ids = c.addprocs_with(l, 2, &LaunchOptions::default()).unwrap();
    for &p in &ids {
        let v = c.remotecall_fetch(p, "env_var", b"LIBCLUSTER_LISTEN").unwrap();
        assert_eq!(v.as_ref(), b"0.0.0.0:47310-47320");
    }
    // Worker to worker, each listening in the range.
    assert_eq!(c.remotecall_fetch(ids[0], "call_peer", &ids[1].to_le_bytes()).unwrap().as_ref(), &ids[1].to_le_bytes());
    c.shutdown(Duration::from_secs(10)).unwrap();
    // The head listens on loopback only: workers reach it through ssh.
    let c = head(Topology::MasterWorker, "127.0.0.1");
    let opts = SshOptions { tunnel: true, multiplex: false, ..h.opts() };
    let l = Arc::new(SshLauncher::new(vec![h.machine(1), h.machine(2)], opts).unwrap());
    c.set_launcher(l).unwrap();
    let ids = c.addprocs(2, &LaunchOptions::default()).unwrap();
    for (i, &p) in ids.iter().enumerate() {
        assert_eq!(c.node().host_of(p).unwrap(), h.hosts[i].0);
        assert_eq!(c.remotecall_fetch(p, "echo", b"through the tunnel").unwrap().as_ref(), b"through the tunnel");
    }
    // Without a tunnel a loopback head cannot be reached: said at once.
    let l = Arc::new(SshLauncher::new(vec![h.machine(1)], h.opts()).unwrap());
    c.set_launcher(l).unwrap();
    let e = c.addprocs(1, &LaunchOptions::default()).unwrap_err();
    assert!(e.message.contains("cannot reach"), "{e}");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn tls_on_every_connection_that_crosses_hosts() {
    let Some(h) = Hosts::up("sslt", 2, None) else { return };
    let c = Cluster::init(Config { listen_host: "0.0.0.0".into(), tls: TlsMode::CrossHost, ..Config::default() }).unwrap();
    c.register_fn("echo", |call| Ok(call.args().to_vec())).unwrap();
    let l = Arc::new(SshLauncher::new(vec![h.machine(1), h.machine(2)], h.opts()).unwrap());
    let ids = c.addprocs_with(l, 2, &LaunchOptions::default()).unwrap();
    for &p in &ids {
        assert_eq!(c.connection_encrypted(p), Some(true), "head to worker {p} on another host");
        assert_eq!(c.remotecall_fetch(p, "env_var", b"LIBCLUSTER_TLS").unwrap().as_ref(), b"cross-host", "the worker was told");
    }
    let big: Vec<u8> = (0..(6u32 << 20)).map(|i| (i.wrapping_mul(40503) >> 8) as u8).collect();
    assert!(c.remotecall_fetch(ids[0], "echo", &big).unwrap().as_ref() == &big[..], "6 MiB across hosts under TLS came back changed");
    // Worker to worker across hosts: encrypted on both ends.
    assert_eq!(c.remotecall_fetch(ids[0], "call_peer", &ids[1].to_le_bytes()).unwrap().as_ref(), &ids[1].to_le_bytes());
    assert_eq!(c.remotecall_fetch(ids[0], "encrypted_to", &ids[1].to_le_bytes()).unwrap().as_ref(), &[1]);
    assert_eq!(c.remotecall_fetch(ids[1], "encrypted_to", &ids[0].to_le_bytes()).unwrap().as_ref(), &[1]);
    // A client from across the bridge (not loopback) that holds the cookie
    // but goes on in plain where the head requires TLS: refused.
    let bridge = h.hosts[0].1.rsplit_once('.').unwrap().0.to_string() + ".1";
    let port = c.address().rsplit_once(':').unwrap().1.to_string();
    let before = c.admission_stats().refused;
    let mut s = std::net::TcpStream::connect(format!("{bridge}:{port}")).unwrap();
    let t = auth::handshake(&mut s, c.cookie().as_bytes(), Side::Client, Duration::from_secs(5)).unwrap();
    assert!(t.tls, "the head did not require TLS from a peer across hosts");
    use std::os::unix::io::AsRawFd;
    cluster::wire::write_frame(s.as_raw_fd(), cluster::wire::Header::new(cluster::wire::Kind::Request, 0, 1, 1), b"plain", &[]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    let end = Instant::now() + Duration::from_secs(5);
    while c.admission_stats().refused == before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(c.admission_stats().refused > before, "the plain connection was admitted");
    assert_eq!(c.node().procs().len(), 3);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Not a test on its own: the head of `remote_workers_exit_when_their_head_is_killed`,
/// run as a child of the test (SSH_TEST_HEAD names the hosts' state dir).
#[test]
fn ssh_head_child() {
    let Ok(dir) = std::env::var("SSH_TEST_HEAD") else { return };
    let ip = std::env::var("SSH_TEST_HOST").unwrap();
    let c = head(Topology::AllToAll, "0.0.0.0");
    let opts = SshOptions { ssh_flags: vec!["-F".into(), format!("{dir}/ssh_config")], exename: Some(WORKER.into()), args: Some(vec![]), ..Default::default() };
    let l = Arc::new(SshLauncher::new(vec![Machine::parse(&format!("root@{ip}")).unwrap().with_count(Count::N(2))], opts).unwrap());
    c.set_launcher(l).unwrap();
    let ids = c.addprocs(2, &LaunchOptions::default()).unwrap();
    let pids: Vec<String> = ids.iter().map(|&p| getpid(&c, p).to_string()).collect();
    println!("workers {}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn remote_workers_exit_when_their_head_is_killed() {
    let Some(h) = Hosts::up("sshc", 1, None) else { return };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "ssh_head_child", "--nocapture", "--test-threads=1"])
        .env("SSH_TEST_HEAD", &h.dir)
        .env("SSH_TEST_HOST", &h.hosts[0].1)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let pids: Vec<u32> = loop {
        let l = lines.next().expect("the head says its workers").unwrap();
        // libtest's "test ssh_head_child ... " precedes it on the line.
        if let Some(rest) = l.split_once("workers ").map(|(_, r)| r) {
            break rest.split_whitespace().map(|p| p.parse().unwrap()).collect();
        }
    };
    assert_eq!(pids.len(), 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let alive = |p: u32| std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| !s.contains("State:\tZ"));
    while pids.iter().any(|&p| alive(p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pids.iter().all(|&p| !alive(p)), "remote workers outlived their head: {pids:?}");
}
