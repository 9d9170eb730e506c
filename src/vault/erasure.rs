//! Right to erasure (GDPR Art. 17; PCI DSS 3.2.1: keep no card data longer than needed): a
//! stored card or bank account deleted on request, before its token expires.
//!
//! The row goes in one transaction with its audit record, so an erasure is either done and
//! recorded or neither; the security code, if still held, is forgotten. On SQLite the freed
//! pages are overwritten (`secure_delete`) and the write-ahead log is checkpointed and
//! truncated, so no copy of the ciphertext is left in the database files. On PostgreSQL the
//! dead row stays in the table's pages until autovacuum reclaims it: still ciphertext, which
//! only the data key opens.

use super::{Actor, Vault, VaultError, audit};
use crate::merchant::MerchantId;
use crate::vault::store::Backend;

impl Vault {
    /// Deletes `merchant`'s record of `token`; `UnknownToken` if it has none (another
    /// merchant's token included), audited either way.
    pub async fn erase(&self, token: &str, merchant: &MerchantId, actor: Actor<'_>) -> Result<(), VaultError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM cards WHERE token = $1 AND merchant = $2")
            .bind(token)
            .bind(merchant.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let outcome = if gone > 0 { "erased" } else { "unknown_token" };
        audit::append_in(&mut tx, &self.keys.audit, &actor.did("token.erase", outcome, token)).await?;
        tx.commit().await?;
        if gone == 0 {
            return Err(VaultError::UnknownToken);
        }
        self.held().remove(token);
        if self.backend() == Backend::Sqlite {
            // Old WAL frames still hold the page as it was before the delete.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::capture::card::{Pan, SecurityCode};
    use crate::capture::collector::{Captured, CapturedCard, Payment};
    use crate::merchant::MerchantId;
    use crate::vault::testing::TestDatabase;
    use crate::vault::{Actor, ActorRole, Role, Vault, VaultError, audit};

    const ACTOR: Actor<'static> =
        Actor { id: "test", role: ActorRole::Key(Role::Processor), origin: "127.0.0.1", merchant: None };

    #[tokio::test]
    async fn an_erased_card_is_gone_from_the_database_and_the_audit_says_so() {
        for db in TestDatabase::both().await {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(db.options(dir.path())).await.unwrap();
            let pan = Pan::parse(b"4111111111111111").unwrap();
            let code = SecurityCode::parse(b"123", pan.brand()).ok();
            let card = Captured { payment: Payment::Card(CapturedCard::new(pan, None, code)), confirmed: None };
            let rec = vault.tokenize(card, ACTOR, &MerchantId::default_merchant(), None, Instant::now()).await.unwrap();
            let (ciphertext,): (Vec<u8>,) = sqlx::query_as("SELECT ciphertext FROM cards WHERE token = $1")
                .bind(&rec.token)
                .fetch_one(vault.pool())
                .await
                .unwrap();
            let holds = |files: Vec<(String, Vec<u8>)>| {
                files.into_iter().any(|(_, b)| b.windows(ciphertext.len()).any(|w| w == ciphertext))
            };
            if db.url.is_empty() {
                assert!(holds(files(dir.path())), "before: the scan finds the record in the database files");
            }
            vault.erase(&rec.token, &MerchantId::default_merchant(), ACTOR).await.unwrap();
            assert!(matches!(
                vault.detokenize(&rec.token, &MerchantId::default_merchant(), ACTOR, Instant::now()).await,
                Err(VaultError::UnknownToken)
            ));
            assert!(!vault.holds_security_code(&rec.token, Instant::now()), "the held code is forgotten");
            assert!(
                matches!(
                    vault.erase(&rec.token, &MerchantId::default_merchant(), ACTOR).await,
                    Err(VaultError::UnknownToken)
                ),
                "{}",
                db.label
            );
            let records = audit::records(vault.pool(), 0, 100).await.unwrap();
            let erasures: Vec<&str> =
                records.iter().filter(|r| r.action == "token.erase").map(|r| r.outcome.as_str()).collect();
            assert_eq!(erasures, ["erased", "unknown_token"], "{}", db.label);
            assert!(vault.verify_audit().await.unwrap().findings.is_empty());
            if db.url.is_empty() {
                assert!(!holds(files(dir.path())), "after: no file of the SQLite vault holds the erased record");
            }
        }
    }

    fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files(&path));
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
        out
    }
}
