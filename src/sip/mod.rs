//! SIP, sans-IO: message parsing and building, SDP offer/answer, retransmission timers and
//! dialog state.

pub mod dialog;
pub mod message;
pub mod sdp;
pub mod transaction;
