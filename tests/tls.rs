//! TLS between processes (net/tls.rs), on loopback with `TlsMode::Always`
//! (tests/ssh.rs covers `CrossHost` across namespaced hosts): what runs
//! under it, who decides, what an eavesdropper sees, and a client that
//! does not start TLS where it was agreed.

use cluster::net::auth::{self, Side};
use cluster::prelude::*;
use cluster::wire::{self, Header, Kind};
use cluster::{Cluster, Config, LaunchOptions, TlsMode};
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn opts() -> LaunchOptions {
    LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
}

fn head(tls: TlsMode) -> Cluster {
    let c = Cluster::init(Config { tls, ..Config::default() }).expect("init head");
    c.register_fn("echo", |call| Ok(call.args().to_vec())).unwrap();
    c
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

fn u32_of(v: &[u8]) -> u32 {
    u32::from_le_bytes(v[..4].try_into().unwrap())
}

/// A worker that joins `addr` with the cookie, as an elastic worker does.
fn elastic(addr: &str, cookie: &str, tls: Option<&str>) -> Child {
    let mut c = Command::new(WORKER);
    c.env("LIBCLUSTER_HEAD", addr).env("LIBCLUSTER_COOKIE", cookie).env_remove("LIBCLUSTER_TLS");
    if let Some(t) = tls {
        c.env("LIBCLUSTER_TLS", t);
    }
    c.spawn().unwrap()
}

#[test]
fn calls_between_every_pair_run_under_tls_when_the_head_asks() {
    let c = head(TlsMode::Always);
    let ids = c.addprocs(2, &opts()).unwrap();
    assert_eq!(ids, vec![2, 3]);
    for &w in &ids {
        assert_eq!(c.connection_encrypted(w), Some(true), "head to worker {w}");
        assert_eq!(u32_of(&c.remotecall_fetch(w, "myid", &[]).unwrap()), w);
    }
    // Small and large payloads come back whole.
    assert_eq!(c.remotecall_fetch(2, "echo", b"hello").unwrap().to_vec(), b"hello");
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    assert!(c.remotecall_fetch(3, "echo", &big).unwrap().to_vec() == big, "a 24 MiB payload came back changed");
    // Worker to worker: the workers were told to ask for TLS as the head does.
    assert_eq!(u32_of(&c.remotecall_fetch(2, "call_peer", &3u32.to_le_bytes()).unwrap()), 3);
    assert_eq!(c.remotecall_fetch(2, "encrypted_to", &3u32.to_le_bytes()).unwrap().to_vec(), vec![1], "worker 2 to worker 3");
    assert_eq!(c.remotecall_fetch(3, "encrypted_to", &2u32.to_le_bytes()).unwrap().to_vec(), vec![1], "worker 3 to worker 2");
    // Many calls in flight at once.
    let futs: Vec<_> = (0..200u32).map(|i| c.remotecall(2 + i % 2, "echo", &i.to_le_bytes()).unwrap()).collect();
    for (i, f) in futs.into_iter().enumerate() {
        assert_eq!(u32_of(f.fetch(Some(Duration::from_secs(30))).unwrap()), i as u32);
    }
    c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
}

#[test]
fn loopback_stays_plain_unless_asked_for() {
    for mode in [TlsMode::Off, TlsMode::CrossHost] {
        let c = head(mode);
        let ids = c.addprocs(1, &opts()).unwrap();
        assert_eq!(c.connection_encrypted(ids[0]), Some(false), "{mode:?} on loopback");
        assert_eq!(c.remotecall_fetch(ids[0], "echo", b"x").unwrap().to_vec(), b"x");
        c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
    }
}

#[test]
fn either_end_asking_is_enough() {
    // The head does not ask; the joining worker does.
    let c = head(TlsMode::Off);
    let mut child = elastic(c.address(), c.cookie(), Some("always"));
    assert!(wait_until(Duration::from_secs(10), || c.nprocs() == 2));
    assert_eq!(c.connection_encrypted(2), Some(true));
    assert_eq!(c.remotecall_fetch(2, "echo", b"asked").unwrap().to_vec(), b"asked");
    c.rmprocs(&[2], Duration::from_secs(10)).unwrap();
    let _ = child.wait();
}

/// Copies bytes between a joining worker and the head, keeping a copy.
fn relay(head: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        let (a, _) = l.accept().unwrap();
        let b = TcpStream::connect(&head).unwrap();
        for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    // Kept before it is passed on: seen by the time its answer is.
                    s.lock().extend_from_slice(&buf[..n]);
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, seen)
}

#[test]
fn an_eavesdropper_sees_the_payloads_only_without_tls() {
    const MARKER: &[u8] = b"MARKER-a-payload-an-eavesdropper-must-not-read";
    for (mode, readable) in [(TlsMode::Off, true), (TlsMode::Always, false)] {
        let c = head(mode);
        let (addr, seen) = relay(c.address().to_string());
        let mut child = elastic(&addr, c.cookie(), None);
        assert!(wait_until(Duration::from_secs(10), || c.nprocs() == 2), "{mode:?}: the worker did not join through the relay");
        assert_eq!(c.connection_encrypted(2), Some(mode == TlsMode::Always));
        assert_eq!(c.remotecall_fetch(2, "echo", MARKER).unwrap().to_vec(), MARKER);
        let wire = seen.lock().clone();
        assert!(wire.len() > MARKER.len() * 2, "{mode:?}: the relay saw {} bytes", wire.len());
        let found = wire.windows(MARKER.len()).any(|w| w == MARKER);
        assert_eq!(found, readable, "{mode:?}: the payload was {}readable on the wire ({} bytes seen)", if found { "" } else { "not " }, wire.len());
        c.rmprocs(&[2], Duration::from_secs(10)).unwrap();
        let _ = child.wait();
    }
}

#[test]
fn a_client_that_does_not_start_tls_where_it_was_agreed_is_refused() {
    let c = head(TlsMode::Always);
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    c.log.set_level(cluster::log::Level::Warn);
    c.log.set_sink(Some(Arc::new(move |_, m: &str| s2.lock().push(m.to_string()))));
    let before = c.admission_stats().refused;
    let mut s = TcpStream::connect(c.address()).unwrap();
    // The client does not ask for TLS; the head requires it, and says so.
    let t = auth::handshake(&mut s, c.cookie().as_bytes(), Side::Client, Duration::from_secs(5)).unwrap();
    assert!(t.tls, "the head's verdict did not require TLS");
    // It goes on in plain: a frame, where a TLS ClientHello must come.
    wire::write_frame(s.as_raw_fd(), Header::new(Kind::Request, 0, 1, 1), b"plain join", &[]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(wait_until(Duration::from_secs(5), || c.admission_stats().refused > before), "the plain connection was not refused");
    assert!(wait_until(Duration::from_secs(5), || seen.lock().iter().any(|m| m.contains("did not start TLS"))), "the head did not say why: {:?}", seen.lock());
    assert_eq!(c.nprocs(), 1);
}

/// Off too: else a local worker would follow the LIBCLUSTER_TLS it
/// inherits from the head's environment, which the head's config may have
/// overridden.
#[test]
fn a_launched_worker_is_told_the_heads_mode() {
    for (mode, told) in [(TlsMode::CrossHost, "cross-host"), (TlsMode::Off, "off")] {
        let c = head(mode);
        let ids = c.addprocs(1, &opts()).unwrap();
        let v = c.remotecall_fetch(ids[0], "env_var", b"LIBCLUSTER_TLS").unwrap().to_vec();
        assert_eq!(String::from_utf8(v).unwrap(), told);
        c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
    }
}
