//! Integration tests of the `bulwark` server: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod api;
mod api_keys;
mod cli;
mod gateway;
mod mail;
mod nodes;
mod outage;
mod pages;
mod proxy;
mod support;
mod two_factor;
