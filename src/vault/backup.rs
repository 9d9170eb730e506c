//! Online, encrypted backups of a SQLite vault.
//!
//! `VACUUM INTO` (<https://sqlite.org/lang_vacuum.html#vacuuminto>) copies the database as one
//! read transaction sees it, so `serve` keeps writing meanwhile (WAL) and the copy is
//! consistent: every token acknowledged before the backup began is in it, whole, with its
//! audit records. The copy is then sealed into the backup file under a fresh file key that the
//! KEK wraps, in 1 MiB AES-256-GCM chunks whose additional data names their section and index,
//! and an end chunk that seals the lengths, so a cut, reordered or spliced file fails to open.
//! The signed audit checkpoints that the copy's chain reaches travel with it, so `audit
//! verify` on the restored vault still holds the chain against them.
//!
//! The KEK is never in the backup: restoring needs the same key source (or, after a KEK
//! rotation, the previous one). PostgreSQL has its own tools (`pg_dump`, base backups).
//!
//! File layout: `MAGIC`, u32 BE length and the wrapped file key, then chunks of
//! `kind (u8) | index (u32 BE) | length (u32 BE) | nonce (12) | ciphertext`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sqlx::AnyPool;
use zeroize::Zeroizing;

use super::VaultError;
use super::anchor::Checkpoint;
use super::crypto::{self, SecretKey};
use super::kek::Kek;

const MAGIC: &[u8; 8] = b"TWBAK01\n";
const CHUNK: usize = 1 << 20;
const KEY_AAD: &[u8] = b"tonewall:backup:file-key";

/// The sections of a backup file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Database = 1,
    Checkpoints = 2,
    End = 0xff,
}

impl Section {
    fn from_byte(b: u8) -> Option<Section> {
        [Section::Database, Section::Checkpoints, Section::End].into_iter().find(|s| *s as u8 == b)
    }
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub database_bytes: u64,
    /// The newest audit record in the copy.
    pub audit_seq: i64,
    pub checkpoints: usize,
}

fn chunk_aad(kind: Section, index: u32) -> String {
    format!("tonewall:backup:{}:{index}", kind as u8)
}

fn io_error(path: &Path, e: std::io::Error) -> VaultError {
    VaultError::Config(format!("{}: {e}", path.display()))
}

/// Copies the live SQLite vault behind `pool` into `to`, sealed under `kek`. `checkpoints` is
/// the checkpoint file; the lines the copy's chain reaches go with it.
pub async fn write(pool: &AnyPool, kek: &Kek, checkpoints: &Path, to: &Path) -> Result<Summary, VaultError> {
    let snapshot = to.with_extension("snapshot.tmp");
    let _ = std::fs::remove_file(&snapshot);
    let snapshot_name = snapshot.to_str().ok_or_else(|| VaultError::Config("backup path is not UTF-8".into()))?;
    sqlx::query("VACUUM INTO ?").bind(snapshot_name).execute(pool).await?;
    let result = seal_snapshot(&snapshot, kek, checkpoints, to).await;
    // The snapshot holds only sealed rows and wrapped keys, but it is not left lying around.
    let _ = std::fs::remove_file(&snapshot);
    result
}

async fn seal_snapshot(snapshot: &Path, kek: &Kek, checkpoints: &Path, to: &Path) -> Result<Summary, VaultError> {
    let audit_seq = newest_seq(snapshot).await?;
    let db = Zeroizing::new(std::fs::read(snapshot).map_err(|e| io_error(snapshot, e))?);
    let lines = reached_checkpoints(checkpoints, audit_seq)?;
    let key = SecretKey::generate();
    let mut out = Vec::with_capacity(db.len() + db.len() / CHUNK * 40 + 1024);
    out.extend_from_slice(MAGIC);
    let wrapped = kek.wrap(&key, KEY_AAD)?;
    out.extend_from_slice(&(wrapped.len() as u32).to_be_bytes());
    out.extend_from_slice(&wrapped);
    let mut index = 0u32;
    let mut push = |kind: Section, plain: &[u8]| {
        let (nonce, ct) = crypto::seal(&key, plain, chunk_aad(kind, index).as_bytes());
        out.push(kind as u8);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        index += 1;
    };
    for c in db.chunks(CHUNK) {
        push(Section::Database, c);
    }
    for c in lines.as_bytes().chunks(CHUNK) {
        push(Section::Checkpoints, c);
    }
    let summary = Summary { database_bytes: db.len() as u64, audit_seq, checkpoints: lines.lines().count() };
    let end = format!("{} {} {}", summary.database_bytes, lines.len(), summary.audit_seq);
    push(Section::End, end.as_bytes());
    write_private(to, &out)?;
    Ok(summary)
}

/// The newest audit seq in a database file.
async fn newest_seq(db: &Path) -> Result<i64, VaultError> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await?;
    let (seq,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM audit_log").fetch_one(&pool).await?;
    pool.close().await;
    Ok(seq)
}

/// The checkpoint lines that vouch for records up to `seq` (later ones would read as a cut).
fn reached_checkpoints(path: &Path, seq: i64) -> Result<String, VaultError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io_error(path, e)),
    };
    let reached = text.lines().filter(|l| serde_json::from_str::<Checkpoint>(l).is_ok_and(|c| c.seq <= seq));
    Ok(reached.map(|l| format!("{l}\n")).collect())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| io_error(path, e))
}

/// Opens a backup: the database file's bytes and the checkpoint lines.
fn open(bytes: &[u8], kek: &Kek) -> Result<(Zeroizing<Vec<u8>>, String, Summary), VaultError> {
    let bad = |why: &str| VaultError::Config(format!("not a usable tonewall backup: {why}"));
    let mut r = bytes;
    let mut take = |n: usize| -> Result<&[u8], VaultError> {
        if r.len() < n {
            return Err(bad("it ends early"));
        }
        let (head, rest) = r.split_at(n);
        r = rest;
        Ok(head)
    };
    if take(MAGIC.len())? != MAGIC {
        return Err(bad("wrong file type"));
    }
    let u32_at = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let wrapped_len = u32_at(take(4)?) as usize;
    let key = kek.unwrap(take(wrapped_len)?, KEY_AAD).map_err(|_| bad("the KEK does not open it"))?;
    let (mut db, mut lines) = (Zeroizing::new(Vec::new()), Vec::new());
    for index in 0u32.. {
        let kind = Section::from_byte(take(1)?[0]).ok_or_else(|| bad("unknown section"))?;
        if u32_at(take(4)?) != index {
            return Err(bad("chunks out of order"));
        }
        let len = u32_at(take(4)?) as usize;
        let nonce = take(12)?.to_vec();
        let plain = crypto::open(&key, &nonce, take(len)?, chunk_aad(kind, index).as_bytes())
            .map_err(|_| bad("a chunk fails its authentication"))?;
        match kind {
            Section::Database => db.extend_from_slice(&plain),
            Section::Checkpoints => lines.extend_from_slice(&plain),
            Section::End => {
                let end = String::from_utf8_lossy(&plain).into_owned();
                let mut parts = end.split(' ').map(|p| p.parse::<i64>().ok());
                let (db_len, lines_len, seq) = (parts.next().flatten(), parts.next().flatten(), parts.next().flatten());
                if db_len != Some(db.len() as i64) || lines_len != Some(lines.len() as i64) {
                    return Err(bad("sections are missing"));
                }
                let lines = String::from_utf8(lines).map_err(|_| bad("checkpoints are not text"))?;
                let summary = Summary {
                    database_bytes: db.len() as u64,
                    audit_seq: seq.unwrap_or(0),
                    checkpoints: lines.lines().count(),
                };
                if !r.is_empty() {
                    return Err(bad("bytes after the end"));
                }
                return Ok((db, lines, summary));
            }
        }
    }
    Err(bad("no end"))
}

/// Where a restore puts things.
pub struct RestoreTo {
    pub database: PathBuf,
    pub checkpoint_file: PathBuf,
}

/// Restores `from` into `to`; refuses to overwrite an existing vault or checkpoint file.
pub fn restore(from: &Path, kek: &Kek, to: &RestoreTo) -> Result<Summary, VaultError> {
    let mut bytes = Vec::new();
    std::fs::File::open(from).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| io_error(from, e))?;
    let (db, lines, summary) = open(&bytes, kek)?;
    // A stale write-ahead log beside the database would be replayed into the restored copy.
    let wal = PathBuf::from(format!("{}-wal", to.database.display()));
    for p in [&to.database, &wal, &to.checkpoint_file] {
        if p.exists() {
            return Err(VaultError::Config(format!("{} exists: restore only into an empty place", p.display())));
        }
    }
    write_private(&to.database, &db)?;
    if !lines.is_empty() {
        write_private(&to.checkpoint_file, lines.as_bytes())?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_or_altered_backup_does_not_open() {
        let kek = Kek::Local(SecretKey::generate());
        let db = vec![7u8; CHUNK + 10];
        let file = {
            let key = SecretKey::generate();
            let mut out = MAGIC.to_vec();
            let wrapped = kek.wrap(&key, KEY_AAD).unwrap();
            out.extend_from_slice(&(wrapped.len() as u32).to_be_bytes());
            out.extend_from_slice(&wrapped);
            let chunks: Vec<(Section, &[u8])> =
                db.chunks(CHUNK).map(|c| (Section::Database, c)).chain([(Section::End, &b""[..])]).collect();
            for (index, (kind, plain)) in chunks.iter().enumerate() {
                let plain =
                    if *kind == Section::End { format!("{} 0 5", db.len()).into_bytes() } else { plain.to_vec() };
                let (nonce, ct) = crypto::seal(&key, &plain, chunk_aad(*kind, index as u32).as_bytes());
                out.push(*kind as u8);
                out.extend_from_slice(&(index as u32).to_be_bytes());
                out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ct);
            }
            out
        };
        let (back, lines, summary) = open(&file, &kek).unwrap();
        assert_eq!((back.as_slice(), lines.as_str(), summary.audit_seq), (db.as_slice(), "", 5));
        let err = |bytes: &[u8], k: &Kek| open(bytes, k).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&file[..file.len() - 1], &kek).contains("ends early"));
        assert!(err(&file[..file.len() / 2], &kek).contains("not a usable"));
        let mut flipped = file.clone();
        flipped[file.len() / 2] ^= 1;
        assert!(err(&flipped, &kek).contains("fails its authentication"));
        assert!(err(&file, &Kek::Local(SecretKey::generate())).contains("KEK does not open it"));
    }
}
