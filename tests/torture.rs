//! RFC 4475 and RFC 5118 torture messages through the SIP parser: none may panic, and the
//! ones the RFCs call well-formed and that tonewall must understand do parse. (How each one
//! is answered end to end belongs to the "SIP edge" work.)

use std::path::Path;

use tonewall::sip::message::{self, SipMessage};

fn vectors(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(dir);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn no_torture_message_panics_the_parser() {
    let all: Vec<_> = vectors("rfc4475").into_iter().chain(vectors("rfc5118")).collect();
    assert!(all.len() >= 60, "{} vectors", all.len());
    for (name, bytes) in &all {
        let outcome = std::panic::catch_unwind(|| {
            let _ = message::parse(bytes);
            if let Err(e) = message::parse(bytes) {
                let _ = message::bad_request(bytes, &e);
            }
        });
        assert!(outcome.is_ok(), "{name} panicked the parser");
    }
}

#[test]
fn well_formed_messages_parse() {
    // RFC 4475 §3.1.1.1 (short tortuous INVITE), §3.1.1.3 (escaped URI), §3.1.1.6 (unusual
    // reason phrase), §3.1.1.8 (extra trailing octets), RFC 5118 §4.1 (IPv6 in Via and SDP).
    for name in
        ["rfc4475/wsinv.dat", "rfc4475/esc01.dat", "rfc4475/unreason.dat", "rfc4475/dblreq.dat", "rfc5118/ipv6-good"]
    {
        let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap();
        match message::parse(&bytes) {
            Ok(SipMessage::Request(r)) => assert!(!r.call_id().is_empty(), "{name}"),
            Ok(SipMessage::Response(r)) => assert!(r.status() >= 100, "{name}"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
}
