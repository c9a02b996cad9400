//! The services one at a time against the real servers: Redis Cluster,
//! the MongoDB-compatible server (and MongoDB's own rules), the chart and
//! compose, face analysis on its models, recommendation and sync. One test
//! binary for all of them (each links the whole workspace): no test here
//! starts `discovery up`, so calls between services go over the network.

#[path = "../common/mod.rs"]
mod common;

mod autoscaling;
mod cache_redis;
mod compose_chart;
mod face_analysis;
mod mongodb_rules;
mod recommendation;
mod store_mongo;
mod sync;
