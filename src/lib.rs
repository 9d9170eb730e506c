//! tonewall: PCI DSS payment capture for phone calls. See DESIGN.md for the map.
//!
//! `sip`, `media`, `capture` and `call` are sans-IO protocol cores; `vault`, `api` and
//! `runtime` are the drivers that do IO.

pub mod api;
pub mod call;
pub mod capture;
pub mod config;
pub mod demo;
pub mod media;
pub mod runtime;
pub mod session;
pub mod sip;
pub mod softphone;
pub mod vault;
