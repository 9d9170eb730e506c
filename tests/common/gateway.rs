//! A processor's gateway for the push connector, in its own process (`tests/push/gateway.py`:
//! Python's ssl module, OpenSSL, a client certificate required), and the certificates
//! around it: the gateway's CA and server certificate, the CA it takes clients from,
//! tonewall's client certificate, and a rogue one from another CA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::require_tool;

/// The push secret both sides share (64 hex digits once repeated).
pub const SECRET_HEX: &str = "5e";

pub struct Certs {
    pub gateway: (PathBuf, PathBuf),
    pub gateway_ca: PathBuf,
    pub client_ca: PathBuf,
    pub ours: (PathBuf, PathBuf),
    pub rogue: (PathBuf, PathBuf),
}

/// A CA, written to `dir/<name>-ca.pem`, and its issuer.
fn ca(dir: &Path, name: &str) -> (PathBuf, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
    let key = KeyPair::generate().unwrap();
    let path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
    (path, Issuer::new(p, key))
}

fn issue(dir: &Path, name: &str, issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, server: bool) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
    let sans = if server { vec!["127.0.0.1".to_string()] } else { Vec::new() };
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

pub fn certs(dir: &Path) -> Certs {
    let (gateway_ca, gateway_issuer) = ca(dir, "gateway");
    let (client_ca, client_issuer) = ca(dir, "clients");
    let (_, rogue_issuer) = ca(dir, "rogue");
    Certs {
        gateway: issue(dir, "gateway", &gateway_issuer, true),
        gateway_ca,
        client_ca,
        ours: issue(dir, "tonewall", &client_issuer, false),
        rogue: issue(dir, "rogue", &rogue_issuer, false),
    }
}

pub struct Gateway {
    child: Child,
    pub log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    pub fn start(port: u16, c: &Certs, dir: &Path) -> Gateway {
        Gateway::start_signed(port, c, dir, &SECRET_HEX.repeat(32))
    }

    /// A gateway that accepts only requests signed with `secret_hex`; its log in `dir`.
    pub fn start_signed(port: u16, c: &Certs, dir: &Path, secret_hex: &str) -> Gateway {
        require_tool("python3", "apt-get install -y python3");
        let log = dir.join("gateway.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/push/gateway.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args([&c.gateway.0, &c.gateway.1, &c.client_ca])
            .arg(secret_hex)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the gateway");
        let mut ready = String::new();
        use std::io::BufRead as _;
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "the gateway started");
        Gateway { child, log }
    }

    pub fn accepted(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
