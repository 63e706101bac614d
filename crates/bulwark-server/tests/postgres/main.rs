//! Tests only PostgreSQL makes possible: database outages and several nodes sharing one
//! database. They need the server in `BULWARK_TEST_POSTGRES_URL` (`scripts/test` starts one).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod outage;
mod proxy;
#[path = "../it/support.rs"]
#[allow(dead_code, reason = "shared with the it suite, which uses all of it")]
mod support;
