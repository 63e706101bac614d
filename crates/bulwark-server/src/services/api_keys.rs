//! API keys: creating (a browser re-enters the password; another key never may), listing,
//! revoking, and the check the gateway runs on every request that presents one.
//!
//! The check, per request:
//!
//! ```text
//!  presented text --parse (no I/O)--> malformed? ----------------------------> refused
//!       | SHA-256 of the whole key
//!  (gateway) in the key cache and not expired? --yes------------------------> scope check
//!       |
//!  find by digest (one indexed read) --> unknown / revoked / expired? ------> refused
//!       |
//!  owner by id (one read) --> gone or disabled? ----------------------------> refused
//!       |  (+ their authenticator, one read, if 2FA is required of them and their grace started)
//!  scope covers what is asked? --no-----------------------------------------> refused
//!       |
//!  owner's 2FA set-up overdue (grace over, no authenticator)? --yes---------> refused
//!       |
//!  note the use in memory --> valid (owner's identity)
//! ```
//!
//! An owner whose groups require two-factor authentication and who let the grace period
//! pass without setting it up reaches only the set-up page with a session; their keys stop
//! too, from the moment the grace ends (the deadline is kept with the cached key, so the
//! cache does not stretch it), and work again once an authenticator is confirmed. A grace
//! that has not started (the owner has not logged in since enforcement began) stops nothing:
//! it starts at that login, as for sessions. The compliance view lists such owners as in grace.
//!
//! It never writes to the store and never hashes a password: keys carry 200 random bits, so
//! one SHA-256 is all the stretching they need. Failures are not counted per IP either (that
//! would be a write per request); guessing a key is hopeless at any rate.
//!
//! The gateway's check goes through a cache of keys that passed, kept at most
//! `gateway.cache_seconds` like the sessions' (see `services::check_cache`): revoking a key
//! or disabling its owner on this node stops it at the next request, elsewhere (another
//! node, the CLI) within that bound. Refusals are never cached. The JSON API reads the store
//! every time.
//!
//! Last use. A use is noted in [`KeyUsage`], a map in this node's memory (one entry per key,
//! so its size is bounded by the number of keys). [`spawn_usage_flusher`] writes it to the
//! store in one statement every `api_keys.flush_secs` seconds (default 60), and `serve`
//! flushes once more when it stops. So the stored time lags the last real use by at most
//! `flush_secs` (plus the time of the write), a crash loses at most that much, and a store
//! that is down delays it: the uses are kept and written at the next tick. Listings add the
//! uses this node has not written yet. With several nodes each flushes its own uses; the
//! store keeps the latest time whatever the order.
//!
//! Scopes: `gateway` passes the gateway's `api_key` rules; `api:read` and `api:write` are for
//! the JSON API (`api:write` includes `api:read`). A key never passes a `one_factor` or
//! `two_factor` rule: those are for browsers with a session, and a key is no session.

use super::auth::CurrentSession;
use super::{Audit, ClientInfo, ServiceError};
use crate::app::App;
use crate::clock::format_time;
use bulwark_core::account::Login;
use bulwark_core::api_key::{self, ApiKey, ApiKeyError, KeyName, Scope, Scopes};
use bulwark_core::enforcement;
use bulwark_core::{SecretString, UnixTime};
use bulwark_store::{ApiKeyRecord, NewApiKey, StoreError, UserRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Who asks for an API key operation.
#[derive(Debug, Clone, Copy)]
pub enum KeyActor<'a> {
    /// A signed-in browser (or a session-authenticated API call): its own keys only.
    Session(&'a CurrentSession),
    /// A request authenticated with an API key: its owner's keys, listing with `api:read`
    /// and revoking with `api:write`. Never creating.
    Key(&'a AuthenticatedKey),
    /// An administrator at the command line: anyone's keys.
    Cli,
}

impl KeyActor<'_> {
    fn name(&self) -> &str {
        match self {
            Self::Session(s) => &s.user.login,
            Self::Key(k) => &k.user.login,
            Self::Cli => "cli",
        }
    }
}

/// The lifetime asked for a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryChoice {
    /// The configured default for the owner (`api_keys.default_days`, within their maximum).
    Default,
    /// This many days.
    Days(u32),
    /// No expiry: only when no maximum applies to the owner.
    Never,
}

/// A key to create.
#[derive(Debug)]
pub struct NewApiKeyInput {
    pub name: String,
    /// Scope names: `gateway`, `api:read`, `api:write`.
    pub scopes: Vec<String>,
    pub expiry: ExpiryChoice,
    /// The owner's password: required when the actor is a session.
    pub password: Option<SecretString>,
}

/// A new key. The key itself exists only here: show it once, then drop it.
#[derive(Debug)]
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub record: ApiKeyRecord,
    pub owner: String,
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl KeyStatus {
    /// A word for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// A key as listed: its record, its owner's login, and the latest use this node knows of.
#[derive(Debug, Clone)]
pub struct ApiKeyView {
    pub owner: String,
    pub record: ApiKeyRecord,
    /// The stored time or a newer use not yet written, whichever is later.
    pub last_used_at: Option<UnixTime>,
    pub status: KeyStatus,
}

/// Which key to revoke.
#[derive(Debug, Clone)]
pub enum KeyRef {
    /// By id (forms, the API).
    Id(i64),
    /// By name among the owner's keys not yet revoked, else by id if it is a number (CLI).
    NameOrId(String),
}

/// A key that passed the check, with its owner.
#[derive(Debug)]
pub struct AuthenticatedKey {
    pub key: ApiKeyRecord,
    pub user: UserRecord,
    /// When the owner's grace for setting up two-factor authentication ends, if their groups
    /// require it and they have not set it up: from then on the key is refused, as the
    /// owner's sessions reach only the set-up page. `None` when nothing is due (not required,
    /// a device account, an authenticator confirmed, or a grace that has not started: it
    /// starts at the owner's first login under enforcement).
    pub enrol_by: Option<UnixTime>,
}

/// Why a presented key was refused: for logs, never shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unknown,
    Revoked,
    Expired,
    OwnerDisabled,
    MissingScope,
    /// The owner's groups require two-factor authentication and their grace is over.
    OwnerMustEnrol,
}

impl Refusal {
    /// A few words for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown key",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::OwnerDisabled => "owner disabled or deleted",
            Self::MissingScope => "scope not granted",
            Self::OwnerMustEnrol => "owner's two-factor set-up overdue",
        }
    }
}

/// The outcome of checking a presented key.
#[derive(Debug)]
pub enum KeyCheck {
    Valid(Arc<AuthenticatedKey>),
    Refused(Refusal),
}

/// Key uses this node has not written to the store yet (see the module docs).
#[derive(Debug, Default)]
pub struct KeyUsage {
    pending: Mutex<HashMap<i64, UnixTime>>,
}

impl KeyUsage {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<i64, UnixTime>) -> T) -> T {
        // A panic elsewhere while holding the lock leaves a map that is still valid.
        let mut guard = match self.pending.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    fn record(&self, id: i64, at: UnixTime) {
        self.with(|m| {
            let e = m.entry(id).or_insert(at);
            *e = (*e).max(at);
        });
    }

    fn latest(&self, id: i64) -> Option<UnixTime> {
        self.with(|m| m.get(&id).copied())
    }

    fn take(&self) -> Vec<(i64, UnixTime)> {
        self.with(|m| m.drain().collect())
    }

    fn put_back(&self, uses: &[(i64, UnixTime)]) {
        for &(id, at) in uses {
            self.record(id, at);
        }
    }

    /// How many keys have uses waiting to be written.
    pub fn pending(&self) -> usize {
        self.with(|m| m.len())
    }
}

/// Writes this node's key uses to the store every `api_keys.flush_secs` seconds.
pub fn spawn_usage_flusher(app: App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_secs(app.config.api_keys.flush_secs);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = app.flush_api_key_usage().await {
                tracing::warn!(error = %e, "cannot write API key last-use times; will retry");
            }
        }
    })
}

fn invalid(e: ApiKeyError) -> ServiceError {
    ServiceError::InvalidInput(format!("{}.", capitalize(&e.to_string())))
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn status_of(k: &ApiKeyRecord, now: UnixTime) -> KeyStatus {
    if k.revoked_at.is_some() {
        KeyStatus::Revoked
    } else if api_key::is_live(k.expires_at, None, now) {
        KeyStatus::Active
    } else {
        KeyStatus::Expired
    }
}

fn expiry_text(at: Option<UnixTime>) -> String {
    at.map(format_time).unwrap_or_else(|| "never".into())
}

impl App {
    /// The longest lifetime `user` may give a key (`None`: no maximum) and the one offered
    /// by default (`None`: never expires).
    pub fn api_key_lifetime(&self, user: &UserRecord) -> (Option<u32>, Option<u32>) {
        let c = &self.config.api_keys;
        (
            c.max_days_for(&user.groups),
            c.default_days_for(&user.groups),
        )
    }

    /// Creates a key for `owner` (a login) and mails them. A session may only create its own
    /// keys and must give its password; an API key may never create one.
    pub async fn create_api_key(
        &self,
        actor: KeyActor<'_>,
        owner: &str,
        input: NewApiKeyInput,
        client: &ClientInfo,
    ) -> Result<CreatedApiKey, ServiceError> {
        let now = self.now();
        let user = match actor {
            KeyActor::Key(k) => {
                self.audit(
                    Audit::event("api_key_created", "denied")
                        .actor(&k.user.login)
                        .subject(&k.user.login)
                        .detail(format!("by API key {}", k.key.id))
                        .client(client),
                    now,
                )
                .await;
                return Err(ServiceError::Refused(
                    "An API key cannot create API keys. Log in to create one.".into(),
                ));
            }
            KeyActor::Session(s) => {
                if !same_login(owner, &s.user.login) {
                    return Err(ServiceError::Refused(
                        "You can only create keys for your own account.".into(),
                    ));
                }
                s.user.clone()
            }
            KeyActor::Cli => self.user_by_login(owner).await?,
        };
        if !user.active {
            return Err(ServiceError::Refused(format!(
                "{} is disabled: a disabled account cannot have API keys.",
                user.login
            )));
        }
        let name = KeyName::parse(&input.name).map_err(invalid)?;
        let scopes = Scopes::parse(&input.scopes).map_err(invalid)?;
        let (max, default) = self.api_key_lifetime(&user);
        let days = match input.expiry {
            ExpiryChoice::Default => default,
            ExpiryChoice::Days(d) => Some(d),
            ExpiryChoice::Never => None,
        };
        let expires_at = api_key::expires_at(now, days, max).map_err(invalid)?;
        let existing = self.store.list_user_api_keys(user.id).await?;
        let live = existing
            .iter()
            .filter(|k| status_of(k, now) == KeyStatus::Active)
            .count();
        let limit = self.config.api_keys.max_per_user;
        if live >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(ServiceError::Refused(format!(
                "This account already has {live} active API keys, the most allowed. Revoke one first."
            )));
        }
        if let KeyActor::Session(_) = actor {
            let password = input.password.map(|p| p.expose().to_string());
            self.check_own_password(&user, password.unwrap_or_default(), client, now)
                .await?;
        }
        let key = ApiKey::generate();
        let record = self
            .store
            .insert_api_key(&NewApiKey {
                user: user.id,
                name: name.clone(),
                digest: key.digest(),
                display_prefix: key.display_prefix(),
                scopes,
                created_at: now,
                expires_at,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => ServiceError::InvalidInput(format!(
                    "There is already a key named “{}”. Revoke it or choose another name.",
                    name.as_str()
                )),
                other => other.into(),
            })?;
        self.audit(
            Audit::event("api_key_created", "success")
                .actor(actor.name())
                .subject(&user.login)
                .detail(format!(
                    "key {} ({}) scopes {}, expires {}",
                    record.id,
                    record.display_prefix,
                    record.scopes.to_stored(),
                    expiry_text(record.expires_at)
                ))
                .client(client),
            now,
        )
        .await;
        let by = match actor {
            KeyActor::Cli => "by an administrator".to_string(),
            _ => format!(
                "from IP {} ({})",
                client
                    .ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                super::browser_name(client.user_agent.as_deref())
            ),
        };
        self.mail_key_owner(
            &user,
            "A new API key was created",
            &format!(
                "A new API key “{}” ({}…) was created for your account {} at {} {by}.\n\nScopes: {}\nExpires: {}\n\nPrograms that hold this key can act as you within these scopes. If you did not create it, revoke it now and change your password.",
                record.name,
                record.display_prefix,
                user.login,
                format_time(now),
                record.scopes.to_stored(),
                expiry_text(record.expires_at)
            ),
            now,
        )
        .await;
        Ok(CreatedApiKey {
            key,
            record,
            owner: user.login,
        })
    }

    /// Keys of `owner` (a login), newest first; with the CLI and no owner, everyone's.
    pub async fn list_api_keys(
        &self,
        actor: KeyActor<'_>,
        owner: Option<&str>,
    ) -> Result<Vec<ApiKeyView>, ServiceError> {
        let now = self.now();
        let owners: Vec<UserRecord> = match (actor, owner) {
            (KeyActor::Cli, None) => {
                let keys = self.store.list_api_keys().await?;
                let mut users: HashMap<i64, String> = HashMap::new();
                let mut views = Vec::with_capacity(keys.len());
                for k in keys {
                    let login = match users.get(&k.user) {
                        Some(l) => l.clone(),
                        None => {
                            let l = self.store.get_user(k.user).await?.login;
                            users.insert(k.user, l.clone());
                            l
                        }
                    };
                    views.push(self.view(login, k, now));
                }
                return Ok(views);
            }
            (KeyActor::Cli, Some(login)) => vec![self.user_by_login(login).await?],
            (KeyActor::Session(s), _) => vec![self.own_user(&s.user, owner)?],
            (KeyActor::Key(k), _) => {
                if !k.key.scopes.allows(Scope::ApiRead) {
                    return Err(ServiceError::Refused(
                        "This API key lacks the api:read scope.".into(),
                    ));
                }
                vec![self.own_user(&k.user, owner)?]
            }
        };
        let mut views = Vec::new();
        for user in owners {
            for k in self.store.list_user_api_keys(user.id).await? {
                views.push(self.view(user.login.clone(), k, now));
            }
        }
        Ok(views)
    }

    /// Revokes one of `owner`'s keys and mails them. Sessions revoke their own keys; a key
    /// with `api:write` those of its owner; the CLI anyone's.
    pub async fn revoke_api_key(
        &self,
        actor: KeyActor<'_>,
        owner: &str,
        which: &KeyRef,
        client: &ClientInfo,
    ) -> Result<ApiKeyRecord, ServiceError> {
        let now = self.now();
        let user = match actor {
            KeyActor::Cli => self.user_by_login(owner).await?,
            KeyActor::Session(s) => self.own_user(&s.user, Some(owner))?,
            KeyActor::Key(k) => {
                if !k.key.scopes.allows(Scope::ApiWrite) {
                    return Err(ServiceError::Refused(
                        "This API key lacks the api:write scope.".into(),
                    ));
                }
                self.own_user(&k.user, Some(owner))?
            }
        };
        let keys = self.store.list_user_api_keys(user.id).await?;
        let live = || keys.iter().filter(|k| k.revoked_at.is_none());
        let found = match which {
            KeyRef::Id(id) => live().find(|k| k.id == *id),
            KeyRef::NameOrId(text) => {
                let text = text.trim();
                live().find(|k| k.name == text).or_else(|| {
                    text.parse::<i64>()
                        .ok()
                        .and_then(|id| live().find(|k| k.id == id))
                })
            }
        };
        let Some(key) = found.cloned() else {
            return Err(ServiceError::NotFound);
        };
        if !self.store.revoke_api_key(user.id, key.id, now).await? {
            // Revoked by someone else in the meantime.
            return Err(ServiceError::NotFound);
        }
        self.audit(
            Audit::event("api_key_revoked", "success")
                .actor(actor.name())
                .subject(&user.login)
                .detail(format!("key {} ({})", key.id, key.display_prefix))
                .client(client),
            now,
        )
        .await;
        let by = match actor {
            KeyActor::Cli => " by an administrator",
            _ => "",
        };
        self.mail_key_owner(
            &user,
            "An API key was revoked",
            &format!(
                "The API key “{}” ({}…) of your account {} was revoked{by} at {}. Programs using it can no longer sign in with it.",
                key.name,
                key.display_prefix,
                user.login,
                format_time(now)
            ),
            now,
        )
        .await;
        Ok(ApiKeyRecord {
            revoked_at: Some(now),
            ..key
        })
    }

    /// Checks a presented key for `scope`. Reads the store twice (the key by digest, its
    /// owner by id), never writes, never hashes a password; notes the use in memory.
    pub async fn authenticate_api_key(
        &self,
        presented: &str,
        scope: Scope,
    ) -> Result<KeyCheck, ServiceError> {
        let Ok(key) = ApiKey::parse(presented) else {
            return Ok(KeyCheck::Refused(Refusal::Malformed));
        };
        let now = self.now();
        Ok(match self.read_key(&key, now).await? {
            Ok(found) => self.grant(Arc::new(found), scope, now),
            Err(why) => KeyCheck::Refused(why),
        })
    }

    /// [`authenticate_api_key`](Self::authenticate_api_key) for the gateway's check path,
    /// through the key cache (`gateway.cache_seconds`).
    pub async fn authenticate_api_key_cached(
        &self,
        presented: &str,
        scope: Scope,
    ) -> Result<KeyCheck, ServiceError> {
        if !self.key_cache.enabled() {
            return self.authenticate_api_key(presented, scope).await;
        }
        let Ok(key) = ApiKey::parse(presented) else {
            return Ok(KeyCheck::Refused(Refusal::Malformed));
        };
        let now = self.now();
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(key.expose()).into();
        if let Some(found) = self.key_cache.get(&digest, now) {
            if api_key::is_live(found.key.expires_at, None, now) {
                return Ok(self.grant(found, scope, now));
            }
        }
        let epoch = self.key_cache.epoch();
        Ok(match self.read_key(&key, now).await? {
            Ok(found) => {
                let found = Arc::new(found);
                self.key_cache.put(digest, epoch, now, found.clone());
                self.grant(found, scope, now)
            }
            Err(why) => KeyCheck::Refused(why),
        })
    }

    /// The key and its owner from the store, if the key is live and its owner active.
    async fn read_key(
        &self,
        key: &ApiKey,
        now: UnixTime,
    ) -> Result<Result<AuthenticatedKey, Refusal>, ServiceError> {
        let Some(record) = self.store.find_api_key(&key.digest()).await? else {
            return Ok(Err(Refusal::Unknown));
        };
        if record.revoked_at.is_some() {
            return Ok(Err(Refusal::Revoked));
        }
        if !api_key::is_live(record.expires_at, None, now) {
            return Ok(Err(Refusal::Expired));
        }
        let user = match self.store.get_user(record.user).await {
            Ok(user) if user.active => user,
            Ok(_) | Err(StoreError::NotFound) => return Ok(Err(Refusal::OwnerDisabled)),
            Err(e) => return Err(e.into()),
        };
        let enrol_by = self.enrolment_deadline(&user).await?;
        Ok(Ok(AuthenticatedKey {
            key: record,
            user,
            enrol_by,
        }))
    }

    /// When `user`'s grace for setting up two-factor authentication ends, if one is running
    /// or over and they have no confirmed authenticator (see [`AuthenticatedKey::enrol_by`]).
    /// Reads the store only for a user under enforcement whose grace has started.
    async fn enrolment_deadline(
        &self,
        user: &UserRecord,
    ) -> Result<Option<UnixTime>, ServiceError> {
        let policy = self.policy();
        let Some(started) = user.grace_started_at else {
            return Ok(None);
        };
        if user.device_account || !policy.two_factor.required_for(&user.groups) {
            return Ok(None);
        }
        if self.confirmed_factor(user.id).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(enforcement::grace_deadline(
            started,
            policy.two_factor.grace_days,
        )))
    }

    /// A live key with an active owner, if its scopes cover `scope` and the owner is not
    /// overdue setting up two-factor authentication; notes the use.
    fn grant(&self, found: Arc<AuthenticatedKey>, scope: Scope, now: UnixTime) -> KeyCheck {
        if !found.key.scopes.allows(scope) {
            return KeyCheck::Refused(Refusal::MissingScope);
        }
        if found.enrol_by.is_some_and(|by| now >= by) {
            return KeyCheck::Refused(Refusal::OwnerMustEnrol);
        }
        self.key_usage.record(found.key.id, now);
        KeyCheck::Valid(found)
    }

    /// Writes the key uses noted since the last flush in one store call; returns how many
    /// keys it updated. On failure the uses are kept for the next try.
    pub async fn flush_api_key_usage(&self) -> Result<usize, ServiceError> {
        let uses = self.key_usage.take();
        if uses.is_empty() {
            return Ok(0);
        }
        match self.store.update_api_keys_last_used(&uses).await {
            Ok(()) => Ok(uses.len()),
            Err(e) => {
                self.key_usage.put_back(&uses);
                Err(e.into())
            }
        }
    }

    fn view(&self, owner: String, record: ApiKeyRecord, now: UnixTime) -> ApiKeyView {
        let last_used_at = record.last_used_at.max(self.key_usage.latest(record.id));
        ApiKeyView {
            owner,
            status: status_of(&record, now),
            last_used_at,
            record,
        }
    }

    fn own_user(&self, me: &UserRecord, owner: Option<&str>) -> Result<UserRecord, ServiceError> {
        match owner {
            Some(o) if !same_login(o, &me.login) => Err(ServiceError::Refused(
                "You can only manage the keys of your own account.".into(),
            )),
            _ => Ok(me.clone()),
        }
    }

    async fn mail_key_owner(&self, user: &UserRecord, subject: &str, text: &str, now: UnixTime) {
        if let Some(email) = &user.email {
            let link = self.url("/account/api-keys");
            self.mailer
                .send(
                    email,
                    subject,
                    text,
                    Some((&link, "Review my API keys")),
                    now,
                )
                .await;
        }
    }
}

fn same_login(a: &str, b: &str) -> bool {
    match (Login::parse(a), Login::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
