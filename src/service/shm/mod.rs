//! Shared memory (PTools' `ShmCfg`, `pmap_shm_create`, `unlink_shm`):
//! named segments one process creates and every process of a set on the
//! same host maps, each keeping its mapping until the segment is unlinked.
//!
//! **Names.** A segment's name in /dev/shm carries what finds it again
//! after a crash: `lcshm.<head pid>-<head start>-<cluster>-<machine>.<creator pid>.<prefix>.<name>`
//! (`<machine>`: a tag of the head's machine, its boot id hashed, so a
//! host judges only the segments of heads that ran on it; names without
//! it, from before, count as this machine's)
//! (the head's OS pid and start time name its process for the machine's
//! uptime, a random number the cluster among those one process ran; the
//! creator's OS pid says who made it; the user's prefix keeps jobs apart). A segment whose head process is gone is an orphan: the
//! cluster it belonged to has ended (its workers leave with their head).
//! `orphans` lists them and `remove_orphans` unlinks them, from any
//! process, cluster or not (`cluster-shm-orphans` is the command line).
//! A head that closes unlinks every segment of its cluster.
//!
//! **Creation** reserves every page (`posix_fallocate`): a full /dev/shm
//! is an error naming the sizes, never a SIGBUS on first touch.
//!
//! **Why not the `shared_memory` crate** (the design card's): it opens
//! segments with `shm_open` + `ftruncate` and keeps the descriptor private,
//! so the pages cannot be reserved (a full /dev/shm then kills the first
//! process to touch a page with SIGBUS), and its owner unlinks on drop,
//! which is not how a segment shared by a cluster ends. The few calls it
//! wraps are in `sys::shm`, behind this one module.
//!
//! **Protocol** (service 7; meta is empty):
//!
//! | op       | kind            | what                                             |
//! |----------|-----------------|--------------------------------------------------|
//! | MAP      | request         | payload: `MapRequest`; answered 1 (mapped) or 0 (another host, skipped) |
//! | UNMAP    | request         | payload: the OS name; the process drops its mapping of it |
//! | UNMAP_NOW | one-way        | as UNMAP, unanswered (a failed creation's undo) |
//! | IDENTITY | request to head | answered with the head's OS pid (u32 LE), start time (u64 LE) and cluster number (u32 LE) |

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Future, Incoming, Node, Service, HEAD_ID};
use crate::sys::shm::{self as os, Mapping};
use crate::wire::{self, ServiceId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const ID: ServiceId = 7;

#[doc(hidden)]
pub mod op {
    pub const MAP: u16 = 1;
    pub const UNMAP: u16 = 2;
    pub const IDENTITY: u16 = 3;
    pub const UNMAP_NOW: u16 = 4;
    pub const LAST: u16 = UNMAP_NOW;
}

const TAG: &str = "lcshm";

/// A segment as its creator describes it: a name (letters, digits, '_'
/// and '-'), a prefix (any text without '/'), an element type (a tag the
/// bindings agree on, `elem_size` bytes each) and dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmSpec {
    pub name: String,
    pub prefix: String,
    pub elem_type: u32,
    pub elem_size: u32,
    pub dims: Vec<u64>,
}

impl ShmSpec {
    /// A segment of `dims` elements of `elem_size` bytes tagged `elem_type`.
    pub fn new(name: &str, elem_type: u32, elem_size: u32, dims: &[u64]) -> ShmSpec {
        ShmSpec { name: name.to_string(), prefix: String::new(), elem_type, elem_size, dims: dims.to_vec() }
    }
    pub fn prefixed(mut self, prefix: &str) -> ShmSpec {
        self.prefix = prefix.to_string();
        self
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> Result<usize> {
        self.dims
            .iter()
            .try_fold(self.elem_size as u64, |a, &d| a.checked_mul(d))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, format!("shared segment {}: its size overflows", self.name)))
    }

    fn check(&self) -> Result<()> {
        check_name(&self.name)?;
        check_prefix(&self.prefix)?;
        if self.elem_size == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("shared segment {}: elements of 0 bytes", self.name)));
        }
        self.bytes().map(drop)
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("shared segment name {name:?}: 1 to 100 letters, digits, '_' or '-'")));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > 100 || prefix.contains('/') || prefix.contains('\0') {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("shared segment prefix {prefix:?}: at most 100 bytes, no '/'")));
    }
    Ok(())
}

/// The cluster a segment belongs to: its head's OS pid and start time,
/// and a number telling apart the clusters one process ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterStamp {
    pub head_pid: u32,
    pub head_start: u64,
    pub cluster: u32,
    /// The head's machine (`sys::machine_tag`).
    pub machine: u32,
}

impl ClusterStamp {
    /// A new cluster's, headed by this process.
    fn new_here() -> Option<ClusterStamp> {
        let mut r = [0u8; 4];
        crate::sys::random_bytes(&mut r).ok()?;
        let pid = std::process::id();
        os::start_time(pid).map(|head_start| ClusterStamp { head_pid: pid, head_start, cluster: u32::from_le_bytes(r), machine: crate::sys::machine_tag() })
    }
    /// Whether the head process it names still runs. A head on another
    /// machine cannot be looked up here: it counts as alive.
    pub fn alive(&self) -> bool {
        self.machine != crate::sys::machine_tag() || os::start_time(self.head_pid) == Some(self.head_start)
    }
}

/// The OS name of segment `name` with `prefix` made by `creator` in the
/// cluster `stamp`.
fn os_name(stamp: ClusterStamp, creator: u32, prefix: &str, name: &str) -> String {
    format!("{TAG}.{}-{}-{}-{:x}.{creator}.{prefix}.{name}", stamp.head_pid, stamp.head_start, stamp.cluster, stamp.machine)
}

/// A segment's OS name taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentName {
    pub os_name: String,
    pub stamp: ClusterStamp,
    pub creator_pid: u32,
    pub prefix: String,
    pub name: String,
}

impl SegmentName {
    /// None for a name libcluster did not make.
    pub fn parse(os_name: &str) -> Option<SegmentName> {
        let rest = os_name.strip_prefix(TAG)?.strip_prefix('.')?;
        let (stamp, rest) = rest.split_once('.')?;
        let mut it = stamp.split('-');
        let (hp, hs, cl) = (it.next()?, it.next()?, it.next()?);
        let machine = match it.next() {
            Some(m) => u32::from_str_radix(m, 16).ok()?,
            None => crate::sys::machine_tag(),
        };
        if it.next().is_some() {
            return None;
        }
        let (creator, rest) = rest.split_once('.')?;
        let (prefix, name) = rest.rsplit_once('.')?;
        check_name(name).ok()?;
        Some(SegmentName {
            os_name: os_name.to_string(),
            stamp: ClusterStamp { head_pid: hp.parse().ok()?, head_start: hs.parse().ok()?, cluster: cl.parse().ok()?, machine },
            creator_pid: creator.parse().ok()?,
            prefix: prefix.to_string(),
            name: name.to_string(),
        })
    }
}

/// The segments in /dev/shm of clusters whose head is gone (with `prefix`
/// only, when given).
pub fn orphans(prefix: Option<&str>) -> Result<Vec<SegmentName>> {
    let all = os::list().map_err(|e| Error::new(ErrorKind::Io, format!("cannot list {}: {e}", os::SHM_DIR)))?;
    Ok(all.iter().filter_map(|n| SegmentName::parse(n)).filter(|s| prefix.is_none_or(|p| s.prefix == p) && !s.stamp.alive()).collect())
}

/// Unlinks the orphans `orphans` finds; returns their OS names.
pub fn remove_orphans(prefix: Option<&str>) -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for s in orphans(prefix)? {
        match os::unlink(&s.os_name) {
            Ok(()) => gone.push(s.os_name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::new(ErrorKind::Io, format!("cannot unlink {}: {e}", s.os_name))),
        }
    }
    Ok(gone)
}

struct Inner {
    spec: ShmSpec,
    os_name: String,
    map: Mapping,
}

/// A segment mapped in this process. Clones share the mapping, which
/// stays until the last clone is dropped, even after an unlink.
#[derive(Clone)]
pub struct Segment(Arc<Inner>);

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Segment({}, {} bytes)", self.0.os_name, self.len())
    }
}

impl Segment {
    pub fn spec(&self) -> &ShmSpec {
        &self.0.spec
    }
    /// The name in /dev/shm.
    pub fn os_name(&self) -> &str {
        &self.0.os_name
    }
    /// The mapping's first byte: other processes read and write the same
    /// bytes, so access through it is up to the caller (as for any memory
    /// shared with other processes).
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.map.as_ptr()
    }
    pub fn len(&self) -> usize {
        self.0.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.map.is_empty()
    }
    /// Copies out bytes at `offset` (an error when out of range).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.0.map.read_at(offset, out).ok_or_else(|| self.out_of_range(offset, out.len()))
    }
    /// Copies in bytes at `offset` (an error when out of range).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.0.map.write_at(offset, data).ok_or_else(|| self.out_of_range(offset, data.len()))
    }
    fn out_of_range(&self, offset: usize, n: usize) -> Error {
        Error::new(ErrorKind::InvalidArgument, format!("bytes {offset}..+{n} are outside segment {} of {} bytes", self.0.spec.name, self.len()))
    }
}

/// What a MAP request carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MapRequest {
    os_name: String,
    spec: ShmSpec,
    /// The creator's host name: a process elsewhere skips it when `only_local`.
    host: String,
    only_local: bool,
}

/// The service: the segments this process maps, and its cluster's stamp.
pub struct Shm {
    mapped: Mutex<HashMap<String, Segment>>,
    stamp: OnceLock<ClusterStamp>,
    /// A worker's request for the stamp, sent when it starts, so that a
    /// first creation does not wait for it.
    asking: Mutex<Option<Future>>,
}

impl Shm {
    pub fn new() -> Arc<Shm> {
        Arc::new(Shm { mapped: Mutex::new(HashMap::new()), stamp: OnceLock::new(), asking: Mutex::new(None) })
    }

    fn stamp(&self, node: &Arc<Node>) -> Result<ClusterStamp> {
        if let Some(s) = self.stamp.get() {
            return Ok(*s);
        }
        let s = if node.is_head() {
            ClusterStamp::new_here().ok_or_else(|| Error::new(ErrorKind::Io, "cannot read this process's start time in /proc"))?
        } else {
            // Asked for at start; only a creation racing that answer waits.
            let asked = self.asking.lock().take();
            let f = match asked {
                Some(f) => f,
                None => node.request(HEAD_ID, ID, op::IDENTITY, &[], &[])?,
            };
            decode_stamp(f.fetch(Some(Duration::from_secs(10)))?)?
        };
        Ok(*self.stamp.get_or_init(|| s))
    }

    /// Opens and maps `os_name` here, keeping it.
    fn map_here(&self, os_name: &str, spec: &ShmSpec) -> std::result::Result<Segment, String> {
        if let Some(s) = self.mapped.lock().get(os_name) {
            return Ok(s.clone());
        }
        let want = spec.bytes().map_err(|e| e.message)?;
        let (fd, len) = os::open_existing(os_name).map_err(|e| format!("cannot open shared segment {os_name}: {e}"))?;
        if len < want {
            return Err(format!("shared segment {os_name} has {len} bytes, not {want}"));
        }
        let map = Mapping::new(&fd, want).map_err(|e| format!("cannot map shared segment {os_name}: {e}"))?;
        let seg = Segment(Arc::new(Inner { spec: spec.clone(), os_name: os_name.to_string(), map }));
        Ok(self.mapped.lock().entry(os_name.to_string()).or_insert(seg).clone())
    }

    fn lookup(&self, prefix: &str, name: &str) -> Option<Segment> {
        self.mapped.lock().values().find(|s| s.0.spec.prefix == prefix && s.0.spec.name == name).cloned()
    }
}

fn decode_stamp(b: &[u8]) -> Result<ClusterStamp> {
    if b.len() != 20 {
        return Err(Error::new(ErrorKind::Protocol, "a cluster stamp is 20 bytes"));
    }
    Ok(ClusterStamp {
        head_pid: u32::from_le_bytes(b[..4].try_into().expect("4")),
        head_start: u64::from_le_bytes(b[4..12].try_into().expect("8")),
        cluster: u32::from_le_bytes(b[12..16].try_into().expect("4")),
        machine: u32::from_le_bytes(b[16..].try_into().expect("4")),
    })
}

#[doc(hidden)]
pub fn decode(op: u16, _meta: &[u8], payload: &[u8]) -> Result<()> {
    match op {
        op::MAP => wire::decode_payload::<MapRequest>(payload).map(drop),
        op::UNMAP | op::UNMAP_NOW => std::str::from_utf8(payload).map(drop).map_err(|_| Error::new(ErrorKind::Protocol, "a segment name is UTF-8")),
        op::IDENTITY => Ok(()),
        o => Err(unknown_op("shm", o)),
    }
}

impl Service for Shm {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "shm"
    }

    /// A worker asks its head for the cluster's stamp at once (answered
    /// before any creation of its needs it, in practice).
    fn on_start(&self, node: &Arc<Node>) -> Result<()> {
        if node.is_head() {
            return Ok(());
        }
        if let Ok(f) = node.request(HEAD_ID, ID, op::IDENTITY, &[], &[]) {
            let svc = Arc::downgrade(&shm(node)?);
            f.on_complete(move |r| {
                if let (Some(svc), Ok(b)) = (svc.upgrade(), r) {
                    if let Ok(s) = decode_stamp(b) {
                        let _ = svc.stamp.set(s);
                    }
                }
            });
            *self.asking.lock() = Some(f);
        }
        Ok(())
    }

    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        let me = node.myid();
        let r: std::result::Result<Vec<u8>, Error> = match msg.op() {
            op::MAP => {
                let m: MapRequest = wire::decode_payload(&msg.payload)?;
                if m.only_local && m.host != crate::sys::hostname() {
                    Ok(vec![0])
                } else {
                    m.spec.check()?;
                    self.map_here(&m.os_name, &m.spec).map(|_| vec![1]).map_err(|e| Error::at(ErrorKind::Io, me, e))
                }
            }
            op::UNMAP | op::UNMAP_NOW => {
                let name = String::from_utf8(msg.payload.clone()).map_err(|_| Error::new(ErrorKind::Protocol, "a segment name is UTF-8"))?;
                self.mapped.lock().remove(&name);
                Ok(Vec::new())
            }
            op::IDENTITY if node.is_head() => self
                .stamp(node)
                .map(|s| [&s.head_pid.to_le_bytes()[..], &s.head_start.to_le_bytes(), &s.cluster.to_le_bytes(), &s.machine.to_le_bytes()].concat()),
            op::IDENTITY => Err(Error::at(ErrorKind::NotHead, me, "the head knows the cluster's stamp")),
            o => return Err(unknown_op("shm", o)),
        };
        if let Some(e) = msg.reply.send(node, r.as_deref().map_err(Clone::clone)) {
            node.log.debug(format!("shm answer not sent: {e}"));
        }
        Ok(None)
    }

    /// The head's cluster ends: its segments go (this process's mappings
    /// stay valid until dropped).
    fn on_close(&self, node: &Node) {
        if node.is_head() {
            if let Some(stamp) = self.stamp.get().copied() {
                for s in os::list().unwrap_or_default().iter().filter_map(|n| SegmentName::parse(n)) {
                    if s.stamp == stamp {
                        let _ = os::unlink(&s.os_name);
                    }
                }
            }
        }
        self.mapped.lock().clear();
    }
}

fn map_error(pid: u32, name: &str, e: Error) -> Error {
    Error::at(e.kind, pid, format!("process {pid} could not map shared segment {name}: {}", e.message))
}

fn shm(node: &Node) -> Result<Arc<Shm>> {
    node.service::<Shm>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no shm service on this node"))
}

/// Shared memory, on any node with the shm service.
pub trait ShmExt {
    /// Creates segment `spec` here (every page reserved) and has each of
    /// `procs` map it (None: every process of the cluster on this host);
    /// returns once all did. On failure nothing is left: the segment is
    /// unlinked and the mappings made are dropped.
    fn shm_create(&self, spec: &ShmSpec, procs: Option<&[u32]>) -> Result<Segment>;
    /// `shm_create` as a future, returned once the segment exists here; it
    /// completes (its value the OS name) once every process mapped it.
    fn shm_create_async(&self, spec: &ShmSpec, procs: Option<&[u32]>) -> Result<Future>;
    /// The segment `name` with `prefix` this process maps, if any.
    fn shm_segment(&self, name: &str, prefix: &str) -> Option<Segment>;
    /// Every segment this process maps.
    fn shm_segments(&self) -> Vec<Segment>;
    /// Removes segment `name` with `prefix` from /dev/shm and has every
    /// process drop its mapping (mappings in use stay valid until dropped).
    fn shm_unlink(&self, name: &str, prefix: &str) -> Result<()>;
    /// `shm_unlink` as a future, returned once /dev/shm no longer has the
    /// segment; it completes once every process dropped its mapping.
    fn shm_unlink_async(&self, name: &str, prefix: &str) -> Result<Future>;
}

impl ShmExt for Arc<Node> {
    fn shm_create_async(&self, spec: &ShmSpec, procs: Option<&[u32]>) -> Result<Future> {
        self.check_open()?;
        spec.check()?;
        let svc = shm(self)?;
        let size = spec.bytes()?;
        let stamp = svc.stamp(self)?;
        let name = os_name(stamp, std::process::id(), &spec.prefix, &spec.name);
        if svc.lookup(&spec.prefix, &spec.name).is_some() {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("shared segment {} (prefix {:?}) exists already", spec.name, spec.prefix)));
        }
        let fd = os::create(&name, size).map_err(|e| match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Error::new(
                ErrorKind::Io,
                format!(
                    "no room in {} for shared segment {} of {size} bytes ({} bytes free)",
                    os::SHM_DIR,
                    spec.name,
                    os::free_bytes().map_or("?".into(), |b| b.to_string())
                ),
            ),
            std::io::ErrorKind::AlreadyExists => Error::new(ErrorKind::InvalidArgument, format!("shared segment {name} exists already")),
            _ => Error::new(ErrorKind::Io, format!("cannot create shared segment {name}: {e}")),
        })?;
        let map = Mapping::new(&fd, size).map_err(|e| {
            let _ = os::unlink(&name);
            Error::new(ErrorKind::Io, format!("cannot map shared segment {name}: {e}"))
        })?;
        drop(fd);
        let seg = Segment(Arc::new(Inner { spec: spec.clone(), os_name: name.clone(), map }));
        svc.mapped.lock().insert(name.clone(), seg.clone());
        let me = self.myid();
        let (targets, only_local): (Vec<u32>, bool) = match procs {
            Some(p) => (p.iter().copied().filter(|&p| p != me).collect(), false),
            None => (self.procs().into_iter().filter(|&p| p != me).collect(), true),
        };
        let req = wire::encode_payload(&MapRequest { os_name: name.clone(), spec: spec.clone(), host: crate::sys::hostname(), only_local });
        let undo = |node: &Arc<Node>| {
            let _ = os::unlink(&name);
            svc.mapped.lock().remove(&name);
            // In order after each MAP on its connection: whoever mapped it drops it.
            for &p in &targets {
                let _ = node.request(p, ID, op::UNMAP, &[], name.as_bytes());
            }
        };
        let mut futures = Vec::with_capacity(targets.len());
        for &p in &targets {
            match self.request(p, ID, op::MAP, &[], &req) {
                Ok(f) => futures.push(f),
                Err(e) => {
                    undo(self);
                    return Err(map_error(p, &spec.name, e));
                }
            }
        }
        let all = self.join(me, futures, |_| Ok(Vec::new()));
        let (f, promise) = self.promise(me);
        let (node, svc2, spec2, name2, targets2) = (Arc::downgrade(self), svc.clone(), spec.clone(), name.clone(), targets.clone());
        all.on_complete(move |r| match r {
            Ok(_) => {
                promise.complete(Ok(name2.into_bytes()));
            }
            Err(e) => {
                let _ = os::unlink(&name2);
                svc2.mapped.lock().remove(&name2);
                if let Some(node) = node.upgrade() {
                    for &p in &targets2 {
                        let _ = node.send_oneway_nowait(p, ID, op::UNMAP_NOW, &[], name2.as_bytes());
                    }
                }
                promise.complete(Err(map_error(e.pid, &spec2.name, e.clone())));
            }
        });
        Ok(f.keeping(all))
    }

    fn shm_create(&self, spec: &ShmSpec, procs: Option<&[u32]>) -> Result<Segment> {
        let f = self.shm_create_async(spec, procs)?;
        let name =
            String::from_utf8(f.fetch(Some(Duration::from_secs(60)))?.to_vec()).map_err(|_| Error::new(ErrorKind::Protocol, "a segment name is UTF-8"))?;
        shm(self)?.mapped.lock().get(&name).cloned().ok_or_else(|| Error::new(ErrorKind::NotFound, format!("shared segment {name} was unlinked meanwhile")))
    }

    fn shm_segment(&self, name: &str, prefix: &str) -> Option<Segment> {
        shm(self).ok()?.lookup(prefix, name)
    }

    fn shm_segments(&self) -> Vec<Segment> {
        let Ok(svc) = shm(self) else { return Vec::new() };
        let mut v: Vec<Segment> = svc.mapped.lock().values().cloned().collect();
        v.sort_by(|a, b| a.0.os_name.cmp(&b.0.os_name));
        v
    }

    fn shm_unlink_async(&self, name: &str, prefix: &str) -> Result<Future> {
        self.check_open()?;
        check_name(name)?;
        check_prefix(prefix)?;
        let svc = shm(self)?;
        let stamp = svc.stamp(self)?;
        // The creator may be any process of this cluster: find the name in /dev/shm.
        let mut names: Vec<String> = os::list()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| SegmentName::parse(n))
            .filter(|s| s.stamp == stamp && s.prefix == prefix && s.name == name)
            .map(|s| s.os_name)
            .collect();
        if let Some(s) = svc.lookup(prefix, name) {
            names.push(s.0.os_name.clone());
        }
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, format!("no shared segment {name} (prefix {prefix:?}) in this cluster")));
        }
        for n in &names {
            if let Err(e) = os::unlink(n) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::new(ErrorKind::Io, format!("cannot unlink shared segment {n}: {e}")));
                }
            }
            svc.mapped.lock().remove(n);
        }
        let me = self.myid();
        let futures: Vec<Future> = self
            .procs()
            .into_iter()
            .filter(|&p| p != me)
            .flat_map(|p| names.iter().filter_map(move |n| self.request(p, ID, op::UNMAP, &[], n.as_bytes()).ok()).collect::<Vec<_>>())
            .collect();
        // Complete once every process answered or left (a process that left
        // has dropped its mappings anyway).
        let (f, promise) = self.promise(me);
        let left = Arc::new(Mutex::new((futures.len(), Some(promise))));
        if futures.is_empty() {
            if let Some(p) = left.lock().1.take() {
                p.complete(Ok(Vec::new()));
            }
        }
        let mut f = f;
        for u in futures {
            let left = left.clone();
            u.on_complete(move |_| {
                let mut g = left.lock();
                g.0 -= 1;
                if g.0 == 0 {
                    if let Some(p) = g.1.take() {
                        drop(g);
                        p.complete(Ok(Vec::new()));
                    }
                }
            });
            f = f.keeping(u);
        }
        Ok(f)
    }

    fn shm_unlink(&self, name: &str, prefix: &str) -> Result<()> {
        self.shm_unlink_async(name, prefix)?.wait(Some(Duration::from_secs(30)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        let stamp = ClusterStamp { head_pid: 4242, head_start: 99, cluster: 5, machine: 0xab12 };
        let n = os_name(stamp, 77, "my.job", "svar_1");
        assert_eq!(n, "lcshm.4242-99-5-ab12.77.my.job.svar_1");
        // A name from before the machine tag: this machine's.
        assert_eq!(SegmentName::parse("lcshm.4242-99-5.77.p.n").unwrap().stamp.machine, crate::sys::machine_tag());
        let p = SegmentName::parse(&n).unwrap();
        assert_eq!((p.stamp, p.creator_pid, p.prefix.as_str(), p.name.as_str()), (stamp, 77, "my.job", "svar_1"));
        assert_eq!(SegmentName::parse(&os_name(stamp, 1, "", "x")).unwrap().prefix, "");
        for foreign in [
            "julia_x_svar",
            "lcshm.1.2.3",
            "lcshm.a-1-1.2.p.n",
            "lcshm.1-1.2.p.n",
            "lcshm.1-1-1-1-1.2.p.n",
            "lcshm.1-1-1-zz.2.p.n",
            "lcshm.1-1-1.2.p.bad.name!",
        ] {
            assert!(SegmentName::parse(foreign).is_none(), "{foreign}");
        }
    }

    #[test]
    fn specs_are_checked() {
        assert_eq!(ShmSpec::new("a", 0, 8, &[3, 4]).bytes().unwrap(), 96);
        assert!(ShmSpec::new("a", 0, 8, &[u64::MAX, 2]).check().is_err());
        assert!(ShmSpec::new("a.b", 0, 8, &[1]).check().is_err());
        assert!(ShmSpec::new("a", 0, 0, &[1]).check().is_err());
        assert!(ShmSpec::new("a", 0, 1, &[1]).prefixed("x/y").check().is_err());
        assert_eq!(ShmSpec::new("a", 0, 4, &[]).bytes().unwrap(), 4, "no dims: one element");
    }

    #[test]
    fn a_dead_heads_segment_is_an_orphan_and_a_live_ones_is_not() {
        let prefix = format!("unit{}", std::process::id());
        let live = ClusterStamp::new_here().unwrap();
        let dead = ClusterStamp { head_start: live.head_start + 1, ..live };
        let (a, b) = (os_name(live, 1, &prefix, "live"), os_name(dead, 1, &prefix, "dead"));
        drop(os::create(&a, 64).unwrap());
        drop(os::create(&b, 64).unwrap());
        let found: Vec<String> = orphans(Some(&prefix)).unwrap().into_iter().map(|s| s.os_name).collect();
        assert_eq!(found, vec![b.clone()]);
        assert_eq!(remove_orphans(Some(&prefix)).unwrap(), vec![b.clone()]);
        assert!(os::list().unwrap().contains(&a) && !os::list().unwrap().contains(&b));
        os::unlink(&a).unwrap();
        // A head on another machine is no orphan here, whatever its pid.
        let far = ClusterStamp { head_start: live.head_start + 1, machine: live.machine ^ 1, ..live };
        let c = os_name(far, 1, &prefix, "far");
        drop(os::create(&c, 64).unwrap());
        assert!(orphans(Some(&prefix)).unwrap().is_empty());
        os::unlink(&c).unwrap();
    }
}
