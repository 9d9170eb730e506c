//! The audit chain's anchor outside the database (PCI DSS 10.3.2, 10.3.4). The chain's MACs
//! stop anyone without the audit key from changing, inserting or reordering records, but
//! someone with the database's credentials can still cut records off the end and point
//! `audit_head` at the last survivor. So tonewall appends signed checkpoints — the head's seq
//! and MAC, an HMAC-SHA256 under the audit key over both — to a file outside the database
//! (`audit.checkpoint_file`, one JSON object per line, also copied to the security log for a
//! SIEM), and `verify` checks that the chain still reaches every checkpoint with the same MAC.
//! A cut is then visible unless the file was cut too; records written after the newest
//! checkpoint (at most `audit.checkpoint_interval_s` worth) are what an anchor cannot vouch for.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::AnyPool;

use super::VaultError;
use super::audit::AuditKeys;
use super::crypto::{SecretKey, hex};

/// One line of the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub mac: String,
    pub at_ms: i64,
    /// The audit key that signed it.
    #[serde(default = "first_key")]
    pub key_id: i64,
    pub sig: String,
}

fn first_key() -> i64 {
    1
}

/// What reading the checkpoint file gave.
#[derive(Debug, Default)]
pub struct Anchors {
    /// Checkpoints whose signature holds, in file order.
    pub valid: Vec<Checkpoint>,
    /// 1-based line numbers that are not a checkpoint or fail their signature.
    pub forged: Vec<usize>,
    /// No file at all: nothing anchors the chain yet (or someone removed the file).
    pub missing: bool,
}

fn sign(key: &SecretKey, seq: i64, mac: &str, at_ms: i64) -> String {
    // Invariant: HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.expose()).expect("any key length");
    // Its own label, so no audit record's MAC can pass for a checkpoint's signature.
    let (seq, at) = (seq.to_string(), at_ms.to_string());
    for field in ["tonewall:audit-checkpoint", &seq, mac, &at] {
        m.update(&(field.len() as u64).to_le_bytes());
        m.update(field.as_bytes());
    }
    hex(&m.finalize().into_bytes())
}

impl Checkpoint {
    fn holds(&self, keys: &AuditKeys) -> bool {
        keys.get(self.key_id).is_some_and(|k| sign(&k, self.seq, &self.mac, self.at_ms) == self.sig)
    }
}

/// Signs the chain's current head and appends it to `path` (mode 0600, created when missing);
/// returns it, or `None` when the head is not past `after` (nothing new to vouch for).
pub async fn write(
    pool: &AnyPool,
    keys: &AuditKeys,
    path: &Path,
    after: i64,
) -> Result<Option<Checkpoint>, VaultError> {
    let (seq, mac): (i64, String) =
        sqlx::query_as("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_one(pool).await?;
    if seq <= after {
        return Ok(None);
    }
    let at_ms = super::audit::now_ms();
    let (key_id, key) = keys.current();
    let checkpoint = Checkpoint { sig: sign(&key, seq, &mac, at_ms), seq, mac, at_ms, key_id };
    let fail = |e: std::io::Error| VaultError::Secret(format!("audit checkpoint file {}: {e}", path.display()));
    // Invariant: a struct of numbers and hex strings always serializes.
    let mut line = serde_json::to_string(&checkpoint).expect("serializable");
    line.push('\n');
    // One write of one short line with O_APPEND: processes sharing the file do not interleave.
    let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(fail)?;
    file.write_all(line.as_bytes()).and_then(|()| file.sync_data()).map_err(fail)?;
    Ok(Some(checkpoint))
}

/// Reads every checkpoint in `path`, checking each signature.
pub fn read(keys: &AuditKeys, path: &Path) -> Result<Anchors, VaultError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Anchors { missing: true, ..Anchors::default() });
        }
        Err(e) => return Err(VaultError::Secret(format!("audit checkpoint file {}: {e}", path.display()))),
    };
    let mut anchors = Anchors::default();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| VaultError::Secret(format!("audit checkpoint file {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Checkpoint>(&line) {
            Ok(c) if c.holds(keys) => anchors.valid.push(c),
            _ => anchors.forged.push(n + 1),
        }
    }
    Ok(anchors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checkpoints_are_signed_and_a_changed_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let vault = crate::vault::Vault::open(crate::vault::VaultOptions::development(dir.path())).await.unwrap();
        let path = dir.path().join("checkpoints");
        assert!(read(&vault.keys().audit, &path).unwrap().missing);
        let system =
            crate::vault::Actor { id: "t", role: crate::vault::ActorRole::System, origin: "local", merchant: None };
        vault.audit(&system.did("test", "ok", "x")).await.unwrap();
        let first = write(vault.pool(), &vault.keys().audit, &path, 0).await.unwrap().unwrap();
        assert_eq!(first.seq, 1);
        assert!(write(vault.pool(), &vault.keys().audit, &path, 1).await.unwrap().is_none(), "nothing new");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{}\nnot json\n", text.trim().replace("\"seq\":1", "\"seq\":9"))).unwrap();
        let anchors = read(&vault.keys().audit, &path).unwrap();
        assert_eq!((anchors.valid, anchors.forged), (vec![first], vec![2, 3]));
    }
}
