//! The fuzz targets of `src/fuzzing.rs` on stable Rust, for machines
//! without a nightly toolchain (`fuzz/` drives the same targets with
//! cargo-fuzz where there is one; `scripts/fuzz.sh` picks).
//!
//! Each target gets a deterministic, seeded mutation loop for a bounded
//! time: `LIBCLUSTER_FUZZ_SECS` seconds (default 2; CI runs longer through
//! `scripts/fuzz.sh`). It starts from the target's seeds and the files in
//! `fuzz/seeds/<target>/` (regression inputs go there too), mutates with
//! bit flips, byte inserts and deletes, splices of valid encodings,
//! length-field and varint edge values, and keeps an input when it takes
//! a path (the target's signature) not seen before. Each input must run
//! without a panic, within a time limit (a watchdog aborts on a hang) and
//! without a single allocation beyond the bound the target states.
//!
//! `LIBCLUSTER_FUZZ_SEED` changes the seed, `LIBCLUSTER_FUZZ_ITERS` caps
//! the inputs per target. A failing input is saved and printed in hex.

use cluster::fuzzing::{self, Report, Target};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---- the largest single allocation, per thread ------------------------

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(n: usize) {
    let _ = LARGEST.try_with(|c| {
        if n > c.get() {
            c.set(n)
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(p, l, new_size)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

// ---- configuration ----------------------------------------------------

fn env_f64(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn budget() -> Duration {
    Duration::from_secs_f64(env_f64("LIBCLUSTER_FUZZ_SECS").unwrap_or(2.0).max(0.0))
}

fn max_iters() -> u64 {
    env_f64("LIBCLUSTER_FUZZ_ITERS").map(|v| v as u64).unwrap_or(u64::MAX)
}

/// Longest input a target is given (the frame target grows large inputs
/// from its filler; its literal bytes need not be long).
fn max_len(target: &str) -> usize {
    match target {
        "frame" => 8192,
        "control" => 8192,
        "handshake" => 1024,
        "session" => 1024,
        "refs" => 64,
        "channel" => 64,
        "dict" => 1024,
        _ => 512,
    }
}

/// An input running longer than this is a hang.
const HANG: Duration = Duration::from_secs(30);

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target)
}

fn target_fn(name: &str) -> Target {
    fuzzing::targets().iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no target {name}")).1
}

// ---- a deterministic generator and the mutator -------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x100_0000_01b3))
}

/// Lengths at the edges of what the decoders check: header size, the
/// staging buffer, the direct-read threshold, the maximum payloads the
/// frame target picks, and the ends of the integer types.
const EDGES: &[u64] = &[
    0,
    1,
    2,
    31,
    32,
    33,
    250,
    251,
    255,
    256,
    4095,
    4096,
    4097,
    65_535,
    65_536,
    65_537,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    (3 << 20) + 5,
    (3 << 20) + 6,
    i32::MAX as u64,
    u32::MAX as u64,
    1 << 32,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// bincode varint prefixes: the markers for u16, u32, u64, u128, the
/// reserved byte, largest values, and non-minimal encodings of small ones.
const VARINTS: &[&[u8]] = &[
    &[250],
    &[251, 0xff, 0xff],
    &[251, 5, 0],
    &[252, 0xff, 0xff, 0xff, 0xff],
    &[252, 7, 0, 0, 0],
    &[253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[253, 1, 0, 0, 0, 0, 0, 0, 0],
    &[254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    &[255],
];

/// Where frame headers start: the magic's bytes.
fn magic_offsets(b: &[u8]) -> Vec<usize> {
    let m = cluster::wire::MAGIC.to_le_bytes();
    b.windows(4).enumerate().filter(|(_, w)| *w == m).map(|(i, _)| i).collect()
}

fn write_le(b: &mut Vec<u8>, at: usize, v: u64, width: usize) {
    if b.len() < at + width {
        b.resize(at + width, 0);
    }
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], max: usize) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(13) {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            // Set a byte, often a config or selector byte at the front.
            1 if len > 0 => {
                let i = if rng.below(3) == 0 { rng.below(len.min(5)) } else { rng.below(len) };
                input[i] = rng.next() as u8;
            }
            // Insert random bytes.
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            // Delete a range.
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                input.drain(at..at + n);
            }
            // Duplicate a range elsewhere.
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(128));
                let piece = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, piece);
            }
            // Splice in a piece of another input (valid encodings from the seeds).
            5 | 6 => {
                let other = rng.pick(corpus);
                if !other.is_empty() {
                    let at = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - at);
                    let piece = other[at..at + n].to_vec();
                    let to = rng.below(len + 1);
                    if rng.below(2) == 0 {
                        input.splice(to..to, piece);
                    } else {
                        let end = (to + piece.len()).min(len);
                        input.splice(to..end, piece);
                    }
                }
            }
            // Cross over: this input's head, another's tail.
            7 => {
                let other = rng.pick(corpus);
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            // An edge integer somewhere.
            8 => {
                let width = *rng.pick(&[1usize, 2, 4, 8]);
                let at = rng.below(len + 1);
                write_le(input, at, *rng.pick(EDGES), width);
            }
            // A varint edge.
            9 => {
                let at = rng.below(len + 1);
                let v = rng.pick(VARINTS).to_vec();
                if rng.below(2) == 0 {
                    input.splice(at..at, v);
                } else {
                    let end = (at + v.len()).min(len);
                    input.splice(at..end, v);
                }
            }
            // A frame header's length fields at their edges.
            10 => {
                let offs = magic_offsets(input);
                if !offs.is_empty() {
                    let h = *rng.pick(&offs);
                    if rng.below(2) == 0 {
                        write_le(input, h + 10, *rng.pick(EDGES) & 0xffff, 2);
                    } else {
                        write_le(input, h + 24, *rng.pick(EDGES), 8);
                    }
                }
            }
            // Nudge a byte.
            11 if len > 0 => {
                let i = rng.below(len);
                input[i] = input[i].wrapping_add(rng.below(9) as u8).wrapping_sub(4);
            }
            // Truncate.
            _ => {
                let n = rng.below(len + 1);
                input.truncate(n);
            }
        }
    }
    input.truncate(max);
}

// ---- running inputs ---------------------------------------------------

/// The input each target is running, since when.
type Running = Mutex<HashMap<&'static str, (Instant, Vec<u8>)>>;

/// Inputs being run, by target, for the watchdog.
fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| {
        std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(200));
                let stuck = running().lock().unwrap().iter().find(|(_, (t, _))| t.elapsed() > HANG).map(|(n, (_, i))| (*n, i.clone()));
                if let Some((name, input)) = stuck {
                    let path = save(name, &input);
                    eprintln!("fuzz target {name} hangs (over {HANG:?}) on an input saved to {}\n  hex: {}", path.display(), hex(&input));
                    std::process::abort();
                }
            })
            .expect("spawn the watchdog");
        Mutex::new(HashMap::new())
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn save(name: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{:016x}", fnv(input)));
    let _ = std::fs::write(&path, input);
    path
}

fn fail(name: &'static str, input: &[u8], why: &str) -> ! {
    let path = save(name, input);
    panic!(
        "fuzz target {name} failed: {why}\n  input ({} bytes) saved to {}\n  replay: copy it into fuzz/seeds/{name}/ and run `cargo test --test fuzz {name}`, \
         or `cargo +nightly fuzz run {name} <file>` in fuzz/\n  hex: {}",
        input.len(),
        path.display(),
        hex(input)
    );
}

fn run_one(name: &'static str, target: Target, input: &[u8]) -> Report {
    running().lock().unwrap().insert(name, (Instant::now(), input.to_vec()));
    LARGEST.with(|c| c.set(0));
    let r = std::panic::catch_unwind(|| target(input));
    let largest = LARGEST.with(|c| c.get());
    running().lock().unwrap().remove(name);
    match r {
        Ok(rep) => {
            if largest > rep.alloc_bound {
                fail(name, input, &format!("one allocation of {largest} bytes, over the bound of {}", rep.alloc_bound));
            }
            rep
        }
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            fail(name, input, &format!("panicked: {msg}"))
        }
    }
}

/// The seeds of `name` and the files under `fuzz/seeds/<name>/`.
fn initial_corpus(name: &str) -> Vec<Vec<u8>> {
    let mut v = fuzzing::seeds(name);
    if let Ok(dir) = std::fs::read_dir(seed_dir(name)) {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            if let Ok(b) = std::fs::read(&f) {
                v.push(b);
            }
        }
    }
    v
}

fn fuzz(name: &'static str) {
    let target = target_fn(name);
    let budget = budget();
    let seed = env_f64("LIBCLUSTER_FUZZ_SEED").map(|v| v as u64).unwrap_or(0x6C63_6C75_7374_6572) ^ fnv(name.as_bytes());
    let mut rng = Rng(seed);
    let mut corpus = initial_corpus(name);
    let n_seeds = corpus.len();
    let mut seen = HashSet::new();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let start = Instant::now();
    for input in &corpus {
        seen.insert(run_one(name, target, input).signature);
    }
    let (max, limit) = (max_len(name), max_iters());
    let cap = 512.max(n_seeds + 64);
    let mut runs = 0u64;
    while start.elapsed() < budget && runs < limit {
        // A quarter of the time from the seeds, which the kept inputs would
        // otherwise crowd out.
        let mut input = if rng.below(4) == 0 { corpus[rng.below(n_seeds)].clone() } else { rng.pick(&corpus).clone() };
        mutate(&mut rng, &mut input, &corpus, max);
        let rep = run_one(name, target, &input);
        runs += 1;
        *outcomes.entry(rep.outcome).or_default() += 1;
        if seen.insert(rep.signature) {
            if corpus.len() < cap {
                corpus.push(input);
            } else {
                let i = n_seeds + rng.below(cap - n_seeds);
                corpus[i] = input;
            }
        }
    }
    eprintln!(
        "fuzz {name}: {runs} inputs in {:.1} s (seed {seed:#x}), {} paths, corpus {}, outcomes {outcomes:?}",
        start.elapsed().as_secs_f64(),
        seen.len(),
        corpus.len()
    );
}

#[test]
fn fuzz_frame() {
    fuzz("frame");
}

#[test]
fn fuzz_handshake() {
    fuzz("handshake");
}

#[test]
fn fuzz_session() {
    fuzz("session");
}

#[test]
fn fuzz_control() {
    fuzz("control");
}

#[test]
fn fuzz_refs() {
    fuzz("refs");
}

#[test]
fn fuzz_rpc() {
    fuzz("rpc");
}

#[test]
fn fuzz_channel() {
    fuzz("channel");
}

#[test]
fn fuzz_dict() {
    fuzz("dict");
}

// ---- the seeds ----------------------------------------------------------

/// The seeds reach the outcomes they were written for, so a loop that
/// starts from them cannot pass by never getting past a first check.
#[test]
fn seeds_reach_every_outcome() {
    let want: &[(&str, &[&str])] = &[
        ("frame", &["closed", "too large", "bad header"]),
        ("handshake", &["accepted", "no greeting", "other version", "bad proof", "refused verdict", "timed out", "hung up"]),
        ("session", &["hello", "signal", "refused"]),
        ("control", &["welcome", "peer info", "signal", "refused"]),
        ("refs", &["ref id", "refused"]),
        ("rpc", &["call", "batch", "bad batch", "signal", "refused"]),
        ("channel", &["channel message", "refused"]),
        ("dict", &["dict message", "refused"]),
    ];
    for (name, outcomes) in want {
        let got: HashSet<&str> = fuzzing::seeds(name).iter().map(|s| run_one(name, target_fn(name), s).outcome).collect();
        for o in *outcomes {
            assert!(got.contains(o), "no seed of {name} ends {o:?}: {got:?}");
        }
    }
}

/// `fuzz/seeds/<target>/seed-*` is `fuzzing::seeds(target)`, for
/// cargo-fuzz; regenerate with
/// `LIBCLUSTER_WRITE_SEEDS=1 cargo test --test fuzz committed_seeds_are_current`.
#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("LIBCLUSTER_WRITE_SEEDS").is_some();
    for (name, _) in fuzzing::targets() {
        let dir = seed_dir(name);
        let want: BTreeMap<String, Vec<u8>> = fuzzing::seeds(name).into_iter().map(|s| (format!("seed-{:016x}", fnv(&s)), s)).collect();
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                if e.file_name().to_string_lossy().starts_with("seed-") {
                    std::fs::remove_file(e.path()).unwrap();
                }
            }
            for (f, s) in &want {
                std::fs::write(dir.join(f), s).unwrap();
            }
        }
        let have: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        assert!(have == want, "fuzz/seeds/{name} is stale: run LIBCLUSTER_WRITE_SEEDS=1 cargo test --test fuzz committed_seeds_are_current and commit it");
    }
}

// ---- faults in the core the targets found -------------------------------
//
// Each was found by the targets on the old core layout and is fixed; these
// reproduce them end to end (unit tests next to the fixes go further:
// `wire`, `net::conn`, `service::control::join`).

mod regressions {
    use cluster::net::auth::{self, Side, PROTOCOL_VERSION};
    use cluster::service::control::{self, op, Join};
    use cluster::wire::{self, Frame, FrameReader, Header, Kind, ReadOutcome};
    use cluster::{Cluster, Config};
    use std::net::TcpStream;
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    fn read_frame(s: &TcpStream, within: Duration) -> Frame {
        s.set_nonblocking(true).unwrap();
        let mut r = FrameReader::new(1 << 30);
        let deadline = Instant::now() + within;
        loop {
            match r.read_frame(s.as_raw_fd()).expect("a frame") {
                ReadOutcome::Frame(f) => return f,
                ReadOutcome::Closed => panic!("the head hung up"),
                ReadOutcome::WouldBlock => {
                    assert!(Instant::now() < deadline, "no frame in time");
                    cluster::sys::poll_in(s.as_raw_fd(), Some(Duration::from_millis(50))).unwrap();
                }
            }
        }
    }

    /// An elastic worker's JOIN with the listen address it claims, and the head's reply.
    fn join(head: &Cluster, listen_addr: &str) -> (TcpStream, Frame) {
        let mut s = TcpStream::connect(head.address()).unwrap();
        auth::handshake(&mut s, head.cookie().as_bytes(), Side::Client, Duration::from_secs(5)).unwrap();
        let join = Join { id: 0, listen_addr: listen_addr.to_string(), os_pid: 0, max_message: 1 << 30, host: "h".into(), proof: [0; 32] };
        let meta = wire::encode_meta(&join);
        wire::write_frame(s.as_raw_fd(), Header::new(Kind::Request, control::ID, op::JOIN, 1), &meta, &[]).unwrap();
        let reply = read_frame(&s, Duration::from_secs(10));
        (s, reply)
    }

    /// The head's welcome lists every ready worker's address. It was one
    /// meta, which a frame caps at 65535 bytes, and `write_frame` /
    /// `Conn::send` stored `meta.len() as u16`: two ready workers claiming
    /// 40 000-byte addresses made the head send the next joiner a welcome
    /// with a truncated length (garbage, then the rest of it read as the
    /// next frames). Now no frame goes out with a meta over the limit, and
    /// the welcome is in the payload: the joiner reads it whole.
    #[test]
    fn a_welcome_over_64_kib_reaches_the_joiner_whole() {
        let head = Cluster::init(Config { cookie: Some("fuzz-faults".into()), ..Config::default() }).unwrap();
        let long = "x".repeat(40_000);
        let mut keep = Vec::new();
        for _ in 0..2 {
            let (s, reply) = join(&head, &long);
            assert_eq!(reply.header.status, 0);
            wire::write_frame(s.as_raw_fd(), Header::new(Kind::Oneway, control::ID, op::READY, 0), &[], &[]).unwrap();
            keep.push(s);
        }
        let end = Instant::now() + Duration::from_secs(10);
        while head.procs().len() < 3 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(head.procs().len(), 3, "both workers are ready: {:?}", head.procs());
        let (_s, reply) = join(&head, "127.0.0.1:1");
        assert_eq!(reply.header.status, 0);
        assert!(reply.payload.len() > wire::MAX_META, "a welcome of {} bytes", reply.payload.len());
        assert_eq!(control::decode_welcome(&reply).expect("the welcome decodes"), 2);
    }

    /// Issue 6: "the handshake timeout is per read, so a peer dripping a
    /// byte every few seconds holds its connection forever". A peer that
    /// sends its greeting one byte per 60% of the timeout kept a 200 ms
    /// handshake going for seconds. The deadline is total now.
    #[test]
    fn the_handshake_deadline_is_total() {
        for side in [Side::Server, Side::Client] {
            let (ours, mut peer) = UnixStream::pair().unwrap();
            // SAFETY: a stream socket, owned from here on by the TcpStream.
            let mut ours = unsafe { TcpStream::from_raw_fd(ours.into_raw_fd()) };
            let timeout = Duration::from_millis(200);
            let t = std::thread::spawn(move || {
                let start = Instant::now();
                let r = auth::handshake(&mut ours, b"cookie", side, timeout);
                (r.map(drop), start.elapsed())
            });
            let drip = std::thread::spawn(move || {
                use std::io::Write;
                for b in auth::greeting(PROTOCOL_VERSION, &[7; 32]) {
                    std::thread::sleep(timeout * 3 / 5);
                    if peer.write_all(&[b]).is_err() {
                        return;
                    }
                }
            });
            let (r, took) = t.join().unwrap();
            let _ = drip.join();
            let e = r.unwrap_err();
            assert_eq!(e.kind, cluster::ErrorKind::Timeout, "{e}");
            // The drip lasts 4.8 s; a loaded machine may be late by some.
            assert!(took < timeout * 5, "a dripping peer held a {timeout:?} handshake ({side:?}) for {took:?}");
        }
    }
}
