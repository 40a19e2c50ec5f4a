//! Incremental frame reader over a non-blocking socket.

use super::{Frame, Header, HEADER_LEN};
use crate::error::{Error, Result};
use crate::sys;
use std::os::unix::io::RawFd;

/// Where a frame reader's bytes come from: a socket, or a TLS session over one.
pub trait Source {
    /// Reads into `buf` without blocking: `Some(0)` at the end, `None`
    /// when nothing can be had now.
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>>;
    /// Appends up to `left` bytes to `v`, within its capacity; as `read_some`.
    fn read_append(&mut self, v: &mut Vec<u8>, left: usize) -> std::io::Result<Option<usize>>;
}

/// A non-blocking socket's bytes.
pub struct Fd(pub RawFd);

impl Source for Fd {
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        sys::read_nonblocking(self.0, buf)
    }
    fn read_append(&mut self, v: &mut Vec<u8>, left: usize) -> std::io::Result<Option<usize>> {
        sys::read_into_spare(self.0, v, left)
    }
}

pub enum ReadOutcome {
    Frame(Frame),
    WouldBlock,
    Closed,
}

struct Partial {
    header: Header,
    meta: Vec<u8>,
    /// Filled up to its length; its capacity is the payload size.
    payload: Vec<u8>,
}

/// Incremental reader of frames from a non-blocking socket. Small frames
/// come through a staging buffer; a large payload is read straight into
/// its own allocation.
pub struct FrameReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    partial: Option<Partial>,
    max_payload: u64,
    /// False after a frame was returned: more whole frames may be buffered,
    /// so read again before waiting for the socket.
    drained: bool,
    /// A large payload buffer handed back for reuse: its pages are already
    /// mapped, which a fresh allocation's are not.
    spare: Vec<u8>,
    /// Bytes read from the socket so far.
    bytes_read: u64,
    /// Reads from the source so far (system calls, for a plain socket).
    reads: u64,
}

/// Payloads from this size up are read straight from the socket.
const DIRECT: usize = 1 << 20;

const STAGING: usize = 64 * 1024;

impl FrameReader {
    /// Frames after this one may carry up to `max` payload bytes.
    pub fn set_max_payload(&mut self, max: u64) {
        self.max_payload = max;
    }

    pub fn new(max_payload: u64) -> FrameReader {
        FrameReader {
            buf: vec![0u8; STAGING].into_boxed_slice(),
            start: 0,
            end: 0,
            partial: None,
            max_payload,
            drained: true,
            spare: Vec::new(),
            bytes_read: 0,
            reads: 0,
        }
    }

    /// Keeps `v` for the next large payload, if it is worth keeping.
    pub fn recycle(&mut self, mut v: Vec<u8>) {
        if v.capacity() >= DIRECT && v.capacity() > self.spare.capacity() {
            v.clear();
            self.spare = v;
        }
    }

    pub fn release_spare(&mut self) {
        self.spare = Vec::new();
    }

    fn payload_buffer(&mut self, n: usize) -> Vec<u8> {
        if n >= DIRECT && self.spare.capacity() >= n && self.spare.capacity() <= 2 * n {
            return std::mem::take(&mut self.spare);
        }
        Vec::with_capacity(n)
    }

    /// True when frames may be waiting in the buffer: the socket alone
    /// cannot tell, so callers read again before they poll.
    /// Bytes read from the socket so far (progress, for liveness).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// How many reads from the source it has made.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// True while part of a frame has arrived and the rest has not.
    pub fn mid_frame(&self) -> bool {
        self.partial.is_some() || self.end > self.start
    }

    pub fn may_have_frames(&self) -> bool {
        !self.drained
    }

    /// True when bytes read from the socket wait in the staging buffer
    /// (epoll cannot see them).
    pub fn has_buffered(&self) -> bool {
        self.end > self.start
    }

    /// Reads the next whole frame if one can be had without blocking.
    pub fn read_frame(&mut self, fd: RawFd) -> Result<ReadOutcome> {
        self.read_frame_from(&mut Fd(fd))
    }

    /// `read_frame` from any source.
    pub fn read_frame_from<S: Source>(&mut self, src: &mut S) -> Result<ReadOutcome> {
        let r = self.read_frame_inner(src);
        self.drained = !matches!(r, Ok(ReadOutcome::Frame(_)));
        r
    }

    fn read_frame_inner<S: Source>(&mut self, src: &mut S) -> Result<ReadOutcome> {
        loop {
            if let Some(p) = self.partial.as_mut() {
                // Fill meta, then payload, from buffered bytes first.
                let want_meta = p.header.meta_len as usize - p.meta.len();
                if want_meta > 0 {
                    let n = want_meta.min(self.end - self.start);
                    p.meta.extend_from_slice(&self.buf[self.start..self.start + n]);
                    self.start += n;
                }
                if p.meta.len() == p.header.meta_len as usize {
                    let want = p.header.payload_len as usize;
                    let need = want - p.payload.len();
                    let n = need.min(self.end - self.start);
                    p.payload.extend_from_slice(&self.buf[self.start..self.start + n]);
                    self.start += n;
                    if p.payload.len() == want {
                        let p = self.partial.take().unwrap();
                        return Ok(ReadOutcome::Frame(Frame { header: p.header, meta: p.meta, payload: p.payload }));
                    }
                    if need - n >= STAGING {
                        // Large remainder: read directly into the payload.
                        let left = want - p.payload.len();
                        self.reads += 1;
                        match src.read_append(&mut p.payload, left) {
                            Ok(Some(0)) => return Ok(ReadOutcome::Closed),
                            Ok(Some(k)) => {
                                self.bytes_read += k as u64;
                                continue;
                            }
                            Ok(None) => return Ok(ReadOutcome::WouldBlock),
                            Err(e) => return Err(Error::io("read", e)),
                        }
                    }
                }
            } else if self.end - self.start >= HEADER_LEN {
                let header = Header::decode(&self.buf[self.start..self.start + HEADER_LEN], self.max_payload)?;
                self.start += HEADER_LEN;
                let payload = self.payload_buffer(header.payload_len as usize);
                self.partial = Some(Partial { header, meta: Vec::with_capacity(header.meta_len as usize), payload });
                continue;
            }
            // Need more bytes in the staging buffer.
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 && self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            self.reads += 1;
            match src.read_some(&mut self.buf[self.end..]) {
                Ok(Some(0)) => return Ok(ReadOutcome::Closed),
                Ok(Some(k)) => {
                    self.end += k;
                    self.bytes_read += k as u64;
                }
                Ok(None) => return Ok(ReadOutcome::WouldBlock),
                Err(e) => return Err(Error::io("read", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::wire::Kind;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Reads `n` frames, waiting for the socket as needed.
    fn read_frames(r: &mut FrameReader, fd: RawFd, n: usize) -> Vec<Frame> {
        let mut got = Vec::new();
        while got.len() < n {
            match r.read_frame(fd).unwrap() {
                ReadOutcome::Frame(f) => got.push(f),
                ReadOutcome::WouldBlock => {
                    sys::poll_in(fd, None).unwrap();
                }
                ReadOutcome::Closed => panic!("closed early"),
            }
        }
        got
    }

    #[test]
    fn header_round_trips() {
        let mut h = Header::new(Kind::Request, 7, 9, 0xDEAD_BEEF_1234);
        h.status = 5;
        h.aux = 42;
        h.meta_len = 3;
        h.payload_len = 99;
        assert_eq!(Header::decode(&h.encode(), 100).unwrap(), h);
    }

    #[test]
    fn oversized_and_garbage_headers_are_rejected() {
        let mut h = Header::new(Kind::Oneway, 1, 1, 1);
        h.payload_len = 1 << 40;
        let err = Header::decode(&h.encode(), 1 << 20).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        let err = Header::decode(&[0xAB; HEADER_LEN], 1 << 20).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Protocol);
    }

    #[test]
    fn reader_reassembles_frames_split_anywhere() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let big = vec![7u8; 200_000];
        let mut bytes = Vec::new();
        for (i, payload) in [&b"hi"[..], &big[..], &b""[..]].iter().enumerate() {
            let mut h = Header::new(Kind::Request, 1, 1, i as u64);
            h.meta_len = 2;
            h.payload_len = payload.len() as u64;
            bytes.extend_from_slice(&h.encode());
            bytes.extend_from_slice(b"mm");
            bytes.extend_from_slice(payload);
        }
        let writer = std::thread::spawn(move || {
            let mut a = a;
            for chunk in bytes.chunks(777) {
                a.write_all(chunk).unwrap();
            }
        });
        let got = read_frames(&mut FrameReader::new(1 << 20), b.as_raw_fd(), 3);
        writer.join().unwrap();
        assert_eq!(got[0].payload, b"hi");
        assert_eq!(got[1].payload, big);
        assert!(got[2].payload.is_empty());
        assert!(got.iter().all(|f| f.meta == b"mm"));
        assert_eq!(got[2].header.id, 2);
    }

    #[test]
    fn a_recycled_large_buffer_never_reads_past_its_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let big = vec![3u8; 2 << 20];
        let mut bytes = Vec::new();
        for (i, payload) in [&big[..], &b"next"[..]].iter().enumerate() {
            let mut h = Header::new(Kind::Oneway, 1, 1, i as u64);
            h.payload_len = payload.len() as u64;
            bytes.extend_from_slice(&h.encode());
            bytes.extend_from_slice(payload);
        }
        let writer = std::thread::spawn(move || {
            let mut a = a;
            a.write_all(&bytes).unwrap();
        });
        let mut r = FrameReader::new(1 << 30);
        r.recycle(Vec::with_capacity(3 << 20));
        let got = read_frames(&mut r, b.as_raw_fd(), 2);
        writer.join().unwrap();
        assert_eq!(got[0].payload, big);
        assert_eq!(got[1].payload, b"next");
    }
}
