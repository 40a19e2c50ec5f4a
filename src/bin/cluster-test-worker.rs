//! A worker program for the integration tests and benchmarks: registers a
//! set of functions and serves until the head stops it.

use cluster::prelude::*;
use cluster::wire::{decode_payload, encode_payload};
use cluster::{Call, Channel, ChannelRef, Cluster, Config, FutureRef, Spec};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static HELD: std::sync::Mutex<Vec<cluster::Future>> = std::sync::Mutex::new(Vec::new());
static HELD_CHANNELS: std::sync::Mutex<Vec<Channel>> = std::sync::Mutex::new(Vec::new());
static SEQ: AtomicU64 = AtomicU64::new(0);
static SEQ_BROKEN: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicU32 = AtomicU32::new(0);
static MAX_RUNNING: AtomicU32 = AtomicU32::new(0);

fn u32_arg(call: &Call) -> Result<u32, String> {
    call.args().get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).ok_or_else(|| "expected a u32".to_string())
}

/// A channel reference at `at` in the arguments, imported.
fn channel_arg(call: &Call, at: usize) -> Result<Channel, String> {
    let r = call.args().get(at..at + 12).and_then(ChannelRef::from_bytes).ok_or("expected a channel reference")?;
    call.node().import_channel(r).map_err(|e| e.to_string())
}

fn u32_at(call: &Call, at: usize) -> Result<u32, String> {
    call.args().get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).ok_or_else(|| "expected a u32".to_string())
}

/// An outcome as bytes: status (0 or the error kind's code), the error's
/// process, then the value or the message.
fn outcome(r: cluster::Result<Vec<u8>>) -> Vec<u8> {
    match r {
        Ok(v) => [&[0u8][..], &0u32.to_le_bytes(), &v].concat(),
        Err(e) => [&[e.kind as u8][..], &e.pid.to_le_bytes(), e.message.as_bytes()].concat(),
    }
}

/// Takes from `a` and puts into `b` (without an answer), each take's
/// continuation arming the next: on the thread that completes it, no
/// thread of its own.
fn echo(a: Channel, b: Channel) {
    let f = match a.take_async() {
        Ok(f) => f,
        Err(_) => return,
    };
    let keep = std::sync::Arc::new(std::sync::Mutex::new(None));
    let k = keep.clone();
    f.on_complete(move |r| {
        let Ok(v) = r else { return };
        let _ = b.put_nowait(v);
        k.lock().unwrap().take();
        echo(a, b);
    });
    // The pending future stays alive until its continuation has run.
    if !f.is_ready() {
        *keep.lock().unwrap() = Some(f);
    }
}

fn register_channel_functions(c: &Cluster) -> cluster::Result<()> {
    // args: ref, n: puts n u32s (0..n) and replies with the outcome.
    c.register_fn("chan_produce", |call| {
        let ch = channel_arg(call, 0)?;
        let n = u32_at(call, 12)?;
        let r = (0..n).try_for_each(|i| ch.put(&i.to_le_bytes()));
        Ok(outcome(r.map(|_| Vec::new())))
    })?;
    // args: ref, period_ms: puts 0, 1, 2, ... every period until a put fails.
    c.register_fn("chan_produce_forever", |call| {
        let ch = channel_arg(call, 0)?;
        let ms = u32_at(call, 12)?;
        let mut i = 0u32;
        let r = loop {
            if let Err(e) = ch.put(&i.to_le_bytes()) {
                break e;
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(ms as u64));
        };
        Ok(outcome(Err(r)))
    })?;
    // args: ref, timeout_ms (u32::MAX: none): one take, its outcome.
    c.register_fn("chan_take", |call| {
        let ch = channel_arg(call, 0)?;
        let ms = u32_at(call, 12)?;
        let t = (ms != u32::MAX).then(|| Duration::from_millis(ms as u64));
        Ok(outcome(ch.take_timeout(t).map(|v| v.to_vec())))
    })?;
    // args: ref: takes until closed and empty; replies with the u32s taken.
    c.register_fn("chan_drain", |call| {
        let ch = channel_arg(call, 0)?;
        let mut got = Vec::new();
        for v in ch.iter() {
            got.extend_from_slice(&v.map_err(|e| e.to_string())?);
        }
        Ok(got)
    })?;
    // A channel kept by this worker, exported: replies with its reference.
    c.register_fn("chan_new", |call| {
        let ch = call.node().channel(0, u32_arg(call)? as usize).map_err(|e| e.to_string())?;
        let r = ch.export().map_err(|e| e.to_string())?;
        HELD_CHANNELS.lock().unwrap().push(ch);
        Ok(r.to_bytes().to_vec())
    })?;
    // args: ref: imports it and holds it until chan_release.
    c.register_fn("chan_hold", |call| {
        let ch = channel_arg(call, 0)?;
        HELD_CHANNELS.lock().unwrap().push(ch);
        Ok(Vec::new())
    })?;
    c.register_fn("chan_release", |_| {
        HELD_CHANNELS.lock().unwrap().clear();
        Ok(Vec::new())
    })?;
    // args: ref, pid: imports it, exports it again (a round trip to its
    // owner), has `pid` hold the new reference, then drops its own.
    c.register_fn("chan_forward", |call| {
        let ch = channel_arg(call, 0)?;
        let pid = u32_at(call, 12)?;
        let r = ch.export().map_err(|e| e.to_string())?;
        call.node().remotecall_fetch(pid, "chan_hold", &r.to_bytes()).map_err(|e| e.to_string())?;
        Ok(Vec::new())
    })?;
    c.register_fn("chan_owned", |call| Ok((call.node().owned_channels() as u32).to_le_bytes().to_vec()))?;
    // args: ref a, ref b: echoes every element of a into b, without a thread.
    c.register_fn("chan_echo", |call| {
        echo(channel_arg(call, 0)?, channel_arg(call, 12)?);
        Ok(Vec::new())
    })?;
    Ok(())
}

/// Dict operations from this process, on a handle passed in the
/// arguments (tests/dicts.rs).
fn register_dict_functions(c: &Cluster) -> cluster::Result<()> {
    c.register_value_fn("myid", |node, _| Ok(node.myid().to_le_bytes().to_vec()))?;
    // args: (op, handle, key, value): one operation, its outcome.
    c.register_fn("dict_op", |call| {
        let (op, h, key, val): (String, Vec<u8>, Vec<u8>, Vec<u8>) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let d = call.node().open_dict(&h).map_err(|e| e.to_string())?;
        let r = match op.as_str() {
            "set" => d.set(&key, &val).map(|_| Vec::new()),
            "get" => d.get(&key).map(|v| encode_payload(&v)),
            "index" => d.index(&key),
            "get!" => d.get_or_insert(&key, &val),
            "pop" => d.pop(&key).map(|v| encode_payload(&v)),
            "delete" => d.delete(&key).map(|_| Vec::new()),
            "haskey" => d.haskey(&key).map(|b| vec![b as u8]),
            "length" => d.length().map(|n| (n as u64).to_le_bytes().to_vec()),
            "setf" => d.set_with(&key, &String::from_utf8_lossy(&val), &[]).map(|_| Vec::new()),
            "localpart" => Ok(encode_payload(&d.localpart())),
            "pairs" => d.pairs().map(|p| encode_payload(&p)),
            "release" => d.release().map(|_| Vec::new()),
            o => return Err(format!("unknown dict op {o}")),
        };
        Ok(outcome(r))
    })?;
    // args: a Spec: creates or opens it from here; the handle.
    c.register_fn("dict_create", |call| {
        let spec: Spec = decode_payload(call.args()).map_err(|e| e.to_string())?;
        Ok(outcome(call.node().dict(&spec).map(|d| d.to_bytes())))
    })?;
    c.register_fn("dict_local", |call| Ok(encode_payload(&call.node().local_dicts())))?;
    c.register_fn("dict_parked", |call| {
        let d = call.node().service::<cluster::service::dict::Dicts>().ok_or("no dict service")?;
        Ok(format!("{:?}", d.parked()).into_bytes())
    })?;
    c.register_fn("dict_answered", |call| {
        let d = call.node().service::<cluster::service::dict::Dicts>().ok_or("no dict service")?;
        Ok(d.answered_for_primaries().to_le_bytes().to_vec())
    })?;
    // args: (handle, keys, rounds): each round sets every key to
    // "<myid>:<round>", the round's sets pipelined; the outcome.
    c.register_fn("dict_write_many", |call| {
        let (h, keys, rounds): (Vec<u8>, Vec<Vec<u8>>, u32) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let d = call.node().open_dict(&h).map_err(|e| e.to_string())?;
        let me = call.node().myid();
        let r = (0..rounds).try_for_each(|i| {
            let v = format!("{me}:{i}").into_bytes();
            let fs = keys.iter().map(|k| d.set_async(k, &v)).collect::<cluster::Result<Vec<_>>>()?;
            fs.iter().try_for_each(|f| f.wait(Some(Duration::from_secs(20))))
        });
        Ok(outcome(r.map(|_| Vec::new())))
    })?;
    // args: (handle, prefix, n): sets prefix+i to i (u32) for i in 0..n, one
    // after another; the acknowledged i and the errors.
    c.register_fn("dict_write_seq", |call| {
        let (h, prefix, n): (Vec<u8>, String, u32) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let d = call.node().open_dict(&h).map_err(|e| e.to_string())?;
        let (mut acked, mut errors) = (Vec::new(), Vec::new());
        for i in 0..n {
            match d.set(format!("{prefix}{i}").as_bytes(), &i.to_le_bytes()) {
                Ok(()) => acked.push(i),
                Err(e) => errors.push(format!("{:?} (process {}): {}", e.kind, e.pid, e.message)),
            }
        }
        Ok(encode_payload(&(acked, errors)))
    })?;
    // args: (handle, keys, rounds): a history for the linearizability
    // check: round i sets every key to i (u32, one writer per key); each
    // operation as (key index, value, invoked ns, answered ns, ok) on the
    // system's monotonic clock.
    c.register_fn("dict_history_write", |call| {
        let (h, keys, rounds): (Vec<u8>, Vec<Vec<u8>>, u32) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let d = call.node().open_dict(&h).map_err(|e| e.to_string())?;
        let mut ops = Vec::new();
        for i in 1..=rounds {
            for (j, k) in keys.iter().enumerate() {
                let t0 = cluster::sys::monotonic_ns();
                let ok = d.set(k, &i.to_le_bytes()).is_ok();
                ops.push((j as u32, i, t0, cluster::sys::monotonic_ns(), ok));
            }
        }
        Ok(encode_payload(&ops))
    })?;
    // args: (handle, keys, ms): reads the keys in turn for ms; each read
    // as (key index, value (0: absent), invoked ns, answered ns, ok).
    c.register_fn("dict_history_read", |call| {
        let (h, keys, ms): (Vec<u8>, Vec<Vec<u8>>, u32) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let d = call.node().open_dict(&h).map_err(|e| e.to_string())?;
        let end = Instant::now() + Duration::from_millis(ms as u64);
        let mut ops = Vec::new();
        let mut j = 0;
        while Instant::now() < end {
            let t0 = cluster::sys::monotonic_ns();
            let r = d.get(&keys[j % keys.len()]);
            let t1 = cluster::sys::monotonic_ns();
            let v = r.as_ref().ok().and_then(|v| v.as_ref()).map(|v| u32::from_le_bytes(v[..4].try_into().unwrap())).unwrap_or(0);
            ops.push(((j % keys.len()) as u32, v, t0, t1, r.is_ok()));
            j += 1;
        }
        Ok(encode_payload(&ops))
    })?;
    // args: (handle, keys): get!(k, myid) on every key, pipelined; the values got.
    c.register_fn("dict_get_insert_many", |call| {
        let (h, keys): (Vec<u8>, Vec<Vec<u8>>) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let d = call.node().open_dict(&h).map_err(|e| e.to_string())?;
        let me = call.node().myid().to_le_bytes();
        let r = keys
            .iter()
            .map(|k| d.get_or_insert_async(k, &me))
            .collect::<cluster::Result<Vec<_>>>()
            .and_then(|fs| fs.iter().map(|f| f.fetch(Some(Duration::from_secs(20))).map(|v| v.to_vec())).collect::<cluster::Result<Vec<Vec<u8>>>>());
        Ok(outcome(r.map(|v| encode_payload(&v))))
    })?;
    Ok(())
}

/// Shared memory: args are encode_payload of (name, prefix, ...).
fn register_shm_functions(c: &Cluster) -> cluster::Result<()> {
    c.register_fn("shm_create", |call| {
        let (name, prefix, size): (String, String, u64) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let spec = cluster::ShmSpec::new(&name, 0, 1, &[size]).prefixed(&prefix);
        let seg = call.node().shm_create(&spec, None).map_err(|e| e.to_string())?;
        Ok(seg.os_name().as_bytes().to_vec())
    })?;
    c.register_fn("shm_read", |call| {
        let (name, prefix, offset, n): (String, String, u64, u64) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let seg = call.node().shm_segment(&name, &prefix).ok_or("not mapped here")?;
        let mut out = vec![0u8; n as usize];
        seg.read_at(offset as usize, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })?;
    c.register_fn("shm_write", |call| {
        let (name, prefix, offset, data): (String, String, u64, Vec<u8>) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        let seg = call.node().shm_segment(&name, &prefix).ok_or("not mapped here")?;
        seg.write_at(offset as usize, &data).map_err(|e| e.to_string())?;
        Ok(Vec::new())
    })?;
    c.register_fn("shm_count", |call| Ok((call.node().shm_segments().len() as u32).to_le_bytes().to_vec()))?;
    Ok(())
}

/// Server tasks: "stask_count" counts its calls in the task's state and
/// answers (task index, calls so far, its arguments); "stask_fail" fails on
/// task 1; "stask_free" empties the state (answering what it held).
pub fn register_stask_functions(c: &Cluster) -> cluster::Result<()> {
    c.register_fn("stask_count", |call| {
        let t = cluster::task_of(call).ok_or("not a server task")?;
        let mut st = t.task.state.lock();
        let n = st.get_or_insert_with(|| Box::new(0u32)).downcast_mut::<u32>().ok_or("state is not a count")?;
        *n += 1;
        Ok(encode_payload(&(t.task.index as u32, *n, t.args.to_vec())))
    })?;
    c.register_fn("stask_fail", |call| {
        let t = cluster::task_of(call).ok_or("not a server task")?;
        if t.task.index == 1 {
            return Err("task 1 fails on purpose".into());
        }
        Ok(Vec::new())
    })?;
    c.register_fn("stask_free", |call| {
        let t = cluster::task_of(call).ok_or("not a server task")?;
        let held = t.task.state.lock().take().and_then(|b| b.downcast::<u32>().ok()).map_or(0, |b| *b);
        Ok(held.to_le_bytes().to_vec())
    })?;
    Ok(())
}

/// pfork on a worker (tests/fork.rs): args are n (u32) and the index of a
/// child that aborts (u32, n or more: none). Answers each child's square
/// (u64 LE) or error text, encode_payload'ed, and the zombies left.
fn register_fork_functions(c: &Cluster) -> cluster::Result<()> {
    c.register_fn("pfork_squares", |call| {
        let (n, crash) = (u32_arg(call)? as usize, u32_at(call, 4)? as usize);
        let results = cluster::pfork(n, |i| {
            if i == crash {
                std::process::abort();
            }
            Ok(((i * i) as u64).to_le_bytes().to_vec())
        });
        let out: Vec<Result<u64, String>> =
            results.into_iter().map(|r| r.map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).map_err(|e| e.to_string())).collect();
        let zombies = cluster::sys::process::children_in_state(std::process::id(), 'Z').len() as u32;
        Ok(encode_payload(&(out, zombies)))
    })?;
    Ok(())
}

/// ClusterUtils' pieces (tests/clusterutils.rs, the bench): an all-gather
/// run here, a function applied to remote variables, host names.
fn register_clusterutils_functions(c: &Cluster) -> cluster::Result<()> {
    // args: encode_payload((pids, tag, data, timeout_ms or -1, reps, delay_ms)):
    // sleeps delay_ms, then runs `reps` all-gathers; answers the last result
    // (parts layout) and the mean time per call in ns, or the error.
    c.register_fn("ag_run", |call| {
        let (pids, tag, data, timeout_ms, reps, delay_ms): (Vec<u32>, u64, Vec<u8>, i64, u32, u32) = decode_payload(call.args()).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(delay_ms as u64));
        let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        let node = call.node();
        let t0 = Instant::now();
        let mut last = Ok(Vec::new());
        for _ in 0..reps.max(1) {
            last = node.allgather_async(&pids, tag, &data, timeout).and_then(|f| f.fetch(None).map(<[u8]>::to_vec));
            if last.is_err() {
                break;
            }
        }
        let ns = (t0.elapsed().as_nanos() / u128::from(reps.max(1))) as u64;
        Ok(encode_payload(&(outcome(last), ns)))
    })?;
    c.register_fn("var_twice", |call| Ok([call.args(), call.args()].concat()))?;
    c.register_fn("hostname", |call| Ok(call.node().hostname().as_bytes().to_vec()))?;
    c.register_fn("env_var", |call| Ok(std::env::var(String::from_utf8_lossy(call.args()).as_ref()).unwrap_or_default().into_bytes()))?;
    c.register_fn("host_of", |call| Ok(call.node().host_of(u32_arg(call)?).map_err(|e| e.to_string())?.into_bytes()))?;
    Ok(())
}

pub fn register_test_functions(c: &Cluster) -> cluster::Result<()> {
    register_clusterutils_functions(c)?;
    register_stask_functions(c)?;
    register_channel_functions(c)?;
    register_dict_functions(c)?;
    register_shm_functions(c)?;
    register_fork_functions(c)?;
    c.register_fn("echo", |call| Ok(call.args().to_vec()))?;
    c.register_fn("noop", |_| Ok(Vec::new()))?;
    c.register_fn("myid", |call| Ok(call.node().myid().to_le_bytes().to_vec()))?;
    c.register_fn("getpid", |_| Ok(std::process::id().to_le_bytes().to_vec()))?;
    c.register_fn("caller", |call| Ok(call.caller().to_le_bytes().to_vec()))?;
    c.register_fn("len", |call| Ok((call.args().len() as u64).to_le_bytes().to_vec()))?;
    c.register_fn("fail", |call| Err(format!("failing on purpose: {}", String::from_utf8_lossy(call.args()))))?;
    c.register_fn("panic", |_| panic!("panicking on purpose"))?;
    c.register_fn("sleep_ms", |call| {
        std::thread::sleep(Duration::from_millis(u32_arg(call)? as u64));
        Ok(b"slept".to_vec())
    })?;
    c.register_fn("wait_cancel", |call| {
        let end = Instant::now() + Duration::from_secs(20);
        while !call.is_cancelled() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(b"not cancelled".to_vec())
    })?;
    c.register_fn("wait_cancel_ms", |call| {
        let end = Instant::now() + Duration::from_millis(u32_arg(call)? as u64);
        while !call.is_cancelled() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(if call.is_cancelled() { b"cancelled".to_vec() } else { b"not cancelled".to_vec() })
    })?;
    c.register_fn("running", |call| {
        let n = call.node().service::<cluster::service::rpc::Rpc>().map(|r| r.running_calls()).unwrap_or(0);
        Ok((n as u32).to_le_bytes().to_vec())
    })?;
    c.register_fn("overlap", |call| {
        // Records how many of these run at once.
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_RUNNING.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(u32_arg(call)? as u64));
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok(MAX_RUNNING.load(Ordering::SeqCst).to_le_bytes().to_vec())
    })?;
    c.register_fn("big", |call| Ok(vec![0xA5; u32_arg(call)? as usize]))?;
    c.register_fn("procs", |call| Ok(call.node().procs().iter().flat_map(|p| p.to_le_bytes()).collect()))?;
    c.register_fn("call_peer", |call| {
        let pid = u32_arg(call)?;
        let v = call.node().remotecall_fetch(pid, "myid", &[]).map_err(|e| e.to_string())?;
        Ok(v.to_vec())
    })?;
    c.register_fn("encrypted_to", |call| {
        let pid = u32_arg(call)?;
        Ok(vec![match call.node().connection_encrypted(pid) {
            Some(true) => 1,
            Some(false) => 0,
            None => 2,
        }])
    })?;
    c.register_fn("call_head_echo", |call| {
        let v = call.node().remotecall_fetch(1, "echo", call.args()).map_err(|e| e.to_string())?;
        Ok(v.to_vec())
    })?;
    c.register_fn("fetch_ref", |call| {
        let b = call.args();
        let r = FutureRef { owner: u32::from_le_bytes(b[..4].try_into().unwrap()), id: u64::from_le_bytes(b[4..12].try_into().unwrap()) };
        let f = call.node().import(r).map_err(|e| e.to_string())?;
        let v = f.fetch(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        Ok(v.to_vec())
    })?;
    c.register_fn("hold_ref", |call| {
        let b = call.args();
        let r = FutureRef { owner: u32::from_le_bytes(b[..4].try_into().unwrap()), id: u64::from_le_bytes(b[4..12].try_into().unwrap()) };
        let f = call.node().import(r).map_err(|e| e.to_string())?;
        HELD.lock().unwrap().push(f);
        Ok(Vec::new())
    })?;
    c.register_fn("exit", |call| std::process::exit(u32_arg(call).unwrap_or(7) as i32))?;
    c.register_fn("seq", |call| {
        let n = u64::from_le_bytes(call.args().try_into().map_err(|_| "expected a u64")?);
        let prev = SEQ.fetch_add(1, Ordering::SeqCst);
        if prev != n {
            SEQ_BROKEN.store(true, Ordering::SeqCst);
        }
        Ok(Vec::new())
    })?;
    c.register_fn("seq_state", |_| {
        let mut v = SEQ.load(Ordering::SeqCst).to_le_bytes().to_vec();
        v.push(SEQ_BROKEN.load(Ordering::SeqCst) as u8);
        Ok(v)
    })?;
    c.register_fn("peer_seq_state", |call| {
        let v = call.node().remotecall_fetch(u32_arg(call)?, "seq_state", &[]).map_err(|e| e.to_string())?;
        Ok(v.to_vec())
    })?;
    c.register_fn("threads", |_| Ok((cluster::sys::thread_count().unwrap_or(0) as u32).to_le_bytes().to_vec()))?;
    c.register_fn("fds", |_| Ok((cluster::sys::open_fds().unwrap_or(0) as u32).to_le_bytes().to_vec()))?;
    c.register_fn("call_all", |call| {
        // Calls every other worker: connections to all of them.
        let node = call.node();
        let me = node.myid();
        let mut n = 0u32;
        for p in node.workers().into_iter().filter(|&p| p != me) {
            let v = node.remotecall_fetch(p, "myid", &[]).map_err(|e| e.to_string())?;
            if u32::from_le_bytes(v[..4].try_into().unwrap()) != p {
                return Err(format!("worker {p} answered as another"));
            }
            n += 1;
        }
        Ok(n.to_le_bytes().to_vec())
    })?;
    c.register_fn("address", |call| Ok(call.node().address().as_bytes().to_vec()))?;
    // For pools and pmap: x -> x*x (u32), after `SLOW_MS` ms when called as
    // "slow_sq"; "sleep_myid" sleeps its argument's ms then answers its id;
    // "range_sum" sums lo..=hi (two i64s) times the optional i64 after them.
    c.register_fn("sq", |call| {
        let x = u32_arg(call)?;
        Ok(x.wrapping_mul(x).to_le_bytes().to_vec())
    })?;
    c.register_fn("slow_sq", |call| {
        let x = u32_arg(call)?;
        std::thread::sleep(Duration::from_millis(5));
        Ok(x.wrapping_mul(x).to_le_bytes().to_vec())
    })?;
    // Sleeps 3 ms on every 25th element: the reactor hands its role to a
    // fresh thread during each of those (a call longer than 2 ms).
    c.register_fn("sometimes_slow", |call| {
        let x = u32_arg(call)?;
        if x % 25 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
        Ok(x.to_le_bytes().to_vec())
    })?;
    c.register_fn("sleep_myid", |call| {
        std::thread::sleep(Duration::from_millis(u32_arg(call)? as u64));
        Ok(call.node().myid().to_le_bytes().to_vec())
    })?;
    c.register_fn("range_sum", |call| {
        let a = call.args();
        if a.len() < 16 {
            return Err("expected two i64s".into());
        }
        let lo = i64::from_le_bytes(a[..8].try_into().unwrap());
        let hi = i64::from_le_bytes(a[8..16].try_into().unwrap());
        let k = if a.len() >= 24 { i64::from_le_bytes(a[16..24].try_into().unwrap()) } else { 1 };
        Ok(((lo..=hi).sum::<i64>() * k).to_le_bytes().to_vec())
    })?;
    c.register_fn("rss", |_| Ok(cluster::sys::resident_bytes(std::process::id()).unwrap_or(0).to_le_bytes().to_vec()))?;
    Ok(())
}

/// A stand-in for a head in the orphan tests: launches one worker per
/// address in `addrs` (comma-separated) with the library's local launcher,
/// as addprocs does, prints their process ids, then waits to be killed.
fn run_as_launcher(addrs: &str) -> ! {
    let exe = std::env::current_exe().expect("current_exe");
    for (i, addr) in addrs.split(',').enumerate() {
        let opts = cluster::LaunchOptions { program: Some(exe.clone()), args: Some(vec![]), ..Default::default() };
        let spec = cluster::LaunchSpec::new(2 + i as u32, &opts, addr, "launcher-cookie", Duration::from_secs(60)).expect("spec");
        let launched = cluster::Launcher::launch(&cluster::LocalLauncher, &spec).expect("launch");
        println!("{}", launched.os_pid.expect("a local child"));
        // Left unreaped on purpose: this process is killed, not its workers.
        std::mem::forget(launched.child);
    }
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(0);
}

fn main() {
    // One line per panic: the tests panic handlers on purpose.
    std::panic::set_hook(Box::new(|info| eprintln!("cluster-test-worker: {info}")));
    if std::env::var("LIBCLUSTER_HEAD").is_err() {
        if let Ok(addrs) = std::env::var("TEST_AS_LAUNCHER") {
            run_as_launcher(&addrs);
        }
    }
    // A worker slow to start (before it joins).
    if let Some(ms) = std::env::var("TEST_WORKER_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        if std::env::var("LIBCLUSTER_HEAD").is_ok() {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    let mut cfg = Config::default();
    if let Some(max) = std::env::var("TEST_MAX_MESSAGE").ok().and_then(|v| v.parse().ok()) {
        cfg.max_message_bytes = max;
    }
    if let Some(n) = std::env::var("TEST_HANDLER_THREADS").ok().and_then(|v| v.parse().ok()) {
        cfg.handler_threads = n;
    }
    let c = match Cluster::init(cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cluster-test-worker: {e}");
            std::process::exit(2);
        }
    };
    if c.is_head() {
        if std::env::var("TEST_AS_HEAD").as_deref() == Ok("slow-workers") {
            // A head for the orphan test: launches two workers slow to
            // start, says so, and is killed during its addprocs.
            let opts = cluster::LaunchOptions { args: Some(vec![]), env: vec![("TEST_WORKER_DELAY_MS".into(), "800".into())], ..Default::default() };
            let f = c.addprocs_async(2, &opts).expect("addprocs_async");
            println!("launching");
            let _ = f.wait(Some(Duration::from_secs(60)));
            std::process::exit(0);
        }
        if let Ok(prefix) = std::env::var("TEST_SHM_HEAD") {
            // A head for the shared-memory orphan test: a worker creates a
            // segment, mapped here too; say so, then wait to be killed.
            let opts = cluster::LaunchOptions { args: Some(vec![]), ..Default::default() };
            let ids = c.addprocs(1, &opts).expect("addprocs");
            let args = encode_payload(&("orphan".to_string(), prefix, 4096u64));
            let name = c.remotecall_fetch(ids[0], "shm_create", &args).expect("shm_create");
            println!("{}", String::from_utf8_lossy(&name));
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(0);
        }
        if std::env::var("TEST_AS_HEAD").is_ok() {
            // A head for the head-death test: start two workers, print
            // their process ids, then wait to be killed.
            let opts = cluster::LaunchOptions { args: Some(vec![]), ..Default::default() };
            let ids = c.addprocs(2, &opts).expect("addprocs");
            for id in ids {
                let v = c.remotecall_fetch(id, "getpid", &[]).expect("getpid");
                println!("{}", u32::from_le_bytes(v[..4].try_into().unwrap()));
            }
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(0);
        }
        eprintln!("cluster-test-worker is started by a head's addprocs");
        std::process::exit(2);
    }
    register_test_functions(&c).expect("register");
    if std::env::var("TEST_WORKER_NO_READY").is_ok() {
        std::thread::sleep(Duration::from_secs(3600));
    }
    let r = c.serve();
    // The head-death test reads how serve ended: the library itself never
    // exits the process.
    if let Ok(dir) = std::env::var("TEST_SERVE_RESULT_DIR") {
        let what = match &r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{:?}", e.kind),
        };
        let _ = std::fs::write(format!("{dir}/{}", std::process::id()), what);
    }
}
