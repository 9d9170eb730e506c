//! Recordings at rest: each call's stereo recording (see `call::recording`) is sealed with
//! AES-256-GCM in one-second chunks under the vault's current data key, so nothing in the
//! file is audio in clear and no chunk can be dropped, moved or cut off unnoticed (each
//! chunk's associated data names the recording, its index and whether it is the last).
//! Beside it, a `recordings` row holds the metadata QA searches: call, session, reference,
//! start, duration, key id and the masked spans (never card data).
//!
//! File: `TWREC1\n`, the key id (8 bytes LE), then chunks of `len (4 bytes LE) ‖ nonce ‖
//! ciphertext ‖ tag`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sqlx::AnyPool;
use thiserror::Error;

use crate::call::recording::{MaskedSpan, STEREO_FRAME};
use crate::merchant::MerchantId;
use crate::vault::crypto::{self, SecretKey};
use crate::vault::{Vault, VaultError};

/// Version 2: chunks sealed under a key derived for this recording alone (`recording_key`).
const MAGIC: &[u8; 7] = b"TWREC2\n";
/// Version 1: chunks sealed under the data key itself; still read.
const MAGIC_V1: &[u8; 7] = b"TWREC1\n";
/// A quarter second of 8 kHz 16-bit stereo: sealed and written as it fills, so a call holds
/// only this much plain audio in memory (and loses at most this much in a crash).
const CHUNK_BYTES: usize = 8_000;
const SAMPLE_RATE: u32 = 8000;

#[derive(Debug, Error)]
pub enum RecordingError {
    #[error("recording file {path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("recording {0} is damaged or was tampered with")]
    Damaged(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What QA sees of a recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metadata {
    pub id: String,
    pub call_id: String,
    pub session_id: String,
    pub reference: String,
    /// Unix milliseconds.
    pub started_at: i64,
    pub duration_ms: i64,
    pub masked_spans: Vec<MaskedSpan>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    call_id: String,
    session_id: String,
    reference: String,
    started_at: i64,
    duration_ms: i64,
    key_id: i64,
    masked_spans: String,
    file: String,
    merchant: String,
}

impl Row {
    fn metadata(&self) -> Metadata {
        Metadata {
            id: self.id.clone(),
            call_id: self.call_id.clone(),
            session_id: self.session_id.clone(),
            reference: self.reference.clone(),
            started_at: self.started_at,
            duration_ms: self.duration_ms,
            masked_spans: serde_json::from_str(&self.masked_spans).unwrap_or_default(),
        }
    }
}

pub fn directory(data_dir: &Path) -> PathBuf {
    data_dir.join("recordings")
}

/// Each recording's chunks are sealed under a key derived from the data key for that
/// recording, so they spend none of the data key's GCM nonce budget (at 100 calls around the
/// clock, sealing under the data key itself passed 2^32 in about four months), and random
/// nonces under each derived key stay far from collision (2^32 chunks is 34 years of a call).
fn recording_key(data_key: &SecretKey, id: &str) -> SecretKey {
    data_key.derive(&format!("tonewall:recording-key:{id}"))
}

fn chunk_aad(id: &str, index: u64, last: bool) -> String {
    format!("tonewall:recording:{id}:chunk:{index}:{}", u8::from(last))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RecordingError + '_ {
    move |e| RecordingError::File { path: path.to_path_buf(), why: e.to_string() }
}

/// Writes one call's recording as it happens.
pub struct Writer {
    id: String,
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    key_id: i64,
    key: SecretKey,
    chunk: Vec<u8>,
    index: u64,
    frames: u64,
    started_at: i64,
}

impl Writer {
    pub fn create(data_dir: &Path, vault: &Vault, started_at: i64) -> Result<Writer, RecordingError> {
        let dir = directory(data_dir);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let id = uuid::Uuid::new_v4().to_string();
        let path = dir.join(format!("{id}.twrec"));
        let (key_id, data_key) = vault.keys().current();
        let key = recording_key(&data_key, &id);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io_err(&path))?;
        // Sealed chunks are larger than the buffer and go straight to the file; the buffer
        // only gathers each chunk's length and nonce.
        let mut file = std::io::BufWriter::with_capacity(64, file);
        file.write_all(MAGIC).and_then(|()| file.write_all(&key_id.to_le_bytes())).map_err(io_err(&path))?;
        Ok(Writer {
            id,
            path,
            file,
            key_id,
            key,
            chunk: Vec::with_capacity(CHUNK_BYTES),
            index: 0,
            frames: 0,
            started_at,
        })
    }

    pub fn write(&mut self, frame: &[i16; STEREO_FRAME]) -> Result<(), RecordingError> {
        let at = self.chunk.len();
        self.chunk.resize(at + 2 * STEREO_FRAME, 0);
        for (o, s) in self.chunk[at..].chunks_exact_mut(2).zip(frame) {
            o.copy_from_slice(&s.to_le_bytes());
        }
        self.frames += 1;
        if self.chunk.len() >= CHUNK_BYTES {
            self.seal(false)?;
        }
        Ok(())
    }

    fn seal(&mut self, last: bool) -> Result<(), RecordingError> {
        let (nonce, ct) = crypto::seal(&self.key, &self.chunk, chunk_aad(&self.id, self.index, last).as_bytes());
        let len = (nonce.len() + ct.len()) as u32;
        let path = &self.path;
        self.file
            .write_all(&len.to_le_bytes())
            .and_then(|()| self.file.write_all(&nonce))
            .and_then(|()| self.file.write_all(&ct))
            .map_err(io_err(path))?;
        self.chunk.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals the last chunk, syncs the file and records the metadata.
    pub async fn finish(
        mut self,
        pool: &AnyPool,
        merchant: &MerchantId,
        call_id: &str,
        session_id: &str,
        reference: &str,
        spans: &[MaskedSpan],
    ) -> Result<Metadata, RecordingError> {
        self.seal(true)?;
        let path = self.path.clone();
        let file = self.file.into_inner().map_err(|e| io_err(&path)(e.into_error()))?;
        file.sync_all().map_err(io_err(&path))?;
        let duration_ms = (self.frames * 20) as i64;
        let spans_json = serde_json::to_string(spans).unwrap_or_else(|_| "[]".into());
        let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        sqlx::query(
            "INSERT INTO recordings (id, call_id, session_id, reference, started_at, duration_ms, key_id, masked_spans, file, merchant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&self.id)
        .bind(call_id)
        .bind(session_id)
        .bind(reference)
        .bind(self.started_at)
        .bind(duration_ms)
        .bind(self.key_id)
        .bind(&spans_json)
        .bind(&file_name)
        .bind(merchant.as_str())
        .execute(pool)
        .await?;
        Ok(Metadata {
            id: self.id,
            call_id: call_id.into(),
            session_id: session_id.into(),
            reference: reference.into(),
            started_at: self.started_at,
            duration_ms,
            masked_spans: spans.to_vec(),
        })
    }
}

/// A page of `merchant`'s recordings, newest first, filtered by start time (unix ms) and
/// reference.
pub async fn list(
    pool: &AnyPool,
    merchant: &MerchantId,
    from: Option<i64>,
    to: Option<i64>,
    reference: Option<&str>,
    page: i64,
    per_page: i64,
) -> Result<(Vec<Metadata>, i64), RecordingError> {
    let filter = "WHERE started_at >= $1 AND started_at < $2 AND ($3 = '' OR reference = $3) AND merchant = $4";
    let (from, to, reference) = (from.unwrap_or(0), to.unwrap_or(i64::MAX), reference.unwrap_or(""));
    let (total,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM recordings {filter}")))
        .bind(from)
        .bind(to)
        .bind(reference)
        .bind(merchant.as_str())
        .fetch_one(pool)
        .await?;
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM recordings {filter} ORDER BY started_at DESC, id LIMIT $5 OFFSET $6"
    )))
    .bind(from)
    .bind(to)
    .bind(reference)
    .bind(merchant.as_str())
    .bind(per_page)
    .bind(page.saturating_sub(1).saturating_mul(per_page))
    .fetch_all(pool)
    .await?;
    Ok((rows.iter().map(Row::metadata).collect(), total))
}

/// The merchant a recording belongs to, if it exists.
pub async fn row_merchant(pool: &AnyPool, id: &str) -> Result<Option<MerchantId>, RecordingError> {
    Ok(row(pool, id).await?.map(|r| MerchantId::from_stored(r.merchant)))
}

async fn row(pool: &AnyPool, id: &str) -> Result<Option<Row>, RecordingError> {
    Ok(sqlx::query_as("SELECT * FROM recordings WHERE id = $1").bind(id).fetch_optional(pool).await?)
}

/// A recording's metadata, if it is `merchant`'s.
pub async fn metadata(pool: &AnyPool, id: &str, merchant: &MerchantId) -> Result<Option<Metadata>, RecordingError> {
    Ok(row(pool, id).await?.filter(|r| r.merchant == merchant.as_str()).map(|r| r.metadata()))
}

/// The recording decrypted as a WAV file (8 kHz, 16-bit, stereo), checking every chunk.
pub async fn wav(vault: &Vault, data_dir: &Path, id: &str) -> Result<Option<Vec<u8>>, RecordingError> {
    let Some(row) = row(vault.pool(), id).await? else { return Ok(None) };
    let path = directory(data_dir).join(&row.file);
    let mut bytes = Vec::new();
    std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(&path))?;
    let damaged = || RecordingError::Damaged(row.id.clone());
    let (body, derived) = match bytes.strip_prefix(MAGIC.as_slice()) {
        Some(body) => (body, true),
        None => (bytes.strip_prefix(MAGIC_V1.as_slice()).ok_or_else(damaged)?, false),
    };
    let (key_id, mut rest) = body.split_at_checked(8).ok_or_else(damaged)?;
    let key_id = i64::from_le_bytes(key_id.try_into().map_err(|_| damaged())?);
    if key_id != row.key_id {
        return Err(damaged());
    }
    let key = match vault.keys().get(key_id) {
        Some(k) => k,
        None => {
            vault.keys().refresh(vault.pool()).await?;
            vault.keys().get(key_id).ok_or_else(damaged)?
        }
    };
    let key = if derived { recording_key(&key, &row.id) } else { key };
    let mut pcm = Vec::new();
    let mut index = 0u64;
    loop {
        let (len, after) = rest.split_at_checked(4).ok_or_else(damaged)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| damaged())?) as usize;
        let (sealed, after) = after.split_at_checked(len).ok_or_else(damaged)?;
        let (nonce, ct) = sealed.split_at_checked(12).ok_or_else(damaged)?;
        let open = |last| crypto::open(&key, nonce, ct, chunk_aad(&row.id, index, last).as_bytes());
        match open(false) {
            Ok(plain) => pcm.extend_from_slice(&plain),
            Err(_) => {
                let plain = open(true).map_err(|_| damaged())?;
                pcm.extend_from_slice(&plain);
                if !after.is_empty() {
                    return Err(damaged()); // something appended after the last chunk
                }
                break;
            }
        }
        rest = after;
        index += 1;
    }
    Ok(Some(wav_bytes(&pcm)))
}

/// A canonical 44-byte WAV header and the interleaved samples.
fn wav_bytes(pcm_le: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(44 + pcm_le.len());
    let data = pcm_le.len() as u32;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&2u16.to_le_bytes()); // stereo
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 4).to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    out.extend_from_slice(pcm_le);
    out
}

/// Which recordings a purge deletes.
#[derive(Debug, Clone, Copy)]
pub enum Purge<'a> {
    /// A merchant's started before this time (unix ms): retention.
    StartedBefore(&'a MerchantId, i64),
    /// Those of a reference, whatever their age: erasure on request. Of one merchant, or of
    /// every merchant with None (the operator's CLI).
    Reference(Option<&'a MerchantId>, &'a str),
}

pub async fn purge(vault: &Vault, data_dir: &Path, which: Purge<'_>) -> Result<u64, RecordingError> {
    let rows: Vec<Row> = match which {
        Purge::StartedBefore(merchant, before) => {
            sqlx::query_as("SELECT * FROM recordings WHERE started_at < $1 AND merchant = $2")
                .bind(before)
                .bind(merchant.as_str())
                .fetch_all(vault.pool())
                .await?
        }
        Purge::Reference(merchant, reference) => {
            sqlx::query_as("SELECT * FROM recordings WHERE reference = $1 AND ($2 = '' OR merchant = $2)")
                .bind(reference)
                .bind(merchant.map_or("", MerchantId::as_str))
                .fetch_all(vault.pool())
                .await?
        }
    };
    let mut n = 0;
    for r in rows {
        let path = directory(data_dir).join(&r.file);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        sqlx::query("DELETE FROM recordings WHERE id = $1").bind(&r.id).execute(vault.pool()).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::collector::FieldName;
    use crate::vault::VaultOptions;

    async fn recorded(vault: &Vault, dir: &Path, seconds: usize) -> Metadata {
        let mut w = Writer::create(dir, vault, 1_700_000_000_000).unwrap();
        for i in 0..seconds * 50 {
            let mut frame = [0i16; STEREO_FRAME];
            for (j, s) in frame.iter_mut().enumerate() {
                *s = ((i * 7 + j) % 2000) as i16 - 1000;
            }
            w.write(&frame).unwrap();
        }
        let spans = [MaskedSpan { start_ms: 100, end_ms: 180, field: Some(FieldName::Pan) }];
        w.finish(vault.pool(), &MerchantId::default_merchant(), "call-1", "sess-1", "order-9", &spans).await.unwrap()
    }

    #[tokio::test]
    async fn sealed_at_rest_opened_whole_and_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(VaultOptions::development(dir.path())).await.unwrap();
        let meta = recorded(&vault, dir.path(), 3).await;
        assert_eq!((meta.duration_ms, meta.masked_spans.len()), (3000, 1));
        let opened = wav(&vault, dir.path(), &meta.id).await.unwrap().unwrap();
        assert_eq!(&opened[..4], b"RIFF");
        assert_eq!(opened.len(), 44 + 3 * 32_000);
        let reader = hound::WavReader::new(std::io::Cursor::new(&opened)).unwrap();
        assert_eq!((reader.spec().channels, reader.spec().sample_rate), (2, 8000));
        let file = directory(dir.path()).join(format!("{}.twrec", meta.id));
        let sealed = std::fs::read(&file).unwrap();
        let audio = &opened[44..44 + 64];
        assert!(!sealed.windows(audio.len()).any(|w| w == audio), "no audio in clear on disk");
        assert_eq!(
            metadata(vault.pool(), &meta.id, &MerchantId::default_merchant()).await.unwrap(),
            Some(meta.clone())
        );
        // A flipped bit, a dropped chunk, a cut-off end: all refused.
        let chunk = 4 + 12 + CHUNK_BYTES + 16;
        let header = MAGIC.len() + 8;
        let tampered: [Vec<u8>; 3] = [
            {
                let mut b = sealed.clone();
                b[header + 100] ^= 1;
                b
            },
            [&sealed[..header], &sealed[header + chunk..]].concat(),
            sealed[..sealed.len() - chunk].to_vec(),
        ];
        for bytes in tampered {
            std::fs::write(&file, bytes).unwrap();
            assert!(matches!(wav(&vault, dir.path(), &meta.id).await, Err(RecordingError::Damaged(_))));
        }
    }

    #[tokio::test]
    async fn listing_filters_pages_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(VaultOptions::development(dir.path())).await.unwrap();
        for _ in 0..3 {
            recorded(&vault, dir.path(), 1).await;
        }
        let (page, total) =
            list(vault.pool(), &MerchantId::default_merchant(), None, None, Some("order-9"), 1, 2).await.unwrap();
        assert_eq!((page.len(), total), (2, 3));
        let (page, _) =
            list(vault.pool(), &MerchantId::default_merchant(), None, None, Some("order-9"), 2, 2).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(
            list(vault.pool(), &MerchantId::default_merchant(), None, None, Some("other"), 1, 10).await.unwrap().1,
            0
        );
        assert_eq!(
            list(vault.pool(), &MerchantId::default_merchant(), Some(1_800_000_000_000), None, None, 1, 10)
                .await
                .unwrap()
                .1,
            0
        );
        assert_eq!(
            purge(&vault, dir.path(), Purge::StartedBefore(&MerchantId::default_merchant(), 1_700_000_000_001))
                .await
                .unwrap(),
            3
        );
        assert_eq!(list(vault.pool(), &MerchantId::default_merchant(), None, None, None, 1, 10).await.unwrap().1, 0);
        assert_eq!(std::fs::read_dir(directory(dir.path())).unwrap().count(), 0, "files gone too");
    }
}
