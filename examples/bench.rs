//! Benchmarks: each libcluster figure next to a baseline measured in the
//! same run on this machine, and the ratio.
//!
//!     cargo run --release --example bench [-- --quick] [--pmap-only | --dict-only | --shm-only | --fork-only | --collective-only]
//!
//! BENCH_ONLY=round-trips stops after the round trips (remotecall_fetch,
//! RemoteChannel).
//!
//! The same binary serves as worker (launched by addprocs) and as the raw
//! TCP peers of the baselines (chosen by BENCH_ROLE).

use cluster::prelude::*;
use cluster::{Channel, ChannelRef, Cluster, Config, Dict, DictKind, LaunchOptions, Members, Spec};
use cluster::service::pool::{Items, PmapOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB64: usize = 64 << 20;

fn main() {
    match std::env::var("BENCH_ROLE").as_deref() {
        Ok("tcp-echo") => return tcp_echo(&std::env::var("BENCH_ADDR").unwrap()),
        Ok("tcp-sink") => return tcp_sink(&std::env::var("BENCH_ADDR").unwrap()),
        Ok("exit") => return,
        Ok("idle") => {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        _ => {}
    }
    // Workers on other hosts reach the head on the bridge.
    if std::env::args().any(|a| a == "--hosts-only") && std::env::var_os("LIBCLUSTER_LISTEN").is_none() {
        std::env::set_var("LIBCLUSTER_LISTEN", "0.0.0.0");
    }
    let c = Cluster::init(Config::default()).expect("init");
    if !c.is_head() {
        c.register_fn("echo", |call| Ok(call.args().to_vec())).unwrap();
        c.register_fn("noop", |_| Ok(Vec::new())).unwrap();
        c.register_fn("len", |call| Ok((call.args().len() as u64).to_le_bytes().to_vec())).unwrap();
        c.register_fn("rss", |_| Ok(cluster::sys::resident_bytes(std::process::id()).unwrap_or(0).to_le_bytes().to_vec())).unwrap();
        c.register_fn("threads", |_| Ok((cluster::sys::thread_count().unwrap_or(0) as u64).to_le_bytes().to_vec())).unwrap();
        c.register_fn("call_all", |call| {
            let node = call.node();
            let me = node.myid();
            for p in node.workers().into_iter().filter(|&p| p != me) {
                node.remotecall_fetch(p, "noop", &[]).map_err(|e| e.to_string())?;
            }
            Ok(Vec::new())
        })
        .unwrap();
        c.register_fn("chan_echo", |call| {
            let r = |at: usize| ChannelRef::from_bytes(&call.args()[at..at + 12]).ok_or("expected two channel references");
            let a = call.node().import_channel(r(0)?).map_err(|e| e.to_string())?;
            let b = call.node().import_channel(r(12)?).map_err(|e| e.to_string())?;
            echo(a, b, call.args().get(24) == Some(&1));
            Ok(Vec::new())
        })
        .unwrap();
        c.register_fn("dict_flood", |call| {
            let (handle, prefix, n, batch, window): (Vec<u8>, String, u32, u32, u32) = cluster::wire::decode_payload(call.args()).map_err(|e| e.to_string())?;
            let d = call.node().open_dict(&handle).map_err(|e| e.to_string())?;
            dict_flood(&d, &prefix, n, batch, window).map_err(|e| e.to_string())?;
            Ok(Vec::new())
        })
        .unwrap();
        c.register_fn("ag_loop", |call| {
            let (pids, size, reps): (Vec<u32>, u32, u32) = cluster::wire::decode_payload(call.args()).map_err(|e| e.to_string())?;
            let node = call.node();
            let block = vec![node.myid() as u8; size as usize];
            let run = |tag: u64, n: u32| -> Result<(), String> {
                for _ in 0..n {
                    let f = node.allgather_async(&pids, tag, &block, Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
                    let v = f.fetch(None).map_err(|e| e.to_string())?;
                    assert_eq!(v.len(), pids.len() * (12 + size as usize));
                }
                Ok(())
            };
            run(1, reps / 10 + 10)?;
            let t = Instant::now();
            run(2, reps)?;
            Ok(((t.elapsed().as_nanos() / u128::from(reps.max(1))) as u64).to_le_bytes().to_vec())
        })
        .unwrap();
        c.register_fn("var_read", |call| Ok(call.node().local_var("v").map_err(|e| e.to_string())?.to_vec())).unwrap();
        let _ = c.serve();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 2_000 } else { 20_000 };
    let own_args = LaunchOptions { args: Some(vec![]), ..Default::default() };

    let mut rows: Vec<Row> = Vec::new();

    if std::env::args().any(|a| a == "--shm-only") {
        shm_rows(&c, &mut rows);
        c.shutdown(Duration::from_secs(10)).unwrap();
        print_rows(&rows);
        return;
    }

    if std::env::args().any(|a| a == "--dict-only") {
        dict_rows(&c, quick, &mut rows);
        c.shutdown(Duration::from_secs(10)).unwrap();
        print_rows(&rows);
        return;
    }

    if std::env::args().any(|a| a == "--fork-only") {
        c.addprocs(1, &own_args).unwrap();
        fork_rows(quick, &mut rows);
        c.shutdown(Duration::from_secs(10)).unwrap();
        print_rows(&rows);
        return;
    }

    if std::env::args().any(|a| a == "--hosts-only") {
        hosts_rows(&c, quick, &mut rows);
        c.shutdown(Duration::from_secs(30)).unwrap();
        print_rows(&rows);
        return;
    }

    if std::env::args().any(|a| a == "--scale-only") {
        scale_rows(&c, quick, &mut rows);
        c.shutdown(Duration::from_secs(30)).unwrap();
        print_rows(&rows);
        return;
    }

    if std::env::args().any(|a| a == "--collective-only") {
        collective_rows(&c, quick, &mut rows);
        c.shutdown(Duration::from_secs(10)).unwrap();
        print_rows(&rows);
        return;
    }

    if std::env::args().any(|a| a == "--pmap-only") {
        c.addprocs(2, &own_args).unwrap();
        pmap_rows(&c, quick, &mut rows);
        c.shutdown(Duration::from_secs(10)).unwrap();
        print_rows(&rows);
        return;
    }

    // Round trip, 8-byte argument and result, in blocks interleaved with
    // blocks of the TCP ping-pong (this machine's speed drifts by up to 2x
    // within a minute: figures taken apart do not compare).
    let mut ping = PingPong::start();
    c.addprocs(1, &own_args).unwrap();
    let arg = 42u64.to_le_bytes();
    for _ in 0..1000 {
        c.remotecall_fetch(2, "echo", &arg).unwrap();
    }
    ping.per_round(1000);
    let blocks = 10;
    let (mut ours_v, mut tcp_v) = (Vec::new(), Vec::new());
    for _ in 0..blocks {
        tcp_v.push(ping.per_round(rounds / blocks));
        // As the ping-pong's: the first calls of a block wake the worker.
        for _ in 0..100 {
            c.remotecall_fetch(2, "echo", &arg).unwrap();
        }
        let t = Instant::now();
        for _ in 0..rounds / blocks {
            let v = c.remotecall_fetch(2, "echo", &arg).unwrap();
            assert_eq!(v.len(), 8);
        }
        ours_v.push(t.elapsed().as_secs_f64() / (rounds / blocks) as f64);
    }
    if std::env::var_os("BENCH_BLOCKS").is_some() {
        let show = |v: &[f64]| v.iter().map(|x| format!("{:.2}", x * 1e6)).collect::<Vec<_>>().join(" ");
        eprintln!("round trip blocks (us): {}\nping-pong blocks (us): {}", show(&ours_v), show(&tcp_v));
    }
    let (ours_rtt, tcp_rtt) = (median(ours_v), median(tcp_v));
    rows.push(Row::new("remotecall_fetch round trip, 8 B", us(ours_rtt), us(tcp_rtt), "TCP ping-pong, busy-poll", "<= 1.3x"));
    // From C: runs of the C program (its own head and worker), each between
    // ping-pong blocks, two after each run (once its processes are gone: the
    // median of seven blocks stands a few disturbed ones).
    let (mut c_v, mut tcp_v) = (Vec::new(), vec![ping.per_round(rounds / blocks)]);
    for _ in 0..3 {
        match c_rtt((rounds / 2).max(5000)) {
            Some(v) => c_v.push(v),
            None => break,
        }
        std::thread::sleep(Duration::from_millis(100));
        tcp_v.push(ping.per_round(rounds / blocks));
        tcp_v.push(ping.per_round(rounds / blocks));
    }
    if !c_v.is_empty() {
        rows.push(Row::new("same, from C (cluster_remotecall_fetch)", median(c_v), us(median(tcp_v)), "TCP ping-pong, busy-poll", "<= 1.3x"));
    }
    drop(ping);
    if std::env::args().any(|a| a == "--rtt-only") {
        c.shutdown(Duration::from_secs(10)).unwrap();
        print_rows(&rows);
        return;
    }
    if let Some(jl) = julia_rtt(rounds.min(5000)) {
        rows.push(Row::new("remotecall_fetch round trip, 8 B", us(ours_rtt), us(jl), "Julia Distributed", "<= 1x"));
    }

    // RemoteChannel put + take round trip, 8 B: `a` kept by worker 2, `b`
    // here; worker 2 echoes every element of a into b (from the thread
    // that reads the put, without a thread of its own). Each round is a
    // blocking put into a, then a take from b, as Distributed's
    // `put!(a, x); take!(b)`. The echo's put asks for no answer
    // (`put_nowait`); a second figure has it acknowledged (`put_async`),
    // which adds a message each way.
    // Measured in short blocks interleaved with remotecall_fetch blocks,
    // so that the ratio compares figures taken under the same load.
    let pipe = |acked: bool| {
        let a = c.channel(2, 1).unwrap();
        let b = c.channel(0, 1).unwrap();
        let args = [&a.export().unwrap().to_bytes()[..], &b.export().unwrap().to_bytes(), &[acked as u8]].concat();
        c.remotecall_fetch(2, "chan_echo", &args).unwrap();
        for _ in 0..1000 {
            a.put(&arg).unwrap();
            b.take().unwrap();
        }
        (a, b)
    };
    let pipes = [pipe(false), pipe(true)];
    let block = (rounds / 40).max(50);
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..block {
            f();
        }
        t.elapsed().as_secs_f64() / block as f64
    };
    let (mut t_rtt, mut t_chan, mut t_acked) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..40 {
        t_rtt.push(time(&|| assert_eq!(c.remotecall_fetch(2, "echo", &arg).unwrap().len(), 8)));
        for (i, (a, b)) in pipes.iter().enumerate() {
            let t = time(&|| {
                a.put(&arg).unwrap();
                assert_eq!(b.take().unwrap().len(), 8);
            });
            if i == 0 {
                t_chan.push(t)
            } else {
                t_acked.push(t)
            }
        }
    }
    for (a, _) in &pipes {
        a.close().unwrap();
    }
    drop(pipes);
    let (rtt_here, ours_chan, ours_chan_acked) = (median(t_rtt), median(t_chan), median(t_acked));
    rows.push(Row::new("RemoteChannel put+take round trip, 8 B", us(ours_chan), us(rtt_here), "remotecall_fetch, interleaved", "<= 1.2x"));
    rows.push(Row::new("same, echo's put acknowledged", us(ours_chan_acked), us(rtt_here), "remotecall_fetch, interleaved", ""));
    if let Some(jl) = julia_channel_rtt(rounds.min(5000)) {
        rows.push(Row::new("RemoteChannel put+take round trip, 8 B", us(ours_chan), us(jl), "Julia Distributed RemoteChannel", "<= 0.33x"));
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("round-trips") {
        c.shutdown(Duration::from_secs(10)).unwrap();
        return print_rows(&rows);
    }

    // 64 MiB argument, one way.
    let raw_64 = tcp_one_way(MIB64, if quick { 3 } else { 7 });
    let big = vec![1u8; MIB64];
    c.remotecall_fetch(2, "len", &big).unwrap();
    let ours_64 = median_of(if quick { 3 } else { 7 }, || {
        let t = Instant::now();
        let n = c.remotecall_fetch(2, "len", &big).unwrap();
        assert_eq!(u64::from_le_bytes(n[..8].try_into().unwrap()), MIB64 as u64);
        t.elapsed().as_secs_f64()
    });
    rows.push(Row::new("64 MiB argument (GB/s)", gbps(MIB64, ours_64), gbps(MIB64, raw_64), "TCP one-way", ">= 0.8x"));

    // Idle worker memory (an idle reader gives back its large buffers
    // after 250 ms).
    std::thread::sleep(Duration::from_millis(600));
    let rss = u64::from_le_bytes(c.remotecall_fetch(2, "rss", &[]).unwrap()[..8].try_into().unwrap());
    let base_rss = idle_process_rss();
    rows.push(Row::new("idle worker resident memory (MiB)", mib(rss), mib(base_rss), "same binary, no cluster", "<= 10 MiB"));

    // Pipelined throughput over two workers.
    c.addprocs(1, &own_args).unwrap();
    let n = if quick { 20_000 } else { 100_000 };
    let ours_tp = median_of(3, || {
        let t = Instant::now();
        let futures: Vec<_> = (0..n).map(|i| c.remotecall(2 + (i % 2) as u32, "noop", &[]).unwrap()).collect();
        for f in &futures {
            f.wait(None).unwrap();
        }
        n as f64 / t.elapsed().as_secs_f64()
    });
    rows.push(Row::new("pipelined calls/s, 2 workers (k/s)", ours_tp / 1e3, 200.0, "target", ">= 1x"));

    pmap_rows(&c, quick, &mut rows);
    fork_rows(quick, &mut rows);
    c.rmprocs(&c.workers(), Duration::from_secs(10)).unwrap();
    dict_rows(&c, quick, &mut rows);
    shm_rows(&c, &mut rows);

    // Threads and idle CPU with many workers, each connected to all others.
    let many = if quick { 64 } else { 256 };
    let ids = c.addprocs(many, &own_args).unwrap();
    c.remotecall_fetch(ids[0], "call_all", &[]).unwrap();
    c.everywhere(Some(&ids), "noop", &[], Some(Duration::from_secs(60))).unwrap();
    let head_threads = cluster::sys::thread_count().unwrap_or(0);
    let worker_threads = u64::from_le_bytes(c.remotecall_fetch(ids[0], "threads", &[]).unwrap()[..8].try_into().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cluster::sys::cpu_seconds();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let idle_cpu = (cluster::sys::cpu_seconds() - cpu0) / t.elapsed().as_secs_f64() * 100.0;
    rows.push(Row::new(leak(format!("head threads, {many} workers")), head_threads as f64, 16.0, "target", "<= 1x"));
    rows.push(Row::new(leak(format!("worker threads, {} peers", many - 1)), worker_threads as f64, 16.0, "target", "<= 1x"));
    rows.push(Row::new(leak(format!("head idle CPU, {many} workers (%)")), idle_cpu, 1.0, "target 1% of a core", "<= 1x"));
    c.rmprocs(&ids, Duration::from_secs(60)).unwrap();

    // addprocs(4) until ready.
    let spawn4 = median_of(3, spawn_and_wait_4);
    let add4 = median_of(3, || {
        let t = Instant::now();
        let ids = c.addprocs(4, &own_args).unwrap();
        let d = t.elapsed().as_secs_f64();
        c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
        d
    });
    rows.push(Row::new("addprocs(4) until ready (ms)", add4 * 1e3, spawn4 * 1e3, "spawn+exit 4 processes", "<= 50 ms"));

    // What TLS costs on loopback: a worker that asks for it beside a plain
    // one, in alternating blocks (the cross-host figure is in --hosts-only).
    let tls = c.addprocs(1, &LaunchOptions { env: vec![("LIBCLUSTER_TLS".into(), "always".into())], ..own_args.clone() }).unwrap()[0];
    let plain = c.addprocs(1, &own_args).unwrap()[0];
    assert_eq!((c.connection_encrypted(tls), c.connection_encrypted(plain)), (Some(true), Some(false)));
    let (on, off) = alternating_round_trips(&c, tls, plain, rounds / 10, 10);
    rows.push(Row::new("round trip under TLS, loopback (us)", us(on), us(off), "the same, plain", "its cost"));
    c.rmprocs(&[tls, plain], Duration::from_secs(10)).unwrap();
    c.shutdown(Duration::from_secs(10)).unwrap();
    print_rows(&rows);
}

/// `n` sets of 8-byte values to keys `prefix`i: `window` requests in
/// flight, each a `set_async` (batch 1) or a `set_many_async` of `batch` pairs.
fn dict_flood(d: &Dict, prefix: &str, n: u32, batch: u32, window: u32) -> cluster::Result<()> {
    let mut inflight = std::collections::VecDeque::new();
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("{prefix}{i}").into_bytes()).collect();
    let val = 7u64.to_le_bytes();
    for chunk in keys.chunks(batch.max(1) as usize) {
        let f = if chunk.len() == 1 {
            d.set_async(&chunk[0], &val)?
        } else {
            let pairs: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (&k[..], &val[..])).collect();
            d.set_many_async(&pairs)?
        };
        inflight.push_back(f);
        if inflight.len() >= window as usize {
            inflight.pop_front().unwrap().wait(None)?;
        }
    }
    for f in inflight {
        f.wait(None)?;
    }
    Ok(())
}

/// Cluster dictionaries (issue 8): a non-member's get and set beside its
/// remotecall_fetch round trip to the same worker (interleaved blocks,
/// medians), a set with replication 2, a Global member's local read, and
/// sets from several clients at once beside Redis on loopback.
fn dict_rows(c: &Cluster, quick: bool, rows: &mut Vec<Row>) {
    let own_args = LaunchOptions { args: Some(vec![]), ..Default::default() };
    let ids = c.addprocs(4, &own_args).unwrap();
    let members = Members::Pids(ids[..2].to_vec());
    let r1 = c.dict(&Spec::new(DictKind::Distributed, members.clone()).named("bench-r1").replication(1)).unwrap();
    let r2 = c.dict(&Spec::new(DictKind::Distributed, members).named("bench-r2").replication(2)).unwrap();
    let w = ids[0];
    // Keys owned by the first member (the round trip's worker).
    let key_of = |d: &Dict| (0..).map(|i| format!("key{i}").into_bytes()).find(|k| d.owner(k) == w).unwrap();
    let (k1, k2) = (key_of(&r1), key_of(&r2));
    let arg = 42u64.to_le_bytes();
    r1.set(&k1, &arg).unwrap();
    let blocks = 40;
    let block = if quick { 50 } else { 250 };
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..block {
            f();
        }
        t.elapsed().as_secs_f64() / block as f64
    };
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..200 {
        c.remotecall_fetch(w, "echo", &arg).unwrap();
        r1.get(&k1).unwrap();
        r2.set(&k2, &arg).unwrap();
    }
    for _ in 0..blocks {
        t[0].push(time(&|| assert_eq!(c.remotecall_fetch(w, "echo", &arg).unwrap().len(), 8)));
        t[1].push(time(&|| assert_eq!(r1.get(&k1).unwrap().unwrap().len(), 8)));
        t[2].push(time(&|| r1.set(&k1, &arg).unwrap()));
        t[3].push(time(&|| r2.set(&k2, &arg).unwrap()));
    }
    let [rtt, get, set, set2] = t.map(|mut v| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    });
    rows.push(Row::new("DistributedDict get, non-member, 8 B", us(get), us(rtt), "remotecall_fetch, interleaved", "<= 1.5x"));
    rows.push(Row::new("DistributedDict set, non-member (r=1)", us(set), us(rtt), "remotecall_fetch, interleaved", "<= 1.5x"));
    rows.push(Row::new("DistributedDict set, replication 2", us(set2), us(rtt), "remotecall_fetch, interleaved", "<= 2.5x"));

    // A Global member's read of its own copy, beside a locked HashMap's.
    let g = c.dict(&Spec::new(DictKind::Global, Members::All).named("bench-g")).unwrap();
    g.set(b"gkey", &arg).unwrap();
    let reads = if quick { 200_000 } else { 2_000_000 };
    let local = median_of(5, || {
        let t = Instant::now();
        for _ in 0..reads {
            std::hint::black_box(g.get(std::hint::black_box(b"gkey")).unwrap());
        }
        t.elapsed().as_secs_f64() / reads as f64
    });
    let map = parking_lot::Mutex::new(std::collections::HashMap::from([(b"gkey".to_vec(), arg.to_vec())]));
    let base = median_of(5, || {
        let t = Instant::now();
        for _ in 0..reads {
            std::hint::black_box(map.lock().get(&std::hint::black_box(b"gkey")[..]).cloned());
        }
        t.elapsed().as_secs_f64() / reads as f64
    });
    rows.push(Row::new("GlobalDict local read (us)", us(local), us(base), "Mutex<HashMap> get+clone", "<= 1 us"));

    // Sets from 3 clients (the head and two non-member workers) to a
    // DistributedDict (r=1) over the other two, beside redis-benchmark.
    let n: u32 = if quick { 100_000 } else { 400_000 };
    let clients = [c.myid(), ids[2], ids[3]];
    let flood = |batch: u32, window: u32, tag: &str| {
        let r = c.dict(&Spec::new(DictKind::Distributed, Members::Pids(ids[..2].to_vec())).named(&format!("bench-flood-{tag}")).replication(1)).unwrap();
        let t = Instant::now();
        let futures: Vec<_> = clients[1..]
            .iter()
            .map(|&p| c.remotecall(p, "dict_flood", &cluster::wire::encode_payload(&(r.to_bytes(), format!("c{p}-"), n, batch, window))).unwrap())
            .collect();
        dict_flood(&r, "c1-", n, batch, window).unwrap();
        for f in &futures {
            f.wait(None).unwrap();
        }
        let rate = (n as usize * clients.len()) as f64 / t.elapsed().as_secs_f64();
        assert_eq!(r.length().unwrap(), n as usize * clients.len());
        r.release().unwrap();
        rate
    };
    let pipelined = flood(1, 256, "p");
    let batched = flood(1024, 4, "b");
    c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
    for d in [r1, r2, g] {
        let _ = d.release();
    }
    match redis_set_rate(if quick { 300_000 } else { 1_000_000 }) {
        Some(redis) => {
            rows.push(Row::new("dict sets, 3 clients x 256 (k/s)", pipelined / 1e3, redis / 1e3, "Redis SET, 50 clients, -P 16", ">= 1x"));
            rows.push(Row::new("dict set_many 1024, 3 clients (k/s)", batched / 1e3, redis / 1e3, "Redis SET, 50 clients, -P 16", ">= 1x"));
        }
        None => {
            eprintln!("bench: redis-server / redis-benchmark not found (scripts/install-deps.sh installs them): no Redis baseline");
            rows.push(Row::new("dict sets, 3 clients x 256 (k/s)", pipelined / 1e3, 1800.0, "Redis figure of the issue", ">= 1x"));
            rows.push(Row::new("dict set_many 1024, 3 clients (k/s)", batched / 1e3, 1800.0, "Redis figure of the issue", ">= 1x"));
        }
    }
}

/// Shared memory (issue 9): a 256 MiB segment created here (every page
/// reserved), mapped by 2 workers and touched here, beside the OS floor:
/// shm_open + ftruncate + mmap + touch in this process.
fn shm_rows(c: &Cluster, rows: &mut Vec<Row>) {
    use cluster::ShmSpec;
    const SIZE: usize = 256 << 20;
    let own_args = LaunchOptions { args: Some(vec![]), ..Default::default() };
    let ids = c.addprocs(2, &own_args).unwrap();
    let touch = |p: *mut u8| {
        for off in (0..SIZE).step_by(4096) {
            // SAFETY: inside a fresh SIZE-byte mapping of this process.
            unsafe { p.add(off).write_volatile(1) };
        }
    };
    let mut n = 0;
    let ours = median_of(5, || {
        n += 1;
        let name = format!("bench{n}");
        let t = Instant::now();
        let seg = c.shm_create(&ShmSpec::new(&name, 0, 1, &[SIZE as u64]).prefixed("bench"), None).unwrap();
        touch(seg.as_ptr());
        let d = t.elapsed().as_secs_f64();
        drop(seg);
        c.shm_unlink(&name, "bench").unwrap();
        d
    });
    let floor = median_of(5, || {
        let name = std::ffi::CString::new(format!("/lcbench-floor-{}", std::process::id())).unwrap();
        let t = Instant::now();
        // SAFETY: a fresh segment of this process, mapped, touched and removed here.
        unsafe {
            let fd = libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, SIZE as libc::off_t), 0);
            let p = libc::mmap(std::ptr::null_mut(), SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            assert_ne!(p, libc::MAP_FAILED);
            touch(p as *mut u8);
            let d = t.elapsed().as_secs_f64();
            libc::munmap(p, SIZE);
            libc::close(fd);
            libc::shm_unlink(name.as_ptr());
            d
        }
    });
    c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
    rows.push(Row::new("shm 256 MiB: create+map on 2+touch (ms)", ours * 1e3, floor * 1e3, "shm_open+ftruncate+mmap+touch", "<= 1.1x"));
}

/// All-gather over 2, 4 and 8 workers (8 B and 1 KiB blocks) beside
/// OpenMPI's MPI_Allgather over TCP measured now (examples/mpi/allgather.c,
/// built with mpicc); reap of a variable from 8 workers beside 8 sequential
/// remotecall_fetch calls reading it.
fn collective_rows(c: &Cluster, quick: bool, rows: &mut Vec<Row>) {
    let own_args = LaunchOptions { args: Some(vec![]), ..Default::default() };
    let ids = c.addprocs(8, &own_args).unwrap();
    let reps: u32 = if quick { 500 } else { 3000 };
    let mpi = build_mpi_allgather();
    if mpi.is_none() {
        eprintln!("bench: mpicc / mpirun not found (scripts/install-deps.sh installs openmpi-bin, libopenmpi-dev): no MPI baseline");
    }
    for n in [2usize, 4, 8] {
        for size in [8u32, 1024] {
            let set = &ids[..n];
            let args = cluster::wire::encode_payload(&(set.to_vec(), size, reps));
            let fs: Vec<_> = set.iter().map(|&p| c.remotecall(p, "ag_loop", &args).unwrap()).collect();
            let ours = fs.iter().map(|f| u64::from_le_bytes(f.fetch(Some(Duration::from_secs(120))).expect("ag_loop")[..8].try_into().unwrap())).max().unwrap()
                as f64
                / 1e3;
            let base = mpi.as_ref().and_then(|exe| mpi_allgather_us(exe, n, size, reps));
            let name = leak(format!("all-gather {n} procs, {} (us)", if size == 8 { "8 B".to_string() } else { "1 KiB".to_string() }));
            let base_name = if base.is_some() { "MPI_Allgather, OpenMPI, TCP" } else { "(no MPI: itself)" };
            rows.push(Row::new(name, ours, base.unwrap_or(ours), base_name, "<= 3x"));
        }
    }
    // reap: one variable from 8 workers at once, beside 8 sequential reads.
    let n = c.node();
    n.set_var(&ids, "v", &42u64.to_le_bytes()).unwrap();
    let rounds = if quick { 300 } else { 2000 };
    for _ in 0..50 {
        n.get_var(&ids, "v").unwrap();
        c.remotecall_fetch(ids[0], "var_read", &[]).unwrap();
    }
    let ours = median_of(5, || {
        let t = Instant::now();
        for _ in 0..rounds / 5 {
            assert_eq!(n.get_var(&ids, "v").unwrap().len(), 8);
        }
        t.elapsed().as_secs_f64() / (rounds / 5) as f64
    });
    let base = median_of(5, || {
        let t = Instant::now();
        for _ in 0..rounds / 5 {
            for &p in &ids {
                assert_eq!(c.remotecall_fetch(p, "var_read", &[]).unwrap().len(), 8);
            }
        }
        t.elapsed().as_secs_f64() / (rounds / 5) as f64
    });
    rows.push(Row::new("reap a variable from 8 workers (us)", us(ours), us(base), "8 sequential remotecall_fetch", "< 1x"));
    c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
}

/// Across hosts (namespaced, scripts/test-hosts.sh; needs root and sshd):
/// addprocs over SSH to 3 hosts, 1 worker each, first with a new ssh
/// connection per host and then multiplexed, beside 3 bare `ssh host true`
/// in parallel; a round trip to a worker across the namespace boundary
/// beside raw TCP ping-pong across it.
fn hosts_rows(c: &Cluster, quick: bool, rows: &mut Vec<Row>) {
    use cluster::launch::{Machine, SshLauncher, SshOptions};
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-hosts.sh");
    if !Command::new(&script).arg("check").status().is_ok_and(|s| s.success()) {
        eprintln!("bench: the test hosts cannot run here (scripts/test-hosts.sh check): no host rows");
        return;
    }
    let out = Command::new(&script).args(["up", "bench", "3"]).output().unwrap();
    let hosts: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().nth(1).map(String::from)).collect();
    assert_eq!(hosts.len(), 3, "test-hosts.sh up: {}", String::from_utf8_lossy(&out.stderr));
    let cfg = "/tmp/lc-hosts-bench/ssh_config";
    let opts =
        SshOptions { ssh_flags: vec!["-F".into(), cfg.into()], exename: Some(self_exe().display().to_string()), args: Some(vec![]), ..Default::default() };
    let machines: Vec<Machine> = hosts.iter().map(|h| Machine::parse(&format!("root@{h}")).unwrap()).collect();
    let bare = || {
        let t = Instant::now();
        let kids: Vec<_> = hosts.iter().map(|h| Command::new("ssh").args(["-F", cfg, &format!("root@{h}"), "true"]).spawn().unwrap()).collect();
        for mut k in kids {
            k.wait().unwrap();
        }
        t.elapsed().as_secs_f64()
    };
    let base = bare();
    let l = std::sync::Arc::new(SshLauncher::new(machines.clone(), opts.clone()).unwrap());
    let t = Instant::now();
    let ids = c.addprocs_with(l.clone(), 3, &LaunchOptions::default()).unwrap();
    let first = t.elapsed().as_secs_f64();
    rows.push(Row::new("addprocs over SSH, 3 hosts x 1 (ms)", first * 1e3, base * 1e3, "3 parallel `ssh host true`", ""));
    c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    let ids = c.addprocs_with(l.clone(), 3, &LaunchOptions::default()).unwrap();
    let again = t.elapsed().as_secs_f64();
    rows.push(Row::new("same again, multiplexed (ms)", again * 1e3, base * 1e3, "3 parallel `ssh host true`", ""));
    // Round trip across the boundary, then raw TCP across it (not
    // interleaved: the busy-polling echo would take a CPU from ours).
    let rounds = if quick { 2_000 } else { 20_000 };
    let arg = 42u64.to_le_bytes();
    for _ in 0..1000 {
        c.remotecall_fetch(ids[0], "echo", &arg).unwrap();
    }
    let head_ip = std::fs::read_to_string("/tmp/lc-hosts-bench/env")
        .ok()
        .and_then(|e| e.lines().find_map(|l| l.strip_prefix("HEAD_IP=").map(|v| v.trim_matches('"').to_string())));
    let (mut ours_v, mut raw_v) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let block = rounds / 10;
        let t = Instant::now();
        for _ in 0..block {
            c.remotecall_fetch(ids[0], "echo", &arg).unwrap();
        }
        ours_v.push(t.elapsed().as_secs_f64() / block as f64);
    }
    if let Some(ip) = head_ip {
        let l = TcpListener::bind((ip.as_str(), 0)).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let child =
            Command::new("ip").args(["netns", "exec", "lc-bench-h1"]).arg(self_exe()).env("BENCH_ROLE", "tcp-echo").env("BENCH_ADDR", &addr).spawn().unwrap();
        let mut ping = PingPong::accept(&l, child);
        ping.per_round(1000);
        for _ in 0..10 {
            raw_v.push(ping.per_round(rounds / 10));
        }
    }
    let (ours, raw) = (median(ours_v), median(raw_v));
    rows.push(Row::new("round trip across a namespace (us)", us(ours), us(raw), "TCP busy-poll ping-pong across it", "<= 1.3x"));
    tls_rows(c, &machines[0], &opts, ids[0], quick, rows);
    c.rmprocs(&ids, Duration::from_secs(10)).unwrap();
    drop(l);
    let _ = Command::new(&script).args(["down", "bench"]).status();
}

/// Round trips of an 8-byte echo to `a` and to `b` in `blocks` alternating
/// blocks of `per_block` calls (so both see the same load): the median
/// block of each, in seconds per call.
fn alternating_round_trips(c: &Cluster, a: u32, b: u32, per_block: usize, blocks: usize) -> (f64, f64) {
    let arg = 42u64.to_le_bytes();
    let block_of = |p: u32| {
        let t = Instant::now();
        for _ in 0..per_block {
            c.remotecall_fetch(p, "echo", &arg).unwrap();
        }
        t.elapsed().as_secs_f64() / per_block as f64
    };
    for _ in 0..1000 {
        c.remotecall_fetch(a, "echo", &arg).unwrap();
    }
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for _ in 0..blocks {
        on_a.push(block_of(a));
        on_b.push(block_of(b));
    }
    (median(on_a), median(on_b))
}

/// What TLS costs across the namespace: a worker on host 1 that asks for
/// TLS (either end asking is enough) beside the plain worker `plain` on
/// the same host, timed in alternating blocks: round trip of 8 bytes, and
/// an 8 MiB echo as throughput.
fn tls_rows(c: &Cluster, machine: &cluster::launch::Machine, opts: &cluster::launch::SshOptions, plain: u32, quick: bool, rows: &mut Vec<Row>) {
    use cluster::launch::SshLauncher;
    let l = std::sync::Arc::new(SshLauncher::new(vec![machine.clone()], opts.clone()).unwrap());
    let asks = LaunchOptions { env: vec![("LIBCLUSTER_TLS".into(), "on".into())], ..Default::default() };
    let tls = c.addprocs_with(l, 1, &asks).unwrap()[0];
    assert_eq!(c.connection_encrypted(tls), Some(true), "the TLS worker's connection is plain");
    assert_eq!(c.connection_encrypted(plain), Some(false));
    let rounds = if quick { 4_000 } else { 20_000 };
    let (on, off) = alternating_round_trips(c, tls, plain, rounds / 20, 20);
    let big = vec![0x5au8; 8 << 20];
    let time_echo = |p: u32| {
        let t = Instant::now();
        let v = c.remotecall_fetch(p, "echo", &big).unwrap();
        assert_eq!(v.len(), big.len());
        2.0 * big.len() as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let (mut bw_on, mut bw_off) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 3 } else { 7 } {
        bw_on.push(time_echo(tls));
        bw_off.push(time_echo(plain));
    }
    rows.push(Row::new("  under TLS (us)", us(on), us(off), "the same, plain (same host)", "its cost"));
    rows.push(Row::new("8 MiB echo across it under TLS (MB/s)", median(bw_on), median(bw_off), "the same, plain", "its cost"));
    c.rmprocs(&[tls], Duration::from_secs(10)).unwrap();
}

/// 512 workers (64 with --quick) joining, with master_worker and then
/// all_to_all (lazy connections), beside the targets; the head's threads;
/// the first everywhere over them.
fn scale_rows(c: &Cluster, quick: bool, rows: &mut Vec<Row>) {
    let n = std::env::var("BENCH_SCALE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 64 } else { 512 });
    let own_args = LaunchOptions { args: Some(vec![]), ..Default::default() };
    for (t, name) in [(cluster::Topology::MasterWorker, "master_worker"), (cluster::Topology::AllToAll, "all_to_all")] {
        c.set_topology(t).unwrap();
        let t0 = Instant::now();
        let ids = c.addprocs(n, &own_args).unwrap();
        let joined = t0.elapsed().as_secs_f64();
        let threads = cluster::sys::thread_count().unwrap_or(0) as f64;
        let t1 = Instant::now();
        c.everywhere(Some(&ids), "noop", &[], Some(Duration::from_secs(60))).unwrap();
        let first = t1.elapsed().as_secs_f64();
        rows.push(Row::new(leak(format!("{n} workers joined, {name} (s)")), joined, 10.0, "target 10 s", "<= 1x"));
        rows.push(Row::new(leak(format!("first everywhere over {n}, {name} (s)")), first, 1.0, "target 1 s", "<= 1x"));
        rows.push(Row::new(leak(format!("head threads with {n} workers, {name}")), threads, threads, "itself", ""));
        c.rmprocs(&ids, Duration::from_secs(60)).unwrap();
    }
}

/// examples/mpi/allgather.c built with mpicc, when OpenMPI is installed.
fn build_mpi_allgather() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::temp_dir().join(format!("libcluster-bench-mpi-allgather-{}", std::process::id()));
    let ok = Command::new("mpicc").args(["-O2", "-o"]).arg(&exe).arg(root.join("examples/mpi/allgather.c")).status().ok()?.success();
    ok.then_some(exe)
}

/// Mean microseconds of MPI_Allgather of `size`-byte blocks among `n`
/// ranks over TCP (the slowest rank's mean).
fn mpi_allgather_us(exe: &std::path::Path, n: usize, size: u32, iters: u32) -> Option<f64> {
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "--allow-run-as-root", "-np", &n.to_string(), "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"])
        .arg(exe)
        .args([size.to_string(), iters.to_string()])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    keyed(&String::from_utf8_lossy(&out.stdout), "allgather_us")
}

/// SETs per second of `redis-benchmark -P 16` (50 clients) against a
/// `redis-server` started here on a free loopback port; `None` without Redis.
fn redis_set_rate(n: usize) -> Option<f64> {
    let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port().to_string();
    let mut server = Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        TcpStream::connect(format!("127.0.0.1:{port}")).is_ok()
    });
    let out = up
        .then(|| Command::new("redis-benchmark").args(["-p", &port, "-t", "set", "-n", &n.to_string(), "-P", "16", "-q"]).stderr(Stdio::null()).output().ok());
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out??.stdout).into_owned();
    // The last record: "SET: 1420454.50 requests per second, ..."
    let last = text.rsplit('\r').next()?.rsplit("SET:").next()?;
    last.split_whitespace().next()?.parse().ok()
}

/// pmap of a no-op over 2 workers (the cluster's), batch size 1, beside
/// Python's multiprocessing.Pool(2).map(chunksize=1) measured now; the
/// progress callback's overhead.
fn pmap_rows(c: &Cluster, quick: bool, rows: &mut Vec<Row>) {
    let pn = if quick { 20_000 } else { 100_000 };
    let reps = if quick { 3 } else { 7 };
    let py = python_pool_map(pn, reps.min(5));
    let py_or = |r: f64| py.unwrap_or(r);
    let py_name = if py.is_some() { "Python Pool(2).map, chunk 1" } else { "(no python3: itself)" };
    let cpm = run_c("bench_pmap", &[&pn.to_string(), &reps.to_string()]);
    if let Some(out) = &cpm {
        if let Some(v) = keyed(out, "pmap_default") {
            rows.push(Row::new("pmap no-op, 2 workers, batch 1, C (k/s)", v / 1e3, py_or(v) / 1e3, py_name, ">= 1x"));
        }
        if let Some(v) = keyed(out, "pmap_d2") {
            rows.push(Row::new("same, at most 2 calls in flight", v / 1e3, py_or(v) / 1e3, py_name, ""));
        }
        if let Some(v) = keyed(out, "pmap_d1") {
            rows.push(Row::new("same, 1 call in flight (Distributed's)", v / 1e3, py_or(v) / 1e3, py_name, ""));
        }
    }
    let rp = rust_pmap(c, pn, PmapOptions::default().max_in_flight);
    rows.push(Row::new("same, from Rust (the same core) (k/s)", rp / 1e3, py_or(rp) / 1e3, py_name, ">= 1x"));
    if let Some(p) = cpm.as_deref().and_then(|o| keyed(o, "progress_overhead_pct")) {
        // Wall-clock A/B on a shared machine: read it against the noise
        // floor (the same measure between two runs without a callback).
        let o = cpm.as_deref().unwrap_or("");
        let noise = keyed(o, "noise_pct").unwrap_or(f64::NAN);
        rows.push(Row::new(leak(format!("progress callback overhead, C (%, noise {noise:.1}%)")), p.max(0.0), 1.0, "target 1%", "<= 1x"));
        if let Some(share) = keyed(o, "progress_cb_share_pct") {
            rows.push(Row::new("time inside progress callbacks (%)", share, 1.0, "target 1%", "<= 1x"));
        }
        // A report's cost is far below the noise at the default rate (10
        // a second): at 1 ms, what the A/B shows plus its noise bounds it.
        if let (Some(f), Some(fnoise), Some(calls), Some(bound)) =
            (keyed(o, "progress_fast_overhead_pct"), keyed(o, "fast_noise_pct"), keyed(o, "progress_fast_calls"), keyed(o, "progress_bound_pct"))
        {
            rows.push(Row::new(leak(format!("same, a report every 1 ms ({calls:.0} a map, noise {fnoise:.1}%)")), f.max(0.0), 1.0, "", ""));
            rows.push(Row::new("so progress at the default rate at most (%)", bound, 1.0, "target 1%", "<= 1x"));
        }
    }
}

/// pfork beside its OS floor, both from this process with its cluster's
/// threads running: rounds of pfork(2) with 8-byte results interleaved
/// with rounds of two bare `fork` + `_exit(0)` + `waitpid`, compared by
/// their medians; then pfork(64) against 64 bare forks.
fn fork_rows(quick: bool, rows: &mut Vec<Row>) {
    use cluster::sys::process as os;
    let bare = |n: usize| {
        let t = Instant::now();
        let pids: Vec<u32> = (0..n).map(|_| os::fork_child(false, || 0).unwrap()).collect();
        for p in pids {
            os::wait_child(p, true).unwrap();
        }
        t.elapsed().as_secs_f64()
    };
    let ours = |n: usize| {
        let t = Instant::now();
        let r = cluster::pfork(n, |i| Ok((i as u64).to_le_bytes().to_vec()));
        let d = t.elapsed().as_secs_f64();
        assert!(r.iter().all(|x| x.as_ref().is_ok_and(|v| v.len() == 8)));
        d
    };
    let rounds = if quick { 300 } else { 1000 };
    let (mut b2, mut o2) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        b2.push(bare(2));
        o2.push(ours(2));
    }
    rows.push(Row::new("pfork(2), 8 B results (us)", us(median(o2)), us(median(b2)), "2x fork+_exit+waitpid", "<= 1.5x"));
    let (mut b64, mut o64) = (Vec::new(), Vec::new());
    for _ in 0..(if quick { 15 } else { 41 }) {
        b64.push(bare(64));
        o64.push(ours(64));
    }
    rows.push(Row::new("pfork(64), 8 B results (ms)", median(o64) * 1e3, median(b64) * 1e3, "64x fork+_exit+waitpid", ""));
}

fn print_rows(rows: &[Row]) {
    println!("\n{:<38} {:>12} {:>12}  {:>7}  {:<26} target", "figure", "libcluster", "baseline", "ratio", "baseline is");
    for r in rows {
        println!("{:<38} {:>12.2} {:>12.2}  {:>6.2}x  {:<26} {}", r.name, r.ours, r.base, r.ours / r.base, r.base_name, r.target);
    }
}

/// Takes from `a` and puts into `b`, each take's continuation arming the
/// next: it runs on the thread that completes the take. The put asks for
/// no answer unless `acked`.
fn echo(a: Channel, b: Channel, acked: bool) {
    let Ok(f) = a.take_async() else { return };
    let keep = std::sync::Arc::new(std::sync::Mutex::new(None));
    let k = keep.clone();
    f.on_complete(move |r| {
        let Ok(v) = r else { return };
        if acked {
            let _ = b.put_async(v);
        } else {
            let _ = b.put_nowait(v);
        }
        k.lock().unwrap().take();
        echo(a, b, acked);
    });
    if !f.is_ready() {
        *keep.lock().unwrap() = Some(f);
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The round trip measured by a C program (examples/c/bench_rtt.c),
/// compiled here against this build's library; `None` without a compiler.
fn c_rtt(rounds: usize) -> Option<f64> {
    let out = run_c("bench_rtt", &[&rounds.to_string()])?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Compiles examples/c/<name>.c against this build's library and runs it
/// with `args`; its standard output, or `None` without a compiler.
fn run_c(name: &str, args: &[&str]) -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = self_exe().parent()?.parent()?.join("libcluster.so");
    let dir = std::env::temp_dir().join(format!("libcluster-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let _ = std::os::unix::fs::symlink(&lib, dir.join("libcluster.so.0"));
    let exe = dir.join(name);
    let built = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(root.join(format!("examples/c/{name}.c")))
        .arg(format!("-I{}", root.join("include").display()))
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .status()
        .ok()?;
    if !built.success() {
        return None;
    }
    let out = Command::new(&exe).args(args).stderr(Stdio::inherit()).output().ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the line `key <value>` in `text`.
fn keyed(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
}

/// Python's `multiprocessing.Pool(2).map(noop, range(n), chunksize=1)`,
/// items/s (median of `reps`), when `python3` is available.
fn python_pool_map(n: usize, reps: usize) -> Option<f64> {
    let script = format!(
        "import multiprocessing as mp, time\n\
         def noop(x): return None\n\
         if __name__ == '__main__':\n\
         \x20   with mp.Pool(2) as p:\n\
         \x20       p.map(noop, range({w}), chunksize=1)\n\
         \x20       ts = []\n\
         \x20       for _ in range({reps}):\n\
         \x20           t = time.perf_counter(); p.map(noop, range({n}), chunksize=1); ts.append(time.perf_counter() - t)\n\
         \x20       ts.sort(); print({n} / ts[len(ts) // 2])\n",
        w = n / 10 + 1
    );
    let path = std::env::temp_dir().join(format!("libcluster-bench-{}.py", std::process::id()));
    std::fs::write(&path, script).ok()?;
    let out = Command::new("python3").arg(&path).stderr(Stdio::null()).output().ok();
    let _ = std::fs::remove_file(&path);
    String::from_utf8_lossy(&out?.stdout).trim().parse().ok()
}

/// pmap of "noop" over `n` empty elements from Rust: items/s (median of 3).
fn rust_pmap(c: &Cluster, n: usize, depth: usize) -> f64 {
    let mut items = Items::with_capacity(n, 0);
    for _ in 0..n {
        items.push(&[]);
    }
    let opts = || PmapOptions { max_in_flight: depth, ..Default::default() };
    c.pmap(None, "noop", items.clone(), opts()).unwrap().wait(None).unwrap();
    median_of(3, || {
        let t = Instant::now();
        c.pmap(None, "noop", items.clone(), opts()).unwrap().wait(None).unwrap();
        n as f64 / t.elapsed().as_secs_f64()
    })
}

struct Row {
    name: &'static str,
    ours: f64,
    base: f64,
    base_name: &'static str,
    target: &'static str,
}

impl Row {
    fn new(name: &'static str, ours: f64, base: f64, base_name: &'static str, target: &'static str) -> Row {
        Row { name, ours, base, base_name, target }
    }
}

fn us(s: f64) -> f64 {
    s * 1e6
}
fn gbps(bytes: usize, s: f64) -> f64 {
    bytes as f64 / s / 1e9
}
fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn median_of(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    median((0..n).map(|_| f()).collect())
}

fn self_exe() -> std::path::PathBuf {
    std::env::current_exe().unwrap()
}

fn spawn_role(role: &str, addr: &str) -> std::process::Child {
    Command::new(self_exe()).env("BENCH_ROLE", role).env("BENCH_ADDR", addr).spawn().unwrap()
}

/// Busy-polls `s` until `buf` is full; false at its end. With
/// `block_after`, it blocks once it polled that long in vain.
fn read_exact_spin(s: &TcpStream, buf: &mut [u8], block_after: Option<Duration>) -> bool {
    let (mut got, mut since) = (0, Instant::now());
    while got < buf.len() {
        match cluster::sys::read_nonblocking(s.as_raw_fd(), &mut buf[got..]) {
            Ok(Some(0)) | Err(_) => return false,
            Ok(Some(n)) => got += n,
            Ok(None) if block_after.is_some_and(|d| since.elapsed() > d) => {
                let _ = cluster::sys::poll_in(s.as_raw_fd(), None);
                since = Instant::now();
            }
            Ok(None) => std::hint::spin_loop(),
        }
    }
    true
}

/// Echoes 8-byte messages, busy-polling while they come; after 50 us
/// without one it blocks (between the blocks of the round trip it is
/// interleaved with, it must not hold a CPU).
fn tcp_echo(addr: &str) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 8];
    while read_exact_spin(&s, &mut b, Some(Duration::from_micros(50))) {
        cluster::sys::write_all_vectored(s.as_raw_fd(), &[&b]).unwrap();
    }
}

fn tcp_sink(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut left = MIB64;
        while left > 0 {
            match s.read(&mut buf[..left.min(1 << 20)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
        if s.write_all(&[1]).is_err() {
            return;
        }
    }
}

/// A busy-poll TCP ping-pong of 8 bytes with an echo process: the
/// baseline of the round trip.
struct PingPong {
    sock: TcpStream,
    child: std::process::Child,
}

impl PingPong {
    /// With an echo process of this binary on loopback.
    fn start() -> PingPong {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let child = spawn_role("tcp-echo", &l.local_addr().unwrap().to_string());
        PingPong::accept(&l, child)
    }

    /// With `child`, an echo connecting to `l`.
    fn accept(l: &TcpListener, child: std::process::Child) -> PingPong {
        let (sock, _) = l.accept().unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_nonblocking(true).unwrap();
        PingPong { sock, child }
    }

    /// Seconds per round trip over `rounds` of them (after 100 that wake
    /// the echo up).
    fn per_round(&mut self, rounds: usize) -> f64 {
        let mut b = [7u8; 8];
        let mut one = || {
            cluster::sys::write_all_vectored(self.sock.as_raw_fd(), &[&b.clone()]).unwrap();
            assert!(read_exact_spin(&self.sock, &mut b, None));
        };
        (0..100).for_each(|_| one());
        let t = Instant::now();
        (0..rounds).for_each(|_| one());
        t.elapsed().as_secs_f64() / rounds.max(1) as f64
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// The median of `v` (NaN when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn tcp_one_way(bytes: usize, reps: usize) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = spawn_role("tcp-sink", &l.local_addr().unwrap().to_string());
    let (mut s, _) = l.accept().unwrap();
    let data = vec![1u8; bytes];
    let mut ack = [0u8; 1];
    let r = median_of(reps, || {
        let t = Instant::now();
        s.write_all(&data).unwrap();
        s.read_exact(&mut ack).unwrap();
        t.elapsed().as_secs_f64()
    });
    drop(s);
    let _ = child.wait();
    r
}

fn spawn_and_wait_4() -> f64 {
    let t = Instant::now();
    let kids: Vec<_> = (0..4).map(|_| Command::new(self_exe()).env("BENCH_ROLE", "exit").spawn().unwrap()).collect();
    for mut k in kids {
        k.wait().unwrap();
    }
    t.elapsed().as_secs_f64()
}

fn idle_process_rss() -> u64 {
    let mut k = Command::new(self_exe()).env("BENCH_ROLE", "idle").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = cluster::sys::resident_bytes(k.id()).unwrap_or(0);
    let _ = k.kill();
    let _ = k.wait();
    r
}

/// The `julia` to run, when one is available.
fn julia() -> Option<String> {
    let repo_wrapper = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/julia");
    std::env::var("BENCH_JULIA").ok().or_else(|| {
        let on_path = Command::new("julia").arg("--version").stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        if !on_path {
            return None;
        }
        Some(if std::path::Path::new(repo_wrapper).exists() { repo_wrapper.to_string() } else { "julia".to_string() })
    })
}

/// Julia Distributed's RemoteChannel round trip, as the one above:
/// `put!(a, x); take!(b)` with a on worker 2, b on the head, and worker 2
/// echoing a into b.
fn julia_channel_rtt(rounds: usize) -> Option<f64> {
    let julia = julia()?;
    let script = format!(
        "using Distributed; addprocs(1); \
         @everywhere echo(a, b) = while true; put!(b, take!(a)); end; \
         a = RemoteChannel(() -> Channel{{UInt64}}(1), 2); b = RemoteChannel(() -> Channel{{UInt64}}(1), 1); \
         remote_do(echo, 2, a, b); x = UInt64(42); \
         for i in 1:2000; put!(a, x); take!(b); end; \
         ts = Float64[]; for k in 1:5; t = time_ns(); for i in 1:{n}; put!(a, x); take!(b); end; \
         push!(ts, (time_ns() - t) / 1e9 / {n}); end; sort!(ts); println(ts[3]); rmprocs(workers())",
        n = rounds / 5
    );
    let out = Command::new(julia).arg("-e").arg(script).stderr(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().last()?.trim().parse().ok()
}

/// Julia Distributed's round trip, when a `julia` is available.
fn julia_rtt(rounds: usize) -> Option<f64> {
    let julia = julia()?;
    let script = format!(
        "using Distributed; addprocs(1); x = UInt64(42); \
         for i in 1:2000; remotecall_fetch(identity, 2, x); end; \
         ts = Float64[]; for k in 1:5; t = time_ns(); for i in 1:{n}; remotecall_fetch(identity, 2, x); end; \
         push!(ts, (time_ns() - t) / 1e9 / {n}); end; sort!(ts); println(ts[3]); rmprocs(workers())",
        n = rounds / 5
    );
    let out = Command::new(julia).arg("-e").arg(script).stderr(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().last()?.trim().parse().ok()
}
