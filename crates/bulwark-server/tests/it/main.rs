//! Integration tests of the `bulwark` server: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod admin;
mod api;
mod api_keys;
mod audit;
mod cli;
mod compliance;
mod gateway;
mod mail;
mod metrics;
mod nodes;
mod not_me;
mod outage;
mod overload;
mod pages;
mod policy;
mod procs;
mod proxy;
mod support;
mod two_factor;
