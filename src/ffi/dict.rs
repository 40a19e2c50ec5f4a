//! `cluster_dict`, a cluster dictionary (ClusterDicts' GlobalDict and
//! DistributedDict) of byte keys and values; `cluster_dict_spec`, what a
//! creator asks for; `cluster_dict_entries`, a listing (keys, values or
//! pairs); `cluster_value`, where a value function puts what it computed.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from_vec, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::pmap::cluster_bytes;
use super::handles::{self, Kind};
use super::status::cluster_status;
use super::UserData;
use crate::service::dict::{decode_list, decode_pairs, Entries};
use crate::{Dict, DictKind, Error, Members, Spec};
use parking_lot::Mutex;
use std::ffi::{c_char, c_void};
use std::sync::Arc;

/// A handle to a dict. Any number of handles, in any processes, name the
/// same dict; freeing one frees only the handle (`cluster_dict_release`
/// removes the dict itself).
pub struct cluster_dict {
    _private: [u8; 0],
}

/// A listing read from a dict: `count` entries, each a key, a value or a
/// pair (`cluster_dict_entries_get`).
pub struct cluster_dict_entries {
    _private: [u8; 0],
}

/// Where a value function (`cluster_value_fn`) puts the value it computed;
/// valid only during that call.
pub struct cluster_value {
    _private: [u8; 0],
}

/// The built-in value function of `cluster_dict_set_with` storing a value
/// computed beforehand for each process. (Written into the header by
/// cbindgen.toml.)
/// cbindgen:ignore
pub const CLUSTER_DICT_EACH: &std::ffi::CStr = c"cluster.each";

const _: () = assert!(CLUSTER_DICT_EACH.to_bytes().len() == crate::service::dict::EACH.len());

/// `cluster_dict_spec.kind`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_dict_kind {
    /// Every member holds every key; members read their own copy.
    CLUSTER_DICT_GLOBAL = 0,
    /// Each key lives on the members its hash picks (`replication` of them).
    CLUSTER_DICT_DISTRIBUTED = 1,
}

/// `cluster_dict_spec.members`: which processes store the dict. (Not
/// named `cluster_dict_members`: that is the function listing them.)
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_dict_member_set {
    /// Every worker (the head alone when there are none): ClusterDicts' default.
    CLUSTER_MEMBERS_WORKERS = 0,
    /// Every process, the head included.
    CLUSTER_MEMBERS_ALL = 1,
    /// `pids[0..npids)`.
    CLUSTER_MEMBERS_PIDS = 2,
}

/// What `cluster_dict_entries` lists (`cluster_dict_list`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_dict_listing {
    CLUSTER_DICT_KEYS = 0,
    CLUSTER_DICT_VALUES = 1,
    CLUSTER_DICT_PAIRS = 2,
}

/// What a creator asks for. Fill it with `cluster_dict_spec_init`, then
/// set what differs. Two creations with the same name open one dict when
/// every other field is the same, and fail with CLUSTER_ERR_INVALID_ARGUMENT
/// when one differs.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_dict_spec {
    /// NUL-terminated, unique in the cluster; NULL or "": the head makes one up.
    pub name: *const c_char,
    /// A `cluster_dict_kind`. Default CLUSTER_DICT_DISTRIBUTED.
    pub kind: i32,
    /// A `cluster_dict_member_set`. Default CLUSTER_MEMBERS_WORKERS.
    pub members: i32,
    /// The members when `members` is CLUSTER_MEMBERS_PIDS.
    pub pids: *const i32,
    pub npids: usize,
    /// Copies of each key of a distributed dict; 0 (the default): 2 when
    /// it has at least 2 members, else 1. Ignored for a global dict.
    pub replication: u32,
    /// Opaque bytes that are part of the specification (bindings put
    /// their key and value types there); may be NULL when 0 long.
    pub type_tag: *const u8,
    pub type_tag_len: usize,
}

/// Computes the value to store from `args[0..len)`, on the process that
/// stores it (each member of a global dict, the owner of a key of a
/// distributed one; see `cluster_dict_set_with`). Puts the value with
/// `cluster_value_set` and returns 0; any other return fails the write,
/// with what was put as the error message.
///
/// Threads: a library thread applying the write, in threads and host
/// mode alike, holding the key's partition: it must be quick, must not
/// block and must not use this dict.
pub type cluster_value_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, args: *const u8, len: usize, value: *mut cluster_value) -> i32>;

c_handle!(cluster_dict, Kind::Dict, Dict);
c_handle!(cluster_dict_entries, Kind::DictEntries, Listing);
c_handle!(cluster_value, Kind::DictValue, Mutex<Vec<u8>>);

/// A decoded listing.
pub(crate) struct Listing {
    what: Entries,
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
}

impl Listing {
    fn decode(what: Entries, bytes: &[u8]) -> Result<Listing, Error> {
        Ok(match what {
            Entries::Keys => Listing { what, keys: decode_list(bytes)?, values: Vec::new() },
            Entries::Values => Listing { what, keys: Vec::new(), values: decode_list(bytes)? },
            Entries::Pairs => {
                let (keys, values) = decode_pairs(bytes)?.into_iter().unzip();
                Listing { what, keys, values }
            }
        })
    }
    fn len(&self) -> usize {
        self.keys.len().max(self.values.len())
    }
}

fn listing_arg(what: i32) -> Result<Entries, Error> {
    match what {
        0 => Ok(Entries::Keys),
        1 => Ok(Entries::Values),
        2 => Ok(Entries::Pairs),
        o => Err(invalid(format!("no dict listing {o}"))),
    }
}

fn new_dict_handle(d: Dict) -> Result<*mut cluster_dict, Error> {
    Ok(handles::insert(Kind::Dict, Arc::new(d))? as *mut cluster_dict)
}

fn new_entries_handle(l: Listing) -> Result<*mut cluster_dict_entries, Error> {
    Ok(handles::insert(Kind::DictEntries, Arc::new(l))? as *mut cluster_dict_entries)
}

unsafe fn spec_arg(s: *const cluster_dict_spec) -> Result<Spec, Error> {
    if s.is_null() {
        return Err(null_arg("spec"));
    }
    let s = &*s;
    let kind = match s.kind {
        0 => DictKind::Global,
        1 => DictKind::Distributed,
        o => return Err(invalid(format!("no dict kind {o}"))),
    };
    let members = match s.members {
        0 => Members::Workers,
        1 => Members::All,
        2 => Members::Pids(pid_list(s.pids, s.npids)?),
        o => return Err(invalid(format!("no dict member set {o}"))),
    };
    let name = opt_cstr(s.name, "spec->name")?.unwrap_or("");
    let tag = bytes(s.type_tag, s.type_tag_len, "spec->type_tag")?;
    Ok(Spec::new(kind, members).named(name).replication(s.replication).type_tag(tag))
}

/// Fills `*spec` with the defaults: a distributed dict over the workers,
/// a generated name, the default replication, no type tag.
///
/// Ownership: `spec` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_spec_init(spec: *mut cluster_dict_spec) -> cluster_status {
    ffi!({
        check_out(spec, "spec")?;
        put(
            spec,
            "spec",
            cluster_dict_spec {
                name: std::ptr::null(),
                kind: cluster_dict_kind::CLUSTER_DICT_DISTRIBUTED as i32,
                members: cluster_dict_member_set::CLUSTER_MEMBERS_WORKERS as i32,
                pids: std::ptr::null(),
                npids: 0,
                replication: 0,
                type_tag: std::ptr::null(),
                type_tag_len: 0,
            },
        )
    })
}

// ---- creating, opening, passing on ------------------------------------------

/// Creates the dict `spec` describes, or opens the one of that name if its
/// specification is the same; returns once every member holds it. Any
/// process may create one, member or not.
///
/// Ownership: `spec` is read during the call; `*out` receives a new
/// handle, released with `cluster_dict_free`.
/// Blocking: yes, a round trip to the head and from it to every member.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_create(ctx: *mut cluster_ctx, spec: *const cluster_dict_spec, out: *mut *mut cluster_dict) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let d = c.dict(&spec_arg(spec)?)?;
        put(out, "out", new_dict_handle(d)?)
    })
}

/// `cluster_dict_create` as a future, returned at once: its value is the
/// dict's handle as bytes, for `cluster_dict_open`.
///
/// Ownership: `spec` is read during the call; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_create_async(ctx: *mut cluster_ctx, spec: *const cluster_dict_spec, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.dict_async(&spec_arg(spec)?)?)?)
    })
}

/// Opens the dict `data[0..len)` names: bytes from `cluster_dict_to_bytes`
/// or a `cluster_dict_create_async` future, made in any process of the
/// cluster. CLUSTER_ERR_INVALID_ARGUMENT if they are not a dict's.
///
/// Ownership: `data` is read during the call; `*out` receives a new
/// handle, released with `cluster_dict_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_open(ctx: *mut cluster_ctx, data: *const u8, len: usize, out: *mut *mut cluster_dict) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let d = c.open_dict(bytes(data, len, "data")?)?;
        put(out, "out", new_dict_handle(d)?)
    })
}

/// The handle as bytes, to pass to another process (e.g. inside call
/// arguments), which opens it with `cluster_dict_open`.
///
/// Ownership: `d` stays the caller's; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_to_bytes(d: *mut cluster_dict, out: *mut cluster_buffer) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", buffer_from_vec(dict.to_bytes())?)
    })
}

/// Frees the handle (the dict stays; see `cluster_dict_release`). NULL is
/// accepted; a second free is CLUSTER_ERR_BAD_HANDLE.
///
/// Ownership: the handle is gone after the call.
/// Blocking: no.
/// Threads: any, once per handle.
#[no_mangle]
pub extern "C" fn cluster_dict_free(d: *mut cluster_dict) -> cluster_status {
    ffi!({
        if d.is_null() {
            return Ok(());
        }
        d.remove()
    })
}

/// Copies the dict's name, NUL-terminated, into `buf[0..cap)` and sets
/// `*len` to its length without the NUL (CLUSTER_ERR_BUFFER_TOO_SMALL
/// when `cap` is too small: `*len` still says what is needed).
///
/// Ownership: `d` stays the caller's; `buf` is written, never kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_name(d: *mut cluster_dict, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    ffi!([d => dict] put_str(dict.name(), buf, cap, len))
}

/// `*kind` = a `cluster_dict_kind`; `*replication` = the copies of each
/// key (a global dict: its member count). Either may be NULL.
///
/// Ownership: `d` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_info(d: *mut cluster_dict, kind: *mut i32, replication: *mut u32) -> cluster_status {
    ffi!([d => dict] {
        let cfg = dict.config();
        if !kind.is_null() {
            put(kind, "kind", match dict.kind() {
                DictKind::Global => cluster_dict_kind::CLUSTER_DICT_GLOBAL as i32,
                DictKind::Distributed => cluster_dict_kind::CLUSTER_DICT_DISTRIBUTED as i32,
            })?;
        }
        if !replication.is_null() {
            let r = match dict.kind() {
                DictKind::Global => cfg.members.len() as u32,
                DictKind::Distributed => cfg.replication,
            };
            put(replication, "replication", r)?;
        }
        Ok(())
    })
}

/// Copies the ids of the dict's members (the survivors, once one died),
/// ascending, into `ids[0..cap)`; `*count` = how many there are (also on
/// CLUSTER_ERR_BUFFER_TOO_SMALL).
///
/// Ownership: `d` stays the caller's; `ids` is written, never kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_members(d: *mut cluster_dict, ids: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    ffi!([d => dict] put_ids(dict.members(), ids, cap, count))
}

// ---- keys -------------------------------------------------------------------

/// `d[k] = v`: sets `key` to `value` on every replica; returns once all of
/// them applied it. Writes to one key are applied in one order everywhere.
///
/// Ownership: `key` and `value` are copied or written before return.
/// Blocking: yes, a round trip to the key's primary and from it to its
/// backups (after a member died, retried on the survivors for up to 12 s).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_set(d: *mut cluster_dict, key: *const u8, klen: usize, value: *const u8, vlen: usize) -> cluster_status {
    ffi!([d => dict] dict.set(bytes(key, klen, "key")?, bytes(value, vlen, "value")?))
}

/// `cluster_dict_set` as a future, returned at once (no value); retried
/// as the blocking form is, with no thread waiting.
///
/// Ownership: `key` and `value` are copied before return; `*out` receives
/// a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_set_async(
    d: *mut cluster_dict,
    key: *const u8,
    klen: usize,
    value: *const u8,
    vlen: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.set_async(bytes(key, klen, "key")?, bytes(value, vlen, "value")?)?)?)
    })
}

unsafe fn pairs_arg<'a>(keys: *const cluster_bytes, values: *const cluster_bytes, n: usize) -> Result<crate::service::dict::PairRefs<'a>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if keys.is_null() || values.is_null() {
        return Err(null_arg(if keys.is_null() { "keys" } else { "values" }));
    }
    let (ks, vs) = (std::slice::from_raw_parts(keys, n), std::slice::from_raw_parts(values, n));
    ks.iter().zip(vs).map(|(k, v)| Ok((bytes(k.data, k.len, "keys[i]")?, bytes(v.data, v.len, "values[i]")?))).collect()
}

/// Sets `keys[i]` to `values[i]` for i < n: one request to each primary
/// concerned, carrying its pairs (each a write of its own, ordered and
/// replicated as `cluster_dict_set`); returns once every pair is on every
/// replica, or with the first error (pairs already applied stay applied).
///
/// Ownership: the arrays and the bytes they point to are read during the call.
/// Blocking: as `cluster_dict_set`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_set_many(d: *mut cluster_dict, keys: *const cluster_bytes, values: *const cluster_bytes, n: usize) -> cluster_status {
    ffi!([d => dict] dict.set_many(&pairs_arg(keys, values, n)?))
}

/// `cluster_dict_set_many` as a future, returned at once (no value).
///
/// Ownership: the pairs are copied before return; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_set_many_async(
    d: *mut cluster_dict,
    keys: *const cluster_bytes,
    values: *const cluster_bytes,
    n: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.set_many_async(&pairs_arg(keys, values, n)?)?)?)
    })
}

/// Sets `key` to what the value function `fname` computes from
/// `args[0..len)` where the value is stored: on each member of a global
/// dict (each stores its own result), on the primary of a distributed
/// one (its backups copy it). Every process that stores values needs
/// `fname` registered (`cluster_dict_register_value_fn`); a function
/// that fails fails the write (CLUSTER_ERR_REMOTE). The built-in
/// CLUSTER_DICT_EACH ("cluster.each") stores values computed beforehand,
/// one per process: `args` holds, for each, its id (uint32_t
/// little-endian), its length (uint64_t little-endian) and its bytes.
///
/// Ownership: everything is copied or written before return.
/// Blocking: as `cluster_dict_set`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_set_with(
    d: *mut cluster_dict,
    key: *const u8,
    klen: usize,
    fname: *const c_char,
    args: *const u8,
    len: usize,
) -> cluster_status {
    ffi!([d => dict] dict.set_with(bytes(key, klen, "key")?, cstr(fname, "fname")?, bytes(args, len, "args")?))
}

/// `cluster_dict_set_with` as a future, returned at once (no value).
///
/// Ownership: everything is copied before return; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_set_with_async(
    d: *mut cluster_dict,
    key: *const u8,
    klen: usize,
    fname: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.set_with_async(bytes(key, klen, "key")?, cstr(fname, "fname")?, bytes(args, len, "args")?)?)?)
    })
}

/// `d[k]`: the value of `key` into `*out`; CLUSTER_ERR_NOT_FOUND when it
/// is not there. A member of a global dict reads its own copy, with no
/// message; anyone else asks the key's primary.
///
/// Ownership: `key` is read during the call; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: a round trip, except on a global dict's member.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_get(d: *mut cluster_dict, key: *const u8, klen: usize, out: *mut cluster_buffer) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        let v = dict.index(bytes(key, klen, "key")?)?;
        put(out, "out", buffer_from_vec(v)?)
    })
}

/// Reads `key` from this process's own copy, never waiting: when this
/// process is a member of a global dict, `*held` = true and the value goes
/// into `*out` (CLUSTER_ERR_NOT_FOUND when the key is not there); else
/// `*held` = false and nothing is read (use `cluster_dict_get_async`).
///
/// Ownership: `key` is read during the call; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_get_local(
    d: *mut cluster_dict,
    key: *const u8,
    klen: usize,
    held: *mut bool,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([d => dict] {
        check_out(held, "held")?;
        check_out(out, "out")?;
        match dict.get_local(bytes(key, klen, "key")?) {
            None => put(held, "held", false),
            Some(v) => {
                put(held, "held", true)?;
                let v = v.ok_or_else(|| Error::new(crate::ErrorKind::NotFound, format!("key not found in {}", dict.name())))?;
                put(out, "out", buffer_from_vec(v)?)
            }
        }
    })
}

/// `*pid` = the process that owns `key` now: the primary of its
/// partition, which orders its writes (a distributed dict's value
/// functions run there). It changes when a member dies.
///
/// Ownership: `key` is read during the call.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_owner(d: *mut cluster_dict, key: *const u8, klen: usize, pid: *mut i32) -> cluster_status {
    ffi!([d => dict] put(pid, "pid", dict.owner(bytes(key, klen, "key")?) as i32))
}

/// `cluster_dict_get` as a future, returned at once: its value is the
/// value; a missing key fails it with CLUSTER_ERR_NOT_FOUND.
///
/// Ownership: `key` is copied before return; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_get_async(d: *mut cluster_dict, key: *const u8, klen: usize, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.get_async(bytes(key, klen, "key")?)?)?)
    })
}

/// `haskey(d, k)` into `*out`.
///
/// Ownership: `key` is read during the call.
/// Blocking: as `cluster_dict_get`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_haskey(d: *mut cluster_dict, key: *const u8, klen: usize, out: *mut bool) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", dict.haskey(bytes(key, klen, "key")?)?)
    })
}

/// `cluster_dict_haskey` as a future: its value is one byte, 1 when the
/// key is there, else 0.
///
/// Ownership: `key` is copied before return; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_haskey_async(d: *mut cluster_dict, key: *const u8, klen: usize, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.haskey_async(bytes(key, klen, "key")?)?)?)
    })
}

/// `get!(d, k, default)`: the value of `key` into `*out`, or, when it is
/// not there, `default` inserted on every replica and returned; atomic at
/// the key's primary, so concurrent callers all get the one value stored.
///
/// Ownership: `key` and `default` are copied or written before return;
/// `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: as `cluster_dict_set`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_get_or_insert(
    d: *mut cluster_dict,
    key: *const u8,
    klen: usize,
    default: *const u8,
    dlen: usize,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        let v = dict.get_or_insert(bytes(key, klen, "key")?, bytes(default, dlen, "default")?)?;
        put(out, "out", buffer_from_vec(v)?)
    })
}

/// `cluster_dict_get_or_insert` as a future: its value is the key's value.
///
/// Ownership: `key` and `default` are copied before return; `*out`
/// receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_get_or_insert_async(
    d: *mut cluster_dict,
    key: *const u8,
    klen: usize,
    default: *const u8,
    dlen: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.get_or_insert_async(bytes(key, klen, "key")?, bytes(default, dlen, "default")?)?)?)
    })
}

/// `pop!(d, k)`: removes `key` everywhere and puts the value it had into
/// `*out`; CLUSTER_ERR_NOT_FOUND when it was not there. Not retried when
/// the primary dies while it runs (whether it was applied is unknown):
/// CLUSTER_ERR_PROCESS_EXITED then.
///
/// Ownership: `key` is read during the call; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: as `cluster_dict_set`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_pop(d: *mut cluster_dict, key: *const u8, klen: usize, out: *mut cluster_buffer) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        let k = bytes(key, klen, "key")?;
        let v = dict.pop(k)?.ok_or_else(|| Error::new(crate::ErrorKind::NotFound, format!("key not found in {}", dict.name())))?;
        put(out, "out", buffer_from_vec(v)?)
    })
}

/// `cluster_dict_pop` as a future: its value is the value the key had; a
/// missing key fails it with CLUSTER_ERR_NOT_FOUND.
///
/// Ownership: `key` is copied before return; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_pop_async(d: *mut cluster_dict, key: *const u8, klen: usize, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.pop_async(bytes(key, klen, "key")?)?)?)
    })
}

/// `delete!(d, k)`: removes `key` everywhere (nothing when it is not there).
///
/// Ownership: `key` is read during the call.
/// Blocking: as `cluster_dict_set`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_delete(d: *mut cluster_dict, key: *const u8, klen: usize) -> cluster_status {
    ffi!([d => dict] dict.delete(bytes(key, klen, "key")?))
}

/// `cluster_dict_delete` as a future (no value).
///
/// Ownership: `key` is copied before return; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_delete_async(d: *mut cluster_dict, key: *const u8, klen: usize, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.delete_async(bytes(key, klen, "key")?)?)?)
    })
}

// ---- the whole dict -----------------------------------------------------------

/// `length(d)` into `*out`: the pairs of every member (a distributed dict:
/// summed over the members; a global one: one member's). `isempty(d)` is
/// a length of 0.
///
/// Ownership: `d` stays the caller's.
/// Blocking: yes, a round trip to each member (a global dict's member: none).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_length(d: *mut cluster_dict, out: *mut usize) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", dict.length()?)
    })
}

/// `cluster_dict_length` as a future: its value is the length, a uint64_t
/// little-endian (8 bytes).
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_length_async(d: *mut cluster_dict, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.length_async()?)?)
    })
}

/// Lists the dict's keys, values or pairs (a `cluster_dict_listing`), in
/// no particular order: `keys`, `values` and iteration.
///
/// Ownership: `*out` receives a new listing, released with
/// `cluster_dict_entries_free`.
/// Blocking: yes, as `cluster_dict_length`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_list(d: *mut cluster_dict, what: i32, out: *mut *mut cluster_dict_entries) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        let what = listing_arg(what)?;
        let l = match what {
            Entries::Keys => Listing { what, keys: dict.keys()?, values: Vec::new() },
            Entries::Values => Listing { what, keys: Vec::new(), values: dict.values()? },
            Entries::Pairs => {
                let (keys, values) = dict.pairs()?.into_iter().unzip();
                Listing { what, keys, values }
            }
        };
        put(out, "out", new_entries_handle(l)?)
    })
}

/// `cluster_dict_list` as a future, returned at once; read its value with
/// `cluster_dict_entries_decode` and the same `what`.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_list_async(d: *mut cluster_dict, what: i32, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.entries_async(listing_arg(what)?)?)?)
    })
}

/// A listing from the value `data[0..len)` of a `cluster_dict_list_async`
/// future made with `what`.
///
/// Ownership: `data` is read during the call; `*out` receives a new
/// listing, released with `cluster_dict_entries_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_entries_decode(data: *const u8, len: usize, what: i32, out: *mut *mut cluster_dict_entries) -> cluster_status {
    ffi!({
        check_out(out, "out")?;
        let l = Listing::decode(listing_arg(what)?, bytes(data, len, "data")?).map_err(|e| invalid(format!("not a dict listing: {}", e.message)))?;
        put(out, "out", new_entries_handle(l)?)
    })
}

/// `localpart(d)`: the pairs this process stores of the dict (none on a
/// non-member), read here with no message.
///
/// Ownership: `*out` receives a new listing of pairs, released with
/// `cluster_dict_entries_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_localpart(d: *mut cluster_dict, out: *mut *mut cluster_dict_entries) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        let (keys, values) = dict.localpart().into_iter().unzip();
        put(out, "out", new_entries_handle(Listing { what: Entries::Pairs, keys, values })?)
    })
}

/// `delete!(d)`: removes the dict from every member; once this returns no
/// member holds anything of it and its name is free. Handles to it then
/// fail with CLUSTER_ERR_INVALID_ARGUMENT (they still need freeing).
///
/// Ownership: `d` stays the caller's.
/// Blocking: yes, a round trip to the head and from it to every member.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_release(d: *mut cluster_dict) -> cluster_status {
    ffi!([d => dict] dict.release())
}

/// `cluster_dict_release` as a future (no value).
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_release_async(d: *mut cluster_dict, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([d => dict] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(dict.release_async()?)?)
    })
}

/// `local_dicts()`: the names of the dicts this process holds state for
/// (as a member), sorted, as a listing of keys.
///
/// Ownership: `*out` receives a new listing, released with
/// `cluster_dict_entries_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_local_names(ctx: *mut cluster_ctx, out: *mut *mut cluster_dict_entries) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let keys = c.local_dicts().into_iter().map(String::into_bytes).collect();
        put(out, "out", new_entries_handle(Listing { what: Entries::Keys, keys, values: Vec::new() })?)
    })
}

// ---- listings -------------------------------------------------------------------

/// `*count` = how many entries the listing has.
///
/// Ownership: `e` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_entries_count(e: *mut cluster_dict_entries, count: *mut usize) -> cluster_status {
    ffi!([e => l] put(count, "count", l.len()))
}

/// Entry `i`: its key into `*key`/`*klen` and its value into
/// `*value`/`*vlen` (any of the four may be NULL). A listing of keys has
/// no values (NULL, 0), one of values no keys.
///
/// Ownership: the bytes belong to the listing and stay valid until
/// `cluster_dict_entries_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_entries_get(
    e: *mut cluster_dict_entries,
    i: usize,
    key: *mut *const u8,
    klen: *mut usize,
    value: *mut *const u8,
    vlen: *mut usize,
) -> cluster_status {
    ffi!([e => l] {
        if i >= l.len() {
            return Err(invalid(format!("no entry {i} of {}", l.len())));
        }
        let (k, v) = match l.what {
            Entries::Keys => (Some(&l.keys[i]), None),
            Entries::Values => (None, Some(&l.values[i])),
            Entries::Pairs => (Some(&l.keys[i]), Some(&l.values[i])),
        };
        for (b, p, n) in [(k, key, klen), (v, value, vlen)] {
            if !p.is_null() {
                put(p, "data", b.map_or(std::ptr::null(), |b| b.as_ptr()))?;
            }
            if !n.is_null() {
                put(n, "len", b.map_or(0, Vec::len))?;
            }
        }
        Ok(())
    })
}

/// Frees a listing. NULL is accepted.
///
/// Ownership: the listing and the bytes read from it are gone after the call.
/// Blocking: no.
/// Threads: any, once per listing.
#[no_mangle]
pub extern "C" fn cluster_dict_entries_free(e: *mut cluster_dict_entries) -> cluster_status {
    ffi!({
        if e.is_null() {
            return Ok(());
        }
        e.remove()
    })
}

// ---- value functions --------------------------------------------------------------

/// Registers the value function `name` in this process (replacing an
/// earlier one), for `cluster_dict_set_with`: every process that stores
/// values computed by it needs it.
///
/// Ownership: `name` is copied; `user_data` is passed to every call and
/// must stay valid while the cluster runs.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_dict_register_value_fn(
    ctx: *mut cluster_ctx,
    name: *const c_char,
    f: cluster_value_fn,
    user_data: *mut c_void,
) -> cluster_status {
    ffi!([ctx => c] {
        let name = cstr(name, "name")?;
        let f = f.ok_or_else(|| null_arg("f"))?;
        let ud = UserData(user_data);
        let gate = c.gate().clone();
        c.register_value_fn(name, move |node, args| {
            let ud = &ud;
            let Some(_pass) = gate.enter() else { return Err("the cluster is closing".into()) };
            let out = Arc::new(Mutex::new(Vec::new()));
            let h = handles::insert(Kind::DictValue, out.clone()).map_err(|e| e.message)?;
            // SAFETY: the host registered `f` with this user data; `args` lives for the call.
            let rc = unsafe { f(ud.0, args.as_ptr(), args.len(), h as *mut cluster_value) };
            let _ = handles::remove(Kind::DictValue, h);
            let v = std::mem::take(&mut *out.lock());
            match rc {
                0 => Ok(v),
                rc => Err(match v.is_empty() {
                    true => format!("value function failed on process {} (returned {rc})", node.myid()),
                    false => String::from_utf8_lossy(&v).into_owned(),
                }),
            }
        })
    })
}

/// Inside a `cluster_value_fn`: the value to store is `data[0..len)`
/// (replacing what was put before); when the function fails, the error
/// message.
///
/// Ownership: `data` is copied.
/// Blocking: no.
/// Threads: the value function's, during its call (afterwards the handle
/// is stale: CLUSTER_ERR_BAD_HANDLE).
#[no_mangle]
pub unsafe extern "C" fn cluster_value_set(value: *mut cluster_value, data: *const u8, len: usize) -> cluster_status {
    ffi!([value => v] {
        *v.lock() = bytes(data, len, "data")?.to_vec();
        Ok(())
    })
}
