//! The audit trail (PCI DSS 10.2, 10.3): an append-only table (triggers refuse UPDATE and
//! DELETE) in which each record carries an HMAC-SHA256, under a key wrapped by the KEK, of its
//! own content and the previous record's MAC. Changing, deleting, inserting or reordering a
//! record breaks the chain where it happened; `verify` names the place. Records hold who,
//! what, when, outcome, origin and resource (10.2.2) and never card data.
//!
//! Appending takes the single `audit_head` row first (UPDATE … RETURNING), which serializes
//! writers across connections and processes on SQLite and PostgreSQL alike.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::{AnyConnection, AnyPool};

use super::VaultError;
use super::anchor::Anchors;
use super::crypto::{SecretKey, hex};

/// The audit chain's MAC keys by id (`audit_keys`, wrapped under the KEK). The newest MACs new
/// records; each record names the key that made its MAC, so rotating (`tonewall keys
/// rotate-audit`) needs no rewrite of the chain, and processes that have not seen the new key
/// yet keep appending verifiable records under the old one.
#[derive(Default)]
pub struct AuditKeys(std::sync::RwLock<std::collections::BTreeMap<i64, SecretKey>>);

impl AuditKeys {
    pub fn insert(&self, id: i64, key: SecretKey) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(id, key);
    }

    /// The newest key and its id.
    pub fn current(&self) -> (i64, SecretKey) {
        let keys = self.0.read().unwrap_or_else(|p| p.into_inner());
        // Invariant: the key ring loads or creates the first audit key before anything appends.
        let (id, key) = keys.last_key_value().expect("an audit key");
        (*id, key.clone())
    }

    pub fn get(&self, id: i64) -> Option<SecretKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    pub fn newest_id(&self) -> i64 {
        self.0.read().unwrap_or_else(|p| p.into_inner()).keys().next_back().copied().unwrap_or(0)
    }
}

/// One thing that happened, as the audit trail records it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Event<'a> {
    /// API key id, `call:<session>` or `cli`.
    pub actor: &'a str,
    pub role: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    /// Client IP, SIP source, or `local`.
    pub origin: &'a str,
    /// Session id, token, key id: what was acted on.
    pub resource: &'a str,
    pub detail: &'a str,
    /// Whose record it is (`crate::merchant`): its admins read it.
    pub merchant: Option<&'a str>,
}

/// A stored record.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Record {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub outcome: String,
    pub origin: String,
    pub resource: String,
    pub detail: String,
    pub mac: String,
    /// The audit key that made `mac`.
    pub key_id: i64,
    /// None on records from before merchants, and on tonewall's own.
    pub merchant: Option<String>,
}

/// What `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Records `from..=to` are gone.
    Deleted { from: i64, to: i64 },
    /// This record's MAC does not match its content and place: changed, inserted or moved.
    Altered { seq: i64 },
    /// The head disagrees with the newest record: records at the end deleted, or one added
    /// without the head.
    Head { head_seq: i64, last_seq: i64 },
    /// A checkpoint outside the database vouches for a record the chain no longer reaches:
    /// records cut from the end, the head moved back to hide it.
    Cut { anchored: i64, last_seq: i64 },
    /// The record at a checkpoint's place is not the one the checkpoint signed.
    Diverged { seq: i64 },
    /// A line of the checkpoint file that is not a checkpoint signed under the audit key.
    ForgedCheckpoint { line: usize },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Deleted { from, to } if from == to => write!(f, "record {from} deleted"),
            Finding::Deleted { from, to } => write!(f, "records {from} to {to} deleted"),
            Finding::Altered { seq } => {
                write!(f, "record {seq} fails its MAC: changed, inserted or moved")
            }
            Finding::Head { head_seq, last_seq } => write!(
                f,
                "the chain head is at record {head_seq} but the newest record is {last_seq}: records removed from the end or added past it"
            ),
            Finding::Cut { anchored, last_seq } => write!(
                f,
                "a signed checkpoint vouches for record {anchored} but the chain ends at record {last_seq}: records cut from the end"
            ),
            Finding::Diverged { seq } => write!(f, "record {seq} is not the record its signed checkpoint names"),
            Finding::ForgedCheckpoint { line } => {
                write!(f, "line {line} of the checkpoint file is not a checkpoint signed under the audit key")
            }
        }
    }
}

fn mac(key: &SecretKey, prev: &str, seq: i64, at_ms: i64, e: &Event) -> String {
    // Invariant: HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.expose()).expect("any key length");
    // Length-prefixed fields: no separator inside a field can shift content between fields.
    let seq = seq.to_string();
    let at = at_ms.to_string();
    // The merchant is covered when there is one; records from before merchants have none, so
    // their MACs still verify.
    for field in [prev, &seq, &at, e.actor, e.role, e.action, e.outcome, e.origin, e.resource, e.detail]
        .into_iter()
        .chain(e.merchant)
    {
        m.update(&(field.len() as u64).to_le_bytes());
        m.update(field.as_bytes());
    }
    hex(&m.finalize().into_bytes())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Appends inside the caller's transaction, so the record commits with what it describes.
pub async fn append_in(conn: &mut AnyConnection, keys: &AuditKeys, e: &Event<'_>) -> Result<i64, VaultError> {
    let (key_id, key) = keys.current();
    let (seq, prev): (i64, String) =
        sqlx::query_as("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, mac")
            .fetch_one(&mut *conn)
            .await?;
    let at_ms = now_ms();
    let mac = mac(&key, &prev, seq, at_ms, e);
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor, role, action, outcome, origin, resource, detail, mac, key_id, merchant) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(seq)
    .bind(at_ms)
    .bind(e.actor)
    .bind(e.role)
    .bind(e.action)
    .bind(e.outcome)
    .bind(e.origin)
    .bind(e.resource)
    .bind(e.detail)
    .bind(&mac)
    .bind(key_id)
    .bind(e.merchant)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_head SET mac = $1 WHERE id = 1").bind(&mac).execute(&mut *conn).await?;
    Ok(seq)
}

/// Appends in a transaction of its own.
pub async fn append(pool: &AnyPool, keys: &AuditKeys, e: &Event<'_>) -> Result<i64, VaultError> {
    let mut tx = pool.begin().await?;
    let seq = append_in(&mut tx, keys, e).await?;
    tx.commit().await?;
    Ok(seq)
}

/// Records from `after` (exclusive), oldest first, at most `limit`.
pub async fn records(pool: &AnyPool, after: i64, limit: i64) -> Result<Vec<Record>, VaultError> {
    Ok(sqlx::query_as("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Records of `merchant` from `after` (exclusive), oldest first, at most `limit`; `default`'s
/// include those that name no merchant.
pub async fn records_of(
    pool: &AnyPool,
    merchant: &crate::merchant::MerchantId,
    after: i64,
    limit: i64,
) -> Result<Vec<Record>, VaultError> {
    Ok(sqlx::query_as(
        "SELECT * FROM audit_log WHERE seq > $1 AND (merchant = $2 OR ($3 AND merchant IS NULL)) ORDER BY seq LIMIT $4",
    )
    .bind(after)
    .bind(merchant.as_str())
    .bind(merchant.is_default())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Walks the whole chain; returns how many records it checked and what is wrong.
pub async fn verify(pool: &AnyPool, keys: &AuditKeys) -> Result<(i64, Vec<Finding>), VaultError> {
    verify_anchored(pool, keys, &Anchors::default()).await
}

/// `verify`, and also that the chain reaches every checkpoint with the MAC it signed.
pub async fn verify_anchored(
    pool: &AnyPool,
    keys: &AuditKeys,
    anchors: &Anchors,
) -> Result<(i64, Vec<Finding>), VaultError> {
    let mut findings: Vec<Finding> = anchors.forged.iter().map(|&line| Finding::ForgedCheckpoint { line }).collect();
    let signed: HashMap<i64, &str> = anchors.valid.iter().map(|c| (c.seq, c.mac.as_str())).collect();
    let (mut expected, mut prev, mut checked, mut after_gap) = (1i64, String::new(), 0i64, false);
    loop {
        let page = records(pool, expected - 1, 1000).await?;
        let Some(last) = page.last() else { break };
        let next_after = last.seq;
        for r in page {
            if r.seq != expected {
                findings.push(Finding::Deleted { from: expected, to: r.seq - 1 });
                after_gap = true;
            }
            let e = Event {
                actor: &r.actor,
                role: &r.role,
                action: &r.action,
                outcome: &r.outcome,
                origin: &r.origin,
                resource: &r.resource,
                detail: &r.detail,
                merchant: r.merchant.as_deref(),
            };
            // After a deletion the first survivor cannot match (its predecessor is gone);
            // that is the deletion already reported, not a second finding.
            let made = keys.get(r.key_id).map(|k| mac(&k, &prev, r.seq, r.at_ms, &e));
            if made.as_deref() != Some(r.mac.as_str()) && !after_gap {
                findings.push(Finding::Altered { seq: r.seq });
            }
            after_gap = false;
            if signed.get(&r.seq).is_some_and(|m| *m != r.mac) {
                findings.push(Finding::Diverged { seq: r.seq });
            }
            prev = r.mac;
            expected = r.seq + 1;
            checked += 1;
        }
        // Pages continue after the last seq seen, gaps included.
        expected = expected.max(next_after + 1);
    }
    let (head_seq, head_mac): (i64, String) =
        sqlx::query_as("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_one(pool).await?;
    if head_seq != expected - 1 || head_mac != prev {
        findings.push(Finding::Head { head_seq, last_seq: expected - 1 });
    }
    if let Some(anchored) = signed.keys().copied().max().filter(|&a| a > expected - 1) {
        findings.push(Finding::Cut { anchored, last_seq: expected - 1 });
    }
    Ok((checked, findings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Vault;
    use crate::vault::testing::TestDatabase;

    fn event(n: usize) -> String {
        format!("session-{n}")
    }

    async fn chain(vault: &Vault, n: usize) {
        for i in 0..n {
            let r = event(i);
            let e = Event {
                actor: "k1",
                role: "agent",
                action: "session.create",
                outcome: "ok",
                origin: "127.0.0.1",
                resource: &r,
                detail: "",
                // Records with and without a merchant (those from before merchants) chain alike.
                merchant: (i % 2 == 0).then_some("acme"),
            };
            vault.audit(&e).await.unwrap();
        }
    }

    async fn findings(vault: &Vault) -> Vec<Finding> {
        verify(vault.pool(), &vault.keys().audit).await.unwrap().1
    }

    /// What an attacker with database access does first.
    async fn drop_guards(vault: &Vault) {
        let sql = match vault.backend() {
            crate::vault::Backend::Sqlite => "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;",
            crate::vault::Backend::Postgres => "DROP TRIGGER audit_log_no_update ON audit_log;",
        };
        sqlx::raw_sql(sql).execute(vault.pool()).await.unwrap();
    }

    #[tokio::test]
    async fn the_table_is_append_only_and_verify_names_each_tampering() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            chain(&vault, 10).await;
            assert_eq!(verify(vault.pool(), &vault.keys().audit).await.unwrap(), (10, vec![]), "{}", db.label);
            // The database itself refuses changes and deletions.
            let update =
                sqlx::query("UPDATE audit_log SET outcome = 'denied' WHERE seq = 3").execute(vault.pool()).await;
            assert!(update.unwrap_err().to_string().contains("append-only"), "{}", db.label);
            assert!(sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(vault.pool()).await.is_err());
            drop_guards(&vault).await;

            // Changed.
            sqlx::query("UPDATE audit_log SET outcome = 'denied' WHERE seq = 3").execute(vault.pool()).await.unwrap();
            assert_eq!(findings(&vault).await, vec![Finding::Altered { seq: 3 }], "{}", db.label);
            sqlx::query("UPDATE audit_log SET outcome = 'ok' WHERE seq = 3").execute(vault.pool()).await.unwrap();
            assert_eq!(findings(&vault).await, vec![], "restored");

            // Reordered: two records swap places.
            sqlx::query("UPDATE audit_log SET seq = -5 WHERE seq = 5").execute(vault.pool()).await.unwrap();
            sqlx::query("UPDATE audit_log SET seq = 5 WHERE seq = 6").execute(vault.pool()).await.unwrap();
            sqlx::query("UPDATE audit_log SET seq = 6 WHERE seq = -5").execute(vault.pool()).await.unwrap();
            // The chain breaks at both moved records (and at the next one, whose predecessor changed).
            let f = findings(&vault).await;
            assert!(f.starts_with(&[Finding::Altered { seq: 5 }, Finding::Altered { seq: 6 }]), "{f:?}");
            sqlx::query("UPDATE audit_log SET seq = -5 WHERE seq = 5").execute(vault.pool()).await.unwrap();
            sqlx::query("UPDATE audit_log SET seq = 5 WHERE seq = 6").execute(vault.pool()).await.unwrap();
            sqlx::query("UPDATE audit_log SET seq = 6 WHERE seq = -5").execute(vault.pool()).await.unwrap();

            // Deleted from the middle.
            sqlx::query("DELETE FROM audit_log WHERE seq = 7").execute(vault.pool()).await.unwrap();
            assert_eq!(findings(&vault).await, vec![Finding::Deleted { from: 7, to: 7 }], "{}", db.label);

            // Inserted: a forged record at the end (the MAC cannot be made without the key).
            sqlx::query(
                "INSERT INTO audit_log (seq, at_ms, actor, role, action, outcome, origin, resource, detail, mac) \
                 SELECT 11, at_ms, actor, role, action, outcome, origin, resource, detail, mac FROM audit_log WHERE seq = 10",
            )
            .execute(vault.pool())
            .await
            .unwrap();
            let f = findings(&vault).await;
            assert!(f.contains(&Finding::Altered { seq: 11 }), "{}: {f:?}", db.label);
            assert!(f.contains(&Finding::Head { head_seq: 10, last_seq: 11 }), "{f:?}");
        }
    }

    #[tokio::test]
    async fn a_cut_tail_passes_the_chain_but_not_its_checkpoint() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            let path = dir.path().join("checkpoints");
            chain(&vault, 10).await;
            crate::vault::anchor::write(vault.pool(), &vault.keys().audit, &path, 0).await.unwrap().unwrap();
            // The attack: cut records 8 to 10 and point the head at the last survivor.
            drop_guards(&vault).await;
            sqlx::query("DELETE FROM audit_log WHERE seq > 7").execute(vault.pool()).await.unwrap();
            sqlx::query("UPDATE audit_head SET seq = 7, mac = (SELECT mac FROM audit_log WHERE seq = 7)")
                .execute(vault.pool())
                .await
                .unwrap();
            assert_eq!(findings(&vault).await, vec![], "{}: the chain alone cannot see it", db.label);
            let anchors = crate::vault::anchor::read(&vault.keys().audit, &path).unwrap();
            let (checked, found) = verify_anchored(vault.pool(), &vault.keys().audit, &anchors).await.unwrap();
            assert_eq!((checked, found), (7, vec![Finding::Cut { anchored: 10, last_seq: 7 }]), "{}", db.label);
        }
    }

    #[tokio::test]
    async fn a_rotated_audit_key_macs_new_records_and_the_chain_still_verifies() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            let behind = Vault::open(db.options(dir.path())).await.unwrap(); // has not seen the new key yet
            chain(&vault, 2).await;
            assert_eq!(vault.keys().rotate_audit(vault.pool()).await.unwrap(), 2);
            chain(&vault, 2).await;
            chain(&behind, 1).await;
            let ids: Vec<i64> = records(vault.pool(), 0, 10).await.unwrap().iter().map(|r| r.key_id).collect();
            assert_eq!(ids, [1, 1, 2, 2, 1], "{}", db.label);
            assert_eq!(verify(vault.pool(), &vault.keys().audit).await.unwrap(), (5, vec![]), "{}", db.label);
            drop_guards(&vault).await;
            sqlx::query("UPDATE audit_log SET key_id = 1 WHERE seq = 3").execute(vault.pool()).await.unwrap();
            assert_eq!(findings(&vault).await, vec![Finding::Altered { seq: 3 }], "{}", db.label);
        }
    }
}
