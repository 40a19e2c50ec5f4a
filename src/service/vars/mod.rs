//! Remote variables (ClusterUtils' `sow` and `reap` for byte values):
//! each process holds named byte strings; a caller sets one on a set of
//! processes, reads it from a set (one value per process), or applies a
//! function registered by name (an ordinary rpc function) to it where it
//! lives, keeping the result there or returning it.
//!
//! **Shape.** A process's variables are a map behind one short lock; a
//! value is shared (`Arc`) so a read answers without copying under it.
//! An operation over several processes is one request to each, sent at
//! once, and one future gathering the answers in the caller's order
//! (the "parts" layout, `wire::parts`); the first failure fails it,
//! naming its process. The caller's own share runs here, without a message.
//!
//! **Protocol** (service 9):
//!
//! | op     | kind    | meta                         | payload | reply          |
//! |--------|---------|------------------------------|---------|----------------|
//! | SET    | request | name (UTF-8)                 | value   | empty          |
//! | GET    | request | name                         |         | the value      |
//! | APPLY  | request | `Apply` (name, function, keep_as) |    | result / empty |
//! | DELETE | request | name                         |         | empty          |

use crate::error::{Error, ErrorKind, Result};
use crate::net::Job;
use crate::node::service::unknown_op;
use crate::node::{Future, Incoming, Node, ReplyTo, Service};
use crate::service::rpc::RpcExt;
use crate::wire::{self, parts, ServiceId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const ID: ServiceId = 9;

#[doc(hidden)]
pub mod op {
    pub const SET: u16 = 1;
    pub const GET: u16 = 2;
    pub const APPLY: u16 = 3;
    pub const DELETE: u16 = 4;
}

/// The longest variable name.
pub const MAX_NAME: usize = 1024;

#[doc(hidden)]
#[derive(Serialize, Deserialize)]
pub struct Apply {
    pub name: String,
    pub function: String,
    /// Store the result under this name instead of returning it.
    pub keep_as: Option<String>,
}

/// The variables this process holds.
#[derive(Default)]
pub struct Vars {
    vars: Mutex<HashMap<String, Arc<[u8]>>>,
}

impl Vars {
    pub fn new() -> Arc<Vars> {
        Arc::new(Vars::default())
    }
    fn get(&self, me: u32, name: &str) -> Result<Arc<[u8]>> {
        self.vars.lock().get(name).cloned().ok_or_else(|| missing(me, name))
    }
    fn set(&self, name: &str, value: &[u8]) {
        self.vars.lock().insert(name.to_string(), Arc::from(value));
    }
    /// The names of the variables held here, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vars.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Runs one operation here; the reply goes to `reply`.
    fn serve(&self, node: &Arc<Node>, op: u16, meta: &[u8], payload: &[u8], reply: ReplyTo) -> Result<()> {
        let me = node.myid();
        match op {
            op::SET => {
                self.set(name_of(meta)?, payload);
                reply.send(node, Ok(&[]));
            }
            op::GET => match self.get(me, name_of(meta)?) {
                Ok(v) => {
                    reply.send(node, Ok(&v));
                }
                Err(e) => {
                    reply.send(node, Err(e));
                }
            },
            op::DELETE => {
                self.vars.lock().remove(name_of(meta)?);
                reply.send(node, Ok(&[]));
            }
            op::APPLY => {
                let a: Apply = wire::decode_meta(meta)?;
                let value = match self.get(me, &a.name) {
                    Ok(v) => v,
                    Err(e) => {
                        reply.send(node, Err(e));
                        return Ok(());
                    }
                };
                let call = match node.remotecall(me, &a.function, &value) {
                    Ok(f) => f,
                    Err(e) => {
                        reply.send(node, Err(e));
                        return Ok(());
                    }
                };
                let (keep, weak) = (a.keep_as, Arc::downgrade(node));
                call.on_complete(move |r| {
                    let Some(node) = weak.upgrade() else { return };
                    match (r, keep) {
                        (Ok(v), Some(dest)) => {
                            if let Some(vars) = node.service::<Vars>() {
                                vars.set(&dest, v);
                            }
                            reply.send(&node, Ok(&[]));
                        }
                        (Ok(v), None) => {
                            reply.send(&node, Ok(v));
                        }
                        (Err(e), _) => {
                            reply.send(&node, Err(e.clone()));
                        }
                    }
                });
            }
            o => return Err(unknown_op("vars", o)),
        }
        Ok(())
    }
}

fn missing(me: u32, name: &str) -> Error {
    Error::at(ErrorKind::NotFound, me, format!("process {me} holds no variable `{name}`"))
}

fn name_of(meta: &[u8]) -> Result<&str> {
    std::str::from_utf8(meta).map_err(|_| Error::new(ErrorKind::Protocol, "a variable's name is not UTF-8"))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("a variable's name is 1 to {MAX_NAME} bytes")));
    }
    Ok(())
}

#[doc(hidden)]
pub fn decode(op: u16, meta: &[u8]) -> Result<()> {
    match op {
        op::SET | op::GET | op::DELETE => name_of(meta).map(|_| ()),
        op::APPLY => wire::decode_meta::<Apply>(meta).map(|_| ()),
        o => Err(unknown_op("vars", o)),
    }
}

impl Service for Vars {
    fn id(&self) -> ServiceId {
        ID
    }
    fn name(&self) -> &'static str {
        "vars"
    }
    fn on_message(&self, node: &Arc<Node>, msg: Incoming) -> Result<Option<Job>> {
        decode(msg.op(), &msg.meta)?;
        self.serve(node, msg.op(), &msg.meta, &msg.payload, msg.reply)?;
        Ok(None)
    }
    fn on_close(&self, _node: &Node) {
        self.vars.lock().clear();
    }
}

fn vars(node: &Node) -> Result<Arc<Vars>> {
    node.service::<Vars>().ok_or_else(|| Error::new(ErrorKind::WrongMode, "no remote-variable service on this node"))
}

/// Sends `op` to every process of `pids` (this one served here, without a
/// message); a future with every answer, in the order of `pids`.
fn to_each(node: &Arc<Node>, pids: &[u32], op: u16, meta: &[u8], payload: &[u8]) -> Result<Future> {
    node.check_open()?;
    let svc = vars(node)?;
    if pids.is_empty() {
        return Err(Error::new(ErrorKind::InvalidArgument, "no processes"));
    }
    let me = node.myid();
    let mut answers = Vec::with_capacity(pids.len());
    for &p in pids {
        let f = if p == me {
            let (f, slot) = node.local_future(me);
            svc.serve(node, op, meta, payload, ReplyTo::Local(slot))?;
            f
        } else {
            // A process that is gone fails the whole operation, naming it,
            // as its answer would.
            node.request(p, ID, op, meta, payload).unwrap_or_else(|e| failed(node, p, e))
        };
        answers.push(f);
    }
    Ok(gather(node, pids, answers))
}

fn failed(node: &Arc<Node>, pid: u32, e: Error) -> Future {
    let (f, p) = node.promise_quiet(pid);
    p.complete(Err(e));
    f
}

/// A future of every one of `answers` in the parts layout (`pids[i]`
/// answered `answers[i]`), or the first failure.
pub(crate) fn gather(node: &Arc<Node>, pids: &[u32], answers: Vec<Future>) -> Future {
    let pids = pids.to_vec();
    node.join(node.myid(), answers, move |got| Ok(parts::encode_parts(pids.iter().copied().zip(got.iter().map(Vec::as_slice)))))
}

const WAIT: Option<Duration> = None;

/// Remote variables, on any node with the service.
pub trait VarsExt {
    /// Sets variable `name` to `value` on every process of `pids`.
    fn set_var(&self, pids: &[u32], name: &str, value: &[u8]) -> Result<()>;
    /// `set_var` as a future, returned at once.
    fn set_var_async(&self, pids: &[u32], name: &str, value: &[u8]) -> Result<Future>;
    /// Variable `name` on each of `pids`, in their order.
    fn get_var(&self, pids: &[u32], name: &str) -> Result<Vec<(u32, Vec<u8>)>>;
    /// `get_var` as a future, its value in the parts layout.
    fn get_var_async(&self, pids: &[u32], name: &str) -> Result<Future>;
    /// Calls the rpc function `function` with variable `name`'s value on
    /// each of `pids`: the results (`keep_as` None), or each kept there
    /// under `keep_as` (empty results).
    fn apply_var(&self, pids: &[u32], name: &str, function: &str, keep_as: Option<&str>) -> Result<Vec<(u32, Vec<u8>)>>;
    /// `apply_var` as a future, its value in the parts layout.
    fn apply_var_async(&self, pids: &[u32], name: &str, function: &str, keep_as: Option<&str>) -> Result<Future>;
    /// Removes variable `name` from `pids` (absent is no error).
    fn delete_var(&self, pids: &[u32], name: &str) -> Result<()>;
    /// `delete_var` as a future.
    fn delete_var_async(&self, pids: &[u32], name: &str) -> Result<Future>;
    /// This process's variable `name`, read here.
    fn local_var(&self, name: &str) -> Result<Arc<[u8]>>;
    /// Sets this process's variable `name`.
    fn set_local_var(&self, name: &str, value: &[u8]) -> Result<()>;
}

fn owned(v: &[u8]) -> Result<Vec<(u32, Vec<u8>)>> {
    Ok(parts::decode_parts(v)?.into_iter().map(|(p, b)| (p, b.to_vec())).collect())
}

impl VarsExt for Arc<Node> {
    fn set_var(&self, pids: &[u32], name: &str, value: &[u8]) -> Result<()> {
        self.set_var_async(pids, name, value)?.wait(WAIT)
    }
    fn set_var_async(&self, pids: &[u32], name: &str, value: &[u8]) -> Result<Future> {
        check_name(name)?;
        to_each(self, pids, op::SET, name.as_bytes(), value)
    }
    fn get_var(&self, pids: &[u32], name: &str) -> Result<Vec<(u32, Vec<u8>)>> {
        owned(self.get_var_async(pids, name)?.fetch(WAIT)?)
    }
    fn get_var_async(&self, pids: &[u32], name: &str) -> Result<Future> {
        check_name(name)?;
        to_each(self, pids, op::GET, name.as_bytes(), &[])
    }
    fn apply_var(&self, pids: &[u32], name: &str, function: &str, keep_as: Option<&str>) -> Result<Vec<(u32, Vec<u8>)>> {
        owned(self.apply_var_async(pids, name, function, keep_as)?.fetch(WAIT)?)
    }
    fn apply_var_async(&self, pids: &[u32], name: &str, function: &str, keep_as: Option<&str>) -> Result<Future> {
        check_name(name)?;
        if let Some(k) = keep_as {
            check_name(k)?;
        }
        if function.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "no function name"));
        }
        let meta = wire::encode_meta(&Apply { name: name.into(), function: function.into(), keep_as: keep_as.map(Into::into) });
        to_each(self, pids, op::APPLY, &meta, &[])
    }
    fn delete_var(&self, pids: &[u32], name: &str) -> Result<()> {
        self.delete_var_async(pids, name)?.wait(WAIT)
    }
    fn delete_var_async(&self, pids: &[u32], name: &str) -> Result<Future> {
        check_name(name)?;
        to_each(self, pids, op::DELETE, name.as_bytes(), &[])
    }
    fn local_var(&self, name: &str) -> Result<Arc<[u8]>> {
        vars(self)?.get(self.myid(), name)
    }
    fn set_local_var(&self, name: &str, value: &[u8]) -> Result<()> {
        check_name(name)?;
        vars(self)?.set(name, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Config;
    use crate::wire::{Header, Kind};

    fn node() -> Arc<Node> {
        let n = Node::detached(Config { heartbeat_timeout: Duration::ZERO, ..Config::default() }, true).unwrap();
        n.install(Vars::new()).unwrap();
        n.start().unwrap();
        n
    }

    fn ask(n: &Arc<Node>, op: u16, meta: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let msg = Incoming::test(2, Header::new(Kind::Request, ID, op, 1), meta.to_vec(), payload.to_vec(), &out);
        n.service::<Vars>().unwrap().on_message(n, msg)?;
        let r = out.lock().pop().expect("an answer");
        r
    }

    #[test]
    fn set_get_delete_without_sockets() {
        let n = node();
        assert_eq!(ask(&n, op::GET, b"x", &[]).unwrap_err().kind, ErrorKind::NotFound);
        ask(&n, op::SET, b"x", b"42").unwrap();
        assert_eq!(ask(&n, op::GET, b"x", &[]).unwrap(), b"42");
        assert_eq!(&*n.local_var("x").unwrap(), b"42");
        ask(&n, op::DELETE, b"x", &[]).unwrap();
        assert!(n.local_var("x").is_err());
        assert!(ask(&n, op::GET, &[0xff, 0xfe], &[]).is_err(), "a name that is not UTF-8 is refused");
        assert!(ask(&n, 99, b"x", &[]).is_err());
    }

    #[test]
    fn an_operation_on_this_process_alone_runs_here_in_the_callers_order() {
        let n = node();
        n.set_var(&[1], "v", b"abc").unwrap();
        assert_eq!(n.get_var(&[1], "v").unwrap(), vec![(1, b"abc".to_vec())]);
        assert_eq!(n.get_var(&[1], "nope").unwrap_err().kind, ErrorKind::NotFound);
        assert!(n.get_var(&[], "v").is_err());
        assert!(n.set_var(&[1], "", b"").is_err());
        n.delete_var(&[1], "v").unwrap();
        assert!(n.local_var("v").is_err());
    }
}
