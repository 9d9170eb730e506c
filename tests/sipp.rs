//! tonewall against an independent SIP implementation: sipp (Debian `sip-tester`) dials the
//! transfer URI of a session on the real `tonewall serve` binary and keys a Mastercard test
//! number as RFC 4733 events from a pcap built here. Then the API must show the right card,
//! and neither the server's log nor any file of its data directory may hold the PAN.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::sipp::{self, KillOnDrop, free_sip_port, free_tcp_port, free_udp_port, keypad_pcap, wait_with_timeout};
use common::{TestCard, assert_card_whole_at, contains, files_under, http, require_tool, wait_final};

const PAN: &str = "5555555555554444";
const KEYPAD: &str = "5555555555554444#,1230,321";
const CARD: TestCard = TestCard { pan: PAN, month: 12, year: 2030, code: "321" };

#[tokio::test(flavor = "multi_thread")]
async fn sipp_caller_keys_a_mastercard_and_no_pan_is_left_behind() {
    require_tool("sipp", "apt-get install -y sip-tester");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(common::BIN)
        .args(["api-key", "create", "--role", "agent", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("twk_") && !key.contains('\n'), "api-key create prints one key and nothing else");
    let out = Command::new(common::BIN)
        .args(["api-key", "create", "--role", "processor", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let processor_key = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // SIP takes the port over UDP and TCP; HTTP needs another.
    let sip_port = free_sip_port();
    let http_port = std::iter::repeat_with(free_tcp_port).find(|p| *p != sip_port).unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = Command::new(common::BIN)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--sip-listen", &format!("127.0.0.1:{sip_port}"), "--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "debug,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(Some(server));
    let base = format!("http://127.0.0.1:{http_port}");
    let up = async {
        for _ in 0..100 {
            if http("GET", &format!("{base}/healthz"), None, None).await.0 == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(up.await, "tonewall serve did not come up");

    let (s, v) = http(
        "POST",
        &format!("{base}/v1/sessions"),
        Some(&key),
        Some(r#"{"fields":["pan","expiry","cvv"],"reference":"sipp-1"}"#),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let user = format!("pay-{id}");
    assert_eq!(v["transfer_uri"], format!("sip:{user}@127.0.0.1:{sip_port}"));

    let pcap = dir.path().join("keypad.pcap");
    std::fs::write(&pcap, keypad_pcap(KEYPAD)).unwrap();
    let scenario = sipp::scenario(dir.path(), "pay_by_keypad.xml", &[("PCAP_FILE", pcap.to_str().unwrap())]);
    let target = format!("127.0.0.1:{sip_port}");
    let caller = sipp::spawn(dir.path(), &scenario, free_udp_port(1), &[&target, "-s", &user]);
    sipp::passed(caller, dir.path(), "pay by keypad").await;

    let session = wait_final(&base, &key, &id, Duration::from_secs(5)).await;
    assert_eq!(session["result"]["brand"], "mastercard");
    assert_eq!(session["result"]["last4"], "4444");
    assert_card_whole_at(&base, &processor_key, &session, &CARD, "pay by keypad").await;

    // Clean shutdown on SIGINT, as Ctrl-C would.
    let mut server = server.0.take().expect("server still running");
    let _ = Command::new("kill").args(["-INT", &server.id().to_string()]).status();
    let st =
        tokio::task::spawn_blocking(move || wait_with_timeout(&mut server, Duration::from_secs(10))).await.unwrap();
    assert!(st.is_some_and(|s| s.success()), "serve did not exit cleanly on SIGINT: {st:?}");

    let log = std::fs::read(&log_path).unwrap();
    assert!(contains(&log, b"card tokenized"), "the log shows the capture");
    let pans: [&[u8]; 3] = [PAN.as_bytes(), b"5555 5555 5555 4444", b"555555555555"];
    for needle in pans {
        assert!(!contains(&log, needle), "the server log contains card digits");
    }
    let files = files_under(&data);
    assert!(files.iter().any(|(name, _)| name.ends_with("vault.db")));
    for (name, bytes) in &files {
        for needle in pans {
            assert!(!contains(bytes, needle), "{name} contains card digits");
        }
    }
}

#[test]
fn pcap_has_seven_packets_per_key_at_20ms() {
    let p = keypad_pcap("1#");
    let mut off = 24;
    let mut times = vec![];
    while off < p.len() {
        let sec = u32::from_le_bytes(p[off..off + 4].try_into().unwrap());
        let usec = u32::from_le_bytes(p[off + 4..off + 8].try_into().unwrap());
        let len = u32::from_le_bytes(p[off + 8..off + 12].try_into().unwrap()) as usize;
        times.push(u64::from(sec) * 1000 + u64::from(usec) / 1000);
        off += 16 + len;
    }
    assert_eq!(times.len(), 14);
    assert_eq!(&times[..3], &[1000, 1020, 1040]);
    assert_eq!(times[7], 1000 + 240);
}
