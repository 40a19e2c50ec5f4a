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
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("frame of {payload_len} bytes exceeds the maximum of {max_payload}"),
            ));
        }
        Ok(Header {
            kind,
            status: b[5],
            service: u16_at(6),
            op: u16_at(8),
            meta_len: u16_at(10),
            aux: u32_at(12),
            id: u64_at(16),
            payload_len,
        })
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
    bincode::serde::decode_from_slice(bytes, bincode_config())
        .map(|(v, _)| v)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("malformed message: {e}")))
}

/// Writes one frame with a single vectored write; `payload` is not copied.
pub fn write_frame(fd: RawFd, mut header: Header, meta: &[u8], payload: &[u8]) -> std::io::Result<()> {
    header.meta_len = meta.len() as u16;
    header.payload_len = payload.len() as u64;
    let h = header.encode();
    sys::write_all_vectored(fd, &[&h, meta, payload])
}

/// Writes `before` (already-encoded frames), then one frame, in one go.
pub fn write_frame_after(fd: RawFd, before: &[u8], mut header: Header, meta: &[u8], payload: &[u8]) -> std::io::Result<()> {
    header.meta_len = meta.len() as u16;
    header.payload_len = payload.len() as u64;
    let h = header.encode();
    sys::write_all_vectored(fd, &[before, &h, meta, payload])
}

mod reader;
pub use reader::{FrameReader, ReadOutcome};
