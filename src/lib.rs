//! tonewall: PCI DSS payment capture for phone calls. See ARCHITECTURE.md for the map.
//!
//! The sans-IO protocol cores (`sip`, `media`, `capture`, `call`) live in the `tonewall-core`
//! crate and are re-exported here; `vault`, `api`, `runtime` and `recording` are the drivers
//! that do IO.

pub use tonewall_core::{call, capture, endpoint, media, sip};

pub mod accounts;
pub mod alerts;
pub mod api;
pub mod calendar;
pub mod calls;
pub mod config;
pub mod merchant;
pub mod metrics;
pub mod owner;
pub mod push;
pub mod recording;
pub mod runtime;
pub mod session;
pub mod targets;
pub mod vault;
pub mod write_behind;
