//! The encoding of a batch: one function called on several argument sets
//! in one message (`RpcExt::remotecall_batch`, what `pmap` sends when its
//! batch size is above 1).
//!
//! Request payload: `n: u32`, then `n` lengths (`u64`), then the
//! arguments back to back. Reply payload: `n: u32`, then per element
//! `status: u8` (0, or an error code), `pid: u32` (where an error came
//! from), `len: u64`, then the values (or error messages) back to back.
//! All little-endian.

use crate::error::{Error, ErrorKind, Result};
use std::ops::Range;

/// The largest number of elements in one batch.
pub const MAX_ITEMS: usize = 1 << 24;

fn protocol(what: &str) -> Error {
    Error::new(ErrorKind::Protocol, format!("malformed batch: {what}"))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A batch's request payload.
pub fn encode_items<'a>(items: impl ExactSizeIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let n = items.len();
    let total: usize = items.clone().map(|i| i.len()).sum();
    let mut out = Vec::with_capacity(4 + 8 * n + total);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for i in items.clone() {
        out.extend_from_slice(&(i.len() as u64).to_le_bytes());
    }
    for i in items {
        out.extend_from_slice(i);
    }
    out
}

/// The ranges of `payload` holding each element's arguments.
pub fn decode_items(payload: &[u8]) -> Result<Vec<Range<usize>>> {
    let n = u32_at(payload, 0).ok_or_else(|| protocol("no count"))? as usize;
    if n > MAX_ITEMS {
        return Err(protocol("too many elements"));
    }
    let mut at = 4 + 8 * n;
    if at > payload.len() {
        return Err(protocol("lengths cut short"));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let len = u64_at(payload, 4 + 8 * i).unwrap_or(u64::MAX);
        let end = usize::try_from(len).ok().and_then(|l| at.checked_add(l)).filter(|&e| e <= payload.len());
        let Some(end) = end else { return Err(protocol("an element runs past the end")) };
        out.push(at..end);
        at = end;
    }
    if at != payload.len() {
        return Err(protocol("bytes after the last element"));
    }
    Ok(out)
}

/// A batch's reply payload from each element's outcome.
pub fn encode_outcomes<'a>(outcomes: impl Iterator<Item = std::result::Result<&'a [u8], &'a Error>> + Clone) -> Vec<u8> {
    let n = outcomes.clone().count();
    let total: usize = outcomes.clone().map(|o| o.map(|v| v.len()).unwrap_or_else(|e| e.message.len())).sum();
    let mut out = Vec::with_capacity(4 + 13 * n + total);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for o in outcomes.clone() {
        let (status, pid, len) = match o {
            Ok(v) => (0u8, 0u32, v.len()),
            Err(e) => (e.kind as u8, e.pid, e.message.len()),
        };
        out.push(status);
        out.extend_from_slice(&pid.to_le_bytes());
        out.extend_from_slice(&(len as u64).to_le_bytes());
    }
    for o in outcomes {
        match o {
            Ok(v) => out.extend_from_slice(v),
            Err(e) => out.extend_from_slice(e.message.as_bytes()),
        }
    }
    out
}

/// Each element's outcome in a batch reply: the range of `reply` holding
/// its value, or its error. `from` is the callee, named by errors that
/// carry no process.
pub fn decode_outcomes(reply: &[u8], from: u32) -> Result<Vec<std::result::Result<Range<usize>, Error>>> {
    let n = u32_at(reply, 0).ok_or_else(|| protocol("no count"))? as usize;
    if n > MAX_ITEMS {
        return Err(protocol("too many elements"));
    }
    let mut at = 4usize.checked_add(13 * n).filter(|&a| a <= reply.len()).ok_or_else(|| protocol("outcomes cut short"))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let h = 4 + 13 * i;
        let status = reply[h];
        let pid = u32_at(reply, h + 1).unwrap_or(0);
        let len = u64_at(reply, h + 5).unwrap_or(u64::MAX);
        let end = usize::try_from(len).ok().and_then(|l| at.checked_add(l)).filter(|&e| e <= reply.len());
        let Some(end) = end else { return Err(protocol("an outcome runs past the end")) };
        let r = at..end;
        at = end;
        out.push(if status == 0 {
            Ok(r)
        } else {
            let kind = ErrorKind::from_code(status).unwrap_or(ErrorKind::Remote);
            let pid = if pid != 0 { pid } else { from };
            Err(Error::at(kind, pid, String::from_utf8_lossy(&reply[r]).into_owned()))
        });
    }
    if at != reply.len() {
        return Err(protocol("bytes after the last outcome"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_and_outcomes_round_trip() {
        let items: Vec<&[u8]> = vec![b"a", b"", b"xyz"];
        let p = encode_items(items.iter().copied());
        let r = decode_items(&p).unwrap();
        let back: Vec<&[u8]> = r.iter().map(|r| &p[r.clone()]).collect();
        assert_eq!(back, items);
        let e = Error::at(ErrorKind::Remote, 3, "boom");
        let outs = vec![Ok(&b"v1"[..]), Err(&e), Ok(&b""[..])];
        let reply = encode_outcomes(outs.into_iter());
        let d = decode_outcomes(&reply, 9).unwrap();
        assert_eq!(&reply[d[0].clone().unwrap()], b"v1");
        assert_eq!(d[1].clone().unwrap_err(), e);
        assert!(d[2].clone().unwrap().is_empty());
        assert!(decode_items(&encode_items(std::iter::empty::<&[u8]>())).unwrap().is_empty());
    }

    #[test]
    fn malformed_batches_are_refused() {
        assert!(decode_items(&[]).is_err());
        assert!(decode_items(&[1, 0, 0, 0]).is_err(), "a length is missing");
        let mut p = encode_items([&b"abc"[..]].into_iter());
        p.pop();
        assert!(decode_items(&p).is_err(), "an element cut short");
        p.extend_from_slice(b"cd");
        assert!(decode_items(&p).is_err(), "trailing bytes");
        let mut huge = 2u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&1u64.to_le_bytes());
        assert!(decode_items(&huge).is_err());
        assert!(decode_outcomes(&[5, 0, 0, 0], 2).is_err());
    }
}
