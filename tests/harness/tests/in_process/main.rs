//! The all-in-one system (`discovery up`, in-process calls between its
//! services) end to end: the journey, the dashboard, bad input. One test
//! binary (in-process calls are a process-wide switch, so these tests
//! share a binary only with each other). The SLA report's exact counts
//! need a process of their own (`tests/sla`).

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod dashboard;
mod system;
