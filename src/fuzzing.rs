//! Fuzz targets (issue 6, item 8) and the message decoders they drive.
//!
//! Each target takes arbitrary bytes and must never panic, hang or
//! allocate out of bounds on them; errors are fine. Beyond "no panic",
//! every target checks properties of its own with `assert!` (a decoded
//! value re-encodes to itself, the frame reader agrees with a reference
//! parse of the same bytes, the handshake accepts exactly the peers that
//! prove the cookie ...): a failed assertion is a finding.
//!
//! Two drivers call the same functions: the cargo-fuzz crate in `fuzz/`
//! (nightly, libFuzzer) and the bounded mutation loop in `tests/fuzz.rs`
//! (stable). `scripts/fuzz.sh` picks whichever the machine has.
//!
//! The `decode_*` functions decode one message exactly as its service
//! does, by calling the code the service calls (`wire::decode_meta` with
//! the service's type, the rpc name check, the response status mapping).
//! They hold each service's op -> message table in this one file, so that
//! a reshape of the services retargets this file and nothing else.

use crate::auth::{self, Side};
use crate::cluster::{op, Join, PeerInfo, Welcome};
use crate::error::{Error, ErrorKind, Result};
use crate::rpc;
use crate::wire::{self, service, Frame, FrameReader, Header, Kind, ReadOutcome, HEADER_LEN, MAGIC, MAX_META};
use hmac::{Hmac, Mac};
use serde::{de::DeserializeOwned, Serialize};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

// ---- the services' decoders ------------------------------------------

/// One decoded message. Values of the services' private message types are
/// given as their canonical re-encoding (bincode is one-to-one on values).
#[derive(Debug)]
pub enum Decoded {
    /// An op that carries no meta (READY, SHUTDOWN, INTERRUPT).
    Signal(u16),
    /// JOIN: a worker introduces itself to the head.
    Join(Vec<u8>),
    /// The head's answer to JOIN.
    Welcome(Vec<u8>),
    /// PEER_JOINED, PEER_LEFT, HELLO.
    PeerInfo(u16, Vec<u8>),
    /// A reference op and the reference id it names.
    Ref(u16, u64),
    /// An rpc call.
    Call { name: String, args: usize, wants_reply: bool },
    /// A response: the value's length, or the error it carries.
    Reply(std::result::Result<usize, Error>),
}

/// Decodes `meta` as the service's type `T`, checking that the value
/// re-encodes canonically: no longer than what was read, and to itself.
fn canonical<T: Serialize + DeserializeOwned>(meta: &[u8]) -> Result<Vec<u8>> {
    let v: T = wire::decode_meta(meta)?;
    let c = wire::encode_meta(&v);
    assert!(c.len() <= meta.len(), "a decoded value re-encodes longer ({} bytes) than its {} input bytes", c.len(), meta.len());
    let again: T = wire::decode_meta(&c).unwrap_or_else(|e| panic!("a canonical encoding does not decode: {e}"));
    assert_eq!(wire::encode_meta(&again), c, "decode(encode(v)) != v");
    Ok(c)
}

/// The control service (`Node::on_control`, `cluster.rs`). A JOIN of kind
/// `Response` is the head's welcome, read by a joining worker. The service
/// guards some ops by role (READY on the head, PEER_JOINED on a worker ...);
/// decoding does not depend on it, so neither does this.
#[doc(hidden)]
pub fn decode_control(kind: Kind, op: u16, meta: &[u8], payload: &[u8]) -> Result<Decoded> {
    match op {
        op::JOIN if kind == Kind::Response => canonical::<Welcome>(meta).map(Decoded::Welcome),
        op::JOIN => canonical::<Join>(meta).map(Decoded::Join),
        op::READY | op::SHUTDOWN | op::INTERRUPT => Ok(Decoded::Signal(op)),
        op::PEER_JOINED | op::PEER_LEFT | op::HELLO => canonical::<PeerInfo>(meta).map(|c| Decoded::PeerInfo(op, c)),
        // References live in the control service today.
        op::ADD_REF | op::ADD_CLIENT | op::DEL_REF | op::FETCH_REF => decode_refs(kind, op, meta, payload),
        _ => Err(Error::new(ErrorKind::Protocol, format!("unexpected control op {op}"))),
    }
}

/// The reference ops (today in `Node::on_control`): each meta is a ref id.
#[doc(hidden)]
pub fn decode_refs(_kind: Kind, op: u16, meta: &[u8], _payload: &[u8]) -> Result<Decoded> {
    match op {
        op::ADD_REF | op::ADD_CLIENT | op::DEL_REF | op::FETCH_REF => {
            let id: u64 = wire::decode_meta(meta)?;
            Ok(Decoded::Ref(op, id))
        }
        _ => Err(Error::new(ErrorKind::Protocol, format!("unexpected reference op {op}"))),
    }
}

/// The rpc service (`Node::on_rpc`, `rpc.rs`): the function name is the
/// UTF-8 meta, the arguments the payload; a request wants a reply.
#[doc(hidden)]
pub fn decode_rpc(kind: Kind, op: u16, meta: &[u8], payload: &[u8]) -> Result<Decoded> {
    if op != rpc::CALL {
        return Err(Error::new(ErrorKind::Protocol, format!("unknown rpc op {op}")));
    }
    let name = String::from_utf8(meta.to_vec()).map_err(|_| Error::new(ErrorKind::Protocol, "function name is not UTF-8"))?;
    Ok(Decoded::Call { name, args: payload.len(), wants_reply: kind == Kind::Request })
}

/// A response of any service, as `Node::on_response` reads it: status 0 is
/// the value, else an error of that code (unknown codes are `Remote`) from
/// the process in `aux` (the sender when 0), with the payload as its text.
#[doc(hidden)]
pub fn decode_reply(status: u8, aux: u32, from: u32, payload: &[u8]) -> Decoded {
    if status == 0 {
        return Decoded::Reply(Ok(payload.len()));
    }
    let kind = ErrorKind::from_code(status).unwrap_or(ErrorKind::Remote);
    let pid = if aux != 0 { aux } else { from };
    Decoded::Reply(Err(Error::at(kind, pid, String::from_utf8_lossy(payload).into_owned())))
}

/// A frame arriving on an established connection (`Dispatch::on_frame`):
/// responses, then routing by service id.
#[doc(hidden)]
pub fn decode_frame(f: &Frame, from: u32) -> Result<Decoded> {
    let h = &f.header;
    if h.kind == Kind::Response {
        return Ok(decode_reply(h.status, h.aux, from, &f.payload));
    }
    match h.service {
        service::RPC => decode_rpc(h.kind, h.op, &f.meta, &f.payload),
        service::CONTROL => decode_control(h.kind, h.op, &f.meta, &f.payload),
        s => Err(Error::new(ErrorKind::Protocol, format!("unknown service {s}"))),
    }
}

/// The first frame on a connection a node accepted (`Node::serve_incoming`):
/// a JOIN on the head, a HELLO on a worker.
#[doc(hidden)]
pub fn decode_first_frame(f: &Frame, head: bool) -> Result<Decoded> {
    match (f.header.service, f.header.op) {
        (service::CONTROL, op::JOIN) if head => canonical::<Join>(&f.meta).map(Decoded::Join),
        (service::CONTROL, op::HELLO) if !head => canonical::<PeerInfo>(&f.meta).map(|c| Decoded::PeerInfo(op::HELLO, c)),
        _ => Err(Error::new(ErrorKind::Protocol, "unexpected first message")),
    }
}

/// The head's answer to a worker's JOIN (`Node::init_worker`).
#[doc(hidden)]
pub fn decode_join_reply(f: &Frame) -> Result<Decoded> {
    if f.header.status != 0 {
        return Err(Error::new(ErrorKind::Launch, format!("the head refused to join: {}", String::from_utf8_lossy(&f.payload))));
    }
    canonical::<Welcome>(&f.meta).map(Decoded::Welcome)
}

// ---- shared by the targets -------------------------------------------

/// What one run of a target tells its driver.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// A coarse summary of the path taken (which decoder, which outcome):
    /// the stable driver keeps inputs that produce a new one.
    pub signature: u64,
    /// The largest single allocation this input may cause, in bytes.
    pub alloc_bound: usize,
    /// How the run ended, in a word or two.
    pub outcome: &'static str,
}

/// A target: arbitrary bytes in, panics on a finding.
pub type Target = fn(&[u8]) -> Report;

/// Every target, by the name its cargo-fuzz binary and its seed directory
/// (`fuzz/seeds/<name>`) have.
#[doc(hidden)]
pub fn targets() -> &'static [(&'static str, Target)] {
    &[("frame", frame), ("handshake", handshake), ("control", control), ("refs", refs), ("rpc", rpc)]
}

fn byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

fn kind_of(b: u8) -> Kind {
    match b % 3 {
        0 => Kind::Request,
        1 => Kind::Response,
        _ => Kind::Oneway,
    }
}

/// A small deterministic generator (splitmix64).
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
        (self.next() % n as u64) as usize
    }
}

fn decoded_note(r: &Result<Decoded>) -> &'static str {
    match r {
        Err(_) => "refused",
        Ok(Decoded::Signal(_)) => "signal",
        Ok(Decoded::Join(_)) => "join",
        Ok(Decoded::Welcome(_)) => "welcome",
        Ok(Decoded::PeerInfo(..)) => "peer info",
        Ok(Decoded::Ref(..)) => "ref id",
        Ok(Decoded::Call { .. }) => "call",
        Ok(Decoded::Reply(Ok(_))) => "value reply",
        Ok(Decoded::Reply(Err(_))) => "error reply",
    }
}

fn decoded_tag(r: &Result<Decoded>) -> u64 {
    match r {
        Err(e) => 100 + e.kind as u64,
        Ok(Decoded::Signal(op)) => 1000 + *op as u64,
        Ok(Decoded::Join(_)) => 1,
        Ok(Decoded::Welcome(_)) => 2,
        Ok(Decoded::PeerInfo(op, _)) => 2000 + *op as u64,
        Ok(Decoded::Ref(op, _)) => 3000 + *op as u64,
        Ok(Decoded::Call { wants_reply, .. }) => 4 + *wants_reply as u64,
        Ok(Decoded::Reply(Ok(_))) => 6,
        Ok(Decoded::Reply(Err(e))) => 200 + e.kind as u64,
    }
}

// ---- (a) the frame decoder -------------------------------------------

/// `FrameReader`'s staging buffer (`wire.rs`).
const STAGING: usize = 64 * 1024;
const FRAME_MAX_PAYLOADS: [u64; 8] = [0, 1, 31, 4096, 65_535, 65_537, 1 << 20, (3 << 20) + 5];
/// At most this many filler bytes are generated for a frame input, so
/// that short inputs can declare and deliver large payloads.
const MAX_FILL: usize = (3 << 20) + 4096;
/// Payloads from this size up come from the filler, when it is on.
const FILL_MIN: u64 = 256;

/// The byte stream a frame input stands for. Without filler, the literal
/// bytes themselves. With it, the literal bytes where each well-formed
/// header (by the model) with a payload of `FILL_MIN` bytes or more gets
/// that payload from generated bytes (a position-dependent pattern, so a
/// misplaced byte shows) instead of the literal, within `budget` bytes in
/// all: several large frames, interleaved with small ones, from a few
/// hundred input bytes. The stream ends where the literal or the budget
/// runs out, possibly mid-frame; everything after a malformed header is
/// copied verbatim.
fn expand(literal: &[u8], max_payload: u64, mut budget: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0u64;
    loop {
        let rest = &literal[pos..];
        if rest.len() < HEADER_LEN || header_model(&rest[..HEADER_LEN], max_payload).is_err() {
            out.extend_from_slice(rest);
            return out;
        }
        let meta_len = u16::from_le_bytes([rest[10], rest[11]]) as usize;
        let payload_len = u64::from_le_bytes(rest[24..32].try_into().unwrap());
        let head = (HEADER_LEN + meta_len).min(rest.len());
        out.extend_from_slice(&rest[..head]);
        pos += head;
        if head < HEADER_LEN + meta_len {
            return out;
        }
        if payload_len >= FILL_MIN {
            let n = (payload_len as usize).min(budget);
            budget -= n;
            out.extend((0..n).map(|_| {
                k += 1;
                (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ seed
            }));
            if n < payload_len as usize {
                return out;
            }
        } else {
            let n = (payload_len as usize).min(literal.len() - pos);
            out.extend_from_slice(&literal[pos..pos + n]);
            pos += n;
            if n < payload_len as usize {
                return out;
            }
        }
    }
}

/// What `Header::decode` must answer for `b`, from the layout in `wire.rs`.
fn header_model(b: &[u8], max_payload: u64) -> std::result::Result<(), ErrorKind> {
    if b.len() < HEADER_LEN || u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != MAGIC || !(1..=3).contains(&b[4]) {
        return Err(ErrorKind::Protocol);
    }
    let payload_len = u64::from_le_bytes(b[24..32].try_into().unwrap());
    if payload_len > max_payload {
        return Err(ErrorKind::TooLarge);
    }
    Ok(())
}

/// `Header::decode`, checked against the model: an accepted header
/// re-encodes to exactly the bytes it came from.
fn check_header(b: &[u8], max_payload: u64) -> Result<Header> {
    let got = Header::decode(b, max_payload);
    match (&got, header_model(b, max_payload)) {
        (Ok(h), Ok(())) => assert_eq!(h.encode()[..], b[..HEADER_LEN], "a decoded header does not re-encode to its bytes"),
        (Err(e), Err(k)) => assert_eq!(e.kind, k, "Header::decode failed with the wrong kind: {e}"),
        (r, m) => panic!("Header::decode gave {r:?} where the layout says {m:?}, for {:02x?}", &b[..b.len().min(HEADER_LEN)]),
    }
    got
}

/// The reference parse: what the next frame at `pos` of `stream[..avail]` is.
#[derive(Debug)]
enum Next {
    Frame { header: Header, meta: std::ops::Range<usize>, payload: std::ops::Range<usize> },
    /// Not all of it has arrived.
    Incomplete,
    Bad(ErrorKind),
}

fn next_frame(stream: &[u8], pos: usize, avail: usize, max_payload: u64) -> Next {
    if avail - pos < HEADER_LEN {
        return Next::Incomplete;
    }
    match check_header(&stream[pos..pos + HEADER_LEN], max_payload) {
        Err(e) => Next::Bad(e.kind),
        Ok(header) => {
            let m = pos + HEADER_LEN;
            let p = m + header.meta_len as usize;
            let end = p + header.payload_len as usize;
            if end > avail {
                Next::Incomplete
            } else {
                Next::Frame { header, meta: m..p, payload: p..end }
            }
        }
    }
}

/// A non-blocking byte channel: a socketpair, or a pipe.
fn channel(pipe: bool) -> (OwnedFd, OwnedFd) {
    if pipe {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert!(rc == 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are fresh and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    } else {
        let (r, w) = UnixStream::pair().expect("socketpair");
        r.set_nonblocking(true).expect("nonblocking");
        w.set_nonblocking(true).expect("nonblocking");
        (r.into(), w.into())
    }
}

/// Writes what the channel takes now; `None` when it is full.
fn write_some(fd: &OwnedFd, b: &[u8]) -> Option<usize> {
    // SAFETY: writes from a live slice.
    let rc = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr() as *const libc::c_void, b.len()) };
    if rc >= 0 {
        return Some(rc as usize);
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
        _ => panic!("write to the frame channel: {e}"),
    }
}

struct FrameRun<'a> {
    stream: &'a [u8],
    max_payload: u64,
    reader: FrameReader,
    recycle: bool,
    /// Bytes the channel has taken.
    written: usize,
    /// Where the reference parse is: the end of the last frame returned.
    pos: usize,
    frames: u64,
    sig: u64,
    done: Option<u64>,
    calls: usize,
}

impl FrameRun<'_> {
    /// Reads frames until the reader would wait, checking each against the
    /// reference parse of the bytes written so far.
    fn drain(&mut self, fd: RawFd, eof: bool) {
        loop {
            self.calls += 1;
            assert!(self.calls <= 3 * self.stream.len() + 64, "the frame reader makes no progress");
            match self.reader.read_frame(fd) {
                Ok(ReadOutcome::Frame(f)) => {
                    let Next::Frame { header, meta, payload } = next_frame(self.stream, self.pos, self.written, self.max_payload) else {
                        panic!("the reader returned a frame ({:?}) the bytes do not hold", f.header);
                    };
                    assert_eq!(f.header, header, "frame header");
                    assert!(f.meta == self.stream[meta.clone()], "frame meta differs from the bytes sent");
                    assert!(f.payload == self.stream[payload.clone()], "frame payload differs from the bytes sent");
                    assert!(self.reader.may_have_frames(), "after a frame the reader must be asked again");
                    self.pos = payload.end;
                    self.frames += 1;
                    // Route it as a node would.
                    self.sig = mix(self.sig, decoded_tag(&decode_frame(&f, 2)));
                    if header.service == service::CONTROL && header.op == op::JOIN {
                        let r = if header.kind == Kind::Response { decode_join_reply(&f) } else { decode_first_frame(&f, true) };
                        self.sig = mix(self.sig, decoded_tag(&r));
                    } else if header.service == service::CONTROL && header.op == op::HELLO {
                        self.sig = mix(self.sig, decoded_tag(&decode_first_frame(&f, false)));
                    }
                    if header.payload_len as usize >= STAGING {
                        self.sig = mix(self.sig, 77);
                    }
                    if self.recycle {
                        self.reader.recycle(f.payload);
                    }
                }
                Ok(ReadOutcome::WouldBlock) => {
                    assert!(!eof, "the reader would wait on a channel that is closed");
                    let next = next_frame(self.stream, self.pos, self.written, self.max_payload);
                    assert!(
                        matches!(next, Next::Incomplete),
                        "the reader waits for more bytes while it holds {next:?}: a caller that polls now hangs"
                    );
                    assert!(!self.reader.may_have_frames(), "may_have_frames after WouldBlock");
                    return;
                }
                Ok(ReadOutcome::Closed) => {
                    assert!(eof, "the reader saw the end of a channel that is open");
                    let next = next_frame(self.stream, self.pos, self.written, self.max_payload);
                    assert!(matches!(next, Next::Incomplete), "the reader stopped at the end while it holds {next:?}");
                    self.done = Some(1);
                    return;
                }
                Err(e) => {
                    match next_frame(self.stream, self.pos, self.written, self.max_payload) {
                        Next::Bad(k) => assert_eq!(e.kind, k, "the reader failed with the wrong kind: {e}"),
                        other => panic!("the reader failed ({e}) where the bytes hold {other:?}"),
                    }
                    self.done = Some(10 + e.kind as u64);
                    return;
                }
            }
        }
    }
}

/// Target (a): `Header::decode` and `FrameReader` fed the input through a
/// socketpair or a pipe in input-chosen chunks.
///
/// Input: `cfg`, `seed`, `budget` (3 bytes, little endian), then the
/// literal bytes. `cfg` bits 0-2 pick the maximum payload, bit 3 hands
/// large payloads back for reuse, bit 4 uses a pipe, bit 5 turns on the
/// filler (`expand`) with that budget; `seed` varies the filler and the
/// chunking.
#[doc(hidden)]
pub fn frame(data: &[u8]) -> Report {
    let cfg = byte(data, 0);
    let max_payload = FRAME_MAX_PAYLOADS[(cfg & 7) as usize];
    let recycle = cfg & 8 != 0;
    let pipe = cfg & 16 != 0;
    let fill = cfg & 32 != 0;
    // Large budgets are the rarer ones: they cost time.
    let budget = match u32::from_le_bytes([byte(data, 2), byte(data, 3), byte(data, 4), 0]) as usize {
        n if n <= MAX_FILL => n,
        n => n % 4096,
    };
    let literal = data.get(5..).unwrap_or(&[]);
    let stream = if fill { expand(literal, max_payload, budget, byte(data, 1)) } else { literal.to_vec() };

    // The header decoder alone, on the raw input and its first header.
    let _ = check_header(data, max_payload);
    let _ = check_header(&stream, max_payload);

    let (r, w) = channel(pipe);
    let mut run = FrameRun {
        stream: &stream,
        max_payload,
        reader: FrameReader::new(max_payload),
        recycle,
        written: 0,
        pos: 0,
        frames: 0,
        sig: mix(0xF, (cfg & 0x3F) as u64 | ((stream.len() > literal.len()) as u64) << 8),
        done: None,
        calls: 0,
    };
    let mut rng = Rng(mix(byte(data, 1) as u64, stream.len() as u64));
    // A few hundred chunks at most, however long the stream.
    let floor = stream.len() / 256;
    while run.written < stream.len() && run.done.is_none() {
        let left = stream.len() - run.written;
        let n = match rng.below(8) {
            0 => 1,
            1 => 1 + rng.below(8),
            2 => HEADER_LEN - 1 + rng.below(3),
            3 => 1 + rng.below(64),
            4 => 1 + rng.below(4096),
            5 => 1 + rng.below(70_000),
            6 => STAGING - 1 + rng.below(3),
            _ => left,
        };
        let end = run.written + n.max(floor).clamp(1, left);
        while run.written < end && run.done.is_none() {
            if let Some(k) = write_some(&w, &stream[run.written..end]) {
                run.written += k;
            }
            run.drain(r.as_raw_fd(), false);
        }
    }
    drop(w);
    if run.done.is_none() {
        run.drain(r.as_raw_fd(), true);
    }
    let sig = mix(mix(run.sig, run.frames.min(6)), run.done.unwrap_or(0));
    let outcome = match run.done {
        Some(1) => "closed",
        Some(k) if k == 10 + ErrorKind::TooLarge as u64 => "too large",
        _ => "bad header",
    };
    // The reader allocates at most the maximum payload (or its staging
    // buffer, or a meta); the decoders a frame is routed to, up to
    // `DECODE_ALLOC_BOUND` whatever the maximum payload.
    let reader_bound = (max_payload as usize).max(STAGING).max(MAX_META).max(stream.capacity());
    Report { signature: sig, alloc_bound: reader_bound.max(DECODE_ALLOC_BOUND), outcome }
}

// ---- (b) the handshake -----------------------------------------------

/// The greeting and the proof, as `auth.rs` defines them: computed here
/// independently, to judge what the handshake accepts.
const GREETING: &[u8; 8] = b"LCLUSTR1";
const HELLO_LEN: usize = 40;
const PROOF_LEN: usize = 32;
const LONG_COOKIE: [u8; 200] = [b'k'; 200];
static COOKIES: [&[u8]; 4] = [b"fuzz-cookie", b"", b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", &LONG_COOKIE];

fn proof(cookie: &[u8], role: Side, client_nonce: &[u8], server_nonce: &[u8]) -> [u8; PROOF_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie).expect("any key length");
    mac.update(if role == Side::Client { b"libcluster client" } else { b"libcluster server" });
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac.finalize().into_bytes().into()
}

fn other(side: Side) -> Side {
    if side == Side::Client {
        Side::Server
    } else {
        Side::Client
    }
}

/// The peer's nonce as far as it was sent (zeros for what was not).
fn nonce_of(sent: &[u8]) -> [u8; 32] {
    let mut n = [0u8; 32];
    for (i, b) in sent.iter().skip(GREETING.len()).take(32).enumerate() {
        n[i] = *b;
    }
    n
}

enum Step<'a> {
    Raw(&'a [u8]),
    Greeting,
    Nonce(&'a [u8]),
    /// The proof the handshake wants from its peer.
    GoodProof,
    /// The handshake's own proof, sent back to it.
    Reflected,
    WrongCookie,
    Pause(u8),
    /// Greeting and nonce together.
    Hello(&'a [u8]),
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(rest.len());
    let (a, b) = rest.split_at(n);
    *rest = b;
    a
}

fn script(mut rest: &[u8]) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    while !rest.is_empty() && steps.len() < 64 {
        let b = take(&mut rest, 1)[0];
        steps.push(match b % 8 {
            0 => {
                let n = take(&mut rest, 1).first().copied().unwrap_or(0) as usize;
                Step::Raw(take(&mut rest, n))
            }
            1 => Step::Greeting,
            2 => Step::Nonce(take(&mut rest, 32)),
            3 => Step::GoodProof,
            4 => Step::Reflected,
            5 => Step::WrongCookie,
            6 => Step::Pause(b / 8 % 3),
            _ => Step::Hello(take(&mut rest, 32)),
        });
    }
    steps
}

fn read_hello(peer: &mut UnixStream) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    peer.read_exact(&mut h).unwrap_or_else(|e| panic!("the handshake did not greet first: {e}"));
    assert_eq!(&h[..GREETING.len()], GREETING, "the handshake's greeting");
    h
}

/// Target (b): `auth::handshake`, either side, against a peer that sends
/// the input. The handshake runs on a thread over a socketpair (as a
/// `TcpStream`: it only reads, writes and sets timeouts); this thread is
/// the peer. The handshake must succeed exactly when the peer greets and
/// then proves the cookie, never read past the proof, send its own proof
/// (server) only after checking the client's, and return within its
/// timeout (per read, as today) without panicking.
///
/// Input: `cfg`, then the peer's bytes. `cfg` bit 0: the handshake is the
/// client; bits 2-3: the cookie; bit 4: the rest is a script of steps
/// (raw bytes, greeting, nonce, good / reflected / wrong-cookie proof,
/// pause) rather than raw bytes; bits 1 and 5 both set: the peer keeps the
/// connection open afterwards, so a short handshake must time out.
#[doc(hidden)]
pub fn handshake(data: &[u8]) -> Report {
    let cfg = byte(data, 0);
    let side = if cfg & 1 == 0 { Side::Server } else { Side::Client };
    let hold = cfg & 0x22 == 0x22;
    let cookie: &'static [u8] = COOKIES[(cfg as usize >> 2) & 3];
    let rest = data.get(1..).unwrap_or(&[]);
    let steps = if cfg & 0x10 != 0 { script(rest) } else { vec![Step::Raw(&rest[..rest.len().min(4096)])] };
    let timeout = if hold { Duration::from_millis(10) } else { Duration::from_secs(5) };

    let (ours, mut peer) = UnixStream::pair().expect("socketpair");
    peer.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // SAFETY: a stream socket, owned from here on by the TcpStream.
    let ours = unsafe { TcpStream::from_raw_fd(ours.into_raw_fd()) };
    let start = Instant::now();
    let task = std::thread::spawn(move || {
        let mut s = ours;
        let r = auth::handshake(&mut s, cookie, side, timeout);
        (r, s, start.elapsed())
    });

    let mut sent: Vec<u8> = Vec::new();
    let mut their_hello: Option<[u8; HELLO_LEN]> = None;
    let mut paused = Duration::ZERO;
    for step in &steps {
        let bytes: Vec<u8> = match step {
            Step::Raw(b) | Step::Nonce(b) => b.to_vec(),
            Step::Greeting => GREETING.to_vec(),
            Step::Hello(n) => [&GREETING[..], n].concat(),
            Step::GoodProof | Step::Reflected | Step::WrongCookie => {
                let h = *their_hello.get_or_insert_with(|| read_hello(&mut peer));
                let peer_nonce = nonce_of(&sent);
                let (cn, sn) = if side == Side::Server { (&peer_nonce[..], &h[8..]) } else { (&h[8..], &peer_nonce[..]) };
                match step {
                    Step::GoodProof => proof(cookie, other(side), cn, sn),
                    Step::Reflected => proof(cookie, side, cn, sn),
                    _ => proof(b"not the cookie", other(side), cn, sn),
                }
                .to_vec()
            }
            Step::Pause(ms) => {
                let d = Duration::from_millis(*ms as u64);
                std::thread::sleep(d);
                paused += d;
                continue;
            }
        };
        // The handshake keeps its end open until joined, and the socket
        // buffer holds every script (64 steps of at most 255 bytes).
        peer.write_all(&bytes).expect("peer write");
        sent.extend_from_slice(&bytes);
    }
    if !hold {
        peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let (result, mut stream, elapsed) = match task.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    };
    let h = their_hello.unwrap_or_else(|| read_hello(&mut peer));
    let peer_nonce = nonce_of(&sent);
    let (cn, sn) = if side == Side::Server { (&peer_nonce[..], &h[8..]) } else { (&h[8..], &peer_nonce[..]) };
    let greeted = sent.len() >= HELLO_LEN && &sent[..GREETING.len()] == GREETING;
    let proved = greeted && sent.len() >= HELLO_LEN + PROOF_LEN && sent[HELLO_LEN..HELLO_LEN + PROOF_LEN] == proof(cookie, other(side), cn, sn);

    // What the handshake left unread (read it all: closing a unix socket
    // with unread bytes resets the peer's end).
    stream.set_nonblocking(true).expect("nonblocking");
    let mut after = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => after.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read after the handshake: {e}"),
        }
    }
    let class = match &result {
        Ok(()) => {
            assert!(proved, "the handshake ({}) accepted a peer that did not prove the cookie", side_name(side));
            // Nothing past the proof may have been read: it is the first frame.
            assert!(after == sent[HELLO_LEN + PROOF_LEN..], "the handshake read past the peer's proof");
            0
        }
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Auth, "a failed handshake is an Auth error: {e}");
            let m = &e.message;
            let class = if m.contains("did not greet") {
                1
            } else if m.contains("failed to prove") {
                2
            } else if m.contains("timed out") || m.contains("temporarily unavailable") {
                3
            } else {
                4
            };
            // With the 10 ms timeout of a held connection, this thread may
            // be too slow for it on a loaded machine: a proof can come late.
            let late = hold && class == 3 && elapsed >= timeout;
            assert!(!proved || late, "the handshake ({}) refused a peer that proved the cookie: {e}", side_name(side));
            class
        }
    };
    // Bytes sent after the handshake gave up waiting went unseen.
    let late = hold && class == 3;
    if hold {
        // The timeout is per read today: each pause can extend it once.
        assert!(elapsed <= paused + 3 * timeout + Duration::from_secs(2), "the handshake took {elapsed:?} (timeout {timeout:?})");
    } else {
        // The peer hung up: every read is answered at once.
        assert!(elapsed < timeout, "the handshake took {elapsed:?} against a peer that hung up");
        assert!(class != 3, "a read timed out against a peer that hung up");
    }

    // What the handshake sent after its greeting.
    drop(stream);
    let mut wrote = Vec::new();
    peer.read_to_end(&mut wrote).expect("read what the handshake sent");
    if side == Side::Server {
        if proved && !late {
            assert!(wrote == proof(cookie, Side::Server, cn, sn), "the server's proof");
        } else {
            assert!(wrote.is_empty(), "the server sent {} bytes to a peer that did not prove the cookie", wrote.len());
        }
    } else if greeted && !late {
        assert!(wrote == proof(cookie, Side::Client, cn, sn), "the client's proof");
    } else if greeted {
        assert!(wrote.is_empty() || wrote == proof(cookie, Side::Client, cn, sn), "the client's proof");
    } else {
        assert!(wrote.is_empty(), "the client sent {} bytes to a peer that did not greet", wrote.len());
    }
    let sig = mix(mix(mix(cfg as u64 & 0x33, class), proved as u64 | (greeted as u64) << 1), steps.len().min(4) as u64);
    let outcome = ["accepted", "no greeting", "bad proof", "timed out", "hung up"][class as usize];
    Report { signature: sig, alloc_bound: 1 << 16, outcome }
}

fn side_name(s: Side) -> &'static str {
    if s == Side::Client {
        "client"
    } else {
        "server"
    }
}

// ---- (c) the services' messages --------------------------------------

/// Splits `rest` into meta and payload: the last `payload_len` bytes are
/// the payload; the meta is capped at what a frame can carry.
fn split(rest: &[u8], payload_len: u8) -> (&[u8], &[u8]) {
    let p = (payload_len as usize).min(rest.len());
    let (meta, payload) = rest.split_at(rest.len() - p);
    (&meta[..meta.len().min(MAX_META)], payload)
}

/// The largest allocation a message decode may make: the meta's size, or
/// the up-front reservation serde makes for a sequence from its declared
/// length (at most 1 MiB; a 5-byte welcome meta claiming 65535 peers gets
/// that much before the decode fails on the missing bytes).
const DECODE_ALLOC_BOUND: usize = 1 << 20;

/// Target (c), control: `decode_control` on (kind, op, meta, payload).
/// Input: kind (mod 3: request, response, oneway), op (mod 16),
/// payload length, then meta and payload.
#[doc(hidden)]
pub fn control(data: &[u8]) -> Report {
    let kind = kind_of(byte(data, 0));
    let op = u16::from(byte(data, 1) % 16);
    let (meta, payload) = split(data.get(3..).unwrap_or(&[]), byte(data, 2));
    let r = decode_control(kind, op, meta, payload);
    let expect_ok_shape = match op {
        op::READY | op::SHUTDOWN | op::INTERRUPT => Some(true),
        1..=11 => None,
        _ => Some(false),
    };
    if let Some(ok) = expect_ok_shape {
        assert_eq!(r.is_ok(), ok, "control op {op}: {r:?}");
    }
    if let Err(e) = &r {
        assert_eq!(e.kind, ErrorKind::Protocol, "a malformed control message is a protocol error: {e}");
    }
    if let Ok(Decoded::Ref(_, id)) = &r {
        assert_eq!(Some(*id), varint_model(meta), "ref id");
    }
    Report { signature: mix(mix(kind as u64, op as u64), decoded_tag(&r)), alloc_bound: DECODE_ALLOC_BOUND.max(meta.len()), outcome: decoded_note(&r) }
}

/// bincode's standard varint for a u64, written out from its spec: a byte
/// below 251 is the value; 251, 252, 253 announce a u16, u32, u64 in little
/// endian. Anything else (254: u128, 255, or too few bytes) fails.
/// Trailing bytes are ignored, as `wire::decode_meta` ignores them.
fn varint_model(b: &[u8]) -> Option<u64> {
    let le = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(s);
        Some(u64::from_le_bytes(v))
    };
    match *b.first()? {
        x @ 0..=250 => Some(x as u64),
        251 => le(2),
        252 => le(4),
        253 => le(8),
        _ => None,
    }
}

/// Target (c), references: `decode_refs` on each reference op's meta,
/// checked against the varint model. Input: op selector (below 128: one of
/// the four reference ops; else an arbitrary op), then the meta.
#[doc(hidden)]
pub fn refs(data: &[u8]) -> Report {
    let ops = [op::ADD_REF, op::ADD_CLIENT, op::DEL_REF, op::FETCH_REF];
    let sel = byte(data, 0);
    let op = if sel < 128 { ops[sel as usize % 4] } else { u16::from(sel) };
    let meta = data.get(1..).unwrap_or(&[]);
    let meta = &meta[..meta.len().min(MAX_META)];
    let r = decode_refs(Kind::Request, op, meta, &[]);
    if ops.contains(&op) {
        match (&r, varint_model(meta)) {
            (Ok(Decoded::Ref(o, id)), Some(m)) => {
                assert_eq!((*o, *id), (op, m), "ref id");
                assert_eq!(wire::decode_meta::<u64>(&wire::encode_meta(id)).ok(), Some(*id), "ref id round trip");
            }
            (Err(e), None) => assert_eq!(e.kind, ErrorKind::Protocol),
            (r, m) => panic!("decode_refs gave {r:?} where the varint spec says {m:?} for {:02x?}", &meta[..meta.len().min(9)]),
        }
        // Decoding is the same through the control service.
        let via_control = decode_control(Kind::Request, op, meta, &[]);
        assert_eq!(decoded_tag(&via_control), decoded_tag(&r));
    } else {
        assert!(r.is_err());
    }
    Report { signature: mix(op as u64, decoded_tag(&r) ^ (byte(meta, 0) as u64).saturating_sub(247)), alloc_bound: 4096, outcome: decoded_note(&r) }
}

/// Target (c), rpc: `decode_rpc` on (kind, op, meta, payload), checked
/// against the rule: a CALL whose meta is UTF-8 is a call of that name.
/// Input: kind (mod 3), op (mod 4), payload length, then meta and payload.
#[doc(hidden)]
pub fn rpc(data: &[u8]) -> Report {
    let kind = kind_of(byte(data, 0));
    let op = u16::from(byte(data, 1) % 4);
    let (meta, payload) = split(data.get(3..).unwrap_or(&[]), byte(data, 2));
    let r = decode_rpc(kind, op, meta, payload);
    match &r {
        Ok(Decoded::Call { name, args, wants_reply }) => {
            assert_eq!(op, rpc::CALL);
            assert_eq!(name.as_bytes(), meta);
            assert_eq!(*args, payload.len());
            assert_eq!(*wants_reply, kind == Kind::Request);
        }
        Ok(other) => panic!("decode_rpc gave {other:?}"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Protocol);
            assert!(op != rpc::CALL || std::str::from_utf8(meta).is_err(), "a call named by valid UTF-8 was refused: {e}");
        }
    }
    // A response on the rpc service is a reply, whatever its bytes.
    let reply = decode_reply(byte(data, 1), u32::from(byte(data, 0)), 2, payload);
    if let Decoded::Reply(Err(e)) = &reply {
        assert!(e.pid != 0);
    }
    Report { signature: mix(mix(kind as u64, op as u64), decoded_tag(&r)), alloc_bound: 4096.max(2 * meta.len()), outcome: decoded_note(&r) }
}

// ---- seeds ------------------------------------------------------------

fn frame_bytes(kind: Kind, svc: u16, op: u16, id: u64, meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = Header::new(kind, svc, op, id);
    h.meta_len = meta.len() as u16;
    h.payload_len = payload.len() as u64;
    [&h.encode()[..], meta, payload].concat()
}

fn join_meta(id: u32, addr: &str) -> Vec<u8> {
    // The layout of `Join`: bincode encodes a struct as its fields in order.
    wire::encode_meta(&(id, addr.to_string(), 4242u32, 1u64 << 30))
}

fn welcome_meta(id: u32, peers: &[(u32, &str)]) -> Vec<u8> {
    let peers: Vec<(u32, String)> = peers.iter().map(|(p, a)| (*p, a.to_string())).collect();
    wire::encode_meta(&(id, crate::Topology::AllToAll, peers, 1u64 << 30))
}

fn peer_info_meta(id: u32, addr: &str) -> Vec<u8> {
    wire::encode_meta(&(id, addr.to_string(), 1u64 << 20))
}

/// Valid inputs for a target (its seed corpus); `tests/fuzz.rs` checks they
/// take the paths they are meant to, and writes them to `fuzz/seeds/`.
#[doc(hidden)]
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let join = join_meta(0, "127.0.0.1:40001");
    let welcome = welcome_meta(3, &[(2, "127.0.0.1:40002"), (4, "[::1]:40004")]);
    let info = peer_info_meta(5, "127.0.0.1:40005");
    let ref_id = wire::encode_meta(&0x1234_5678_9abcu64);
    match target {
        "frame" => {
            let mut all = Vec::new();
            let session = [
                frame_bytes(Kind::Request, service::CONTROL, op::JOIN, 1, &join, &[]),
                frame_bytes(Kind::Response, service::CONTROL, op::JOIN, 1, &welcome, &[]),
                frame_bytes(Kind::Oneway, service::CONTROL, op::READY, 0, &[], &[]),
                frame_bytes(Kind::Oneway, service::CONTROL, op::HELLO, 0, &info, &[]),
                frame_bytes(Kind::Oneway, service::CONTROL, op::PEER_JOINED, 0, &info, &[]),
                frame_bytes(Kind::Request, service::RPC, rpc::CALL, 7, b"sum", b"\x01\x02\x03"),
                frame_bytes(Kind::Oneway, service::RPC, rpc::CALL, 0, b"log", b"hello"),
                frame_bytes(Kind::Response, service::RPC, rpc::CALL, 7, &[], b"\x06"),
                {
                    let mut f = frame_bytes(Kind::Response, service::RPC, rpc::CALL, 8, &[], b"boom");
                    f[5] = ErrorKind::Remote as u8;
                    f[12] = 3;
                    f
                },
                frame_bytes(Kind::Request, service::CONTROL, op::FETCH_REF, 9, &ref_id, &[]),
                frame_bytes(Kind::Oneway, service::CONTROL, op::DEL_REF, 0, &ref_id, &[]),
            ]
            .concat();
            for cfg in [6u8, 6 | 8, 6 | 16, 3] {
                all.push([&[cfg, 0x5a, 0, 0, 0][..], &session].concat());
            }
            // Large payloads from the filler (budget 3 MiB): between small
            // frames; two over 1 MiB, the second into the first's recycled
            // buffer; many mid-sized frames across the staging buffer's end;
            // a payload cut short by a small budget.
            let big = |kind, op, n: u64| {
                let mut h = Header::new(kind, service::RPC, op, n);
                h.meta_len = 1;
                h.payload_len = n;
                [&h.encode()[..], b"f"].concat()
            };
            let budget = |n: u32| n.to_le_bytes();
            let (b3, b1k) = (budget(3 << 20), budget(1000));
            let ready = frame_bytes(Kind::Oneway, service::CONTROL, op::READY, 0, &[], &[]);
            let call = frame_bytes(Kind::Request, service::RPC, rpc::CALL, 7, b"sum", b"\x01\x02\x03");
            all.push([&[6u8 | 32, 0x33, b3[0], b3[1], b3[2]][..], &call, &big(Kind::Request, rpc::CALL, 200_000), &ready, &big(Kind::Oneway, rpc::CALL, 70_000), &session].concat());
            all.push([&[7u8 | 32 | 8, 0x44, b3[0], b3[1], b3[2]][..], &big(Kind::Request, rpc::CALL, 3 << 19), &ready, &big(Kind::Request, rpc::CALL, 1_100_000), &call].concat());
            let mut many = vec![7u8 | 32 | 16, 0x55, b3[0], b3[1], b3[2]];
            for i in 0..100u64 {
                many.extend_from_slice(&big(Kind::Oneway, rpc::CALL, 700 + i * 20));
                many.extend_from_slice(&call);
            }
            all.push(many);
            all.push([&[6u8 | 32, 0x66, b1k[0], b1k[1], b1k[2]][..], &big(Kind::Request, rpc::CALL, 200_000)].concat());
            // Over the limit; a bad magic after a good frame; a bad kind.
            let mut big = Header::new(Kind::Oneway, service::RPC, rpc::CALL, 0);
            big.payload_len = 4097;
            all.push([&[3u8, 0, 0, 0, 0][..], &big.encode()].concat());
            let ready = frame_bytes(Kind::Oneway, service::CONTROL, op::READY, 0, &[], &[]);
            all.push([&[6u8, 1, 0, 0, 0][..], &ready, b"LCL0\x01", &[0u8; 27]].concat());
            let mut bad = ready.clone();
            bad[4] = 9;
            all.push([&[6u8, 2, 0, 0, 0][..], &bad].concat());
            all
        }
        "handshake" => {
            let nonce = [0x11u8; 32];
            let mut v = Vec::new();
            for side in [0u8, 1] {
                for cookie in [0u8, 3] {
                    let cfg = 0x10 | side | cookie << 2;
                    // Greet, prove, then the first frame's bytes.
                    v.push([&[cfg, 7][..], &nonce, &[3, 0, 4], b"next"].concat());
                    v.push([&[cfg, 7][..], &nonce, &[4]].concat());
                    v.push([&[cfg, 7][..], &nonce, &[5]].concat());
                    v.push([&[cfg, 1, 6 + 8, 2][..], &nonce, &[3]].concat());
                }
                v.push(vec![0x10 | side, 1]);
                v.push(vec![0x32 | side, 1]);
                v.push([&[0x32 | side, 7][..], &nonce, &[3]].concat());
                v.push([&[side][..], GREETING, &[0u8; 64]].concat());
            }
            v
        }
        "control" => {
            let mut v = vec![
                [&[0u8, op::JOIN as u8, 0][..], &join].concat(),
                [&[1u8, op::JOIN as u8, 0][..], &welcome].concat(),
                [&[2u8, op::HELLO as u8, 0][..], &info].concat(),
                [&[2u8, op::PEER_JOINED as u8, 0][..], &info].concat(),
                [&[2u8, op::PEER_LEFT as u8, 0][..], &peer_info_meta(5, "")].concat(),
                vec![2, op::READY as u8, 0],
                vec![2, op::SHUTDOWN as u8, 0],
                vec![2, op::INTERRUPT as u8, 1, 0xff],
            ];
            for o in [op::ADD_REF, op::ADD_CLIENT, op::DEL_REF, op::FETCH_REF] {
                v.push([&[0u8, o as u8, 0][..], &ref_id].concat());
            }
            v.push(vec![0, 12, 0]);
            v
        }
        "refs" => {
            let mut v = Vec::new();
            for (i, id) in [0u64, 250, 251, 65_535, 65_536, u32::MAX as u64, u64::MAX].into_iter().enumerate() {
                v.push([&[i as u8 % 4][..], &wire::encode_meta(&id)].concat());
            }
            v.push(vec![0, 254, 1, 2, 3]);
            v.push(vec![200, 1]);
            v
        }
        "rpc" => vec![
            [&[0u8, 1, 3][..], b"remote_sum", b"abc"].concat(),
            [&[2u8, 1, 0][..], "héllo wörld".as_bytes()].concat(),
            vec![0, 1, 0],
            vec![0, 1, 0, 0xc3, 0x28],
            vec![0, 2, 0, b'f'],
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_clean() {
        for (name, target) in targets() {
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "{name} has seeds");
            let outcomes: Vec<&str> = seeds.iter().map(|s| target(s).outcome).collect();
            eprintln!("{name}: {outcomes:?}");
        }
    }
}
