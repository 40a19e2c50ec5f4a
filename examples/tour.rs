//! A tour of libcluster from Rust: a local cluster of 4 workers, remote
//! calls and futures, a remote error, and a worker killed and reported.
//!
//!     cargo run --release --example tour
//!
//! The program is its own worker: `addprocs` starts this executable again,
//! and `Cluster::init` makes that copy a worker.

use cluster::prelude::*;
use cluster::{Cluster, Config, ErrorKind, LaunchOptions, Lifecycle, ANY_WORKER};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<(), cluster::Error> {
    let c = Cluster::init(Config::default())?;

    // Every process registers the same functions, by name.
    c.register_fn("greet", |call| {
        let who = String::from_utf8_lossy(call.args()).into_owned();
        Ok(format!("hello {who}, from process {} (pid {})", call.node().myid(), std::process::id()).into_bytes())
    })?;
    c.register_fn("square", |call| {
        let x = i64::from_le_bytes(call.args().try_into().map_err(|_| "square takes an i64")?);
        Ok((x * x).to_le_bytes().to_vec())
    })?;
    c.register_fn("divide", |call| {
        let b = call.args();
        let (x, y) = (i64::from_le_bytes(b[..8].try_into().unwrap()), i64::from_le_bytes(b[8..16].try_into().unwrap()));
        if y == 0 {
            return Err(format!("cannot divide {x} by zero"));
        }
        Ok((x / y).to_le_bytes().to_vec())
    })?;
    c.register_fn("getpid", |_| Ok(std::process::id().to_le_bytes().to_vec()))?;
    c.register_fn("sleep", |_| {
        std::thread::sleep(Duration::from_secs(30));
        Ok(Vec::new())
    })?;

    if !c.is_head() {
        return c.serve();
    }

    c.set_lifecycle_hook(Some(Arc::new(|pid, what| match what {
        Lifecycle::Started => println!("  [lifecycle] worker {pid} started"),
        Lifecycle::Exited { graceful: true } => println!("  [lifecycle] worker {pid} exited"),
        Lifecycle::Exited { graceful: false } => println!("  [lifecycle] worker {pid} died"),
    })));

    println!("head: process {} of a new cluster, listening on {}", c.myid(), c.address());
    let t = Instant::now();
    let ids = c.addprocs(4, &LaunchOptions { args: Some(vec![]), ..Default::default() })?;
    println!("addprocs(4) -> {ids:?} in {:.1} ms; procs() = {:?}", t.elapsed().as_secs_f64() * 1e3, c.procs());

    println!("\nremotecall_fetch on each worker:");
    for &w in &ids {
        println!("  {}", String::from_utf8_lossy(&c.remotecall_fetch(w, "greet", b"tour")?));
    }

    println!("\nremotecall returns futures at once; fetch gathers them:");
    let futures: Vec<_> = (1..=8i64).map(|x| c.remotecall(ANY_WORKER, "square", &x.to_le_bytes())).collect::<Result<_, _>>()?;
    let squares: Vec<i64> = futures.iter().map(|f| f.fetch(None).map(|v| i64::from_le_bytes(v.try_into().unwrap()))).collect::<Result<_, _>>()?;
    println!("  squares of 1..8 over the workers, round-robin: {squares:?}");

    println!("\na remote error names its worker:");
    let args = [10i64.to_le_bytes(), 0i64.to_le_bytes()].concat();
    match c.remotecall_fetch(ids[1], "divide", &args) {
        Err(e) if e.kind == ErrorKind::Remote => println!("  error from process {}: {}", e.pid, e.message),
        other => println!("  unexpected: {other:?}"),
    }

    println!("\na worker killed in the middle of a call:");
    let victim = ids[2];
    let os_pid = u32::from_le_bytes(c.remotecall_fetch(victim, "getpid", &[])?[..4].try_into().unwrap());
    let pending = c.remotecall(victim, "sleep", &[])?;
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    cluster::sys::kill(os_pid, cluster::sys::SIGKILL);
    match pending.wait(Some(Duration::from_secs(10))) {
        Err(e) => println!("  pending call failed after {:.1} ms: {e}", t.elapsed().as_secs_f64() * 1e3),
        Ok(()) => println!("  unexpected success"),
    }
    std::thread::sleep(Duration::from_millis(50));
    println!("  procs() now = {:?}", c.procs());
    match c.remotecall_fetch(victim, "greet", b"anyone?") {
        Err(e) => println!("  a later call fails the same way: {e}"),
        Ok(_) => println!("  unexpected success"),
    }

    println!("\nshutting down");
    c.shutdown(Duration::from_secs(10))?;
    Ok(())
}
