use cluster::prelude::*;
use cluster::{Cluster, Config, LaunchOptions};
use std::time::{Duration, Instant};
fn main() {
    let c = Cluster::init(Config::default()).unwrap();
    if !c.is_head() {
        c.register_fn("echo", |call| Ok(call.args().to_vec())).unwrap();
        let _ = c.serve();
        return;
    }
    c.addprocs(1, &LaunchOptions { args: Some(vec![]), ..Default::default() }).unwrap();
    let mut v = Vec::new();
    for r in 0..6 {
        let n = if r == 0 { 1000 } else { 4000 };
        let t = Instant::now();
        for _ in 0..n { c.remotecall_fetch(2, "echo", b"12345678").unwrap(); }
        if r > 0 { v.push(t.elapsed().as_secs_f64() * 1e6 / n as f64); }
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("rtt_us {:.3}", v[2]);
    c.shutdown(Duration::from_secs(5)).unwrap();
}
