//! The services: one module per capability, each on the node core.
//!
//! | id | service  | what it does                                        |
//! |----|----------|-----------------------------------------------------|
//! | 0  | session  | (the node core itself) peer hello, heartbeats        |
//! | 1  | control  | join, ready, membership, shutdown; addprocs/rmprocs |
//! | 2  | rpc      | functions by name, remote calls, interrupts         |
//! | 3  | refs     | futures passed between processes                    |
//! | 5  | pool     | worker pools, pmap, @distributed, PTools' WorkerSet |
//! |    |          | and queued tasks (host info on the wire)            |

pub mod control;
pub mod pool;
pub mod refs;
pub mod rpc;
