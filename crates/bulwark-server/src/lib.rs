//! Bulwark's server: configuration, services, web pages, mail and the CLI.
//!
//! Data flows one way: a handler (in [`web`]) extracts input, calls one service method on
//! [`app::App`] and maps the result; services read the clock once, apply the rules of
//! `bulwark-core` and persist through the `bulwark-store` traits.

pub mod app;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod services;
pub mod web;
