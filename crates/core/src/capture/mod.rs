//! Payment capture, sans-IO: card validation and the keypress collector.

pub mod card;
pub mod collector;
pub mod progress;
