//! Built-in accounts for people, where the contact center has no identity provider (PCI
//! DSS 8.2, 8.3, 8.4): a username, a role and a team; the password as an argon2id hash
//! (RFC 9106); a TOTP second factor (RFC 6238), required for the admin, qa and processor
//! roles and, with `accounts.agent_totp`, for agents; after `LOCKOUT_FAILURES` failed
//! sign-ins in a row the account is locked for `LOCKOUT` (8.3.4). The TOTP secret is sealed
//! under a vault data key, bound to the user's id; a code is taken once (RFC 6238 §5.2).

pub mod oidc;
pub mod web_sessions;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sqlx::AnyPool;
use thiserror::Error;

use crate::merchant::MerchantId;
use crate::owner::Team;
use crate::vault::Vault;
use crate::vault::actor::Role;
use crate::vault::crypto::{self, hex, unhex};

/// Failed sign-ins in a row that lock an account (PCI DSS 8.3.4: at most 10).
pub const LOCKOUT_FAILURES: i64 = 10;
/// How long a locked account stays locked (8.3.4: at least 30 minutes).
pub const LOCKOUT: Duration = Duration::from_secs(30 * 60);
/// Shortest password accepted (8.3.6: at least 12 characters).
pub const MIN_PASSWORD: usize = 12;

#[derive(Debug, Error)]
pub enum AccountError {
    #[error("account store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("a user named {0} already exists")]
    Exists(String),
    #[error("no user named {0}")]
    NoSuchUser(String),
    #[error("usernames are 1 to 64 letters, digits, dots, dashes, underscores or @, and no card number")]
    BadUsername,
    #[error("passwords need at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("the role {0} signs in with a one-time code: add it with --totp")]
    TotpRequired(&'static str),
    #[error("password hashing failed")]
    Hash,
    #[error("the TOTP secret cannot be opened")]
    Sealed,
}

/// Why a sign-in failed. The client hears only "wrong username, password or code" (or
/// "locked"): which part was wrong is for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignInFailure {
    #[error("unknown user")]
    UnknownUser,
    #[error("wrong password")]
    WrongPassword,
    #[error("missing or wrong one-time code")]
    WrongCode,
    #[error("account locked")]
    Locked,
    #[error("account disabled")]
    Disabled,
}

/// A person who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub merchant: MerchantId,
    pub team: Option<Team>,
    pub source: Source,
}

/// Who vouched for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A built-in account: password and one-time code checked here.
    Builtin,
    /// The contact center's identity provider (`oidc`).
    Provider,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Builtin => "password",
            Source::Provider => "identity_provider",
        }
    }
}

impl User {
    /// The owner name of what this person creates, and the audit trail's actor: the two
    /// sources keep apart names, so a provider's "alice" is not the built-in "alice".
    pub fn principal(&self) -> String {
        match self.source {
            Source::Builtin => format!("user:{}", self.username),
            Source::Provider => format!("oidc:{}", self.username),
        }
    }
}

/// A user as `tonewall user list` shows them: no hash, no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub username: String,
    pub role: Role,
    pub merchant: MerchantId,
    pub team: Option<Team>,
    pub totp: bool,
    pub disabled: bool,
    pub locked: bool,
}

/// Whether `role` must sign in with a one-time code.
pub fn needs_totp(role: Role, agent_totp: bool) -> bool {
    role != Role::Agent || agent_totp
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// RFC 6238's defaults, which every authenticator app uses: SHA-1, 6 digits, 30 s steps.
fn totp(secret: &[u8]) -> Option<totp_rs::Totp> {
    totp_rs::Builder::new().with_secret(secret.to_vec()).build().ok()
}

/// Who a new user is.
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub role: Role,
    pub merchant: &'a MerchantId,
    pub team: Option<&'a Team>,
    pub with_totp: bool,
}

/// Adds a user of merchant `default` (`add_user`).
pub async fn add(
    vault: &Vault,
    username: &str,
    password: &str,
    role: Role,
    team: Option<&Team>,
    with_totp: bool,
    agent_totp: bool,
) -> Result<Option<String>, AccountError> {
    let merchant = MerchantId::default_merchant();
    let user = NewUser { username, role, merchant: &merchant, team, with_totp };
    add_user(vault, &user, password, agent_totp).await
}

/// Adds a user. With `totp`, returns the new TOTP secret in base32, for the person's
/// authenticator app (shown once).
pub async fn add_user(
    vault: &Vault,
    user: &NewUser<'_>,
    password: &str,
    agent_totp: bool,
) -> Result<Option<String>, AccountError> {
    let NewUser { username, role, merchant, team, with_totp } = *user;
    let ok_name = |c: char| c.is_ascii_alphanumeric() || "._-@".contains(c);
    // A card number as a name would reach the audit trail and the security log.
    let card_like = crate::capture::card::looks_like_card_number(username);
    if username.is_empty() || username.len() > 64 || !username.chars().all(ok_name) || card_like {
        return Err(AccountError::BadUsername);
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(AccountError::ShortPassword);
    }
    if needs_totp(role, agent_totp) && !with_totp {
        return Err(AccountError::TotpRequired(role.as_str()));
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || {
        argon2::Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string())
    })
    .await
    .map_err(|_| AccountError::Hash)?
    .map_err(|_| AccountError::Hash)?;
    let id = uuid::Uuid::new_v4().to_string();
    let secret: Option<[u8; 20]> = with_totp.then(rand::random);
    let (key_id, nonce, sealed) = match &secret {
        Some(s) => {
            let (key_id, key) = vault.keys().current();
            let (nonce, ct) = crypto::seal(&key, s, id.as_bytes());
            (Some(key_id), Some(hex(&nonce)), Some(hex(&ct)))
        }
        None => (None, None, None),
    };
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, role, team, password_hash, totp_key_id, totp_nonce, totp_sealed, created_at, merchant) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(username)
    .bind(role.as_str())
    .bind(team.map(|t| t.0.clone()))
    .bind(&hash)
    .bind(key_id)
    .bind(nonce)
    .bind(sealed)
    .bind(unix_now())
    .bind(merchant.as_str())
    .execute(vault.pool())
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(AccountError::Exists(username.into())),
        Err(e) => return Err(e.into()),
    }
    Ok(secret.map(|s| totp_rs::Secret::from(s.to_vec()).to_base32()))
}

#[derive(sqlx::FromRow)]
struct ListRow {
    username: String,
    role: String,
    merchant: String,
    team: Option<String>,
    totp_sealed: Option<String>,
    disabled: i64,
    locked_until: i64,
}

pub async fn list(pool: &AnyPool) -> Result<Vec<Listed>, AccountError> {
    let rows: Vec<ListRow> = sqlx::query_as(
        "SELECT username, role, merchant, team, totp_sealed, disabled, locked_until FROM users ORDER BY username",
    )
    .fetch_all(pool)
    .await?;
    let now = unix_now();
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Listed {
                role: Role::parse(&r.role)?,
                merchant: MerchantId::from_stored(r.merchant),
                team: r.team.as_deref().and_then(Team::named),
                totp: r.totp_sealed.is_some(),
                disabled: r.disabled != 0,
                locked: r.locked_until > now,
                username: r.username,
            })
        })
        .collect())
}

/// Whether a user may still act: not disabled since signing in. Checked on every request of
/// a web session, so `tonewall user disable` ends a running server's sessions at once.
pub async fn is_enabled(pool: &AnyPool, user_id: &str) -> Result<bool, AccountError> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT disabled FROM users WHERE id = $1").bind(user_id).fetch_optional(pool).await?;
    Ok(row.is_some_and(|(d,)| d == 0))
}

/// Disables a user: they can no longer sign in, and their open web sessions end at their
/// next request (`is_enabled`).
pub async fn disable(pool: &AnyPool, username: &str) -> Result<String, AccountError> {
    let id: Option<(String,)> =
        sqlx::query_as("SELECT id FROM users WHERE username = $1").bind(username).fetch_optional(pool).await?;
    let (id,) = id.ok_or_else(|| AccountError::NoSuchUser(username.into()))?;
    sqlx::query("UPDATE users SET disabled = 1 WHERE id = $1").bind(&id).execute(pool).await?;
    Ok(id)
}

#[derive(sqlx::FromRow)]
struct SignInRow {
    id: String,
    role: String,
    merchant: String,
    team: Option<String>,
    password_hash: String,
    totp_key_id: Option<i64>,
    totp_nonce: Option<String>,
    totp_sealed: Option<String>,
    totp_last_step: i64,
    failures: i64,
    locked_until: i64,
    disabled: i64,
}

/// Checks a sign-in: the password, then the one-time code where the account has one, and
/// counts failures toward the lockout. A code is taken once.
pub async fn sign_in(
    vault: &Vault,
    username: &str,
    password: &str,
    code: &str,
    agent_totp: bool,
) -> Result<Result<User, (SignInFailure, Option<String>)>, AccountError> {
    let pool = vault.pool();
    let row: Option<SignInRow> = sqlx::query_as(
        "SELECT id, role, merchant, team, password_hash, totp_key_id, totp_nonce, totp_sealed, totp_last_step, failures, \
         locked_until, disabled FROM users WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    let Some(SignInRow {
        id,
        role,
        merchant,
        team,
        password_hash: hash,
        totp_key_id: key_id,
        totp_nonce: nonce,
        totp_sealed: sealed,
        totp_last_step: last_step,
        failures,
        locked_until,
        disabled,
    }) = row
    else {
        // Hash anyway, so an unknown name takes as long as a wrong password.
        let password = password.to_string();
        let _ = tokio::task::spawn_blocking(move || argon2::Argon2::default().hash_password(password.as_bytes())).await;
        return Ok(Err((SignInFailure::UnknownUser, None)));
    };
    let now = unix_now();
    if disabled != 0 {
        return Ok(Err((SignInFailure::Disabled, Some(id))));
    }
    if locked_until > now {
        return Ok(Err((SignInFailure::Locked, Some(id))));
    }
    let password = password.to_string();
    let password_ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false);
    let role = Role::parse(&role).ok_or(AccountError::Hash)?;
    let step = match (password_ok, key_id, nonce, sealed) {
        (false, ..) => Err(SignInFailure::WrongPassword),
        (true, Some(key_id), Some(nonce), Some(sealed)) => {
            let key = vault.keys().get(key_id).ok_or(AccountError::Sealed)?;
            let (nonce, sealed) =
                (unhex(&nonce).ok_or(AccountError::Sealed)?, unhex(&sealed).ok_or(AccountError::Sealed)?);
            let secret = crypto::open(&key, &nonce, &sealed, id.as_bytes()).map_err(|_| AccountError::Sealed)?;
            let step = totp(&secret).and_then(|t| t.check_current(code.trim()));
            match step {
                Some(s) if s as i64 > last_step => Ok(Some(s as i64)),
                _ => Err(SignInFailure::WrongCode),
            }
        }
        (true, ..) if needs_totp(role, agent_totp) => Err(SignInFailure::WrongCode),
        (true, ..) => Ok(None),
    };
    match step {
        Ok(step) => {
            sqlx::query("UPDATE users SET failures = 0, totp_last_step = $1 WHERE id = $2")
                .bind(step.unwrap_or(last_step))
                .bind(&id)
                .execute(pool)
                .await?;
            let team = team.as_deref().and_then(Team::named);
            let merchant = MerchantId::from_stored(merchant);
            Ok(Ok(User { id, username: username.into(), role, merchant, team, source: Source::Builtin }))
        }
        Err(why) => {
            let failures = failures + 1;
            let locked = failures >= LOCKOUT_FAILURES;
            let until = if locked { now + LOCKOUT.as_secs() as i64 } else { 0 };
            sqlx::query("UPDATE users SET failures = $1, locked_until = $2 WHERE id = $3")
                .bind(if locked { 0 } else { failures })
                .bind(until)
                .bind(&id)
                .execute(pool)
                .await?;
            if locked {
                vault.alerts().raise(crate::alerts::SecurityEvent::Lockout { username: username.to_string() });
            }
            Ok(Err((if locked { SignInFailure::Locked } else { why }, Some(id))))
        }
    }
}

/// The current code for a base32 secret: for tests and for checking an authenticator app.
pub fn current_code(base32: &str) -> Option<String> {
    let secret = totp_rs::Secret::try_from_base32(base32).ok()?;
    totp(&secret).map(|t| t.generate_current().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_card_number_is_no_username() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(crate::vault::VaultOptions::development(dir.path())).await.unwrap();
        let password = "a long enough password";
        for name in ["4111111111111111", "4111-1111-1111-1111", "order.378282246310005"] {
            let refused = add(&vault, name, password, Role::Agent, None, false, false).await;
            assert!(matches!(refused, Err(AccountError::BadUsername)), "{name}");
        }
        assert!(add(&vault, "alice.4111", password, Role::Agent, None, false, false).await.is_ok(), "digits are fine");
    }
}
