//! Black-box tests: the real `ficus` binary against a real, throwaway Postgres
//! (one cluster for this test binary, one database per test).

mod support;

mod amqp;
mod authoring;
mod backfill;
mod bad_input;
mod brokers;
mod crash;
mod gaps;
mod http;
mod init;
mod kafka;
mod nats;
mod operations;
mod pipeline;
mod publication;
mod redis;
mod status;
mod store;
mod transactions;
mod values;
mod verify;
