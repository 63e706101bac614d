//! Logging in and out, sessions, password changes, reset and invitation links, first setup.
//!
//! Login flow (the second step is in `two_factor.rs`; docs/architecture.md has the whole
//! state machine):
//!
//! ```text
//!  Anonymous --POST /login--> [throttle gate] --blocked--> 429 Retry-After
//!                                  |
//!                             verify password (dummy hash for unknown users)
//!                                  |--wrong--> count failure (account + IP) --> 401 / lock
//!                                  v
//!                             PasswordOk --> device account outside its networks? --> 401
//!                                  |
//!                    second factor needed and browser not trusted?
//!                                  |--yes--> SecondFactor session (new id): only /login/2fa
//!                                  v
//!                             Full session (new id, never the pre-login one)
//!                                  |
//!                    must change / expired? --yes--> only /password/change
//!                    enrolment overdue?     --yes--> only /account/security
//!                                  v
//!                               Active
//! ```

use super::{Audit, ClientInfo, ServiceError};
use crate::app::App;
use bulwark_core::account::{DisplayName, Email, GroupName, Login};
use bulwark_core::enforcement::Standing;
use bulwark_core::lockout::{Gate, LockoutPolicy};
use bulwark_core::password::hash::Verification;
use bulwark_core::password::policy::{PasswordPolicy, PolicyViolation};
use bulwark_core::password::Password;
use bulwark_core::token::{self, TokenHash};
use bulwark_core::{SecretString, UnixTime};
use bulwark_store::{
    LoginCandidate, NewOneTimeToken, NewSession, NewUser, PasswordChange, SessionRecord,
    SessionStage, ThrottleRecord, TokenPurpose, UserRecord,
};
use std::net::IpAddr;

/// A logged-in session, as loaded for each request.
#[derive(Debug, Clone)]
pub struct CurrentSession {
    pub user: UserRecord,
    pub session: SessionRecord,
    /// Why the user must change their password before anything else, if they must.
    pub change_required: Option<ChangeReason>,
    /// Where the user stands with respect to 2FA enforcement.
    pub standing: Standing,
}

/// What the gateway's check needs of a live session, and all the session cache keeps of
/// one: the identity it passes on, and what the rules and redirects look at. The rest of the
/// user and session records (the session's IP and user agent above all) stays out of the
/// cache, which holds one entry per active session (docs/benchmarks.md, memory).
#[derive(Debug, Clone)]
pub struct CheckedSession {
    pub login: String,
    pub display_name: String,
    pub email: Option<String>,
    /// Sorted group names.
    pub groups: Vec<String>,
    pub stage: SessionStage,
    /// The login passed a second factor (or a browser trusted after one).
    pub two_factor: bool,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
    pub change_required: Option<ChangeReason>,
    pub standing: Standing,
}

impl From<CurrentSession> for CheckedSession {
    fn from(s: CurrentSession) -> Self {
        Self {
            login: s.user.login,
            display_name: s.user.display_name,
            email: s.user.email,
            groups: s.user.groups,
            stage: s.session.stage,
            two_factor: s.session.two_factor,
            created_at: s.session.created_at,
            last_seen_at: s.session.last_seen_at,
            change_required: s.change_required,
            standing: s.standing,
        }
    }
}

/// Why a password change is forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// An administrator asked for it (or set a temporary password).
    Forced,
    /// The password is older than the policy allows.
    Expired,
}

/// A successful login: the new session's cookie value.
#[derive(Debug)]
pub struct LoginSuccess {
    pub token: SecretString,
    pub user: UserRecord,
    pub change_required: Option<ChangeReason>,
    /// `SecondFactor` when a code is still due.
    pub stage: SessionStage,
    pub standing: Standing,
}

/// The fields of a set-password form (reset, invitation, first setup).
#[derive(Debug, Default)]
pub struct SetPasswordInput {
    pub password: String,
    pub confirm: String,
    /// Only for first setup.
    pub login: String,
    pub email: String,
    pub display_name: String,
}

/// What a valid link leads to.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub purpose: TokenPurpose,
    pub user: Option<UserRecord>,
}

/// How long a "this wasn't me" link works.
const NOT_ME_LINK_SECS: i64 = 7 * 86_400;

pub(crate) fn account_key(login: &str) -> String {
    let normalized: String = login.trim().to_lowercase().chars().take(128).collect();
    format!("login:{normalized}")
}

pub(crate) fn ip_key(ip: IpAddr) -> String {
    match ip {
        // One IPv6 host usually owns a whole /64: count it as one client.
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        IpAddr::V6(v6) => format!(
            "ip:{}",
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        ),
        IpAddr::V4(v4) => format!("ip:{v4}"),
    }
}

/// Refuses while a key's counter blocks it; returns whether the key has a counter.
fn gate_counter(
    found: Option<ThrottleRecord>,
    policy: &LockoutPolicy,
    now: UnixTime,
) -> Result<bool, ServiceError> {
    let Some(t) = found else {
        return Ok(false);
    };
    match policy.gate(t.blocked_until, t.failures, now) {
        Gate::Open => Ok(true),
        Gate::Wait { retry_after } => Err(ServiceError::Throttled {
            retry_after,
            locked: false,
        }),
        Gate::Locked { retry_after } => Err(ServiceError::Throttled {
            retry_after,
            locked: true,
        }),
    }
}

impl App {
    /// The password policy that applies to a member of `groups`.
    pub fn policy_for(&self, groups: &[String]) -> PasswordPolicy {
        self.policy().passwords.for_groups(groups)
    }

    fn change_reason(&self, user: &UserRecord, now: UnixTime) -> Option<ChangeReason> {
        if user.must_change_password {
            return Some(ChangeReason::Forced);
        }
        let changed_at = user.password_changed_at?;
        self.policy_for(&user.groups)
            .is_expired(changed_at, now)
            .then_some(ChangeReason::Expired)
    }

    pub(crate) async fn gate_key(
        &self,
        key: &str,
        policy: &LockoutPolicy,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        let found = self.store.find_throttle(key).await?;
        gate_counter(found, policy, now)
    }

    /// Counts a failure; returns true when this failure locked the key.
    pub(crate) async fn count_key_failure(
        &self,
        key: &str,
        policy: &LockoutPolicy,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        let failures = self
            .store
            .record_failure(key, now, policy.window_secs)
            .await?;
        match policy.block_after(failures) {
            Some(block) => {
                self.store
                    .update_blocked_until(key, now + block.secs)
                    .await?;
                Ok(block.locked && failures == policy.lock_after)
            }
            None => Ok(false),
        }
    }

    /// Gates `key` and, for a client with an address, its IP counter `ip_key` under the IP
    /// lockout, both read at once. Refuses while either blocks; returns whether `key` has a
    /// failure counter.
    pub(crate) async fn gate_key_and_ip(
        &self,
        key: &str,
        policy: &LockoutPolicy,
        ip_key: Option<String>,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        let keys: Vec<&str> = std::iter::once(key).chain(ip_key.as_deref()).collect();
        let mut found = self.store.find_throttles(&keys).await?.into_iter();
        let counted = gate_counter(found.next().flatten(), policy, now)?;
        if ip_key.is_some() {
            gate_counter(found.next().flatten(), &self.policy().lockout.ip, now)?;
        }
        Ok(counted)
    }

    /// Both throttle gates for a login attempt.
    /// Refuses a throttled login; returns whether the account has a failure counter.
    async fn gate_login(
        &self,
        login: &str,
        client: &ClientInfo,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        self.gate_key_and_ip(
            &account_key(login),
            &self.policy().lockout.account,
            client.ip.map(ip_key),
            now,
        )
        .await
    }

    async fn count_login_failure(
        &self,
        login: &str,
        client: &ClientInfo,
        now: UnixTime,
    ) -> Result<(), ServiceError> {
        let account = account_key(login);
        let lockout = &self.policy().lockout;
        if self
            .count_key_and_ip_failure(&account, &lockout.account, ip_key, client, now)
            .await?
        {
            self.audit(
                Audit::event("account_locked", "success")
                    .actor("system")
                    .subject(login)
                    .client(client),
                now,
            )
            .await;
            self.notify_locked(login, client, now).await;
        }
        Ok(())
    }

    /// Counts a failure on `key` under `policy` and, for a client with an address, on the
    /// address's counter (`address_key` of it) under the IP lockout: the two counters
    /// [`gate_key_and_ip`](Self::gate_key_and_ip) reads. Audits the address's lock; returns
    /// whether this failure locked `key`, for the caller to audit as what it is.
    pub(crate) async fn count_key_and_ip_failure(
        &self,
        key: &str,
        policy: &LockoutPolicy,
        address_key: fn(IpAddr) -> String,
        client: &ClientInfo,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        let locked = self.count_key_failure(key, policy, now).await?;
        if let Some(ip) = client.ip {
            if self
                .count_key_failure(&address_key(ip), &self.policy().lockout.ip, now)
                .await?
            {
                self.audit(
                    Audit::event("ip_locked", "success")
                        .actor("system")
                        .detail(ip.to_string())
                        .client(client),
                    now,
                )
                .await;
            }
        }
        Ok(locked)
    }

    /// Tells the owner of a just-locked account (if it exists and has an address).
    async fn notify_locked(&self, login: &str, client: &ClientInfo, now: UnixTime) {
        let Ok(login) = Login::parse(login) else {
            return;
        };
        let Ok(Some(user)) = self.store.find_user_by_login(&login).await else {
            return;
        };
        let Some(email) = &user.email else { return };
        let until = self.policy().lockout.account.lock_secs;
        let text = format!(
            "Your account {} was locked at {} after repeated wrong passwords, the last from IP {} ({}). It unlocks by itself in {} minutes, or an administrator can unlock it.\n\nIf these attempts were not yours, someone is guessing your password: choose a new, unique one.",
            user.login,
            crate::clock::format_time(now),
            client.ip_string().unwrap_or_else(|| "unknown".into()),
            crate::services::browser_name(client.user_agent.as_deref()),
            (until + 59) / 60,
        );
        let link = self.url("/password/forgot");
        self.mailer
            .send(
                email,
                "Your account was locked",
                &text,
                Some((&link, "Choose a new password")),
                now,
            )
            .await;
    }

    /// Checks a login and password; on success starts a new session.
    /// `trusted_cookie` is the browser's trusted-device cookie, if it sent one.
    pub async fn login(
        &self,
        login: &str,
        password: String,
        client: &ClientInfo,
        trusted_cookie: Option<&str>,
    ) -> Result<LoginSuccess, ServiceError> {
        let now = self.now();
        let audit_subject: String = login.trim().to_lowercase().chars().take(128).collect();
        let counted = match self.gate_login(login, client, now).await {
            Ok(counted) => counted,
            Err(e) => {
                if let ServiceError::Throttled { .. } = e {
                    self.audit(
                        Audit::event("login", "denied")
                            .subject(&audit_subject)
                            .detail("throttled")
                            .client(client),
                        now,
                    )
                    .await;
                }
                return Err(e);
            }
        };
        let password = match Password::parse(password) {
            Ok(p) => p,
            Err(_) if login.trim().is_empty() => {
                return Err(ServiceError::InvalidInput(
                    "Enter your login and password.".into(),
                ))
            }
            Err(_) => {
                self.count_login_failure(login, client, now).await?;
                return Err(ServiceError::InvalidCredentials);
            }
        };
        let candidate = match Login::parse(login) {
            Ok(l) => self.store.find_login_candidate(&l).await?,
            Err(_) => None,
        };
        let (user, stored, has_factor) = match candidate {
            Some(LoginCandidate {
                user,
                password_hash: Some(stored),
                totp_confirmed,
            }) if user.active => (user, stored, totp_confirmed),
            candidate => {
                let user = candidate.map(|c| c.user);
                // Same work as a real check, so timing does not tell which logins exist.
                self.hashes.dummy_verify(password).await?;
                self.count_login_failure(login, client, now).await?;
                let why = match user {
                    None => "unknown user",
                    Some(u) if !u.active => "account disabled",
                    Some(_) => "no password set",
                };
                self.audit(
                    Audit::event("login", "failure")
                        .subject(&audit_subject)
                        .detail(why)
                        .client(client),
                    now,
                )
                .await;
                return Err(ServiceError::InvalidCredentials);
            }
        };
        match self.hashes.verify(password.clone(), stored).await? {
            Verification::Invalid => {
                self.count_login_failure(login, client, now).await?;
                self.audit(
                    Audit::event("login", "failure")
                        .subject(&user.login)
                        .detail("wrong password")
                        .client(client),
                    now,
                )
                .await;
                Err(ServiceError::InvalidCredentials)
            }
            Verification::Valid { needs_rehash } => {
                if needs_rehash {
                    let hash = self.hashes.hash(password).await?;
                    self.store.rehash_password(user.id, &hash).await?;
                    self.audit(
                        Audit::event("password_rehashed", "success")
                            .actor("system")
                            .subject(&user.login),
                        now,
                    )
                    .await;
                }
                let (token, stage, standing) = match self
                    .after_password(&user, has_factor, client, trusted_cookie, now)
                    .await
                {
                    Ok(started) => started,
                    // A device account's password from outside its networks: a failure
                    // like a wrong password, so it counts towards the lock.
                    Err(ServiceError::InvalidCredentials) => {
                        self.count_login_failure(login, client, now).await?;
                        return Err(ServiceError::InvalidCredentials);
                    }
                    Err(e) => return Err(e),
                };
                if counted {
                    self.store.delete_throttle(&account_key(login)).await?;
                }
                let change_required = self.change_reason(&user, now);
                Ok(LoginSuccess {
                    token,
                    user,
                    change_required,
                    stage,
                    standing,
                })
            }
        }
    }

    /// Starts a session; `two_factor` records that this login passed a second factor.
    pub(crate) async fn start_session_at(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        stage: SessionStage,
        two_factor: bool,
        now: UnixTime,
    ) -> Result<SecretString, ServiceError> {
        let (token, hash) = token::generate();
        self.store
            .insert_session(&NewSession {
                token_hash: hash,
                user: user.id,
                stage,
                two_factor,
                created_at: now,
                ip: client.ip.map(|ip| ip.to_string()),
                user_agent: client
                    .user_agent
                    .as_ref()
                    .map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect()),
            })
            .await?;
        Ok(token)
    }

    /// The live session behind a cookie value, if any; expired sessions are removed.
    pub async fn authenticate(&self, cookie: &str) -> Result<Option<CurrentSession>, ServiceError> {
        if !token::looks_like_token(cookie) {
            return Ok(None);
        }
        let now = self.now();
        let Some(session) = self.store.find_session(&TokenHash::of(cookie)).await? else {
            return Ok(None);
        };
        let policy = self.policy().sessions.policy();
        let half_expired = session.stage == SessionStage::SecondFactor
            && now - session.created_at >= super::two_factor::SECOND_FACTOR_WINDOW_SECS;
        if half_expired || !policy.is_live(session.created_at, session.last_seen_at, now) {
            self.store.delete_session(session.id).await?;
            return Ok(None);
        }
        let user = match self.store.get_user(session.user).await {
            Ok(u) if u.active => u,
            Ok(_) | Err(bulwark_store::StoreError::NotFound) => {
                self.store.delete_session(session.id).await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if policy.touch_due(session.last_seen_at, now) {
            self.store.touch_session(session.id, now).await?;
        }
        let change_required = self.change_reason(&user, now);
        let standing = self.standing_of(&user, now).await?;
        Ok(Some(CurrentSession {
            user,
            session,
            change_required,
            standing,
        }))
    }

    /// [`authenticate`](Self::authenticate) for the gateway's check path, through the
    /// session cache (`gateway.cache_seconds`).
    pub async fn authenticate_cached(
        &self,
        cookie: &str,
    ) -> Result<Option<std::sync::Arc<CheckedSession>>, ServiceError> {
        let checked = |s: CurrentSession| std::sync::Arc::new(CheckedSession::from(s));
        if !self.session_cache.enabled() {
            return Ok(self.authenticate(cookie).await?.map(checked));
        }
        if !token::looks_like_token(cookie) {
            return Ok(None);
        }
        let now = self.now();
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(cookie.as_bytes()).into();
        if let Some(s) = self.session_cache.get(&digest, now) {
            let policy = self.policy().sessions.policy();
            if policy.is_live(s.created_at, s.last_seen_at, now) {
                return Ok(Some(s));
            }
        }
        let epoch = self.session_cache.epoch();
        let found = self.authenticate(cookie).await?.map(checked);
        if let Some(s) = &found {
            self.session_cache.put(digest, epoch, now, s.clone());
        }
        Ok(found)
    }

    /// Ends one session (logout).
    pub async fn logout(
        &self,
        current: &CurrentSession,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        self.store.delete_session(current.session.id).await?;
        self.audit(
            Audit::event("logout", "success")
                .actor(&current.user.login)
                .subject(&current.user.login)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// Ends one of the user's own sessions by id.
    pub async fn revoke_own_session(
        &self,
        user: &UserRecord,
        id: i64,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let sessions = self.store.list_user_sessions(user.id).await?;
        if !sessions.iter().any(|s| s.id == id) {
            return Err(ServiceError::NotFound);
        }
        self.store.delete_session(id).await?;
        self.audit(
            Audit::event("session_revoked", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// "Log out everywhere": ends every session of the user, this one included.
    pub async fn revoke_all_own_sessions(
        &self,
        current: &CurrentSession,
        client: &ClientInfo,
    ) -> Result<u64, ServiceError> {
        let now = self.now();
        let n = self
            .store
            .delete_user_sessions(current.user.id, None)
            .await?;
        self.audit(
            Audit::event("sessions_revoked", "success")
                .actor(&current.user.login)
                .subject(&current.user.login)
                .detail(format!("{n} sessions"))
                .client(client),
            now,
        )
        .await;
        Ok(n)
    }

    /// Every rule a new password for `user` breaks, history and minimum age included.
    async fn check_new_password(
        &self,
        user: &UserRecord,
        password: &Password,
        enforce_min_age: bool,
        now: UnixTime,
    ) -> Result<(), ServiceError> {
        let policy = self.policy_for(&user.groups);
        let context = context_words(&user.login, user.email.as_deref(), &user.display_name);
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        let mut violations = policy.check(password, &context);
        if policy.history > 0 {
            let history = self
                .store
                .list_password_history(user.id, policy.history)
                .await?;
            if self.hashes.matches_any(password.clone(), history).await? {
                violations.push(PolicyViolation::Reused {
                    history: policy.history,
                });
            }
        }
        if enforce_min_age {
            if let Some(seconds) = user
                .password_changed_at
                .and_then(|at| policy.too_soon_to_change(at, now))
            {
                violations.push(PolicyViolation::TooSoon { seconds });
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::PolicyRejected(violations))
        }
    }

    /// Stores a new password that passed the policy and ends every session of the user.
    pub(crate) async fn apply_new_password(
        &self,
        user: &UserRecord,
        password: Password,
        must_change: bool,
        now: UnixTime,
    ) -> Result<(), ServiceError> {
        let policy = self.policy_for(&user.groups);
        let hash = self.hashes.hash(password).await?;
        self.store
            .update_password(&PasswordChange {
                user: user.id,
                hash,
                changed_at: now,
                must_change,
                keep_history: policy.history,
            })
            .await?;
        self.store.delete_user_sessions(user.id, None).await?;
        // A remembered browser must not outlive the password it was remembered with.
        self.store.delete_user_trusted_devices(user.id).await?;
        self.store
            .delete_throttle(&account_key(&user.login))
            .await?;
        Ok(())
    }

    /// Changes the signed-in user's password. Ends every session and returns a fresh one for
    /// this browser. A forced change (expired or admin-required) skips the minimum age.
    pub async fn change_password(
        &self,
        current: &CurrentSession,
        old: String,
        new: String,
        confirm: String,
        client: &ClientInfo,
    ) -> Result<SecretString, ServiceError> {
        let now = self.now();
        let user = &current.user;
        self.gate_key(
            &account_key(&user.login),
            &self.policy().lockout.account,
            now,
        )
        .await?;
        let old = Password::parse(old)
            .map_err(|_| ServiceError::InvalidInput("Enter your current password.".into()))?;
        let stored = self
            .store
            .find_password_hash(user.id)
            .await?
            .ok_or(ServiceError::InvalidCredentials)?;
        if !self.hashes.verify(old, stored).await?.is_valid() {
            self.count_key_failure(
                &account_key(&user.login),
                &self.policy().lockout.account,
                now,
            )
            .await?;
            self.audit(
                Audit::event("password_change", "failure")
                    .actor(&user.login)
                    .subject(&user.login)
                    .detail("wrong current password")
                    .client(client),
                now,
            )
            .await;
            return Err(ServiceError::InvalidInput(
                "Your current password is not correct.".into(),
            ));
        }
        let new = parse_new_password(new, &confirm)?;
        if let Err(e) = self
            .check_new_password(user, &new, current.change_required.is_none(), now)
            .await
        {
            self.audit(
                Audit::event("password_change", "failure")
                    .actor(&user.login)
                    .subject(&user.login)
                    .detail("rejected by policy")
                    .client(client),
                now,
            )
            .await;
            return Err(e);
        }
        let stopped = Audit::event("password_change", "failure")
            .actor(&user.login)
            .subject(&user.login)
            .client(client);
        let token = self
            .run_steps(&user.login, stopped, now, async {
                self.apply_new_password(user, new, false, now).await?;
                // The new session keeps what this one proved.
                self.start_session_at(
                    user,
                    client,
                    SessionStage::Full,
                    current.session.two_factor,
                    now,
                )
                .await
            })
            .await?;
        self.audit(
            Audit::event("password_change", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        self.notify_password_changed(user, client, now).await;
        Ok(token)
    }

    pub(crate) async fn notify_password_changed(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        now: UnixTime,
    ) {
        let Some(email) = &user.email else { return };
        let text = format!(
            "The password of your account {} was changed at {} from IP {} ({}).\n\nIf this was you, nothing to do. If it was not, use the link below: it logs out every session, forgets your trusted devices, revokes your API keys, stops the password from working and lets you choose a new one.",
            user.login,
            crate::clock::format_time(now),
            client.ip_string().unwrap_or_else(|| "unknown".into()),
            crate::services::browser_name(client.user_agent.as_deref()),
        );
        let link = match self.not_me_link(user, now).await {
            Ok(link) => link,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a \"this wasn't me\" link");
                self.url("/password/forgot")
            }
        };
        self.mailer
            .send(
                email,
                "Your password was changed",
                &text,
                Some((&link, "This wasn't me: secure my account")),
                now,
            )
            .await;
    }

    /// A single-use link that secures the account (see [`App::report_not_me`]).
    pub(crate) async fn not_me_link(
        &self,
        user: &UserRecord,
        now: UnixTime,
    ) -> Result<String, ServiceError> {
        let token = self
            .issue_link(TokenPurpose::NotMe, Some(user.id), now, NOT_ME_LINK_SECS)
            .await?;
        Ok(self.url(&format!("/not-me/{}", token.expose())))
    }

    /// "This wasn't me": uses up the link, then ends every session, forgets the trusted
    /// devices, revokes the API keys and removes the password, so whoever knows it can no
    /// longer get in. Returns a fresh reset link token for the owner to choose a new one.
    pub async fn report_not_me(
        &self,
        token: &str,
        client: &ClientInfo,
    ) -> Result<SecretString, ServiceError> {
        let info = self.inspect_link(TokenPurpose::NotMe, token).await?;
        let user = info.user.ok_or(ServiceError::InvalidLink)?;
        let now = self.now();
        self.store
            .consume_one_time_token(TokenPurpose::NotMe, &TokenHash::of(token), now)
            .await?
            .ok_or(ServiceError::InvalidLink)?;
        let stopped = Audit::event("not_me_reported", "failure")
            .actor(&user.login)
            .subject(&user.login)
            .client(client);
        let (sessions, devices, keys) = self
            .run_steps(&user.login, stopped, now, async {
                self.store
                    .revoke_user_tokens(user.id, TokenPurpose::NotMe, now)
                    .await?;
                self.store.clear_password(user.id).await?;
                let sessions = self.store.delete_user_sessions(user.id, None).await?;
                let devices = self.store.delete_user_trusted_devices(user.id).await?;
                let keys = self.store.revoke_user_api_keys(user.id, now).await?;
                Ok((sessions, devices, keys))
            })
            .await?;
        self.audit(
            Audit::event("not_me_reported", "success")
                .actor(&user.login)
                .subject(&user.login)
                .detail(format!(
                    "password removed; {sessions} sessions ended, {devices} trusted devices and {keys} API keys revoked"
                ))
                .client(client),
            now,
        )
        .await;
        self.issue_link(
            TokenPurpose::PasswordReset,
            Some(user.id),
            now,
            self.config.links.reset_minutes * 60,
        )
        .await
    }

    /// "Forgot password": mails a reset link to each matching active account that has an
    /// address. The caller answers the same whatever happens here (no account enumeration).
    pub async fn request_password_reset(
        &self,
        login_or_email: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let input = login_or_email.trim();
        let mut users = Vec::new();
        if let Ok(login) = Login::parse(input) {
            users.extend(self.store.find_user_by_login(&login).await?);
        }
        if users.is_empty() {
            if let Ok(email) = Email::parse(input) {
                users = self.store.find_users_by_email(&email).await?;
            }
        }
        if users.is_empty() {
            self.audit(
                Audit::event("password_reset_requested", "failure")
                    .subject(input)
                    .detail("no such account")
                    .client(client),
                now,
            )
            .await;
        }
        for user in users.into_iter().filter(|u| u.active) {
            let Some(email) = user.email.clone() else {
                continue;
            };
            // At most 3 reset mails per account per hour: a form cannot be used to flood a mailbox.
            let sent = self
                .store
                .record_failure(&format!("reset-mail:{}", user.id), now, 3600)
                .await?;
            if sent > 3 {
                self.audit(
                    Audit::event("password_reset_requested", "denied")
                        .subject(&user.login)
                        .detail("mail rate limit")
                        .client(client),
                    now,
                )
                .await;
                continue;
            }
            self.store
                .revoke_user_tokens(user.id, TokenPurpose::PasswordReset, now)
                .await?;
            let minutes = self.config.links.reset_minutes;
            let token = self
                .issue_link(
                    TokenPurpose::PasswordReset,
                    Some(user.id),
                    now,
                    minutes * 60,
                )
                .await?;
            let link = self.url(&format!("/password/reset/{}", token.expose()));
            let text = format!(
                "Someone (hopefully you) asked to reset the password of the account {} from IP {}.\n\nThe link below works once, for {} minutes. If you did not ask for it, ignore this mail: your password stays as it is.",
                user.login,
                client.ip.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into()),
                minutes
            );
            self.mailer
                .send(
                    &email,
                    "Reset your password",
                    &text,
                    Some((&link, "Choose a new password")),
                    now,
                )
                .await;
            self.audit(
                Audit::event("password_reset_requested", "success")
                    .subject(&user.login)
                    .client(client),
                now,
            )
            .await;
        }
        Ok(())
    }

    /// Creates a one-time link token valid for `ttl_secs`.
    pub(crate) async fn issue_link(
        &self,
        purpose: TokenPurpose,
        user: Option<i64>,
        now: UnixTime,
        ttl_secs: i64,
    ) -> Result<SecretString, ServiceError> {
        let (token, hash) = token::generate();
        self.store
            .insert_one_time_token(&NewOneTimeToken {
                hash,
                purpose,
                user,
                created_at: now,
                expires_at: now + ttl_secs,
            })
            .await?;
        Ok(token)
    }

    async fn active_admins(&self) -> Result<u64, ServiceError> {
        let admins = GroupName::parse(GroupName::ADMINS)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(self.store.count_active_in_group(&admins).await?)
    }

    /// The first-admin setup link, if no active admin exists yet.
    pub async fn setup_link_if_needed(&self) -> Result<Option<String>, ServiceError> {
        let now = self.now();
        if self.active_admins().await? > 0 {
            return Ok(None);
        }
        let token = self
            .issue_link(
                TokenPurpose::Setup,
                None,
                now,
                self.config.links.setup_minutes * 60,
            )
            .await?;
        Ok(Some(self.url(&format!("/setup/{}", token.expose()))))
    }

    /// Checks a link without using it up.
    pub async fn inspect_link(
        &self,
        purpose: TokenPurpose,
        token: &str,
    ) -> Result<LinkInfo, ServiceError> {
        if !token::looks_like_token(token) {
            return Err(ServiceError::InvalidLink);
        }
        let now = self.now();
        let record = self
            .store
            .find_one_time_token(purpose, &TokenHash::of(token), now)
            .await?
            .ok_or(ServiceError::InvalidLink)?;
        let user = match record.user {
            Some(id) => match self.store.get_user(id).await {
                Ok(u) if u.active => Some(u),
                Ok(_) | Err(bulwark_store::StoreError::NotFound) => {
                    return Err(ServiceError::InvalidLink)
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        if purpose != TokenPurpose::Setup && user.is_none() {
            return Err(ServiceError::InvalidLink);
        }
        // A setup link only ever creates the first admin: once an active admin exists, every
        // setup link printed earlier (one per start) is dead.
        if purpose == TokenPurpose::Setup && self.active_admins().await? > 0 {
            return Err(ServiceError::InvalidLink);
        }
        Ok(LinkInfo { purpose, user })
    }

    /// Completes a link: sets the password (reset, invitation) or creates the first admin
    /// (setup). The token is used up only when everything else succeeded.
    pub async fn complete_link(
        &self,
        purpose: TokenPurpose,
        token: &str,
        input: SetPasswordInput,
        client: &ClientInfo,
    ) -> Result<UserRecord, ServiceError> {
        let info = self.inspect_link(purpose, token).await?;
        let now = self.now();
        let hash = TokenHash::of(token);
        let password = parse_new_password(input.password, &input.confirm)?;
        match info.user {
            Some(user) => {
                self.check_new_password(&user, &password, false, now)
                    .await?;
                self.store
                    .consume_one_time_token(purpose, &hash, now)
                    .await?
                    .ok_or(ServiceError::InvalidLink)?;
                self.apply_new_password(&user, password, false, now).await?;
                self.store.revoke_user_tokens(user.id, purpose, now).await?;
                let event = if purpose == TokenPurpose::Invitation {
                    "invitation_accepted"
                } else {
                    "password_reset"
                };
                self.audit(
                    Audit::event(event, "success")
                        .actor(&user.login)
                        .subject(&user.login)
                        .client(client),
                    now,
                )
                .await;
                if purpose == TokenPurpose::PasswordReset {
                    self.notify_password_changed(&user, client, now).await;
                }
                Ok(self.store.get_user(user.id).await?)
            }
            None => {
                let login = Login::parse(&input.login)
                    .map_err(|e| ServiceError::InvalidInput(capitalize(&e.to_string())))?;
                let email = Email::parse(&input.email)
                    .map_err(|e| ServiceError::InvalidInput(capitalize(&e.to_string())))?;
                let name = DisplayName::parse(&input.display_name)
                    .map_err(|e| ServiceError::InvalidInput(capitalize(&e.to_string())))?;
                let groups = vec![
                    GroupName::parse(GroupName::ADMINS),
                    GroupName::parse(GroupName::INTERNAL),
                ]
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
                let group_names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
                let policy = self.policy_for(&group_names);
                let context = context_words(login.as_str(), Some(email.as_str()), name.as_str());
                let context: Vec<&str> = context.iter().map(String::as_str).collect();
                let violations = policy.check(&password, &context);
                if !violations.is_empty() {
                    return Err(ServiceError::PolicyRejected(violations));
                }
                // Checked before the token is used up, so a taken login does not waste the link.
                if self.store.find_user_by_login(&login).await?.is_some() {
                    return Err(ServiceError::Conflict("That login is taken.".into()));
                }
                let password_hash = self.hashes.hash(password).await?;
                self.store
                    .consume_one_time_token(purpose, &hash, now)
                    .await?
                    .ok_or(ServiceError::InvalidLink)?;
                let user = self
                    .store
                    .insert_user(&NewUser {
                        login,
                        email: Some(email),
                        display_name: name,
                        groups,
                        password_hash: Some(password_hash),
                        must_change_password: false,
                        created_at: now,
                    })
                    .await
                    .map_err(|e| match e {
                        bulwark_store::StoreError::Conflict(_) => {
                            ServiceError::Conflict("That login is taken.".into())
                        }
                        e => e.into(),
                    })?;
                self.audit(
                    Audit::event("first_admin_created", "success")
                        .actor(&user.login)
                        .subject(&user.login)
                        .client(client),
                    now,
                )
                .await;
                Ok(user)
            }
        }
    }
}

/// Parses a new password and its confirmation.
fn parse_new_password(new: String, confirm: &str) -> Result<Password, ServiceError> {
    if new != confirm {
        return Err(ServiceError::InvalidInput(
            "The two new passwords do not match.".into(),
        ));
    }
    Password::parse(new).map_err(|e| ServiceError::InvalidInput(capitalize(&e.to_string()) + "."))
}

/// Words the strength estimator should treat as guessable for this user.
pub(crate) fn context_words(login: &str, email: Option<&str>, name: &str) -> Vec<String> {
    let mut words = vec![login.to_string()];
    if let Some(email) = email {
        words.push(email.to_string());
        if let Some((local, domain)) = email.split_once('@') {
            words.push(local.to_string());
            words.extend(
                domain
                    .split('.')
                    .filter(|p| p.len() > 2)
                    .map(str::to_string),
            );
        }
    }
    words.extend(
        name.split_whitespace()
            .filter(|w| w.len() > 1)
            .map(str::to_string),
    );
    if !name.trim().is_empty() {
        words.push(name.to_string());
    }
    words
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "ip:192.0.2.1");
    }

    #[test]
    fn account_keys_ignore_case_and_are_bounded() {
        assert_eq!(account_key(" Alice "), account_key("alice"));
        assert!(account_key(&"x".repeat(10_000)).len() < 200);
    }

    #[test]
    fn context_words_cover_login_email_and_name() {
        let w = context_words("jdoe", Some("john.doe@acme.example"), "John Doe");
        for expected in ["jdoe", "john.doe", "acme", "John", "Doe"] {
            assert!(w.iter().any(|x| x == expected), "{expected} in {w:?}");
        }
    }
}
