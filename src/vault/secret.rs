//! Where a root secret comes from (PCI DSS 3.6.1: key-encrypting keys stored apart from the
//! data they protect): a file readable by its owner only, an environment variable, or — for
//! development only — a file created beside the database or hex inside the config file.
//! Production mode refuses the development sources.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::VaultError;
use super::crypto::{self, SecretKey};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// Created in the data directory on first run, with a warning. Development only.
    DevFile,
    /// 64 hex digits in a file of mode 0600 (or stricter).
    File(PathBuf),
    /// 64 hex digits in this environment variable.
    Env(String),
    /// 64 hex digits in the config file itself. Development only.
    Hex(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::DevFile => f.write_str("DevFile"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Env(v) => write!(f, "Env({v})"),
            SecretSource::Hex(_) => f.write_str("Hex(..)"),
        }
    }
}

impl SecretSource {
    pub fn is_development(&self) -> bool {
        matches!(self, SecretSource::DevFile | SecretSource::Hex(_))
    }

    /// Loads the secret; `dev_file` is where `DevFile` keeps it.
    pub fn load(&self, dev_file: &Path) -> Result<SecretKey, VaultError> {
        match self {
            SecretSource::DevFile => load_or_create(dev_file),
            SecretSource::File(path) => load_file(path),
            SecretSource::Env(var) => {
                let fail = |why: &str| VaultError::Secret(format!("environment variable {var}: {why}"));
                let text = Zeroizing::new(std::env::var(var).map_err(|_| fail("not set"))?);
                parse_hex(&text).map_err(|why| fail(&why))
            }
            SecretSource::Hex(text) => parse_hex(text).map_err(|why| VaultError::Secret(format!("inline hex: {why}"))),
        }
    }
}

fn parse_hex(text: &str) -> Result<SecretKey, String> {
    let bytes = Zeroizing::new(crypto::unhex(text).ok_or("not hex")?);
    SecretKey::from_bytes(&bytes).map_err(|_| "must hold 32 bytes (64 hex digits)".to_string())
}

/// A secret file's text, refused unless only its owner can read it.
pub fn read_owner_only(path: &Path) -> Result<Zeroizing<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err("must be readable by its owner only (chmod 600)".into());
    }
    Ok(Zeroizing::new(std::fs::read_to_string(path).map_err(|e| e.to_string())?))
}

fn load_file(path: &Path) -> Result<SecretKey, VaultError> {
    let fail = |why: String| VaultError::Secret(format!("key file {}: {why}", path.display()));
    parse_hex(&read_owner_only(path).map_err(fail)?).map_err(fail)
}

fn load_or_create(path: &Path) -> Result<SecretKey, VaultError> {
    if path.exists() {
        return load_file(path);
    }
    let fail = |why: String| VaultError::Secret(format!("key file {}: {why}", path.display()));
    let key = SecretKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    f.write_all(Zeroizing::new(crypto::hex(key.expose())).as_bytes()).map_err(|e| fail(e.to_string()))?;
    f.sync_all().map_err(|e| fail(e.to_string()))?;
    tracing::warn!(
        path = %path.display(),
        "DEVELOPMENT KEY CREATED: stored next to the data it protects. Fine for trying tonewall; never for real cards."
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_load_and_refuse_what_they_should() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kek.dev.hex");
        let a = SecretSource::DevFile.load(&dev).unwrap();
        assert_eq!(std::fs::metadata(&dev).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(SecretSource::DevFile.load(&dev).unwrap().expose(), a.expose(), "created once, then read");
        assert_eq!(SecretSource::File(dev.clone()).load(Path::new("/nonexistent")).unwrap().expose(), a.expose());
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = SecretSource::File(dev.clone()).load(&dev).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let hex = crypto::hex(a.expose());
        assert_eq!(SecretSource::Hex(hex.clone()).load(&dev).unwrap().expose(), a.expose());
        assert!(SecretSource::Hex("abcd".into()).load(&dev).unwrap_err().to_string().contains("32 bytes"));
        let e = SecretSource::Env("TONEWALL_TEST_UNSET_VARIABLE".into()).load(&dev).unwrap_err().to_string();
        assert!(e.contains("not set"), "{e}");
        assert_eq!(format!("{:?}", SecretSource::Hex(hex.clone())), "Hex(..)", "Debug never shows key material");
        assert!(SecretSource::DevFile.is_development() && !SecretSource::Env("X".into()).is_development());
    }
}
