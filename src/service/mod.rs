//! The services: one module per capability, each on the node core.
//!
//! | id | service  | what it does                                        |
//! |----|----------|-----------------------------------------------------|
//! | 0  | session  | (the node core itself) peer hello, heartbeats        |
//! | 1  | control  | join, ready, membership, shutdown; addprocs/rmprocs |
//! | 2  | rpc      | functions by name, remote calls, interrupts         |
//! | 3  | refs     | futures passed between processes                    |
//!
//! `holders` is no service: the reference counting and the housekeeping
//! thread that services keeping objects for other processes share.

pub mod control;
pub(crate) mod holders;
pub mod refs;
pub mod rpc;
