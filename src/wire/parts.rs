//! The "parts" layout: one byte string per process, as results that hold
//! a value from each of several processes travel (and reach C): for each,
//! its id (u32 LE), its length (u64 LE), then its bytes. Simple to read
//! from any language.

use crate::error::{Error, ErrorKind, Result};

/// Appends one part to `out`.
pub fn push_part(out: &mut Vec<u8>, pid: u32, bytes: &[u8]) {
    out.extend_from_slice(&pid.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Every part, one after another.
pub fn encode_parts<'a>(parts: impl IntoIterator<Item = (u32, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (pid, b) in parts {
        push_part(&mut out, pid, b);
    }
    out
}

/// The part at `*offset`, advancing it; `Ok(None)` at the end.
pub fn next_part<'a>(data: &'a [u8], offset: &mut usize) -> Result<Option<(u32, &'a [u8])>> {
    let rest = data.get(*offset..).ok_or_else(|| bad("the offset is past the end"))?;
    if rest.is_empty() {
        return Ok(None);
    }
    let head = rest.get(..12).ok_or_else(|| bad("a part's header is cut short"))?;
    let pid = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
    let end =
        usize::try_from(len).ok().and_then(|l| l.checked_add(12)).filter(|&e| e <= rest.len()).ok_or_else(|| bad("a part is longer than what holds it"))?;
    *offset += end;
    Ok(Some((pid, &rest[12..end])))
}

/// Every part of `data`, borrowed.
pub fn decode_parts(data: &[u8]) -> Result<Vec<(u32, &[u8])>> {
    let mut v = Vec::new();
    let mut at = 0;
    while let Some(p) = next_part(data, &mut at)? {
        v.push(p);
    }
    Ok(v)
}

fn bad(why: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("not a parts layout: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_refuse_what_is_cut_short() {
        let enc = encode_parts([(2, &b"ab"[..]), (3, &b""[..]), (9, &[7u8; 300][..])]);
        let dec = decode_parts(&enc).unwrap();
        assert_eq!(dec, vec![(2, &b"ab"[..]), (3, &b""[..]), (9, &[7u8; 300][..])]);
        assert!(decode_parts(&[]).unwrap().is_empty());
        for cut in [1, 11, 13, enc.len() - 1] {
            assert_eq!(decode_parts(&enc[..cut]).unwrap_err().kind, ErrorKind::Corrupt, "cut at {cut}");
        }
        let mut huge = encode_parts([(1, &b"x"[..])]);
        huge[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_parts(&huge).unwrap_err().kind, ErrorKind::Corrupt);
        let mut at = enc.len() + 1;
        assert!(next_part(&enc, &mut at).is_err());
    }
}
