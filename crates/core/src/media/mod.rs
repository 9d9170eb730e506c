//! Media, sans-IO: RTP, G.711, RFC 4733 telephone-events and prompt playback.

pub mod address_policy;
pub mod dtmf;
pub mod g711;
pub mod masker;
pub mod player;
pub mod rtp;
pub mod source_lock;
pub mod srtp;
pub mod telephone_event;
