//! The save/load container (issue 10; ClusterUtils' `save` / `load` over
//! bytes): a file holding one byte string (the payload) tagged with a
//! content type, in a documented, versioned format with a checksum, and
//! written atomically. The Julia binding stores `Serialization.serialize`
//! bytes under the content type "julia.serialization".
//!
//! **The format, version 1** (integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `89 43 4C 53 0D 0A 00 0A` (`\x89` `CLS` `\r\n` `\0` `\n`) |
//! | 8 | 4 | format version, u32: 1 |
//! | 12 | 4 | flags, u32: 0 (version 1 defines none; a reader refuses bits it does not know) |
//! | 16 | 4 | content-type length `n`, u32, at most 255 |
//! | 20 | n | content type, UTF-8 without NUL (e.g. "julia.serialization") |
//! | 20+n | 8 | payload length `m`, u64 |
//! | 28+n | m | payload |
//! | 28+n+m | 32 | SHA-256 of bytes `0 .. 28+n+m` (everything before it) |
//!
//! The file is exactly `60 + n + m` bytes. As PNG's, the magic catches the
//! usual damage at the start: a high-bit byte (7-bit transfers), `\r\n` and
//! a lone `\n` (line-ending conversion either way), a NUL (C-string
//! truncation). `load` refuses, with `ErrorKind::Corrupt` and a message
//! saying which: a foreign file (bad magic), a version it does not read
//! (naming the version it reads), unknown flags, a file shorter or longer
//! than its header announces (expected and found lengths), a checksum
//! mismatch. A file that cannot be opened or read is `ErrorKind::Io`
//! naming the path.
//!
//! **The atomic write.** `save` never writes into the target: the bytes go
//! to a new file in the target's directory (the directory is held open
//! throughout, so every step acts on the same one), which is fsynced,
//! given the target's name by `rename` (atomic: a reader sees the old file
//! or the new one, never a mix), and the directory is fsynced so the
//! rename is durable. Where the kernel and file system have `O_TMPFILE`,
//! the new file has no name until it is complete: a crash at any point
//! leaves no litter, and a new target is linked straight to its name; over
//! an existing file it is linked to a temporary name just before the
//! rename (a crash in that instant can leave `.<name>.<random>.tmp`).
//! Elsewhere the temporary file `.<name>.<random>.tmp` is created with
//! `O_EXCL` up front, and a crash mid-write leaves it behind (never the
//! target damaged). On an error the temporary file is removed. A new
//! file's permissions are 0644 minus the umask; an existing file's mode is
//! kept (its owner is not: the new file is the saving process's). A
//! symbolic link at the target is replaced by the file, its target left
//! alone. The payload is written from the caller's slice in 1 MiB
//! pieces, each hashed just before it is written: no copy of it is made.
//!
//! The syscalls are in `sys::file`; this module is safe code.

use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, file::Dir};
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The first 8 bytes of every container.
pub const MAGIC: [u8; 8] = *b"\x89CLS\r\n\x00\n";
/// The format version `save` writes.
pub const VERSION: u32 = 1;
/// The longest content type, in bytes.
pub const MAX_CONTENT_TYPE: usize = 255;
/// Permissions of a new file, before the umask.
pub const NEW_FILE_MODE: u32 = 0o644;

/// Magic, version, flags and the content-type length.
const FIXED_LEN: usize = 20;
const LEN_FIELD: usize = 8;
const DIGEST_LEN: usize = 32;
/// The payload is hashed and written (and read and hashed) in pieces of this size.
const CHUNK: usize = 1 << 20;
/// Attempts at a free temporary name before giving up.
const TEMP_ATTEMPTS: usize = 16;

/// A loaded container: its content type and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub content_type: String,
    pub data: Vec<u8>,
}

/// The size of a container holding `content_type_len` bytes of content
/// type and `payload_len` bytes of payload.
pub const fn encoded_len(content_type_len: usize, payload_len: u64) -> u64 {
    (FIXED_LEN + LEN_FIELD + DIGEST_LEN + content_type_len) as u64 + payload_len
}

/// Saves `data` under `content_type` to `path`, atomically (module doc).
/// InvalidArgument for a content type over 255 bytes or holding a NUL,
/// or a path naming no file; Io when a step fails (the message says
/// which), leaving the old file and no temporary file.
pub fn save(path: impl AsRef<Path>, content_type: &str, data: &[u8]) -> Result<()> {
    save_with(path.as_ref(), content_type, data, TempFile::Unnamed)
}

/// Loads the container at `path`, checking all of it (module doc).
pub fn load(path: impl AsRef<Path>) -> Result<Loaded> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| Error::io(&format!("load {name}"), e))?;
    let meta = f.metadata().map_err(|e| Error::io(&format!("load {name}"), e))?;
    // A regular file's length is checked against the header before the
    // payload is read (and bounds what is allocated for it).
    let len = meta.is_file().then_some(meta.len());
    read_container(&mut f, &name, len)
}

/// Writes a container to `w` (no atomicity: that is `save`'s).
pub fn write_to(w: &mut impl Write, content_type: &str, data: &[u8]) -> Result<()> {
    check_content_type(content_type)?;
    write_container(w, content_type, data).map_err(|e| Error::io("write a container", e))
}

/// Reads a container from `r` (to its end: trailing bytes are refused);
/// `name` names the source in error messages.
pub fn read_from(r: &mut impl Read, name: &str) -> Result<Loaded> {
    read_container(r, name, None)
}

/// Which temporary file `save_with` writes.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TempFile {
    /// An unnamed one (`O_TMPFILE`) where supported, else `Named`.
    Unnamed,
    /// `.<name>.<random>.tmp`, created with `O_EXCL` (the fallback, forced for tests).
    Named,
}

/// `save`, choosing the temporary file (tests exercise both).
#[doc(hidden)]
pub fn save_with(path: &Path, content_type: &str, data: &[u8], temp: TempFile) -> Result<()> {
    check_content_type(content_type).map_err(|e| Error::new(e.kind, format!("save {}: {}", path.display(), e.message)))?;
    let (dir_path, name) = split(path)?;
    let s = Saving {
        path,
        dir: Dir::open(dir_path).map_err(|e| Error::io(&format!("save {}: open the directory {}", path.display(), dir_path.display()), e))?,
        name,
        content_type,
        data,
    };
    let existing = s.dir.stat(name).map_err(|e| s.fail("look at the existing file", e))?;
    if existing.is_some_and(|x| x.is_dir) {
        // Refused before writing anything (the rename would fail after).
        return Err(s.fail("", io::Error::new(io::ErrorKind::IsADirectory, "it is a directory")));
    }
    let mode = existing.map(|x| x.mode);
    if temp == TempFile::Unnamed && sys::file::can_link_unnamed() {
        if let Some(f) = s.dir.create_unnamed(NEW_FILE_MODE).map_err(|e| s.fail("create an unnamed file in its directory", e))? {
            return s.via_unnamed(f, mode);
        }
    }
    s.via_named(mode)
}

fn check_content_type(ct: &str) -> Result<()> {
    if ct.len() > MAX_CONTENT_TYPE {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("a content type of {} bytes (at most {MAX_CONTENT_TYPE})", ct.len())));
    }
    if ct.contains('\0') {
        return Err(Error::new(ErrorKind::InvalidArgument, "a content type holds no NUL"));
    }
    Ok(())
}

/// The directory and the file name of `path`; its last component must
/// name a file (not empty, ".", ".." or a trailing '/').
fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    let bytes = path.as_os_str().as_bytes();
    let last = bytes.rsplit(|&b| b == b'/').next().unwrap_or(bytes);
    if last.is_empty() || last == b"." || last == b".." {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("save {:?}: the path names no file", path)));
    }
    let name = OsStr::from_bytes(last);
    let dir = match &bytes[..bytes.len() - last.len()] {
        [] => Path::new("."),
        d => Path::new(OsStr::from_bytes(d)),
    };
    Ok((dir, name))
}

/// `.<name>.<16 hex digits>.tmp`, within the 255-byte name limit.
fn temp_name(name: &OsStr) -> io::Result<OsString> {
    let mut r = [0u8; 8];
    sys::random_bytes(&mut r)?;
    let keep = &name.as_bytes()[..name.len().min(200)];
    let mut v = Vec::with_capacity(keep.len() + 22);
    v.push(b'.');
    v.extend_from_slice(keep);
    v.extend_from_slice(format!(".{:016x}.tmp", u64::from_le_bytes(r)).as_bytes());
    Ok(OsString::from_vec(v))
}

/// A named temporary file, removed when dropped unless it was renamed.
struct NamedTemp<'a> {
    dir: &'a Dir,
    name: Option<OsString>,
}

impl NamedTemp<'_> {
    fn name(&self) -> &OsStr {
        self.name.as_deref().expect("not yet renamed")
    }
    fn renamed(mut self) {
        self.name = None;
    }
}

impl Drop for NamedTemp<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            let _ = self.dir.remove(&n);
        }
    }
}

/// One save under way.
struct Saving<'a> {
    path: &'a Path,
    dir: Dir,
    name: &'a OsStr,
    content_type: &'a str,
    data: &'a [u8],
}

impl Saving<'_> {
    fn fail(&self, step: &str, e: io::Error) -> Error {
        let sep = if step.is_empty() { "" } else { ": " };
        Error::io(&format!("save {}{sep}{step}", self.path.display()), e)
    }

    /// Keeps the old file's permissions, writes the container, flushes it to disk.
    fn fill(&self, f: &mut File, mode: Option<u32>) -> Result<()> {
        if let Some(m) = mode {
            f.set_permissions(Permissions::from_mode(m)).map_err(|e| self.fail("keep the file's permissions", e))?;
        }
        write_container(f, self.content_type, self.data).map_err(|e| self.fail("write", e))?;
        f.sync_all().map_err(|e| self.fail("fsync", e))
    }

    fn via_unnamed(&self, mut f: File, mode: Option<u32>) -> Result<()> {
        self.fill(&mut f, mode)?;
        if mode.is_none() {
            // No file there: the name itself is linked, atomically, and
            // nothing else is ever named.
            match self.dir.link_unnamed(&f, self.name) {
                Ok(()) => return self.sync_dir(),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {} // made meanwhile: replace it
                Err(e) => return Err(self.fail("link the new file", e)),
            }
        }
        // A link never replaces a file: a temporary name, then the rename.
        let mut attempts = 0;
        let temp = loop {
            let n = temp_name(self.name).map_err(|e| self.fail("name a temporary file", e))?;
            match self.dir.link_unnamed(&f, &n) {
                Ok(()) => break NamedTemp { dir: &self.dir, name: Some(n) },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < TEMP_ATTEMPTS => attempts += 1,
                Err(e) => return Err(self.fail("link the new file to a temporary name", e)),
            }
        };
        self.replace(temp)
    }

    fn via_named(&self, mode: Option<u32>) -> Result<()> {
        let mut attempts = 0;
        let (mut f, temp) = loop {
            let n = temp_name(self.name).map_err(|e| self.fail("name a temporary file", e))?;
            match self.dir.create_new(&n, NEW_FILE_MODE) {
                Ok(f) => break (f, NamedTemp { dir: &self.dir, name: Some(n) }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < TEMP_ATTEMPTS => attempts += 1,
                Err(e) => return Err(self.fail("create a temporary file in its directory", e)),
            }
        };
        self.fill(&mut f, mode)?;
        drop(f);
        self.replace(temp)
    }

    fn replace(&self, temp: NamedTemp<'_>) -> Result<()> {
        self.dir.rename(temp.name(), self.name).map_err(|e| self.fail("rename the temporary file over it", e))?;
        temp.renamed();
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        self.dir.sync().map_err(|e| self.fail("fsync its directory (the file is in place, maybe not yet durable)", e))
    }
}

fn write_container(w: &mut impl Write, content_type: &str, data: &[u8]) -> io::Result<()> {
    let mut header = Vec::with_capacity(FIXED_LEN + content_type.len() + LEN_FIELD);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(content_type.len() as u32).to_le_bytes());
    header.extend_from_slice(content_type.as_bytes());
    header.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut hash = Sha256::new();
    hash.update(&header);
    w.write_all(&header)?;
    for piece in data.chunks(CHUNK) {
        hash.update(piece);
        w.write_all(piece)?;
    }
    w.write_all(&hash.finalize())?;
    w.flush()
}

/// Reads into `buf` until it is full or the input ends; how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Why the first bytes are not the magic, as said to the user.
fn bad_magic(start: &[u8]) -> String {
    if start.is_empty() {
        return "not a libcluster save file (it is empty)".into();
    }
    let hint = if start.starts_with(b"\x89CLS\n") || start.starts_with(b"\x89CLS\r\r\n") {
        " (its line endings were converted by a text-mode transfer)"
    } else if start.starts_with(b"\x09CLS") {
        " (the high bit was stripped by a 7-bit transfer)"
    } else {
        ""
    };
    format!("not a libcluster save file (bad magic: it starts {}, a save file {}){hint}", hex(start), hex(&MAGIC))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads and checks one container. `file_len`, when known, is checked
/// against the header's lengths before the payload is read.
fn read_container(r: &mut impl Read, name: &str, file_len: Option<u64>) -> Result<Loaded> {
    let corrupt = |m: String| Error::new(ErrorKind::Corrupt, format!("{name}: {m}"));
    let read_err = |e: io::Error| Error::io(&format!("read {name}"), e);
    let truncated = |expected: String, found: u64| corrupt(format!("truncated: expected {expected} bytes, found {found}"));

    let mut fixed = [0u8; FIXED_LEN];
    let n = read_full(r, &mut fixed).map_err(read_err)?;
    let m = n.min(MAGIC.len());
    if n == 0 || fixed[..m] != MAGIC[..m] {
        return Err(corrupt(bad_magic(&fixed[..m])));
    }
    let least = |extra: usize| format!("at least {}", FIXED_LEN + DIGEST_LEN + LEN_FIELD + extra);
    if n < FIXED_LEN {
        return Err(truncated(least(0), n as u64));
    }
    let version = u32_at(&fixed, 8);
    if version != VERSION {
        let why = if version > VERSION { "is newer than this library reads" } else { "is unknown" };
        return Err(corrupt(format!("format version {version} {why} (it reads version {VERSION})")));
    }
    let flags = u32_at(&fixed, 12);
    if flags != 0 {
        return Err(corrupt(format!("unknown flags {flags:#x} (format version {VERSION} defines none)")));
    }
    let ct_len = u32_at(&fixed, 16) as usize;
    if ct_len > MAX_CONTENT_TYPE {
        return Err(corrupt(format!("a content type of {ct_len} bytes (at most {MAX_CONTENT_TYPE}): the header is damaged")));
    }
    let mut hash = Sha256::new();
    hash.update(fixed);

    let mut rest = [0u8; MAX_CONTENT_TYPE + LEN_FIELD];
    let rest = &mut rest[..ct_len + LEN_FIELD];
    let n = read_full(r, rest).map_err(read_err)?;
    if n < rest.len() {
        return Err(truncated(least(ct_len), (FIXED_LEN + n) as u64));
    }
    hash.update(&*rest);
    let payload_len = u64::from_le_bytes(rest[ct_len..].try_into().expect("8 bytes"));
    let header_len = FIXED_LEN + ct_len + LEN_FIELD;
    let Some(total) = encoded_len(ct_len, 0).checked_add(payload_len) else {
        return Err(corrupt(format!("a payload length of {payload_len} bytes: the header is damaged")));
    };
    if let Some(found) = file_len {
        if found < total {
            return Err(truncated(total.to_string(), found));
        }
        if found > total {
            return Err(corrupt(format!("{} trailing bytes: expected {total} bytes, found {found}", found - total)));
        }
    }
    let Ok(payload_len) = usize::try_from(payload_len) else {
        return Err(Error::new(ErrorKind::TooLarge, format!("{name}: a payload of {payload_len} bytes does not fit in memory")));
    };

    let mut data = Vec::new();
    if file_len.is_some() {
        // Checked against the file's length above: not a damaged header's figure.
        data.try_reserve_exact(payload_len).map_err(|_| Error::new(ErrorKind::TooLarge, format!("{name}: no memory for a payload of {payload_len} bytes")))?;
    }
    while data.len() < payload_len {
        let start = data.len();
        let want = (payload_len - start).min(CHUNK) as u64;
        r.by_ref().take(want).read_to_end(&mut data).map_err(read_err)?;
        if data.len() == start {
            return Err(truncated(total.to_string(), (header_len + start) as u64));
        }
        hash.update(&data[start..]);
    }

    let mut digest = [0u8; DIGEST_LEN];
    let n = read_full(r, &mut digest).map_err(read_err)?;
    if n < DIGEST_LEN {
        return Err(truncated(total.to_string(), (header_len + payload_len + n) as u64));
    }
    let mut more = [0u8; 1];
    if read_full(r, &mut more).map_err(read_err)? > 0 {
        return Err(corrupt(format!("trailing bytes: expected {total} bytes, found more")));
    }
    if hash.finalize()[..] != digest[..] {
        return Err(corrupt(format!(
            "checksum mismatch: the SHA-256 of its first {} bytes is not the one it records (the file is damaged)",
            total - DIGEST_LEN as u64
        )));
    }
    // Checked after the checksum: a damaged byte is reported as damage.
    let content_type = std::str::from_utf8(&rest[..ct_len])
        .ok()
        .filter(|s| !s.contains('\0'))
        .ok_or_else(|| corrupt(format!("its content type ({}) is not UTF-8 text without NUL", hex(&rest[..ct_len]))))?
        .to_string();
    Ok(Loaded { content_type, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!("savefile-unit-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            TempDir(p)
        }
        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        /// The names in the directory, sorted.
        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            v.sort();
            v
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const BOTH: [TempFile; 2] = [TempFile::Unnamed, TempFile::Named];

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8).collect()
    }

    fn encode(ct: &str, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_to(&mut v, ct, data).unwrap();
        v
    }

    /// Decodes bytes as `load` does a regular file of that length.
    fn decode(bytes: &[u8]) -> Result<Loaded> {
        read_container(&mut &bytes[..], "test", Some(bytes.len() as u64))
    }

    fn corrupt_with(r: Result<Loaded>, needle: &str) {
        let e = r.expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Corrupt, "{e:?}");
        assert!(e.message.contains(needle), "{:?} lacks {needle:?}", e.message);
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let b = encode("text/plain", b"hello");
        assert_eq!(b.len() as u64, encoded_len(10, 5));
        assert_eq!(&b[..8], b"\x89CLS\r\n\0\n");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[12..16], &[0, 0, 0, 0]);
        assert_eq!(&b[16..20], &[10, 0, 0, 0]);
        assert_eq!(&b[20..30], b"text/plain");
        assert_eq!(&b[30..38], &[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[38..43], b"hello");
        assert_eq!(&b[43..], &Sha256::digest(&b[..43])[..]);
    }

    #[test]
    fn round_trips_empty_small_and_10_mb_payloads() {
        let d = TempDir::new();
        let big = pattern(10 << 20);
        let cases: [(&str, &[u8]); 5] =
            [("", b""), ("x", b"\x00"), ("julia.serialization", b""), ("application/octet-stream", &big), (&"t".repeat(255), b"\xff")];
        for temp in BOTH {
            for (i, (ct, data)) in cases.iter().enumerate() {
                let p = d.join(&format!("f{i}"));
                save_with(&p, ct, data, temp).unwrap();
                assert_eq!(std::fs::metadata(&p).unwrap().len(), encoded_len(ct.len(), data.len() as u64));
                let got = load(&p).unwrap();
                assert_eq!((got.content_type.as_str(), got.data.len()), (*ct, data.len()), "{temp:?} case {i}");
                assert!(got.data == *data, "{temp:?} case {i}: the payload differs");
            }
            // Overwriting replaces the content.
            save_with(&d.join("f3"), "second", b"shorter", temp).unwrap();
            assert_eq!(load(d.join("f3")).unwrap(), Loaded { content_type: "second".into(), data: b"shorter".to_vec() });
        }
        assert_eq!(d.names(), ["f0", "f1", "f2", "f3", "f4"], "no temporary file is left");
        // A relative path (no directory part) saves in the current directory.
        let (dir, name) = split(Path::new("plain")).unwrap();
        assert_eq!((dir, name), (Path::new("."), OsStr::new("plain")));
        // Through a reader of unknown length too.
        let b = encode("ct", b"streamed");
        assert_eq!(read_from(&mut &b[..], "mem").unwrap().data, b"streamed");
    }

    #[test]
    fn a_foreign_file_is_refused_as_bad_magic() {
        let good = encode("ct", b"payload");
        for (bytes, hint) in [
            (&b""[..], "it is empty"),
            (b"hello, world\n", "bad magic"),
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "bad magic"),
            (b"\x89CLS\n\0\n\x01\0\0\0", "line endings were converted"),
            (b"\x09CLS\r\n\0\n\x01\0\0\0", "7-bit transfer"),
            (b"\x89CLT", "bad magic"),
        ] {
            corrupt_with(decode(bytes), hint);
            corrupt_with(decode(bytes), "not a libcluster save file");
        }
        // A text-mode \n -> \r\n conversion of a whole file.
        let mut crlf = Vec::new();
        for &b in &good {
            if b == b'\n' {
                crlf.push(b'\r');
            }
            crlf.push(b);
        }
        corrupt_with(decode(&crlf), "line endings were converted");
    }

    #[test]
    fn other_versions_and_unknown_flags_are_refused() {
        let good = encode("ct", b"payload");
        let mut v2 = good.clone();
        v2[8] = 2;
        corrupt_with(decode(&v2), "format version 2 is newer than this library reads (it reads version 1)");
        let mut v0 = good.clone();
        v0[8] = 0;
        corrupt_with(decode(&v0), "format version 0 is unknown (it reads version 1)");
        let mut flags = good.clone();
        flags[13] = 1;
        corrupt_with(decode(&flags), "unknown flags 0x100");
        let mut long = good.clone();
        long[16] = 0;
        long[17] = 1;
        corrupt_with(decode(&long), "content type of 256 bytes");
    }

    #[test]
    fn every_truncation_is_refused_with_the_lengths() {
        let good = encode("julia.serialization", &pattern(300));
        let total = good.len();
        for cut in 1..total {
            let e = decode(&good[..cut]).expect_err("a truncated file is refused");
            assert_eq!(e.kind, ErrorKind::Corrupt);
            assert!(e.message.contains("truncated") && e.message.contains(&format!("found {cut}")), "cut at {cut}: {}", e.message);
            // Past the header the expected length is exact.
            if cut >= 20 + 19 + 8 {
                assert!(e.message.contains(&format!("expected {total} bytes")), "{}", e.message);
            }
            // Streamed (length unknown): the same verdict, found by reading.
            let e = read_from(&mut &good[..cut], "stream").unwrap_err();
            assert!(e.kind == ErrorKind::Corrupt && e.message.contains("truncated") && e.message.contains(&format!("found {cut}")), "{}", e.message);
        }
        // A big file cut in its payload, from disk.
        let d = TempDir::new();
        let p = d.join("big");
        save(&p, "ct", &pattern(10 << 20)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(5 << 20).unwrap();
        corrupt_with(load(&p), &format!("truncated: expected {} bytes, found {}", encoded_len(2, 10 << 20), 5 << 20));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let good = encode("ct/x", &pattern(40));
        assert!(decode(&good).is_ok());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                let e = decode(&b).expect_err("a damaged file is refused");
                assert_eq!(e.kind, ErrorKind::Corrupt, "byte {i} bit {bit}: {e:?}");
            }
        }
        // Where the damage is decides what is said.
        let flip = |i: usize| {
            let mut b = good.clone();
            b[i] ^= 0x10;
            decode(&b)
        };
        corrupt_with(flip(3), "bad magic");
        corrupt_with(flip(9), "format version");
        corrupt_with(flip(21), "checksum mismatch"); // the content type
        corrupt_with(flip(28), "expected"); // the payload length: the file is too short or too long for it
        corrupt_with(flip(40), "checksum mismatch"); // the payload
        corrupt_with(flip(good.len() - 1), "checksum mismatch"); // the checksum
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let good = encode("ct", b"payload");
        for extra in [1usize, 1000] {
            let mut b = good.clone();
            b.extend(std::iter::repeat_n(0u8, extra));
            corrupt_with(decode(&b), &format!("{extra} trailing bytes: expected {} bytes, found {}", good.len(), good.len() + extra));
            corrupt_with(read_from(&mut &b[..], "stream"), "trailing bytes");
        }
    }

    #[test]
    fn a_missing_or_unreadable_file_is_an_io_error_naming_it() {
        let d = TempDir::new();
        let p = d.join("nothing-here");
        let e = load(&p).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
        assert!(e.message.contains(&p.display().to_string()), "{}", e.message);
        let e = load(&d.0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io, "a directory: {e:?}");
        assert!(e.message.contains(&d.0.display().to_string()), "{}", e.message);
    }

    #[test]
    fn a_new_file_gets_0644_minus_the_umask_and_an_old_one_keeps_its_mode() {
        let d = TempDir::new();
        let umask = sys::file::umask().expect("/proc/self/status has the umask");
        for temp in BOTH {
            let p = d.join(&format!("new-{temp:?}"));
            save_with(&p, "ct", b"1", temp).unwrap();
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o644 & !umask);
            for mode in [0o600, 0o640, 0o755, 0o444] {
                std::fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
                save_with(&p, "ct", b"2", temp).unwrap();
                assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, mode, "{temp:?}");
                assert_eq!(load(&p).unwrap().data, b"2");
            }
        }
        assert_eq!(d.names().len(), 2);
    }

    #[test]
    fn failures_leave_the_old_state_and_no_temporary_file() {
        let d = TempDir::new();
        for temp in BOTH {
            // The target is a directory: refused before writing.
            // (A write that fails midway: tests/savefile.rs, under a file-size limit.)
            std::fs::create_dir_all(d.join("adir/inside")).unwrap();
            let e = save_with(&d.join("adir"), "ct", &pattern(1 << 20), temp).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Io, "{e:?}");
            assert!(e.message.contains("adir: it is a directory"), "{}", e.message);
            assert_eq!(d.names(), ["adir"], "{temp:?}");
            // No such directory.
            let e = save_with(&d.join("no/such/dir/f"), "ct", b"x", temp).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Io);
            assert!(e.message.contains("no/such/dir"), "{}", e.message);
            // Bad arguments: nothing is touched.
            let old = d.join("old");
            save_with(&old, "ct", b"old", temp).unwrap();
            let e = save_with(&old, &"t".repeat(256), b"new", temp).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert_eq!(save_with(&old, "a\0b", b"new", temp).unwrap_err().kind, ErrorKind::InvalidArgument);
            for bad in ["", "/", ".", "..", "x/", "x/.", "x/.."] {
                assert_eq!(save_with(Path::new(bad), "ct", b"new", temp).unwrap_err().kind, ErrorKind::InvalidArgument, "{bad:?}");
            }
            assert_eq!(load(&old).unwrap().data, b"old");
            std::fs::remove_file(&old).unwrap();
            assert_eq!(d.names(), ["adir"]);
        }
    }

    #[test]
    fn a_symbolic_link_is_replaced_and_its_target_kept() {
        let d = TempDir::new();
        save(d.join("real"), "ct", b"old").unwrap();
        symlink("real", d.join("link")).unwrap();
        save(d.join("link"), "ct", b"new").unwrap();
        assert!(!std::fs::symlink_metadata(d.join("link")).unwrap().file_type().is_symlink());
        assert_eq!(load(d.join("link")).unwrap().data, b"new");
        assert_eq!(load(d.join("real")).unwrap().data, b"old");
        assert_eq!(d.names(), ["link", "real"]);
    }

    #[test]
    fn concurrent_saves_and_loads_see_whole_files_only() {
        let d = TempDir::new();
        let p = d.join("shared");
        save(&p, "ct", &[0u8; 4096]).unwrap();
        std::thread::scope(|s| {
            for t in 1..=3u8 {
                let p = &p;
                s.spawn(move || {
                    for i in 0..8 {
                        let temp = if i % 2 == 0 { TempFile::Unnamed } else { TempFile::Named };
                        save_with(p, "ct", &[t; 4096], temp).unwrap();
                    }
                });
            }
            for _ in 0..200 {
                let got = load(&p).expect("always a whole file");
                assert!(got.data.len() == 4096 && got.data.iter().all(|&b| b == got.data[0]));
            }
        });
        assert_eq!(d.names(), ["shared"]);
    }
}
