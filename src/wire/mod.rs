//! Framing. After the handshake every message is one frame:
//!
//! ```text
//! fixed header, 32 bytes, little endian:
//!   u32 magic | u8 kind | u8 status | u16 service | u16 op | u16 meta_len
//!   u32 aux   | u64 id  | u64 payload_len
//! meta     (meta_len bytes: op-specific, bincode or raw)
//! payload  (payload_len bytes: user data, never copied into the header)
//! ```
//!
//! `service` names the service module that owns the message (control, rpc,
//! refs, and later channels, dictionaries ...); each service declares its
//! id and ops in its own module, so a new one never touches the wire.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use serde::{de::DeserializeOwned, Serialize};
use std::os::unix::io::RawFd;

pub const MAGIC: u32 = 0x4C43_4C31; // "LCL1"
pub const HEADER_LEN: usize = 32;
pub const MAX_META: usize = u16::MAX as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Expects a `Response` carrying the same id.
    Request = 1,
    Response = 2,
    /// Fire and forget.
    Oneway = 3,
}

/// Names the service a frame belongs to; each service module declares its own.
pub type ServiceId = u16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// 0 for success, else an `ErrorKind` code (responses only).
    pub status: u8,
    pub service: ServiceId,
    pub op: u16,
    pub meta_len: u16,
    /// Op-specific small value (for error responses: the failing process).
    pub aux: u32,
    pub id: u64,
    pub payload_len: u64,
}

impl Header {
    pub fn new(kind: Kind, service: ServiceId, op: u16, id: u64) -> Header {
        Header { kind, status: 0, service, op, meta_len: 0, aux: 0, id, payload_len: 0 }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.kind as u8;
        b[5] = self.status;
        b[6..8].copy_from_slice(&self.service.to_le_bytes());
        b[8..10].copy_from_slice(&self.op.to_le_bytes());
        b[10..12].copy_from_slice(&self.meta_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.aux.to_le_bytes());
        b[16..24].copy_from_slice(&self.id.to_le_bytes());
        b[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], max_payload: u64) -> Result<Header> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if b.len() < HEADER_LEN || u32_at(0) != MAGIC {
            return Err(Error::new(ErrorKind::Protocol, "bad frame magic"));
        }
        let kind = match b[4] {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Oneway,
            k => return Err(Error::new(ErrorKind::Protocol, format!("bad frame kind {k}"))),
        };
        let payload_len = u64_at(24);
        if payload_len > max_payload {
            return Err(Error::new(ErrorKind::TooLarge, format!("frame of {payload_len} bytes exceeds the maximum of {max_payload}")));
        }
        Ok(Header { kind, status: b[5], service: u16_at(6), op: u16_at(8), meta_len: u16_at(10), aux: u32_at(12), id: u64_at(16), payload_len })
    }
}

/// One received frame.
#[derive(Debug)]
pub struct Frame {
    pub header: Header,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn meta_as<T: DeserializeOwned>(&self) -> Result<T> {
        decode_meta(&self.meta)
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_META }>()
}

pub fn encode_meta<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode_config()).expect("meta values always encode")
}

pub fn decode_meta<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(bytes, bincode_config()).map(|(v, _)| v).map_err(|e| Error::new(ErrorKind::Protocol, format!("malformed message: {e}")))
}

/// A value too large for a meta, or that grows with the cluster (a list of
/// every member), goes in the payload, encoded as a meta is.
pub fn encode_payload<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("payload values always encode")
}

/// Decodes a payload made by `encode_payload`. The payload is at most the
/// largest message this process accepts (the frame reader saw to that);
/// the decoder's limit on what it allocates scales with the bytes given
/// (at least 1 MiB, at most 16 times their size), so a declared length
/// can never make it allocate more than the message could hold.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    fn with<T: DeserializeOwned, const N: usize>(bytes: &[u8]) -> Result<T> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<N>())
            .map(|(v, _)| v)
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("malformed message: {e}")))
    }
    match payload_decode_limit(bytes.len()) {
        n if n <= 1 << 20 => with::<T, { 1 << 20 }>(bytes),
        n if n <= 1 << 22 => with::<T, { 1 << 22 }>(bytes),
        n if n <= 1 << 24 => with::<T, { 1 << 24 }>(bytes),
        n if n <= 1 << 26 => with::<T, { 1 << 26 }>(bytes),
        n if n <= 1 << 28 => with::<T, { 1 << 28 }>(bytes),
        n if n <= 1 << 30 => with::<T, { 1 << 30 }>(bytes),
        n if n <= 1 << 32 => with::<T, { 1 << 32 }>(bytes),
        n if n <= 1 << 34 => with::<T, { 1 << 34 }>(bytes),
        _ => with::<T, { 1 << 36 }>(bytes),
    }
}

/// The most `decode_payload` lets the decoder claim for `len` bytes: four
/// times them (decoded sizes run to a few times the encoded ones: a
/// one-byte varint decodes to a u32, a list's entries count at their size
/// in memory), rounded up to a power of four, at least 1 MiB.
#[doc(hidden)]
pub fn payload_decode_limit(len: usize) -> usize {
    let want = len.saturating_mul(4).max(1 << 20);
    let mut n = 1usize << 20;
    while n < want && n < 1 << 36 {
        n <<= 2;
    }
    n
}

/// `header` with the lengths of `meta` and `payload` filled in. A meta
/// longer than a header can say (`MAX_META`) is an error: a frame is never
/// sent with a truncated length (its meta's tail would be read as the next
/// frames). Large or growing data goes in the payload.
pub fn frame_header(mut header: Header, meta: &[u8], payload: &[u8]) -> Result<Header> {
    if meta.len() > MAX_META {
        return Err(Error::new(ErrorKind::TooLarge, format!("a message's meta of {} bytes exceeds the frame limit of {MAX_META} bytes", meta.len())));
    }
    header.meta_len = meta.len() as u16;
    header.payload_len = payload.len() as u64;
    Ok(header)
}

fn io_header(header: Header, meta: &[u8], payload: &[u8]) -> std::io::Result<[u8; HEADER_LEN]> {
    frame_header(header, meta, payload).map(|h| h.encode()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.message))
}

/// Writes one frame with a single vectored write; `payload` is not copied.
/// A meta over `MAX_META` is an `InvalidInput` error, and nothing is written.
pub fn write_frame(fd: RawFd, header: Header, meta: &[u8], payload: &[u8]) -> std::io::Result<()> {
    let h = io_header(header, meta, payload)?;
    sys::write_all_vectored(fd, &[&h, meta, payload])
}

/// Writes `before` (already-encoded frames), then one frame, in one go.
pub fn write_frame_after(fd: RawFd, before: &[u8], header: Header, meta: &[u8], payload: &[u8]) -> std::io::Result<()> {
    let h = io_header(header, meta, payload)?;
    sys::write_all_vectored(fd, &[before, &h, meta, payload])
}

mod reader;
pub mod parts;
pub use reader::{Fd, FrameReader, ReadOutcome, Source};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Found by fuzzing: a meta over `MAX_META` went out with its length
    /// truncated to 16 bits, and its tail was read as the next frames.
    #[test]
    fn a_meta_over_the_limit_is_an_error_and_nothing_is_written() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let h = Header::new(Kind::Response, 1, 1, 7);
        let e = frame_header(h, &vec![0u8; MAX_META + 1], &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
        let e = write_frame(a.as_raw_fd(), h, &vec![b'x'; MAX_META + 1], b"payload").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        let e = write_frame_after(a.as_raw_fd(), b"", h, &vec![b'x'; 70_000], &[]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(b.read(&mut [0u8; 16]).unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "a frame went out");
        // The largest meta a frame can say goes out whole.
        let w = std::thread::spawn(move || write_frame(a.as_raw_fd(), h, &vec![b'm'; MAX_META], b"p").map(|_| a));
        b.set_nonblocking(false).unwrap();
        let mut hb = [0u8; HEADER_LEN];
        b.read_exact(&mut hb).unwrap();
        let got = Header::decode(&hb, 1 << 20).unwrap();
        assert_eq!((got.meta_len as usize, got.payload_len), (MAX_META, 1));
        let mut rest = vec![0u8; MAX_META + 1];
        b.read_exact(&mut rest).unwrap();
        assert!(rest[..MAX_META].iter().all(|&x| x == b'm') && rest[MAX_META] == b'p');
        w.join().unwrap().unwrap();
    }

    #[test]
    fn payload_values_round_trip_past_the_meta_limit() {
        let v: Vec<(u32, String)> = (0..20_000).map(|i| (i, format!("127.0.0.1:{i}"))).collect();
        let b = encode_payload(&v);
        assert!(b.len() > MAX_META);
        assert!(decode_meta::<Vec<(u32, String)>>(&b).is_err(), "the meta decoder's limit");
        assert_eq!(decode_payload::<Vec<(u32, String)>>(&b).unwrap(), v);
        // A declared length the bytes cannot hold fails without allocating it.
        assert_eq!(decode_payload::<String>(&[253, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap_err().kind, ErrorKind::Protocol);
        assert_eq!(payload_decode_limit(0), 1 << 20);
        assert_eq!(payload_decode_limit(1 << 20), 1 << 22);
        assert!(payload_decode_limit(usize::MAX) >= 1 << 36);
    }
}
