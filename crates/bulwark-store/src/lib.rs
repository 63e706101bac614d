//! Bulwark's storage contract.
//!
//! Storage is reached only through these capability traits; each backend crate implements
//! all of them and runs the same [`contract`] suite (via [`store_contract_tests!`]). Nothing
//! outside a backend crate knows which database is in use.

mod audit_head;
pub mod contract;
mod records;
mod report_page;

pub use audit_head::{AppendGuard, AuditHead, ChainHead, Link};
pub use records::*;
pub use report_page::{SecurityPage, SecurityRow};

use async_trait::async_trait;
use bulwark_core::account::{Email, GroupName, Login};
use bulwark_core::api_key::ApiKeyDigest;
use bulwark_core::password::hash::PasswordHash;
use bulwark_core::token::TokenHash;
use bulwark_core::UnixTime;

/// Errors every backend maps its failures onto.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated (e.g. the login is taken).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database is unreachable (connection refused, pool timeout): callers answer 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database was migrated by a newer Bulwark: this build must not run against it.
    #[error(
        "the database schema is at version {found}, newer than this build knows (up to {known}); \
         run the Bulwark release that migrated it, or a newer one"
    )]
    SchemaTooNew {
        /// The newest migration applied to the database.
        found: i64,
        /// The newest migration this build has.
        known: i64,
    },
    /// Anything else from the backend; logged, never shown to users.
    #[error("database error: {0}")]
    Backend(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Accounts, groups and password hashes.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user; `Conflict` if the login is taken.
    async fn insert_user(&self, user: &NewUser) -> StoreResult<UserRecord>;
    /// The user with this id, or `NotFound`.
    async fn get_user(&self, id: UserId) -> StoreResult<UserRecord>;
    /// The user with this (normalised) login.
    async fn find_user_by_login(&self, login: &Login) -> StoreResult<Option<UserRecord>>;
    /// Users with this e-mail address (compared case-insensitively).
    async fn find_users_by_email(&self, email: &Email) -> StoreResult<Vec<UserRecord>>;
    /// Users ordered by login, filtered and paged.
    async fn list_users(&self, filter: &UserFilter) -> StoreResult<Vec<UserRecord>>;
    /// Number of active users in a group.
    async fn count_active_in_group(&self, group: &GroupName) -> StoreResult<u64>;
    /// Up to `limit` users with `after_id < id <= up_to`, in id order, each with the state of
    /// their second factors (one query per page, for reports over every user; pages of
    /// disjoint id ranges may be read at the same time).
    async fn list_user_security(
        &self,
        after_id: UserId,
        up_to: UserId,
        limit: u32,
    ) -> StoreResult<SecurityPage>;
    /// The highest user id, 0 without users: where a walk over every user ends.
    async fn max_user_id(&self) -> StoreResult<UserId>;
    /// The admin console's filtered list, ordered by login, with second-factor state.
    async fn list_users_for_admin(
        &self,
        filter: &AdminUserFilter,
    ) -> StoreResult<Vec<UserSecurity>>;
    /// Changes e-mail and display name.
    async fn update_profile(
        &self,
        id: UserId,
        email: Option<&Email>,
        display_name: &str,
    ) -> StoreResult<()>;
    /// Enables or disables an account.
    async fn update_active(&self, id: UserId, active: bool) -> StoreResult<()>;
    /// Replaces the user's groups.
    async fn update_groups(&self, id: UserId, groups: &[GroupName]) -> StoreResult<()>;
    /// Deletes the user and everything that belongs to them.
    async fn delete_user(&self, id: UserId) -> StoreResult<()>;
    /// The stored password hash, if the user has a password.
    async fn find_password_hash(&self, id: UserId) -> StoreResult<Option<PasswordHash>>;
    /// The user with this login, their password hash and whether they have a confirmed
    /// authenticator, in one read: what a password login needs before the hash check.
    async fn find_login_candidate(&self, login: &Login) -> StoreResult<Option<LoginCandidate>>;
    /// Sets a new password: stores the hash, its time and the must-change flag, and records it
    /// in the history, keeping the newest `keep_history` entries (at least the current one).
    async fn update_password(&self, change: &PasswordChange) -> StoreResult<()>;
    /// Removes the current password (it stays in the history): no login works with it until
    /// a new one is set through a link.
    async fn clear_password(&self, id: UserId) -> StoreResult<()>;
    /// Replaces the hash of the current password (re-hash on login); nothing else changes.
    async fn rehash_password(&self, id: UserId, hash: &PasswordHash) -> StoreResult<()>;
    /// The newest `limit` password hashes, current first.
    async fn list_password_history(
        &self,
        id: UserId,
        limit: usize,
    ) -> StoreResult<Vec<PasswordHash>>;
    /// Forces (or clears) a password change at next login.
    async fn update_must_change_password(&self, id: UserId, must_change: bool) -> StoreResult<()>;
    /// Records a successful login.
    async fn update_last_login(&self, id: UserId, at: UnixTime) -> StoreResult<()>;
    /// Marks (or unmarks) a device account and the networks it may log in from.
    async fn update_device_account(
        &self,
        id: UserId,
        device: bool,
        networks: &[String],
    ) -> StoreResult<()>;
    /// Starts the user's 2FA grace period at `at` unless it already started; returns the start.
    async fn start_grace(&self, id: UserId, at: UnixTime) -> StoreResult<UnixTime>;
}

/// Second factors: TOTP, recovery codes, e-mailed codes.
#[async_trait]
pub trait TwoFactorStore: Send + Sync {
    /// Stores a factor awaiting confirmation, replacing an unconfirmed one; `Conflict` if the
    /// user already has a confirmed factor.
    async fn upsert_pending_totp(&self, factor: &NewTotpFactor) -> StoreResult<()>;
    /// The user's factor, confirmed or pending.
    async fn find_totp(&self, user: UserId) -> StoreResult<Option<TotpFactorRecord>>;
    /// Activates a pending factor with its first accepted step; false if none was pending.
    async fn confirm_totp(&self, user: UserId, at: UnixTime, step: i64) -> StoreResult<bool>;
    /// Records an accepted step only if it is later than the last one, atomically: of two
    /// concurrent uses of one code, exactly one gets `true`.
    async fn update_totp_step(&self, user: UserId, step: i64) -> StoreResult<bool>;
    /// Removes the user's factor; false if there was none.
    async fn delete_totp(&self, user: UserId) -> StoreResult<bool>;
    /// Every factor, for re-encryption under a new key.
    async fn list_totp_factors(&self) -> StoreResult<Vec<TotpFactorRecord>>;
    /// The distinct ids of the keys that sealed the stored secrets, sorted: checked at start
    /// against the key ring, so a lost key file is an error, not failing second steps.
    async fn totp_key_ids(&self) -> StoreResult<Vec<String>>;
    /// Replaces a sealed secret if it is still sealed under `old_key_id`.
    async fn update_totp_secret(
        &self,
        user: UserId,
        sealed: &str,
        key_id: &str,
        old_key_id: &str,
    ) -> StoreResult<bool>;
    /// Replaces every recovery code of the user with these hashes.
    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[String],
        at: UnixTime,
    ) -> StoreResult<()>;
    /// Uses a recovery code atomically: true exactly once per code.
    async fn use_recovery_code(&self, user: UserId, hash: &str, at: UnixTime) -> StoreResult<bool>;
    /// How many unused recovery codes the user has.
    async fn count_recovery_codes(&self, user: UserId) -> StoreResult<u32>;
    /// Deletes the user's recovery codes.
    async fn delete_recovery_codes(&self, user: UserId) -> StoreResult<()>;
    /// Stores an e-mailed code's hash.
    async fn insert_email_code(
        &self,
        user: UserId,
        hash: &str,
        created_at: UnixTime,
        expires_at: UnixTime,
    ) -> StoreResult<()>;
    /// Uses an unexpired e-mailed code atomically: true exactly once.
    async fn consume_email_code(
        &self,
        user: UserId,
        hash: &str,
        now: UnixTime,
    ) -> StoreResult<bool>;
    /// How many codes were mailed to the user since `since`.
    async fn count_email_codes_since(&self, user: UserId, since: UnixTime) -> StoreResult<u32>;
}

/// Browsers a user chose to trust for the second factor.
#[async_trait]
pub trait TrustedDeviceStore: Send + Sync {
    /// Stores a trusted device.
    async fn insert_trusted_device(
        &self,
        device: &NewTrustedDevice,
    ) -> StoreResult<TrustedDeviceRecord>;
    /// The device whose cookie token hashes to `hash`.
    async fn find_trusted_device(
        &self,
        hash: &TokenHash,
    ) -> StoreResult<Option<TrustedDeviceRecord>>;
    /// Records a use.
    async fn touch_trusted_device(
        &self,
        id: i64,
        at: UnixTime,
        ip: Option<&str>,
    ) -> StoreResult<()>;
    /// A user's devices, newest first.
    async fn list_user_trusted_devices(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<TrustedDeviceRecord>>;
    /// Revokes one of the user's devices; false if it was not theirs or is gone.
    async fn delete_trusted_device(&self, user: UserId, id: i64) -> StoreResult<bool>;
    /// Revokes every device of the user; returns how many.
    async fn delete_user_trusted_devices(&self, user: UserId) -> StoreResult<u64>;
}

/// Server-side sessions, keyed by the hash of the cookie token.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session.
    async fn insert_session(&self, session: &NewSession) -> StoreResult<SessionRecord>;
    /// The session whose token hashes to `hash`.
    async fn find_session(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>>;
    /// Records that the session's user proved their password again at `at`.
    async fn update_session_password_checked(&self, id: SessionId, at: UnixTime)
        -> StoreResult<()>;
    /// Records use of a session.
    async fn touch_session(&self, id: SessionId, at: UnixTime) -> StoreResult<()>;
    /// Ends one session (no error if already gone).
    async fn delete_session(&self, id: SessionId) -> StoreResult<()>;
    /// Ends every session of a user except `keep`; returns how many ended.
    async fn delete_user_sessions(&self, user: UserId, keep: Option<SessionId>)
        -> StoreResult<u64>;
    /// A user's sessions, newest first.
    async fn list_user_sessions(&self, user: UserId) -> StoreResult<Vec<SessionRecord>>;
    /// Deletes sessions idle since before `idle_before` or created before `created_before`.
    async fn delete_expired_sessions(
        &self,
        idle_before: UnixTime,
        created_before: UnixTime,
    ) -> StoreResult<u64>;
}

/// Single-use tokens: first-admin setup, password reset, invitation.
#[async_trait]
pub trait OneTimeTokenStore: Send + Sync {
    /// Stores a token.
    async fn insert_one_time_token(&self, token: &NewOneTimeToken) -> StoreResult<()>;
    /// The token if it is unused and unexpired at `now`, without using it.
    async fn find_one_time_token(
        &self,
        purpose: TokenPurpose,
        hash: &TokenHash,
        now: UnixTime,
    ) -> StoreResult<Option<OneTimeTokenRecord>>;
    /// Marks the token used and returns it, only if it was unused and unexpired: atomic, so
    /// two concurrent requests can never both consume it.
    async fn consume_one_time_token(
        &self,
        purpose: TokenPurpose,
        hash: &TokenHash,
        now: UnixTime,
    ) -> StoreResult<Option<OneTimeTokenRecord>>;
    /// Invalidates a user's unused tokens of one purpose (a new reset link voids older ones).
    async fn revoke_user_tokens(
        &self,
        user: UserId,
        purpose: TokenPurpose,
        now: UnixTime,
    ) -> StoreResult<u64>;
}

/// Failure counters for login throttling, shared by every node.
#[async_trait]
pub trait ThrottleStore: Send + Sync {
    /// Atomically counts one failure for `key` and returns the new count; a counter whose
    /// last failure is older than `window_secs` restarts at 1.
    async fn record_failure(&self, key: &str, now: UnixTime, window_secs: i64) -> StoreResult<u32>;
    /// Blocks the key until `until` (never shortens an existing block).
    async fn update_blocked_until(&self, key: &str, until: UnixTime) -> StoreResult<()>;
    /// The counter for a key.
    async fn find_throttle(&self, key: &str) -> StoreResult<Option<ThrottleRecord>> {
        Ok(self.find_throttles(&[key]).await?.pop().flatten())
    }
    /// The counters of several keys in one read, in the order of `keys` (`None` for a key
    /// without one): a login's account and IP counters.
    async fn find_throttles(&self, keys: &[&str]) -> StoreResult<Vec<Option<ThrottleRecord>>>;
    /// Removes a counter (successful login, admin unlock).
    async fn delete_throttle(&self, key: &str) -> StoreResult<()>;
}

/// The append-only audit trail, a hash chain (see `bulwark_core::audit`).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an event as the next link of the chain and returns its id. Concurrent appends
    /// (from any number of processes) still form one line: each sees the one before.
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<i64>;
    /// Events newest first, filtered.
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;
    /// Up to `limit` events with an id above `after_id`, oldest first (for walking the chain).
    async fn audit_chain(&self, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>>;
    /// The newest event before `time`, if any: where a pruning up to `time` would end.
    async fn last_audit_before(&self, time: UnixTime) -> StoreResult<Option<AuditRecord>>;
    /// Stores the checkpoint and removes every event up to its `last_id`, atomically; returns
    /// how many were removed. Refused (`Conflict`) unless the event `last_id` exists with the
    /// checkpoint's `last_hash`.
    async fn prune_audit(&self, checkpoint: &AuditCheckpoint) -> StoreResult<u64>;
    /// Every checkpoint, oldest first.
    async fn list_audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>>;
    /// How many `event` events (any outcome) happened at or after `since`.
    async fn count_audit_events(&self, event: &str, since: UnixTime) -> StoreResult<u64>;
    /// The distinct (IP, user agent) pairs of the subject's last `limit` successful `login`
    /// events, for telling a new device from a known one without loading whole records.
    async fn recent_login_clients(
        &self,
        subject: &str,
        limit: u32,
    ) -> StoreResult<Vec<(Option<String>, Option<String>)>>;
    /// Whether one of the subject's last `limit` successful `login` events came from exactly
    /// this IP and user agent: the common case of a known device, answered without reading
    /// the events out (the newest one usually matches).
    async fn login_client_seen(
        &self,
        subject: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
        limit: u32,
    ) -> StoreResult<bool>;
}

/// The durable outgoing mail queue.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// Queues a message; returns its id.
    async fn enqueue_mail(&self, mail: &NewMail) -> StoreResult<i64>;
    /// Messages due for a (re)try at `now`, oldest first.
    async fn list_due_mail(&self, now: UnixTime, limit: u32) -> StoreResult<Vec<MailRecord>>;
    /// (messages queued, of which have failed at least once).
    async fn count_mail(&self) -> StoreResult<(u64, u64)>;
    /// Removes a delivered message (its body may hold a link token).
    async fn delete_mail(&self, id: i64) -> StoreResult<()>;
    /// Records a failed attempt and when to retry.
    async fn update_mail_failed(
        &self,
        id: i64,
        next_attempt_at: UnixTime,
        error: &str,
    ) -> StoreResult<()>;
}

/// API keys, found by the digest of the whole key.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Stores a key; `Conflict` if the digest is taken or the user already has a key of that
    /// name that is not revoked.
    async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<ApiKeyRecord>;
    /// The key with this digest, revoked and expired ones included: one indexed read.
    async fn find_api_key(&self, digest: &ApiKeyDigest) -> StoreResult<Option<ApiKeyRecord>>;
    /// A user's keys, newest first, revoked ones included.
    async fn list_user_api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Every key of every user, by user id, then newest first.
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes one of the user's keys at `at`; false if it is not theirs or already revoked.
    async fn revoke_api_key(&self, user: UserId, id: i64, at: UnixTime) -> StoreResult<bool>;
    /// Revokes every key of the user not yet revoked; returns how many.
    async fn revoke_user_api_keys(&self, user: UserId, at: UnixTime) -> StoreResult<u64>;
    /// Records the last use of many keys in one write. A time never moves backwards (nodes
    /// flush in any order); ids that no longer exist are skipped.
    async fn update_api_keys_last_used(&self, uses: &[(i64, UnixTime)]) -> StoreResult<()>;
}

/// The runtime security policy, one JSON value per dotted setting name.
#[async_trait]
pub trait SettingsStore: Send + Sync {
    /// Every stored setting, by name.
    async fn list_settings(&self) -> StoreResult<Vec<SettingRecord>>;
    /// Stores `initial` (name, JSON value) if no setting is stored yet, and says whether it
    /// did: the first start seeds the policy from the configuration file, later starts leave
    /// it alone. Nodes starting at once seed it once.
    async fn seed_settings(&self, initial: &[(String, String)], at: UnixTime) -> StoreResult<bool>;
    /// Applies every change or none. Each is a compare-and-set on the value the caller saw:
    /// false (and nothing changed) if any setting no longer holds its `old` value.
    async fn change_settings(&self, changes: &[SettingChange], at: UnixTime) -> StoreResult<bool>;
}

/// Everything a Bulwark node needs from its database.
#[async_trait]
pub trait Store:
    UserStore
    + SessionStore
    + OneTimeTokenStore
    + ThrottleStore
    + AuditStore
    + MailStore
    + TwoFactorStore
    + TrustedDeviceStore
    + ApiKeyStore
    + SettingsStore
{
    /// Brings the schema to the newest version this build knows; `SchemaTooNew` if the
    /// database was migrated further by a newer build. Safe to call from several nodes at once.
    async fn migrate(&self) -> StoreResult<()>;
    /// Cheap liveness check for `/healthz`.
    async fn ping(&self) -> StoreResult<()>;
}
