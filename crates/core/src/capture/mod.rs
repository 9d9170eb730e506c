//! Payment capture, sans-IO: what a capture asks for (`plan`), card and bank-account
//! validation, the keypress collector, its progress as the desktop shows it, and what the
//! caller hears (`speech`).

pub mod bank;
pub mod card;
pub mod collector;
pub mod plan;
pub mod progress;
pub mod speech;
