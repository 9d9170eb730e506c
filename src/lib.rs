//! tonewall: PCI DSS payment capture for phone calls. See DESIGN.md for the map.
//!
//! `sip`, `media`, `capture` and `call` are sans-IO protocol cores; `vault`, `api` and
//! `runtime` and `recording` are the drivers that do IO.

pub mod api;
pub mod call;
pub mod calls;
pub mod capture;
pub mod config;
pub mod demo;
pub mod media;
pub mod recording;
pub mod runtime;
pub mod session;
pub mod sip;
pub mod softphone;
pub mod vault;

/// The origin of simulated time for the sans-IO cores' unit tests: the cores never read a
/// clock, their tests start from this instant and advance it by hand.
#[cfg(test)]
pub(crate) fn test_origin() -> std::time::Instant {
    std::time::Instant::now()
}
