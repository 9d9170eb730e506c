//! SIP, sans-IO: message parsing and building, stream framing, SDP offer/answer, the RFC 3261
//! transaction machines, dialog state, session timers and per-source rate limiting.

pub mod dialog;
pub mod message;
pub mod rate_limit;
pub mod replaces;
pub mod sdp;
pub mod session_timer;
pub mod stream;
pub mod syntax;
pub mod transaction;
