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
//! The `decode_*` functions decode one message exactly as the core or its
//! service does, by calling the code they call: each service's
//! `decode` (`service::control::decode`, `decode_admit`, `decode_welcome`,
//! `service::rpc::decode`, `service::refs::decode`), the session's
//! (`node::session::decode`), admission's routing (`node::admit::is_hello`)
//! and the response mapping (`node::response_outcome`). They also decode
//! the services' own types to check that each decoded value re-encodes
//! canonically. The table of which service reads which message is held
//! here, in this one file, so that a reshape of the services retargets
//! this file and nothing else.

use crate::error::{Error, ErrorKind, Result};
use crate::net::auth::{self, Side, PROTOCOL_VERSION};
use crate::node::{admit, response_outcome, session, Hello};
use crate::service::control::{self, op as control_op, Join, Message, PeerInfo, Welcome};
use crate::service::{channel, collective, dict, pool, refs, rpc, shm, stasks, vars};
use crate::wire::{self, Frame, FrameReader, Header, Kind, ReadOutcome, ServiceId, HEADER_LEN, MAGIC, MAX_META};
use hmac::{Hmac, Mac};
use serde::{de::DeserializeOwned, Serialize};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

// ---- the services' decoders ------------------------------------------

/// One decoded message. Values of the services' message types are given
/// as their canonical re-encoding (bincode is one-to-one on values).
#[derive(Debug)]
pub enum Decoded {
    /// An op that carries nothing the service reads (READY, SHUTDOWN,
    /// INTERRUPT, PING, PONG), by service and op.
    Signal(ServiceId, u16),
    /// JOIN: a worker introduces itself to the head (its first message).
    Join(Vec<u8>),
    /// The head's answer to JOIN, as a joining worker reads it: how many
    /// members it lists.
    Welcome(usize),
    /// PEER_JOINED, PEER_LEFT.
    PeerInfo(u16, Vec<u8>),
    /// HELLO: the first message of a worker-to-worker connection.
    Hello(Vec<u8>),
    /// A reference op and the reference id it names.
    Ref(u16, u64),
    /// An rpc call.
    Call { name: String, args: usize, wants_reply: bool },
    /// An rpc batch call (CALL_BATCH, sent by maps): each element's
    /// argument length, or None when the payload is not a batch (the
    /// service answers the request with an error and stays connected).
    Batch { name: String, items: Option<Vec<usize>> },
    /// A channel message and its meta's canonical re-encoding.
    Channel(u16, Vec<u8>),
    /// A dict message and its meta's canonical re-encoding.
    Dict(u16, Vec<u8>),
    /// A response: the value's length, or the error it carries.
    Reply(std::result::Result<usize, Error>),
}

/// Re-encodes a decoded value and checks the encoding is canonical: no
/// longer than what was read, and decoding to itself.
fn recanon<T: Serialize + DeserializeOwned>(v: &T, read: usize, payload: bool) -> Vec<u8> {
    type Codec<T> = (fn(&T) -> Vec<u8>, fn(&[u8]) -> Result<T>);
    let (enc, dec): Codec<T> = if payload { (wire::encode_payload::<T>, wire::decode_payload::<T>) } else { (wire::encode_meta::<T>, wire::decode_meta::<T>) };
    let c = enc(v);
    assert!(c.len() <= read, "a decoded value re-encodes longer ({} bytes) than its {read} input bytes", c.len());
    let again = dec(&c).unwrap_or_else(|e| panic!("a canonical encoding does not decode: {e}"));
    assert!(enc(&again) == c, "decode(encode(v)) != v");
    c
}

/// The session (`Node::on_frame`, `node::session`) as admission reads it:
/// HELLO's meta is a `Hello`; PING and PONG carry nothing.
#[doc(hidden)]
pub fn decode_session(op: u16, meta: &[u8]) -> Result<Decoded> {
    let r = session::decode(op, meta);
    let typed = (op == session::HELLO).then(|| session::decode_hello(meta));
    match (r, typed) {
        (Ok(()), Some(Ok(h))) => Ok(Decoded::Hello(recanon::<Hello>(&h, meta.len(), false))),
        (Ok(()), None) => Ok(Decoded::Signal(session::ID, op)),
        (Err(e), Some(Err(_)) | None) => Err(e),
        (r, t) => panic!("session::decode ({r:?}) and the HELLO decoder ({:?}) disagree", t.map(|t| t.map(drop))),
    }
}

/// The control service on an established connection (`Control::on_message`).
/// The service guards ops by role (READY on the head, PEER_JOINED from the
/// head ...); decoding does not depend on it, so neither does this.
#[doc(hidden)]
pub fn decode_control(op: u16, meta: &[u8]) -> Result<Decoded> {
    let r = control::decode(op, meta);
    let typed = control::parse(op, meta);
    match (r, typed) {
        (Ok(()), Ok(Message::Ready | Message::Shutdown)) => Ok(Decoded::Signal(control::ID, op)),
        (Ok(()), Ok(Message::PeerJoined(i) | Message::PeerLeft(i))) => Ok(Decoded::PeerInfo(op, recanon::<PeerInfo>(&i, meta.len(), false))),
        (Err(e), Err(_)) => Err(e),
        (r, t) => panic!("control::decode ({r:?}) and control::parse ({:?}) disagree", t.map(drop)),
    }
}

/// The head's answer to a JOIN, as a joining worker reads it
/// (`control::read_welcome`): a refusal (status, reason in the payload),
/// or the welcome in the payload.
#[doc(hidden)]
pub fn decode_welcome(f: &Frame) -> Result<Decoded> {
    let r = control::decode_welcome(f);
    match (r, control::read_welcome(f)) {
        (Ok(n), Ok(w)) => {
            assert_eq!(n, w.peers.len());
            recanon::<Welcome>(&w, f.payload.len(), true);
            Ok(Decoded::Welcome(n))
        }
        (Err(e), Err(_)) => Err(e),
        (r, t) => panic!("control::decode_welcome ({r:?}) and read_welcome ({:?}) disagree", t.map(drop)),
    }
}

/// The reference service (`Refs::on_message`): each meta is a ref id.
#[doc(hidden)]
pub fn decode_refs(op: u16, meta: &[u8]) -> Result<Decoded> {
    refs::decode(op, meta).map(|id| Decoded::Ref(op, id))
}

/// The rpc service (`Rpc::on_message`): a CALL's function name is the
/// UTF-8 meta, its arguments the payload; a request wants a reply.
#[doc(hidden)]
pub fn decode_rpc(kind: Kind, op: u16, meta: &[u8], payload: &[u8]) -> Result<Decoded> {
    rpc::decode(op, meta)?;
    Ok(match op {
        rpc::op::CALL => Decoded::Call {
            name: String::from_utf8(meta.to_vec()).expect("rpc::decode accepted the name"),
            args: payload.len(),
            wants_reply: kind == Kind::Request,
        },
        rpc::op::CALL_BATCH => Decoded::Batch {
            name: String::from_utf8(meta.to_vec()).expect("rpc::decode accepted the name"),
            items: rpc::batch::decode_items(payload).ok().map(|r| r.iter().map(|r| r.len()).collect()),
        },
        o => Decoded::Signal(rpc::ID, o),
    })
}

/// The channel service (`Channels::on_message`): every op's meta is a
/// `Msg` (the channel and the op's argument).
#[doc(hidden)]
pub fn decode_channel(op: u16, meta: &[u8]) -> Result<Decoded> {
    channel::decode(op, meta)?;
    let m: channel::Msg = wire::decode_meta(meta).expect("channel::decode accepted the meta");
    Ok(Decoded::Channel(op, recanon(&m, meta.len(), false)))
}

/// The dict service (`Dicts::on_message`): every op's meta is a `Msg`;
/// CREATE's payload a `Spec`, INSTALL's a configuration (checked),
/// REPLICATE's an `Effect`, SET's and GET_OR_INSERT's a key and a value,
/// SET_F's a key, a function name and its arguments.
#[doc(hidden)]
pub fn decode_dict(op: u16, meta: &[u8], payload: &[u8]) -> Result<Decoded> {
    dict::decode(op, meta, payload)?;
    let m: dict::Msg = wire::decode_meta(meta).expect("dict::decode accepted the meta");
    Ok(Decoded::Dict(op, recanon(&m, meta.len(), false)))
}

/// The pool service (`Pools::on_message`): HOST_INFO carries nothing.
#[doc(hidden)]
pub fn decode_pool(op: u16, meta: &[u8]) -> Result<Decoded> {
    pool::decode(op, meta).map(|()| Decoded::Signal(pool::ID, op))
}

/// A response of any service, as `Node::on_response` reads it.
#[doc(hidden)]
pub fn decode_reply(status: u8, aux: u32, from: u32, payload: &[u8]) -> Decoded {
    let mut h = Header::new(Kind::Response, 0, 0, 0);
    h.status = status;
    h.aux = aux;
    Decoded::Reply(response_outcome(&h, from, payload.to_vec()).map(|v| v.len()))
}

/// A frame arriving on an established connection (`Node::on_frame`):
/// responses, the session (the core answers a PING and reads nothing of
/// any session message), then the services by id.
#[doc(hidden)]
pub fn decode_frame(f: &Frame, from: u32) -> Result<Decoded> {
    let h = &f.header;
    if h.kind == Kind::Response {
        return Ok(decode_reply(h.status, h.aux, from, &f.payload));
    }
    match h.service {
        session::ID => Ok(Decoded::Signal(session::ID, h.op)),
        control::ID => decode_control(h.op, &f.meta),
        rpc::ID => decode_rpc(h.kind, h.op, &f.meta, &f.payload),
        refs::ID => decode_refs(h.op, &f.meta),
        channel::ID => decode_channel(h.op, &f.meta),
        pool::ID => decode_pool(h.op, &f.meta),
        dict::ID => decode_dict(h.op, &f.meta, &f.payload),
        shm::ID => shm::decode(h.op, &f.meta, &f.payload).map(|()| Decoded::Signal(shm::ID, h.op)),
        stasks::ID => stasks::decode(h.op, &f.meta, &f.payload).map(|()| Decoded::Signal(stasks::ID, h.op)),
        vars::ID => vars::decode(h.op, &f.meta).map(|()| Decoded::Signal(vars::ID, h.op)),
        collective::ID => collective::decode(h.op, &f.meta).map(|()| Decoded::Signal(collective::ID, h.op)),
        s => Err(Error::new(ErrorKind::Protocol, format!("no service {s}"))),
    }
}

/// The first frame on a connection a node accepted, as admission reads it
/// (`Node::admit_first`): a HELLO on a worker (`admit::is_hello`), else the
/// service the header names if it admits it (`Service::on_admit`: only the
/// control service does, a JOIN on the head), else refused.
#[doc(hidden)]
pub fn decode_first(f: &Frame, head: bool) -> Result<Decoded> {
    let refused = || Err(Error::new(ErrorKind::Protocol, "unexpected first message"));
    if admit::is_hello(head, &f.header) {
        return decode_session(session::HELLO, &f.meta);
    }
    match f.header.service {
        control::ID => match control::decode_admit(head, f) {
            None => refused(),
            Some(Err(e)) => Err(e),
            Some(Ok(())) => {
                let j = control::parse_join(&f.meta).expect("decode_admit accepted the JOIN");
                Ok(Decoded::Join(recanon::<Join>(&j, f.meta.len(), false)))
            }
        },
        // The session (but for a worker's HELLO), rpc and refs admit nothing.
        _ => refused(),
    }
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
    &[
        ("frame", frame),
        ("handshake", handshake),
        ("session", session),
        ("control", control),
        ("refs", refs),
        ("rpc", rpc),
        ("channel", channel),
        ("dict", dict),
    ]
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
        Ok(Decoded::Signal(..)) => "signal",
        Ok(Decoded::Join(_)) => "join",
        Ok(Decoded::Welcome(_)) => "welcome",
        Ok(Decoded::PeerInfo(..)) => "peer info",
        Ok(Decoded::Hello(_)) => "hello",
        Ok(Decoded::Ref(..)) => "ref id",
        Ok(Decoded::Call { .. }) => "call",
        Ok(Decoded::Batch { items: Some(_), .. }) => "batch",
        Ok(Decoded::Batch { items: None, .. }) => "bad batch",
        Ok(Decoded::Channel(..)) => "channel message",
        Ok(Decoded::Dict(..)) => "dict message",
        Ok(Decoded::Reply(Ok(_))) => "value reply",
        Ok(Decoded::Reply(Err(_))) => "error reply",
    }
}

fn decoded_tag(r: &Result<Decoded>) -> u64 {
    match r {
        Err(e) => 100 + e.kind as u64,
        Ok(Decoded::Signal(s, op)) => 1000 + ((*s as u64) << 8) + *op as u64,
        Ok(Decoded::Join(_)) => 1,
        Ok(Decoded::Welcome(n)) => 2 + ((*n).min(3) as u64) * 10,
        Ok(Decoded::PeerInfo(op, _)) => 2000 + *op as u64,
        Ok(Decoded::Hello(_)) => 3,
        Ok(Decoded::Ref(op, _)) => 3000 + *op as u64,
        Ok(Decoded::Call { wants_reply, .. }) => 4 + *wants_reply as u64,
        Ok(Decoded::Batch { items, .. }) => 7 + items.as_ref().map_or(0, |i| 1 + (i.len().min(3) as u64)),
        Ok(Decoded::Channel(op, _)) => 4000 + *op as u64,
        Ok(Decoded::Dict(op, _)) => 5000 + *op as u64,
        Ok(Decoded::Reply(Ok(_))) => 6,
        Ok(Decoded::Reply(Err(e))) => 200 + e.kind as u64,
    }
}

// ---- (a) the frame decoder -------------------------------------------

/// `FrameReader`'s staging buffer (`wire/reader.rs`).
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

/// What `Header::decode` must answer for `b`, from the layout in `wire/mod.rs`.
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
    Frame {
        header: Header,
        meta: std::ops::Range<usize>,
        payload: std::ops::Range<usize>,
    },
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
fn byte_stream(pipe: bool) -> (OwnedFd, OwnedFd) {
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
    /// The largest welcome payload decoded.
    welcome_bytes: usize,
    /// The largest error response's payload (its text).
    error_text: usize,
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
                    // Route it as a node would: on an established
                    // connection, as a connection's first frame on a head
                    // and on a worker, and as the reply a joining worker reads.
                    self.sig = mix(self.sig, decoded_tag(&decode_frame(&f, 2)));
                    self.sig = mix(self.sig, decoded_tag(&decode_first(&f, true)));
                    self.sig = mix(self.sig, decoded_tag(&decode_first(&f, false)));
                    if header.kind == Kind::Response && header.status != 0 {
                        self.error_text = self.error_text.max(f.payload.len());
                    }
                    if header.service == control::ID && header.op == control_op::JOIN && header.kind == Kind::Response {
                        self.sig = mix(self.sig, decoded_tag(&decode_welcome(&f)));
                        self.welcome_bytes = self.welcome_bytes.max(f.payload.len());
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
                    assert!(matches!(next, Next::Incomplete), "the reader waits for more bytes while it holds {next:?}: a caller that polls now hangs");
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

    let (r, w) = byte_stream(pipe);
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
        welcome_bytes: 0,
        error_text: 0,
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
    // `DECODE_ALLOC_BOUND` for a meta whatever the maximum payload, and
    // the payload decoder's limit for a welcome, and an error response's
    // text (invalid UTF-8 turns each byte into three, in a string grown by
    // doubling from the byte count: up to four times the bytes).
    let reader_bound = (max_payload as usize).max(STAGING).max(MAX_META).max(stream.capacity());
    let decode_bound = DECODE_ALLOC_BOUND.max(wire::payload_decode_limit(run.welcome_bytes)).max(4 * run.error_text);
    Report { signature: sig, alloc_bound: reader_bound.max(decode_bound), outcome }
}

// ---- (b) the handshake -----------------------------------------------

/// The greeting, the verdict and the proofs, as `net/auth.rs` defines them:
/// computed here independently, to judge what the handshake does.
const HS_MAGIC: &[u8; 7] = b"LCLUSTR";
const GREETING_LEN: usize = 40;
const PROOF_LEN: usize = 32;
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;
const ACCEPTED_TLS: u8 = 2;
const LONG_COOKIE: [u8; 200] = [b'k'; 200];
static COOKIES: [&[u8]; 4] = [b"fuzz-cookie", b"", b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", &LONG_COOKIE];
/// The handshake's total deadline when the peer keeps the connection open.
const HELD: Duration = Duration::from_millis(40);
/// How late past its deadline a handshake may return on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);
/// The gap between the bytes of a dripping peer: shorter than the deadline,
/// so a deadline per read would never expire while the peer drips. A full
/// handshake dripped (74 bytes) would then take 2.5 s, past `HELD + SLACK`.
const DRIP: Duration = Duration::from_millis(35);

fn greeting_of(version_char: u8, nonce: &[u8]) -> Vec<u8> {
    let mut g = HS_MAGIC.to_vec();
    g.push(version_char);
    g.extend_from_slice(&nonce[..nonce.len().min(32)]);
    g
}

/// A side's proof; `choice`: the client's TLS wish, the server's verdict.
fn proof(cookie: &[u8], role: Side, client_nonce: &[u8], server_nonce: &[u8], choice: u8) -> [u8; PROOF_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie).expect("any key length");
    mac.update(if role == Side::Client { b"libcluster client" } else { b"libcluster server" });
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac.update(&[choice]);
    mac.finalize().into_bytes().into()
}

fn other(side: Side) -> Side {
    if side == Side::Client {
        Side::Server
    } else {
        Side::Client
    }
}

fn side_name(s: Side) -> &'static str {
    if s == Side::Client {
        "client"
    } else {
        "server"
    }
}

/// How a handshake must end on the bytes its peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Accept,
    /// The bytes end before a decision: the handshake waits for more
    /// (a timeout when the peer holds the connection, `Io` when it hung up).
    Incomplete,
    Fail(ErrorKind, &'static str),
}

/// The protocol of `net/auth.rs`, written out: what a handshake on `side`
/// decides on the peer's bytes `input`, how many of them it reads (never
/// more than its messages) and what it writes after its greeting.
struct Model {
    expect: Expect,
    consumed: usize,
    writes: Vec<u8>,
}

fn model(side: Side, cookie: &[u8], own_nonce: &[u8], input: &[u8]) -> Model {
    let done = |expect, consumed, writes| Model { expect, consumed, writes };
    if input.len() < GREETING_LEN {
        return done(Expect::Incomplete, input.len(), vec![]);
    }
    let g = &input[..GREETING_LEN];
    if &g[..7] != HS_MAGIC {
        return done(Expect::Fail(ErrorKind::Protocol, "did not greet as a libcluster process"), GREETING_LEN, vec![]);
    }
    if g[7].wrapping_sub(b'0') != PROTOCOL_VERSION {
        return done(Expect::Fail(ErrorKind::Protocol, "protocol version"), GREETING_LEN, vec![]);
    }
    let theirs = &g[8..];
    match side {
        Side::Server => {
            // The client's proof and its TLS wish (0 or 1), inside the proof.
            let (cn, sn) = (theirs, own_nonce);
            let end = GREETING_LEN + PROOF_LEN + 1;
            if input.len() < end {
                return done(Expect::Incomplete, input.len(), vec![]);
            }
            let wish = input[end - 1];
            if wish > 1 || input[GREETING_LEN..end - 1] != proof(cookie, Side::Client, cn, sn, wish) {
                return done(Expect::Fail(ErrorKind::Auth, "failed to prove"), end, vec![REFUSED]);
            }
            // This server does not require TLS: the verdict follows the wish.
            let verdict = if wish == 1 { ACCEPTED_TLS } else { ACCEPTED };
            let mut w = vec![verdict];
            w.extend_from_slice(&proof(cookie, Side::Server, cn, sn, verdict));
            done(Expect::Accept, end, w)
        }
        Side::Client => {
            // This client does not ask for TLS, and takes it when told.
            let (cn, sn) = (own_nonce, theirs);
            let w = [&proof(cookie, Side::Client, cn, sn, 0)[..], &[0]].concat();
            if input.len() < GREETING_LEN + 1 {
                return done(Expect::Incomplete, input.len(), w);
            }
            let verdict = input[GREETING_LEN];
            match verdict {
                ACCEPTED | ACCEPTED_TLS => {}
                REFUSED => return done(Expect::Fail(ErrorKind::Auth, "refused this process's proof"), GREETING_LEN + 1, w),
                _ => return done(Expect::Fail(ErrorKind::Protocol, "bad handshake verdict"), GREETING_LEN + 1, w),
            }
            let end = GREETING_LEN + 1 + PROOF_LEN;
            if input.len() < end {
                return done(Expect::Incomplete, input.len(), w);
            }
            if input[GREETING_LEN + 1..end] != proof(cookie, Side::Server, cn, sn, verdict) {
                return done(Expect::Fail(ErrorKind::Auth, "failed to prove"), end, w);
            }
            done(Expect::Accept, end, w)
        }
    }
}

enum Step<'a> {
    Raw(&'a [u8]),
    /// A greeting: the right version, the previous one, or any byte.
    Greeting(u8, &'a [u8]),
    /// The verdict byte a server sends (to a client handshake).
    Verdict(u8),
    /// The proof the handshake wants from its peer (for a client, after
    /// the accepting verdict).
    GoodProof,
    /// The handshake's own proof, sent back to it.
    Reflected,
    WrongCookie,
    Pause(u8),
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
            1 | 2 => {
                let v = match b / 8 % 4 {
                    0 | 1 => b'0' + PROTOCOL_VERSION,
                    2 => b'0' + PROTOCOL_VERSION - 1,
                    _ => take(&mut rest, 1).first().copied().unwrap_or(0),
                };
                Step::Greeting(v, take(&mut rest, 32))
            }
            3 => Step::GoodProof,
            4 => Step::Reflected,
            5 => Step::WrongCookie,
            6 => Step::Pause(b / 8 % 4 * 10),
            _ => Step::Verdict(match b / 8 % 4 {
                0 => ACCEPTED,
                1 => ACCEPTED_TLS,
                2 => REFUSED,
                _ => b / 32,
            }),
        });
    }
    steps
}

/// The peer's end: what the handshake sent it, read as it comes.
struct Peer {
    sock: UnixStream,
    received: Vec<u8>,
}

impl Peer {
    /// Whatever has arrived, without waiting.
    fn peek(&mut self) {
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 256];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("peer read: {e}"),
            }
        }
        self.sock.set_nonblocking(false).expect("blocking");
    }

    /// The handshake's greeting: it greets at once.
    fn hello(&mut self) -> [u8; GREETING_LEN] {
        while self.received.len() < GREETING_LEN {
            let mut buf = [0u8; 256];
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("the handshake hung up before it greeted ({} bytes)", self.received.len()),
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the handshake did not greet first: {e}"),
            }
        }
        let h: [u8; GREETING_LEN] = self.received[..GREETING_LEN].try_into().unwrap();
        assert!(h[..8] == greeting_of(b'0' + PROTOCOL_VERSION, &[])[..], "the handshake's greeting: {:02x?}", &h[..8]);
        h
    }
}

/// Target (b): the handshake of `net/auth.rs`, either side (the server is
/// the `Handshake` state machine admission drives; `auth::handshake`
/// drives it to a total deadline as joining workers and peers do), against
/// a peer that sends the input over a socketpair (as a `TcpStream`: it only
/// reads, writes and polls). Checked against the protocol written out in
/// `model`:
///
/// - it accepts exactly a peer that greets with this protocol version and
///   then proves the cookie (a client: after an accepting verdict), and
///   ends every other way with the error the protocol says (another
///   version is refused as such, naming it);
/// - it never reads past its messages (a proof's end is where the first
///   frame starts), and reads nothing more once it has decided;
/// - it writes only what the protocol says: a server proves itself only
///   after checking the client's proof (its verdict and proof never arrive
///   before the client's proof is sent, and never after a bad one), a
///   client proves only after a greeting of its version;
/// - it returns within its deadline in total, however the peer spaces its
///   bytes (each pause shorter than the deadline, or dripping a byte at a
///   time), and never waits for the deadline when the peer hung up.
///
/// Input: `cfg`, then the peer's bytes. `cfg` bit 0: the handshake is the
/// client; bits 2-3: the cookie; bit 4: the rest is a script of steps
/// (raw bytes, greeting of some version, verdict, good / reflected /
/// wrong-cookie proof, pause) rather than raw bytes; bits 1 and 5 both
/// set: the peer keeps the connection open afterwards, so an incomplete
/// handshake must time out, within its (short) deadline in total; with bit
/// 6 too, the peer drips its bytes one at a time, each gap shorter than the
/// deadline, until the handshake ends.
#[doc(hidden)]
pub fn handshake(data: &[u8]) -> Report {
    let cfg = byte(data, 0);
    let side = if cfg & 1 == 0 { Side::Server } else { Side::Client };
    let hold = cfg & 0x22 == 0x22;
    let drip = hold && cfg & 0x40 != 0;
    let cookie: &'static [u8] = COOKIES[(cfg as usize >> 2) & 3];
    let rest = data.get(1..).unwrap_or(&[]);
    let steps = if cfg & 0x10 != 0 { script(rest) } else { vec![Step::Raw(&rest[..rest.len().min(4096)])] };
    let timeout = if hold { HELD } else { Duration::from_secs(5) };

    let (ours, sock) = UnixStream::pair().expect("socketpair");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // SAFETY: a stream socket, owned from here on by the TcpStream.
    let ours = unsafe { TcpStream::from_raw_fd(ours.into_raw_fd()) };
    let task = std::thread::spawn(move || {
        let mut s = ours;
        // Timed from the call, not from the spawn: a loaded machine may
        // start the thread seconds late (seen: 5 s at a load of 17 on 2 cores).
        let start = Instant::now();
        let r = auth::handshake(&mut s, cookie, side, timeout);
        (r, s, start.elapsed())
    });

    let mut peer = Peer { sock, received: Vec::new() };
    let mut sent: Vec<u8> = Vec::new();
    let mut paused = Duration::ZERO;
    // Bytes the peer must have sent before the handshake may write more
    // than its greeting: a client's whole proof (server), a greeting (client).
    let gate = if side == Side::Server { GREETING_LEN + PROOF_LEN + 1 } else { GREETING_LEN };
    'steps: for step in &steps {
        // A held handshake that has ended reads nothing more: stop early.
        if hold && task.is_finished() {
            break;
        }
        let bytes: Vec<u8> = match step {
            Step::Raw(b) => b.to_vec(),
            Step::Greeting(v, n) => greeting_of(*v, n),
            Step::Verdict(v) => vec![*v],
            Step::GoodProof | Step::Reflected | Step::WrongCookie => {
                let h = peer.hello();
                let mine = nonce_of(&sent);
                let (cn, sn) = if side == Side::Server { (&mine[..], &h[8..]) } else { (&h[8..], &mine[..]) };
                // A client's proof carries its wish (asking for TLS on even
                // nonces); a good verdict, the server's proof of it.
                let wish = mine[0] & 1;
                let verdict = if wish == 1 { ACCEPTED_TLS } else { ACCEPTED };
                let choice = if side == Side::Server { wish } else { verdict };
                let p = match step {
                    Step::GoodProof => proof(cookie, other(side), cn, sn, choice),
                    Step::Reflected => proof(cookie, side, cn, sn, choice),
                    _ => proof(b"not the cookie", other(side), cn, sn, choice),
                };
                match (side, step) {
                    (Side::Client, Step::GoodProof) => [&[verdict][..], &p].concat(),
                    (Side::Server, _) => [&p[..], &[wish]].concat(),
                    _ => p.to_vec(),
                }
            }
            Step::Pause(ms) => {
                // Past three deadlines of pauses, more prove nothing: skip
                // them. A peer that hangs up at the end only needs its bytes
                // to arrive in parts: a tenth of the pause does, 10 ms in all.
                let (d, most) = if hold { (Duration::from_millis(*ms as u64), 3 * HELD) } else { (Duration::from_micros(*ms as u64 * 100), HELD / 4) };
                if paused + d <= most {
                    std::thread::sleep(d);
                    paused += d;
                }
                continue;
            }
        };
        // Dripping: a byte at a time, each gap shorter than the deadline.
        let chunk = if drip { 1 } else { bytes.len().max(1) };
        for part in bytes.chunks(chunk) {
            if drip && task.is_finished() {
                break 'steps;
            }
            peer.peek();
            if sent.len() < gate {
                assert!(
                    peer.received.len() <= GREETING_LEN,
                    "the handshake ({}) wrote {} bytes after its greeting before its peer sent what it answers",
                    side_name(side),
                    peer.received.len() - GREETING_LEN
                );
            }
            // The handshake keeps its end open until joined, and the socket
            // buffer holds every script (64 steps of at most 255 bytes).
            peer.sock.write_all(part).expect("peer write");
            sent.extend_from_slice(part);
            if drip {
                std::thread::sleep(DRIP);
            }
        }
    }
    if !hold {
        peer.sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let (result, mut stream, elapsed) = match task.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    };
    let own = peer.hello();

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
    drop(stream);
    peer.sock.read_to_end(&mut peer.received).expect("read what the handshake sent");
    let wrote = &peer.received[GREETING_LEN..];

    assert!(after.len() <= sent.len() && sent.ends_with(&after), "the handshake's stream holds bytes the peer did not send");
    let consumed = sent.len() - after.len();
    let full = model(side, cookie, &own[8..], &sent);
    assert!(consumed <= full.consumed, "the handshake ({}) read {consumed} bytes, past the {} of its messages", side_name(side), full.consumed);
    // What the handshake did is what the protocol says of the bytes it read.
    let m = model(side, cookie, &own[8..], &sent[..consumed]);
    let what = || format!("the handshake ({}) on {} peer bytes ({consumed} read) gave {:?}", side_name(side), sent.len(), result.as_ref().map(drop));
    match (&result, m.expect) {
        (Ok(_), Expect::Accept) => {}
        (Err(e), Expect::Fail(kind, says)) => {
            assert_eq!(e.kind, kind, "{}: {e}", what());
            assert!(e.message.contains(says), "{}: {e} (expected it to say {says:?})", what());
            if says == "protocol version" {
                let v = sent[7].wrapping_sub(b'0');
                assert!(e.message.contains(&format!("version {v}")) && e.message.contains(&format!("version {PROTOCOL_VERSION}")), "{e}");
            }
        }
        (Err(e), Expect::Incomplete) if hold => {
            assert_eq!(e.kind, ErrorKind::Timeout, "{}: {e}", what());
            assert!(elapsed >= timeout, "the handshake gave up after {elapsed:?}, before its deadline of {timeout:?}");
        }
        (Err(e), Expect::Incomplete) => assert!(e.kind == ErrorKind::Io && e.message.contains("closed"), "{}: {e}", what()),
        (r, x) => panic!("{}: the protocol says {x:?} ({r:?})", what(), r = r.as_ref().map(drop)),
    }
    if !hold {
        // Every byte was there at once: the handshake read all it needed.
        assert_eq!(consumed, full.consumed, "the handshake ({}) stopped reading early", side_name(side));
    }
    assert!(wrote == m.writes, "the handshake ({}) wrote {:02x?} after its greeting; the protocol says {:02x?}", side_name(side), wrote, m.writes);
    if side == Side::Server && m.expect != Expect::Accept {
        assert!(wrote.len() <= 1, "the server proved itself to a peer that did not prove the cookie");
    }
    // (A peer that hung up is never waited for: the outcome above is then
    // never a timeout.)
    if hold {
        assert!(elapsed <= timeout + SLACK, "the handshake took {elapsed:?} with a total deadline of {timeout:?}");
    }

    let class = match (&result, m.expect) {
        (Ok(_), _) => 0,
        (Err(_), Expect::Fail(_, "did not greet as a libcluster process")) => 1,
        (Err(_), Expect::Fail(_, "protocol version")) => 2,
        (Err(_), Expect::Fail(_, "failed to prove")) => 3,
        (Err(_), Expect::Fail(..)) => 4,
        (Err(e), _) if e.kind == ErrorKind::Timeout => 5,
        _ => 6,
    };
    let sig = mix(mix(mix(cfg as u64 & 0x73, class), consumed.min(80) as u64 / 8), steps.len().min(4) as u64);
    let outcome = ["accepted", "no greeting", "other version", "bad proof", "refused verdict", "timed out", "hung up"][class as usize];
    Report { signature: sig, alloc_bound: 1 << 16, outcome }
}

/// The nonce of a greeting as far as it was sent (zeros for what was not).
fn nonce_of(sent: &[u8]) -> [u8; 32] {
    let mut n = [0u8; 32];
    for (i, b) in sent.iter().skip(8).take(32).enumerate() {
        n[i] = *b;
    }
    n
}

// ---- (c) the services' messages --------------------------------------

/// Splits `rest` into meta and payload: the last `payload_len` bytes are
/// the payload; the meta is capped at what a frame can carry.
fn split(rest: &[u8], payload_len: u8) -> (&[u8], &[u8]) {
    let p = (payload_len as usize).min(rest.len());
    let (meta, payload) = rest.split_at(rest.len() - p);
    (&meta[..meta.len().min(MAX_META)], payload)
}

/// The largest allocation a meta decode may make: the meta's size, or
/// the up-front reservation serde makes for a sequence from its declared
/// length (at most 1 MiB).
const DECODE_ALLOC_BOUND: usize = 1 << 20;

fn frame_of(kind: Kind, service: ServiceId, op: u16, status: u8, meta: &[u8], payload: &[u8]) -> Frame {
    let mut h = Header::new(kind, service, op, 1);
    h.status = status;
    h.meta_len = meta.len() as u16;
    h.payload_len = payload.len() as u64;
    Frame { header: h, meta: meta.to_vec(), payload: payload.to_vec() }
}

/// Target (c), the session and admission: `decode_session` on (op, meta),
/// and the same bytes as a connection's first frame (`decode_first`) on a
/// head and on a worker, for a frame of any service. Input: op (mod 5),
/// service (mod 5), kind, then the meta.
///
/// Checks: a HELLO decodes exactly when its meta is a `Hello`, PING and
/// PONG always, other ops never; a first frame is admitted (decodes) only
/// as a HELLO on a worker or a JOIN on the head, and then decodes as that
/// message does; everything else is refused as a protocol error.
#[doc(hidden)]
pub fn session(data: &[u8]) -> Report {
    let op = u16::from(byte(data, 0) % 5);
    let service = ServiceId::from(byte(data, 1) % 5);
    let kind = kind_of(byte(data, 2));
    let meta = data.get(3..).unwrap_or(&[]);
    let meta = &meta[..meta.len().min(MAX_META)];
    let r = decode_session(op, meta);
    match (&r, op) {
        (Ok(Decoded::Hello(_)), session::HELLO) => {}
        (Err(e), session::HELLO) => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
        (Ok(Decoded::Signal(session::ID, o)), session::PING | session::PONG) => assert_eq!(*o, op),
        (Err(e), _) if op != session::PING && op != session::PONG => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
        (r, _) => panic!("session op {op}: {r:?}"),
    }
    // The same bytes as the first frame of a connection.
    let f = frame_of(kind, service, op, 0, meta, &[]);
    let mut sig = mix(op as u64, decoded_tag(&r));
    for head in [true, false] {
        let first = decode_first(&f, head);
        let hello = !head && (service, op) == (session::ID, session::HELLO);
        let join = head && (service, op) == (control::ID, control_op::JOIN);
        match &first {
            Ok(Decoded::Hello(c)) => {
                assert!(hello, "a first frame ({service}, {op}) on a {} was admitted as a HELLO", if head { "head" } else { "worker" });
                assert!(matches!(&r, Ok(Decoded::Hello(c2)) if c2 == c));
            }
            Ok(Decoded::Join(_)) => assert!(join, "a first frame ({service}, {op}) was admitted as a JOIN"),
            Ok(other) => panic!("a first frame decoded as {other:?}"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
                assert!(!hello || r.is_err(), "a worker refused a HELLO the session decodes: {e}");
                if join {
                    assert!(control::parse_join(meta).is_err(), "the head refused a JOIN that decodes: {e}");
                }
            }
        }
        sig = mix(sig, mix(head as u64, decoded_tag(&first) ^ (service as u64) << 32));
    }
    Report { signature: sig, alloc_bound: DECODE_ALLOC_BOUND.max(2 * meta.len()), outcome: decoded_note(&r) }
}

/// Target (c), control: `decode_control` on (op, meta) as on an
/// established connection, or, for a JOIN response, `decode_welcome` on the
/// frame a joining worker reads. Input: kind (mod 3), op (mod 8), split
/// length, status (0 for most values), then the bytes. The last `split`
/// bytes are the payload; for a JOIN response the first `split` are the
/// meta and the rest the payload (the welcome is in the payload).
///
/// Checks: READY and SHUTDOWN always decode, JOIN never on an established
/// connection (it is only ever a first message), PEER_JOINED and PEER_LEFT
/// exactly when the meta is a `PeerInfo`, other ops never; a welcome
/// decodes only with status 0, then re-encodes canonically; errors are
/// protocol errors (a refusal: a launch error with the head's reason).
#[doc(hidden)]
pub fn control(data: &[u8]) -> Report {
    let kind = kind_of(byte(data, 0));
    let op = u16::from(byte(data, 1) % 8);
    let cut = byte(data, 2);
    let status = byte(data, 3).saturating_sub(224);
    let rest = data.get(4..).unwrap_or(&[]);
    let welcome = kind == Kind::Response && op == control_op::JOIN;
    let (r, bound) = if welcome {
        let (meta, payload) = rest.split_at((cut as usize).min(rest.len()));
        let f = frame_of(kind, control::ID, op, status, meta, payload);
        let r = decode_welcome(&f);
        match &r {
            Ok(Decoded::Welcome(_)) => assert_eq!(status, 0, "a refusal read as a welcome"),
            Ok(other) => panic!("decode_welcome gave {other:?}"),
            Err(e) if status != 0 => {
                assert_eq!(e.kind, ErrorKind::Launch, "{e}");
                assert!(e.message.contains(&*String::from_utf8_lossy(payload)), "the refusal lost the head's reason: {e}");
            }
            Err(e) => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
        }
        (r, wire::payload_decode_limit(payload.len()).max(4 * payload.len() + 1024))
    } else {
        let (meta, _) = split(rest, cut);
        let r = decode_control(op, meta);
        match (&r, op) {
            (Ok(Decoded::Signal(control::ID, o)), control_op::READY | control_op::SHUTDOWN) => assert_eq!(*o, op),
            (Ok(Decoded::PeerInfo(o, _)), control_op::PEER_JOINED | control_op::PEER_LEFT) => assert_eq!(*o, op),
            (Err(e), control_op::PEER_JOINED | control_op::PEER_LEFT) => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
            (Err(e), o) if o != control_op::READY && o != control_op::SHUTDOWN => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
            (r, _) => panic!("control op {op}: {r:?}"),
        }
        (r, DECODE_ALLOC_BOUND.max(2 * meta.len()))
    };
    Report { signature: mix(mix(mix(kind as u64, op as u64), decoded_tag(&r)), (status != 0) as u64), alloc_bound: bound, outcome: decoded_note(&r) }
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

/// Bytes taken by the varint `b` starts with (as `varint_model` reads it).
fn varint_len(b: &[u8]) -> Option<usize> {
    let n = match *b.first()? {
        0..=250 => 1,
        251 => 3,
        252 => 5,
        253 => 9,
        _ => return None,
    };
    (n <= b.len()).then_some(n)
}

/// Target (c), references: `decode_refs` on each reference op's meta,
/// checked against the varint model, and the same message routed as an
/// established connection routes it. Input: op selector (below 128: one of
/// the four reference ops; else an arbitrary op), then the meta.
#[doc(hidden)]
pub fn refs(data: &[u8]) -> Report {
    let ops = [refs::op::ADD_REF, refs::op::ADD_CLIENT, refs::op::DEL_REF, refs::op::FETCH_REF];
    let sel = byte(data, 0);
    let op = if sel < 128 { ops[sel as usize % 4] } else { u16::from(sel) };
    let meta = data.get(1..).unwrap_or(&[]);
    let meta = &meta[..meta.len().min(MAX_META)];
    let r = decode_refs(op, meta);
    match (&r, varint_model(meta), ops.contains(&op)) {
        (Ok(Decoded::Ref(o, id)), Some(m), true) => {
            assert_eq!((*o, *id), (op, m), "ref id");
            assert_eq!(wire::decode_meta::<u64>(&wire::encode_meta(id)).ok(), Some(*id), "ref id round trip");
        }
        (Err(e), None, _) | (Err(e), Some(_), false) => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
        (r, m, known) => panic!("decode_refs gave {r:?} where the varint spec says {m:?} (a reference op: {known}) for {:02x?}", &meta[..meta.len().min(9)]),
    }
    // Decoding is the same through the frame router.
    let routed = decode_frame(&frame_of(Kind::Oneway, refs::ID, op, 0, meta, &[]), 2);
    assert_eq!(decoded_tag(&routed), decoded_tag(&r));
    Report { signature: mix(op as u64, decoded_tag(&r) ^ (byte(meta, 0) as u64).saturating_sub(247)), alloc_bound: 4096, outcome: decoded_note(&r) }
}

/// Target (c), rpc: `decode_rpc` on (kind, op, meta, payload), checked
/// against the rule: a CALL whose meta is UTF-8 is a call of that name, an
/// INTERRUPT always decodes, other ops never; and a response on the rpc
/// service is a reply whatever its bytes, an error naming a process.
/// Input: kind (mod 3), op (mod 4), payload length, then meta and payload.
#[doc(hidden)]
pub fn rpc(data: &[u8]) -> Report {
    let kind = kind_of(byte(data, 0));
    let op = u16::from(byte(data, 1) % 4);
    let (meta, payload) = split(data.get(3..).unwrap_or(&[]), byte(data, 2));
    let r = decode_rpc(kind, op, meta, payload);
    match &r {
        Ok(Decoded::Call { name, args, wants_reply }) => {
            assert_eq!(op, rpc::op::CALL);
            assert_eq!(name.as_bytes(), meta);
            assert_eq!(*args, payload.len());
            assert_eq!(*wants_reply, kind == Kind::Request);
        }
        Ok(Decoded::Batch { name, items }) => {
            assert_eq!(op, rpc::op::CALL_BATCH);
            assert_eq!(name.as_bytes(), meta);
            // A batch is a count, the lengths, then exactly the elements:
            // re-encoding the elements it found gives the payload back.
            if let Some(lens) = items {
                let mut at = 4 + 8 * lens.len();
                let parts: Vec<&[u8]> = lens
                    .iter()
                    .map(|&n| {
                        at += n;
                        &payload[at - n..at]
                    })
                    .collect();
                assert_eq!(rpc::batch::encode_items(parts.iter().copied()), payload, "a batch does not re-encode to itself");
            } else {
                let n = payload.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
                let fits = n.map(|n| n <= rpc::batch::MAX_ITEMS && 4 + 8 * n <= payload.len()).unwrap_or(false);
                let total = n.filter(|_| fits).map(|n| {
                    (0..n).try_fold(4 + 8 * n, |acc: usize, i| {
                        let l = u64::from_le_bytes(payload[4 + 8 * i..12 + 8 * i].try_into().unwrap());
                        usize::try_from(l).ok().and_then(|l| acc.checked_add(l))
                    })
                });
                assert!(total.flatten() != Some(payload.len()), "a well-formed batch was refused");
            }
        }
        // Every rpc op but CALL and CALL_BATCH carries no meta to decode
        // (INTERRUPT): a signal of its own op.
        Ok(Decoded::Signal(rpc::ID, o)) => assert!(*o == op && op == rpc::op::INTERRUPT),
        Ok(other) => panic!("decode_rpc gave {other:?}"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Protocol);
            assert!(!matches!(op, rpc::op::CALL | rpc::op::CALL_BATCH) || std::str::from_utf8(meta).is_err(), "a call named by valid UTF-8 was refused: {e}");
            assert!(op != rpc::op::INTERRUPT, "an interrupt was refused: {e}");
        }
    }
    // A response on the rpc service is a reply, whatever its bytes.
    let f = frame_of(Kind::Response, rpc::ID, op, byte(data, 1), meta, payload);
    let reply = decode_frame(&f, 2);
    match &reply {
        Ok(Decoded::Reply(Ok(n))) => assert!(byte(data, 1) == 0 && *n == payload.len()),
        Ok(Decoded::Reply(Err(e))) => assert!(e.pid != 0 && byte(data, 1) != 0),
        other => panic!("a response decoded as {other:?}"),
    }
    Report { signature: mix(mix(kind as u64, op as u64), decoded_tag(&r)), alloc_bound: 4096.max(2 * (meta.len() + payload.len())), outcome: decoded_note(&r) }
}

/// Target (d), channel: `decode_channel` on (op, meta), checked against
/// the rule: ops CREATE..=UNTAKE decode iff the meta is a `Msg` (two
/// varints), which re-encodes canonically; other ops never; the frame
/// router agrees. Input: op selector, then the meta.
#[doc(hidden)]
pub fn channel(data: &[u8]) -> Report {
    let sel = byte(data, 0);
    let op = if sel < 128 { u16::from(sel % 15) } else { u16::from(sel) };
    let meta = data.get(1..).unwrap_or(&[]);
    let meta = &meta[..meta.len().min(MAX_META)];
    let r = decode_channel(op, meta);
    let known = (channel::op::CREATE..=channel::op::UNTAKE).contains(&op);
    // Bytes after the second varint are ignored, as for references.
    let model = varint_model(meta).and_then(|a| Some((a, varint_model(&meta[varint_len(meta)?..])?)));
    match (&r, model, known) {
        (Ok(Decoded::Channel(o, canon)), Some((id, arg)), true) => {
            assert_eq!(*o, op);
            let m: channel::Msg = wire::decode_meta(canon).expect("canonical");
            assert_eq!((m.id, m.arg), (id, arg), "channel meta");
        }
        (Err(e), None, _) | (Err(e), Some(_), false) => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
        (r, m, known) => panic!("decode_channel gave {r:?} where the varint spec says {m:?} (a channel op: {known})"),
    }
    let routed = decode_frame(&frame_of(Kind::Request, channel::ID, op, 1, meta, &[]), 2);
    assert_eq!(decoded_tag(&routed), decoded_tag(&r));
    Report { signature: mix(op as u64, decoded_tag(&r) ^ meta.len().min(20) as u64), alloc_bound: 4096, outcome: decoded_note(&r) }
}

/// Target (e), dict: `decode_dict` on (op, meta, payload): never a panic;
/// accepted only for a dict op whose meta is a `Msg` (re-encoding
/// canonically) and whose payload the op reads decodes; refusals are
/// protocol errors; the frame router agrees; no allocation beyond what
/// `wire::decode_payload` allows for the payload's size. Input: op
/// selector, meta length, meta, payload.
#[doc(hidden)]
pub fn dict(data: &[u8]) -> Report {
    let sel = byte(data, 0);
    let op = if sel < 128 { u16::from(sel % 24) } else { u16::from(sel) };
    let n = byte(data, 1) as usize;
    let rest = data.get(2..).unwrap_or(&[]);
    let (meta, payload) = rest.split_at(n.min(rest.len()));
    let r = decode_dict(op, meta, payload);
    match &r {
        Ok(Decoded::Dict(o, canon)) => {
            assert_eq!(*o, op);
            assert!((dict::op::CREATE..=dict::op::LAST).contains(&op), "an unknown dict op {op} was accepted");
            assert_eq!(wire::decode_meta::<dict::Msg>(canon).expect("canonical"), wire::decode_meta::<dict::Msg>(meta).expect("accepted"));
        }
        Err(e) => assert_eq!(e.kind, ErrorKind::Protocol, "{e}"),
        other => panic!("decode_dict gave {other:?}"),
    }
    let routed = decode_frame(&frame_of(Kind::Request, dict::ID, op, 1, meta, payload), 2);
    assert_eq!(decoded_tag(&routed), decoded_tag(&r));
    Report {
        signature: mix(op as u64, decoded_tag(&r) ^ (payload.len().min(40) as u64) << 8),
        alloc_bound: wire::payload_decode_limit(payload.len()),
        outcome: decoded_note(&r),
    }
}

// ---- seeds ------------------------------------------------------------

fn frame_bytes(kind: Kind, svc: ServiceId, op: u16, id: u64, meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let h = wire::frame_header(Header::new(kind, svc, op, id), meta, payload).expect("a seed's meta fits");
    [&h.encode()[..], meta, payload].concat()
}

fn join_meta(id: u32, addr: &str) -> Vec<u8> {
    wire::encode_meta(&Join { id, listen_addr: addr.to_string(), os_pid: 4242, max_message: 1 << 30, host: "fuzz".into(), proof: [0x5a; 32] })
}

fn welcome_payload(id: u32, peers: &[(u32, &str)]) -> Vec<u8> {
    let peers = peers.iter().map(|(p, a)| PeerInfo { id: *p, addr: a.to_string(), key: [*p as u8; 32], host: "fuzz".into() }).collect();
    wire::encode_payload(&Welcome { id, topology: crate::Topology::AllToAll, peers, max_message: 1 << 30, head_host: "fuzz".into() })
}

fn peer_info_meta(id: u32, addr: &str) -> Vec<u8> {
    wire::encode_meta(&PeerInfo { id, addr: addr.to_string(), key: [0x33; 32], host: "fuzz".into() })
}

fn hello_meta(id: u32, addr: &str) -> Vec<u8> {
    wire::encode_meta(&Hello { id, addr: addr.to_string(), max_message: 1 << 20, proof: [0x77; 32] })
}

/// Valid inputs for a target (its seed corpus); `tests/fuzz.rs` checks they
/// take the paths they are meant to, and writes them to `fuzz/seeds/`.
#[doc(hidden)]
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let join = join_meta(0, "127.0.0.1:40001");
    let welcome = welcome_payload(3, &[(2, "127.0.0.1:40002"), (4, "[::1]:40004")]);
    let info = peer_info_meta(5, "127.0.0.1:40005");
    let hello = hello_meta(5, "127.0.0.1:40005");
    let ref_id = wire::encode_meta(&0x1234_5678_9abcu64);
    let (c, r, s) = (control::ID, rpc::ID, session::ID);
    match target {
        "frame" => {
            let mut all = Vec::new();
            let session = [
                frame_bytes(Kind::Request, c, control_op::JOIN, 1, &join, &[]),
                frame_bytes(Kind::Response, c, control_op::JOIN, 1, &[], &welcome),
                frame_bytes(Kind::Oneway, c, control_op::READY, 0, &[], &[]),
                frame_bytes(Kind::Oneway, s, session::HELLO, 0, &hello, &[]),
                frame_bytes(Kind::Oneway, s, session::PING, 0, &[], &[]),
                frame_bytes(Kind::Oneway, c, control_op::PEER_JOINED, 0, &info, &[]),
                frame_bytes(Kind::Request, r, rpc::op::CALL, 7, b"sum", b"\x01\x02\x03"),
                frame_bytes(Kind::Oneway, r, rpc::op::CALL, 0, b"log", b"hello"),
                frame_bytes(Kind::Response, r, rpc::op::CALL, 7, &[], b"\x06"),
                {
                    let mut f = frame_bytes(Kind::Response, r, rpc::op::CALL, 8, &[], b"boom");
                    f[5] = ErrorKind::Remote as u8;
                    f[12] = 3;
                    f
                },
                frame_bytes(Kind::Request, refs::ID, refs::op::FETCH_REF, 9, &ref_id, &[]),
                frame_bytes(Kind::Oneway, refs::ID, refs::op::DEL_REF, 0, &ref_id, &[]),
            ]
            .concat();
            for cfg in [6u8, 6 | 8, 6 | 16, 3] {
                all.push([&[cfg, 0x5a, 0, 0, 0][..], &session].concat());
            }
            // Large payloads from the filler (budget 3 MiB): between small
            // frames; two over 1 MiB, the second into the first's recycled
            // buffer; many mid-sized frames across the staging buffer's end;
            // a payload cut short by a small budget; a large welcome.
            let big = |kind, svc, op, n: u64| {
                let mut h = Header::new(kind, svc, op, n);
                h.meta_len = 1;
                h.payload_len = n;
                [&h.encode()[..], b"f"].concat()
            };
            let budget = |n: u32| n.to_le_bytes();
            let (b3, b1k) = (budget(3 << 20), budget(1000));
            let ready = frame_bytes(Kind::Oneway, c, control_op::READY, 0, &[], &[]);
            let call = frame_bytes(Kind::Request, r, rpc::op::CALL, 7, b"sum", b"\x01\x02\x03");
            let (rq, ow) = (Kind::Request, Kind::Oneway);
            all.push(
                [&[6u8 | 32, 0x33, b3[0], b3[1], b3[2]][..], &call, &big(rq, r, rpc::op::CALL, 200_000), &ready, &big(ow, r, rpc::op::CALL, 70_000), &session]
                    .concat(),
            );
            all.push(
                [&[7u8 | 32 | 8, 0x44, b3[0], b3[1], b3[2]][..], &big(rq, r, rpc::op::CALL, 3 << 19), &ready, &big(rq, r, rpc::op::CALL, 1_100_000), &call]
                    .concat(),
            );
            let mut many = vec![7u8 | 32 | 16, 0x55, b3[0], b3[1], b3[2]];
            for i in 0..100u64 {
                many.extend_from_slice(&big(ow, r, rpc::op::CALL, 700 + i * 20));
                many.extend_from_slice(&call);
            }
            all.push(many);
            all.push([&[6u8 | 32, 0x66, b1k[0], b1k[1], b1k[2]][..], &big(rq, r, rpc::op::CALL, 200_000)].concat());
            all.push([&[6u8 | 32, 0x77, b3[0], b3[1], b3[2]][..], &big(Kind::Response, c, control_op::JOIN, 300_000), &ready].concat());
            // Over the limit; a bad magic after a good frame; a bad kind.
            let mut over = Header::new(Kind::Oneway, r, rpc::op::CALL, 0);
            over.payload_len = 4097;
            all.push([&[3u8, 0, 0, 0, 0][..], &over.encode()].concat());
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
                    // Greet, prove (a client: verdict and proof), then the first frame's bytes.
                    v.push([&[cfg, 1][..], &nonce, &[3, 0, 4], b"next"].concat());
                    // Reflected, wrong-cookie proofs; a refusing verdict.
                    v.push([&[cfg, 1][..], &nonce, &[4]].concat());
                    v.push([&[cfg, 1][..], &nonce, &[5]].concat());
                    v.push([&[cfg, 1][..], &nonce, &[7 | 2 << 3]].concat());
                    // A pause, then greet and prove.
                    v.push([&[cfg, 6 | 1 << 3, 1][..], &nonce, &[3]].concat());
                    // The previous version; a version given as a byte.
                    v.push([&[cfg, 1 | 2 << 3][..], &nonce, &[3]].concat());
                    v.push([&[cfg, 1 | 3 << 3, b'9'][..], &nonce, &[3]].concat());
                }
                // Held open: accepted; greeting only, times out; the proof
                // after pauses past the deadline; hung up at once.
                v.push([&[0x32 | side, 1][..], &nonce, &[3]].concat());
                v.push([&[0x32 | side, 1][..], &nonce].concat());
                // Dripped a byte every 35 ms: over before the greeting is in.
                v.push([&[0x72 | side, 1][..], &nonce, &[3]].concat());
                v.push([&[0x32 | side, 1][..], &nonce, &[6 | 3 << 3, 6 | 3 << 3, 3]].concat());
                v.push(vec![0x10 | side]);
                // Raw bytes: version 1's greeting; junk.
                v.push([&[side][..], b"LCLUSTR1", &[0u8; 64]].concat());
                v.push([&[side][..], &[0x5a; 100][..]].concat());
            }
            v
        }
        "session" => {
            let mut v = Vec::new();
            for svc in [0u8, 1, 2, 3] {
                v.push([&[session::HELLO as u8, svc, 2][..], &hello].concat());
                v.push([&[control_op::JOIN as u8, svc, 0][..], &join].concat());
            }
            v.push(vec![session::PING as u8, 0, 2]);
            v.push(vec![session::PONG as u8, 0, 2]);
            v.push(vec![4, 0, 2]);
            v.push([&[session::HELLO as u8, 0, 2][..], &hello[..hello.len() - 1]].concat());
            v
        }
        "control" => vec![
            [&[1u8, control_op::JOIN as u8, 0, 0][..], &welcome].concat(),
            [&[1u8, control_op::JOIN as u8, 3, 0, 1, 2, 3][..], &welcome].concat(),
            [&[1u8, control_op::JOIN as u8, 0, 0xe0 + ErrorKind::Launch as u8][..], b"unknown or already joined worker id 2"].concat(),
            [&[1u8, control_op::JOIN as u8, 0, 0][..], &welcome[..welcome.len() - 3]].concat(),
            [&[0u8, control_op::JOIN as u8, 0, 0][..], &join].concat(),
            [&[2u8, control_op::PEER_JOINED as u8, 0, 0][..], &info].concat(),
            [&[2u8, control_op::PEER_LEFT as u8, 0, 0][..], &peer_info_meta(5, "")].concat(),
            vec![2, control_op::READY as u8, 0, 0],
            vec![2, control_op::SHUTDOWN as u8, 1, 0, 0xff],
            vec![0, 6, 0, 0],
        ],
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
            vec![2, 2, 0],
            vec![0, 1, 0],
            vec![0, 1, 0, 0xc3, 0x28],
            vec![0, 3, 0, b'f'],
            {
                let items = rpc::batch::encode_items([&b"ab"[..], b"", b"c"].into_iter());
                [&[0u8, 3, items.len() as u8][..], b"sq", &items].concat()
            },
            [&[0u8, 3, 4][..], b"sq", &[9, 0, 0, 0]].concat(),
        ],
        "channel" => {
            let mut v = Vec::new();
            for (op, id, arg) in [(1u8, 1u64 << 40, 4u64), (2, 7, 0), (3, 7, 0), (8, 7, 3), (12, 7, 99), (7, u64::MAX, u64::MAX)] {
                v.push([&[op][..], &wire::encode_meta(&channel::Msg { id, arg })].concat());
            }
            v.push(vec![2, 7]);
            v.push(vec![14, 7, 0]);
            v.push(vec![200, 7, 0]);
            v
        }
        "dict" => {
            let m = |id: u64, part: u32, arg: u64| wire::encode_meta(&dict::Msg { id, epoch: 1, part, arg });
            let input = |op: u16, meta: &[u8], payload: &[u8]| [&[op as u8, meta.len() as u8][..], meta, payload].concat();
            let spec = dict::Spec::new(dict::DictKind::Distributed, dict::Members::Pids(vec![2, 3])).named("d").replication(2);
            let cfg = dict::DictConfig::new(1, "g".into(), dict::DictKind::Global, vec![1, 2], 0, b"Int,Int".to_vec());
            let set = dict::Effect::Set { key: b"k".to_vec(), value: b"v".to_vec() };
            vec![
                input(dict::op::CREATE, &m(0, 0, 0), &wire::encode_payload(&spec)),
                input(dict::op::INSTALL, &m(1, 0, 0), &wire::encode_payload(&cfg)),
                input(dict::op::SET, &m(1, 5, 0), &dict::encode_kv(b"k", b"v")),
                input(dict::op::SET_F, &m(1, 5, 0), &wire::encode_payload(&(b"k", "myid", b""))),
                input(dict::op::GET, &m(1, 5, 0), b"k"),
                input(dict::op::ENTRIES, &m(1, 0, 2), &[]),
                input(dict::op::REPLICATE, &m(1, 63, 9), &wire::encode_payload(&set)),
                input(dict::op::ACK, &m(1, 63, 9), b"no function"),
                input(dict::op::RECONFIG, &m(1, 0, 0), &wire::encode_payload(&cfg.without(2))),
                input(dict::op::STATE, &m(1, 7, 3), &wire::encode_payload(&vec![(b"k".to_vec(), b"v".to_vec())])),
                input(dict::op::LOOKUP, &m(1, 0, 0), &[]),
                // A key longer than the payload; partition 64; listing 3; a
                // configuration with no payload; an unknown op.
                input(dict::op::SET, &m(1, 5, 0), &[9, 0, 0, 0, 1]),
                input(dict::op::REPLICATE, &m(1, 64, 9), &wire::encode_payload(&set)),
                input(dict::op::ENTRIES, &m(1, 0, 3), &[]),
                input(dict::op::RECONFIG, &m(1, 0, 0), &[]),
                input(22, &m(1, 0, 0), &[]),
                vec![dict::op::GET as u8, 3, 0xff, 0xff, 0xff],
            ]
        }
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
