//! Records read from and written to the store.

use bulwark_core::account::{DisplayName, Email, GroupName, Login};
use bulwark_core::api_key::{ApiKeyDigest, KeyName, Scopes};
use bulwark_core::password::hash::PasswordHash;
use bulwark_core::token::TokenHash;
use bulwark_core::UnixTime;

/// Primary key of a user.
pub type UserId = i64;
/// Primary key of a session.
pub type SessionId = i64;

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub login: Login,
    pub email: Option<Email>,
    pub display_name: DisplayName,
    pub groups: Vec<GroupName>,
    /// Initial password, if any (invited users have none until they set one).
    pub password_hash: Option<PasswordHash>,
    pub must_change_password: bool,
    pub created_at: UnixTime,
}

/// A stored user; never carries the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub login: String,
    pub email: Option<String>,
    pub display_name: String,
    pub active: bool,
    /// Sorted group names.
    pub groups: Vec<String>,
    pub created_at: UnixTime,
    pub last_login_at: Option<UnixTime>,
    pub password_changed_at: Option<UnixTime>,
    pub must_change_password: bool,
    pub has_password: bool,
    /// Kiosk, POS or scanner account: exempt from 2FA, bound to `allowed_networks`.
    pub device_account: bool,
    /// CIDRs a device account may log in from.
    pub allowed_networks: Vec<String>,
    /// When the 2FA enforcement grace period started for this user, if it has.
    pub grace_started_at: Option<UnixTime>,
}

impl UserRecord {
    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a password login decides on, read at once ([`crate::UserStore::find_login_candidate`]).
#[derive(Debug, Clone)]
pub struct LoginCandidate {
    pub user: UserRecord,
    /// The stored password hash, if the user has a password.
    pub password_hash: Option<PasswordHash>,
    /// Whether the user has a confirmed authenticator (read from the factors themselves).
    pub totp_confirmed: bool,
}

/// Filter and page for listing users.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Substring of login, e-mail or display name (case-insensitive).
    pub search: Option<String>,
    /// Only members of this group.
    pub group: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// The admin console's user list: every set field must match; ordered by login.
#[derive(Debug, Clone, Default)]
pub struct AdminUserFilter {
    /// Substring of login, e-mail or display name (case-insensitive).
    pub search: Option<String>,
    /// Only members of this group.
    pub group: Option<String>,
    /// Only users with (true) or without (false) a confirmed authenticator.
    pub two_factor: Option<bool>,
    /// Only active (true) or disabled (false) accounts.
    pub active: Option<bool>,
    /// Only accounts whose login lock lasts beyond this time.
    pub locked_at: Option<UnixTime>,
    /// Only accounts with no login since this time (never: created before it).
    pub idle_since: Option<UnixTime>,
    /// Only accounts with a password changed before this time.
    pub password_changed_before: Option<UnixTime>,
    /// The next page: logins after this one.
    pub after_login: Option<String>,
    pub limit: u32,
}

/// A user with the state of their second factors, for reports over every user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSecurity {
    pub user: UserRecord,
    /// The user has a confirmed authenticator.
    pub totp_active: bool,
    /// Recovery codes not used yet.
    pub recovery_codes_left: u32,
}

/// A new password for a user.
#[derive(Debug, Clone)]
pub struct PasswordChange {
    pub user: UserId,
    pub hash: PasswordHash,
    pub changed_at: UnixTime,
    pub must_change: bool,
    pub keep_history: usize,
}

/// How far a session has come through the login flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStage {
    /// Password checked; the second factor is still due. Reaches nothing but the next step.
    SecondFactor,
    /// Fully logged in.
    Full,
}

impl SessionStage {
    /// Stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecondFactor => "second_factor",
            Self::Full => "full",
        }
    }

    /// Reads a stored name; unknown values are treated as the least privileged stage.
    pub fn from_stored(s: &str) -> Self {
        if s == "full" {
            Self::Full
        } else {
            Self::SecondFactor
        }
    }
}

/// A session to store.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub token_hash: TokenHash,
    pub user: UserId,
    pub stage: SessionStage,
    /// The login passed a second factor (or a browser trusted after one).
    pub two_factor: bool,
    pub created_at: UnixTime,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub user: UserId,
    pub stage: SessionStage,
    /// The login passed a second factor (or a browser trusted after one).
    pub two_factor: bool,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// When the user last proved their password in this session (at login, or again for a
    /// sensitive act).
    pub password_checked_at: UnixTime,
}

/// What a one-time token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// First-admin setup link printed by `serve`.
    Setup,
    /// "Forgot password" link.
    PasswordReset,
    /// Invitation to set a first password.
    Invitation,
    /// "This wasn't me" in a new-device or password-changed mail: secures the account.
    NotMe,
}

impl TokenPurpose {
    /// Stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::PasswordReset => "password_reset",
            Self::Invitation => "invitation",
            Self::NotMe => "not_me",
        }
    }
}

/// A one-time token to store.
#[derive(Debug, Clone)]
pub struct NewOneTimeToken {
    pub hash: TokenHash,
    pub purpose: TokenPurpose,
    pub user: Option<UserId>,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
}

/// A stored one-time token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeTokenRecord {
    pub id: i64,
    pub user: Option<UserId>,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
}

/// A throttle counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRecord {
    pub failures: u32,
    pub last_failure_at: UnixTime,
    pub blocked_until: UnixTime,
}

/// An audit event to append.
#[derive(Debug, Clone, Default)]
pub struct NewAuditEvent {
    pub at: UnixTime,
    /// Who acted: a login, `cli`, or `system`.
    pub actor: Option<String>,
    /// Whom it concerned: a login (possibly one that does not exist).
    pub subject: Option<String>,
    /// Stable event name, e.g. `login`, `password_changed`.
    pub event: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Why, in a few words (never a secret).
    pub detail: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl NewAuditEvent {
    /// The hash of this event as event `id` of the chain, after the event hashed `prev_hash`.
    pub fn link_hash(&self, id: i64, prev_hash: &str) -> String {
        bulwark_core::audit::link_hash(
            prev_hash,
            &bulwark_core::audit::LinkFields {
                id,
                at: self.at,
                actor: self.actor.as_deref(),
                subject: self.subject.as_deref(),
                event: &self.event,
                outcome: &self.outcome,
                detail: self.detail.as_deref(),
                ip: self.ip.as_deref(),
                user_agent: self.user_agent.as_deref(),
            },
        )
    }
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: UnixTime,
    pub actor: Option<String>,
    pub subject: Option<String>,
    pub event: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The hash of the record before this one (see `bulwark_core::audit`).
    pub prev_hash: Option<String>,
    /// This record's hash.
    pub hash: Option<String>,
}

impl AuditRecord {
    /// The fields the record's hash covers.
    pub fn link_fields(&self) -> bulwark_core::audit::LinkFields<'_> {
        bulwark_core::audit::LinkFields {
            id: self.id,
            at: self.at,
            actor: self.actor.as_deref(),
            subject: self.subject.as_deref(),
            event: &self.event,
            outcome: &self.outcome,
            detail: self.detail.as_deref(),
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
        }
    }
}

/// Filter for listing audit events, newest first. Every set field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub subject: Option<String>,
    pub event: Option<String>,
    /// Events at or after this time.
    pub since: Option<UnixTime>,
    /// Events before this time.
    pub until: Option<UnixTime>,
    /// Events with a smaller id (the next page after the last id seen).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// A signed record of pruned audit events: every event up to `last_id` was removed, and the
/// last of them hashed to `last_hash` (see `bulwark_core::audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    pub at: UnixTime,
    pub last_id: i64,
    pub last_hash: String,
    /// How many events this pruning removed (informational, not signed).
    pub pruned: i64,
    /// The server key that signed it.
    pub key_id: String,
    pub signature: String,
}

/// A message to queue.
#[derive(Clone)]
pub struct NewMail {
    pub to: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub created_at: UnixTime,
}

/// A queued message.
#[derive(Clone, PartialEq, Eq)]
pub struct MailRecord {
    pub id: i64,
    pub to: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub created_at: UnixTime,
    pub attempts: u32,
    pub next_attempt_at: UnixTime,
}

impl std::fmt::Debug for MailRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies can hold reset links: keep them out of Debug output.
        f.debug_struct("MailRecord")
            .field("id", &self.id)
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for NewMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// A TOTP factor to store; the secret is sealed (encrypted) by the caller.
#[derive(Debug, Clone)]
pub struct NewTotpFactor {
    pub user: UserId,
    /// AEAD ciphertext of the secret, as produced by the server's key ring.
    pub secret_sealed: String,
    /// Which key sealed it.
    pub key_id: String,
    pub algorithm: String,
    pub digits: u32,
    pub period: u32,
    pub created_at: UnixTime,
}

/// A stored TOTP factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpFactorRecord {
    pub user: UserId,
    pub secret_sealed: String,
    pub key_id: String,
    pub algorithm: String,
    pub digits: u32,
    pub period: u32,
    pub created_at: UnixTime,
    /// None while enrolment awaits its first correct code.
    pub confirmed_at: Option<UnixTime>,
    /// The newest time step accepted: only a later one may be accepted next.
    pub last_used_step: Option<i64>,
}

/// A trusted ("remember this device") browser to store.
#[derive(Debug, Clone)]
pub struct NewTrustedDevice {
    pub token_hash: TokenHash,
    pub user: UserId,
    pub name: String,
    pub created_at: UnixTime,
    pub ip: Option<String>,
    pub expires_at: UnixTime,
}

/// A stored trusted device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedDeviceRecord {
    pub id: i64,
    pub user: UserId,
    pub name: String,
    pub created_at: UnixTime,
    pub last_used_at: UnixTime,
    pub last_ip: Option<String>,
    pub expires_at: UnixTime,
}

/// An API key to store: only its digest, never the key.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub user: UserId,
    pub name: KeyName,
    pub digest: ApiKeyDigest,
    /// `bwk_` and the first symbols of the key, for listings.
    pub display_prefix: String,
    pub scopes: Scopes,
    pub created_at: UnixTime,
    /// None: never expires.
    pub expires_at: Option<UnixTime>,
}

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: i64,
    pub user: UserId,
    pub name: String,
    pub display_prefix: String,
    pub scopes: Scopes,
    pub created_at: UnixTime,
    pub expires_at: Option<UnixTime>,
    /// As last flushed by a node; a node's own recent uses may be newer (see the server).
    pub last_used_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
}

/// One stored setting of the runtime security policy (see the server's `config::policy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingRecord {
    /// Dotted name, as in the configuration file (`sessions.idle_minutes`).
    pub name: String,
    /// The value as JSON text.
    pub value: String,
    pub updated_at: UnixTime,
}

/// One compare-and-set step of a settings change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingChange {
    pub name: String,
    /// The value the caller saw (JSON text); `None`: the setting was not stored.
    pub old: Option<String>,
    /// The value to store; `None` removes the setting.
    pub new: Option<String>,
}
