//! The services: one module per capability, each on the node core.
//!
//! | id | service  | what it does                                        |
//! |----|----------|-----------------------------------------------------|
//! | 0  | session  | (the node core itself) peer hello, heartbeats        |
//! | 1  | control  | join, ready, membership, shutdown; addprocs/rmprocs |
//! | 2  | rpc      | functions by name, remote calls, interrupts         |
//! | 3  | refs     | futures passed between processes                    |
//! | 4  | channel  | RemoteChannels: bounded FIFO queues kept by an owner |
//! | 5  | pool     | worker pools, pmap, @distributed, PTools' WorkerSet |
//! |    |          | and queued tasks (host info on the wire)            |
//! | 6  | dict     | cluster dictionaries (Global, Distributed), kept by |
//! |    |          | their members, primary-backup per partition         |
//! | 7  | shm      | shared-memory segments mapped by the processes of a |
//! |    |          | host; orphans of dead clusters found and removed    |
//! | 8  | stasks   | server tasks: a task per process with state kept    |
//! |    |          | across the calls pmap_stasks makes                  |
//! | 9  | vars     | remote variables: named byte values per process,    |
//! |    |          | set, read and transformed where they live           |
//! | 10 | collective | all-gather over a process set (recursive doubling, |
//! |    |          | Bruck or ring, as MPI chooses)                      |
//!
//! `fork` is no wire service: PTools' `pfork`, children forked from the
//! caller (see its module doc for why it sits here).
//!
//! `holders` is no service: the reference counting and the housekeeping
//! thread that refs and channel share.

pub mod channel;
pub mod collective;
pub mod control;
pub mod dict;
pub mod fork;
pub(crate) mod holders;
pub mod pool;
pub mod refs;
pub mod rpc;
pub mod shm;
pub mod stasks;
pub mod vars;
