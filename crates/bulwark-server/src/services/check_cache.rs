//! Short-lived caches for the gateway's check path: of authenticated sessions, and of
//! API keys.
//!
//! A forward-auth check runs for every request to every protected application, so it must not
//! cost three database reads each time. Entries live at most `gateway.cache_seconds` (by the
//! app clock) and are keyed by the SHA-256 of the session token or the API key, never the
//! secret itself.
//!
//! Every security event on this node is audited, and auditing invalidates: an event about a
//! user drops that user's entries (a logout, revocation of a session or key, password change,
//! disable or group change made here stops passing at the next request), an event about no
//! user drops them all. Other users' entries stay, so a busy login page does not empty the
//! cache. Changes made by other processes (another node sharing the database, a CLI
//! command) are audited too: `serve` reads the audit events it did not write every
//! [`SYNC_INTERVAL`] ([`spawn_cache_sync`]) and drops their subjects' entries the same way,
//! so such a change stops passing within about a second. A change that leaves no audit
//! event (someone editing the database by hand), or one made while the audit log cannot be
//! read, stops passing within `cache_seconds`. The bounds are documented in docs/gateway.md.
//!
//! Race: a check that reads a session while an event is audited must not cache what it
//! read. Every event bumps a global counter; a read caches its result only if the counter
//! did not move while it ran.

use super::api_keys::AuthenticatedKey;
use super::auth::CheckedSession;
use super::{ServiceError, STOPPED_PART_WAY};
use crate::app::App;
use bulwark_core::UnixTime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a cache holds: something about one user, named by their login.
pub trait Cached {
    /// The login of the user it is about, as the store keeps it (lower case).
    fn login(&self) -> &str;
}

impl Cached for CheckedSession {
    fn login(&self) -> &str {
        &self.login
    }
}

impl Cached for AuthenticatedKey {
    fn login(&self) -> &str {
        &self.user.login
    }
}

struct Entry<V> {
    /// The user's invalidation count when the entry was made.
    user_epoch: u64,
    /// The all-users invalidation count when the entry was made.
    all_epoch: u64,
    at: UnixTime,
    /// Shared with every check that hits it: no copy of the user's fields per request.
    value: Arc<V>,
}

struct State<V> {
    entries: HashMap<[u8; 32], Entry<V>>,
    /// Invalidations per login; a login never invalidated counts 0.
    users: HashMap<String, u64>,
    all_epoch: u64,
}

impl<V> Default for State<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            users: HashMap::new(),
            all_epoch: 0,
        }
    }
}

/// Bounded, time-limited, event-invalidated map from a secret's digest to what it proved.
pub struct CheckCache<V> {
    ttl_secs: i64,
    max_entries: usize,
    /// Bumped by every event: reads that overlap one do not cache.
    events: AtomicU64,
    state: Mutex<State<V>>,
}

/// The gateway's sessions, by the digest of their token.
pub type SessionCache = CheckCache<CheckedSession>;

/// The gateway's API keys, by the digest of the key.
pub type KeyCache = CheckCache<AuthenticatedKey>;

impl<V> std::fmt::Debug for CheckCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckCache")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl<V: Cached> CheckCache<V> {
    /// A cache keeping entries `ttl_secs` (0 switches it off) and at most `max_entries`.
    pub fn new(ttl_secs: i64, max_entries: usize) -> Self {
        Self {
            ttl_secs,
            max_entries: max_entries.max(1),
            events: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        self.ttl_secs > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<V>> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters: at worst an entry is missing or one more is dropped.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An event about `subject` (a login), or about no one in particular: drops that user's
    /// entries, or every entry.
    pub fn invalidate(&self, subject: Option<&str>) {
        self.events.fetch_add(1, Ordering::SeqCst);
        if !self.enabled() {
            return;
        }
        let mut state = self.lock();
        let login = subject.map(str::to_lowercase);
        match login {
            // Subjects include whatever login was typed at a failed attempt: the count per
            // login is bounded like the entries, by emptying everything when it is full.
            Some(login)
                if state.users.len() < self.max_entries || state.users.contains_key(&login) =>
            {
                *state.users.entry(login).or_insert(0) += 1;
            }
            _ => {
                state.all_epoch += 1;
                state.entries.clear();
                state.users.clear();
            }
        }
    }

    /// The cached value for a digest, if fresh and not invalidated since.
    pub fn get(&self, digest: &[u8; 32], now: UnixTime) -> Option<Arc<V>> {
        let state = self.lock();
        let e = state.entries.get(digest)?;
        let user_epoch = state.users.get(e.value.login()).copied().unwrap_or(0);
        (e.all_epoch == state.all_epoch
            && e.user_epoch == user_epoch
            && now >= e.at
            && now - e.at < self.ttl_secs)
            .then(|| e.value.clone())
    }

    /// The marker to pass to [`put`](Self::put) for a read that starts now.
    pub fn epoch(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }

    /// Remembers a value read at `now` by a read that started at `epoch`; skipped when an
    /// event happened meanwhile (what was read may already be stale).
    pub fn put(&self, digest: [u8; 32], epoch: u64, now: UnixTime, value: Arc<V>) {
        if !self.enabled() {
            return;
        }
        let mut state = self.lock();
        // Checked under the lock: an event bumps the counter before taking the lock, so one
        // that lands after this check is applied after the insert, and drops it.
        if self.events.load(Ordering::SeqCst) != epoch {
            return;
        }
        if state.entries.len() >= self.max_entries {
            let all = state.all_epoch;
            let ttl = self.ttl_secs;
            state
                .entries
                .retain(|_, e| e.all_epoch == all && now - e.at < ttl);
            if state.entries.len() >= self.max_entries {
                state.entries.clear();
            }
        }
        let user_epoch = state.users.get(value.login()).copied().unwrap_or(0);
        let all_epoch = state.all_epoch;
        state.entries.insert(
            digest,
            Entry {
                user_epoch,
                all_epoch,
                at: now,
                value,
            },
        );
    }
}

/// How often `serve` reads the audit events of other processes to drop what they changed.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Events read per store call by [`App::sync_caches`].
const SYNC_BATCH: u32 = 500;

/// Batches [`App::sync_caches`] reads in one call before it gives up on the backlog (after an
/// outage, say): it then empties both caches and goes on from the newest event.
const SYNC_MAX_BATCHES: usize = 20;

/// Whether an audited event can change what a cached session or key proves: a success, or
/// an action on a user that stopped part-way ([`STOPPED_PART_WAY`]: the steps before may
/// have ended sessions or keys). Refusals and other failures change nothing there. An event
/// about no user empties every node's caches, so two that could come often are left out: an
/// address locked out (`ip_locked`), which anyone who can fail logins from many addresses
/// causes, and a stopped action naming nobody, which no caller writes.
pub fn changes_access(
    event: &str,
    outcome: &str,
    detail: Option<&str>,
    subject: Option<&str>,
) -> bool {
    match outcome {
        "success" => event != "ip_locked",
        "failure" => subject.is_some() && detail.is_some_and(|d| d.starts_with(STOPPED_PART_WAY)),
        _ => false,
    }
}

/// Drops a user's cached sessions and keys when it goes out of scope, whatever the outcome:
/// an action of several statements that is dropped half-way audits nothing, and one that
/// fails audits no success, yet what it did before must not keep passing from this
/// process's caches (held by [`App::run_steps`]).
pub(crate) struct ForgetOnExit<'a> {
    app: &'a App,
    login: &'a str,
}

impl Drop for ForgetOnExit<'_> {
    fn drop(&mut self) {
        self.app.forget(Some(self.login));
    }
}

impl App {
    /// A guard for an action about to change `login`'s access in several statements; see
    /// [`ForgetOnExit`].
    pub(crate) fn forget_on_exit<'a>(&'a self, login: &'a str) -> ForgetOnExit<'a> {
        ForgetOnExit { app: self, login }
    }

    /// Drops the cached sessions and keys of `subject` (a login), or every one of them.
    fn forget(&self, subject: Option<&str>) {
        self.session_cache.invalidate(subject);
        self.key_cache.invalidate(subject);
    }

    /// Drops the cached sessions and keys an event makes stale, if it can make any.
    pub(crate) fn forget_cached(
        &self,
        event: &str,
        outcome: &str,
        detail: Option<&str>,
        subject: Option<&str>,
    ) {
        if changes_access(event, outcome, detail, subject) {
            self.forget(subject);
        }
    }

    /// Reads the audit events after id `*after`, whoever wrote them, and drops the cached
    /// sessions and keys of each one's subject (every entry for an event about no user), as
    /// [`App::audit`] does for this process's own events. `*after` moves past each event
    /// applied, also when a later read fails.
    pub async fn sync_caches(&self, after: &mut i64) -> Result<(), ServiceError> {
        for _ in 0..SYNC_MAX_BATCHES {
            let events = self.store.audit_chain(*after, SYNC_BATCH).await?;
            for e in &events {
                let detail = e.detail.as_deref();
                self.forget_cached(&e.event, &e.outcome, detail, e.subject.as_deref());
                *after = (*after).max(e.id);
            }
            if events.len() < SYNC_BATCH as usize {
                return Ok(());
            }
        }
        let newest = self.newest_audit_id().await?;
        self.forget(None);
        *after = newest;
        Ok(())
    }

    /// The id of the newest audit event: where [`sync_caches`](Self::sync_caches) starts.
    pub async fn newest_audit_id(&self) -> Result<i64, ServiceError> {
        Ok(self
            .store
            .last_audit_before(UnixTime::MAX)
            .await?
            .map_or(0, |e| e.id))
    }
}

/// Runs [`App::sync_caches`] every [`SYNC_INTERVAL`] for as long as the server runs, from
/// the newest event now (before any request: the caches are empty). Nothing to do with the
/// caches off.
pub async fn spawn_cache_sync(app: App) -> Result<(), ServiceError> {
    if !app.session_cache.enabled() {
        return Ok(());
    }
    let mut after = app.newest_audit_id().await?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // On failure the entries expire after `cache_seconds` meanwhile.
            if let Err(e) = app.sync_caches(&mut after).await {
                tracing::warn!(
                    error = %e,
                    "cannot read the audit log to refresh the gateway's caches"
                );
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Of(&'static str);

    impl Cached for Of {
        fn login(&self) -> &str {
            self.0
        }
    }

    fn filled(cache: &CheckCache<Of>) {
        for (key, login) in [(0, "alice"), (1, "bob")] {
            cache.put([key; 32], cache.epoch(), 100, Arc::new(Of(login)));
        }
    }

    #[test]
    fn an_event_drops_its_users_entries_only() {
        let cache = CheckCache::new(5, 10);
        filled(&cache);
        cache.invalidate(Some("ALICE"));
        assert!(cache.get(&[0; 32], 101).is_none());
        assert!(cache.get(&[1; 32], 101).is_some());
        assert!(cache.get(&[1; 32], 105).is_none(), "after ttl_secs");
    }

    #[test]
    fn the_count_of_invalidated_logins_is_bounded_by_emptying_everything() {
        let cache = CheckCache::new(5, 2);
        filled(&cache);
        // Two logins that were only typed at failed attempts fill the count...
        cache.invalidate(Some("nobody1"));
        cache.invalidate(Some("nobody2"));
        assert!(cache.get(&[0; 32], 101).is_some());
        // ...a login counted already does not grow it...
        cache.invalidate(Some("nobody2"));
        assert!(cache.get(&[1; 32], 101).is_some());
        // ...and a third empties the cache rather than the count growing without end.
        cache.invalidate(Some("nobody3"));
        assert!(cache.get(&[0; 32], 101).is_none());
        assert!(cache.get(&[1; 32], 101).is_none());
        assert!(cache.lock().users.is_empty());
    }

    #[test]
    fn successes_but_an_address_lockout_and_actions_stopped_part_way_change_access() {
        let alice = Some("alice");
        assert!(changes_access("api_key_revoked", "success", None, alice));
        assert!(changes_access("user_disabled", "success", None, alice));
        assert!(changes_access("login", "success", None, alice));
        assert!(!changes_access("login", "failure", None, alice));
        assert!(!changes_access(
            "login",
            "failure",
            Some("wrong password"),
            alice
        ));
        assert!(!changes_access("login", "denied", None, alice));
        assert!(!changes_access("ip_locked", "success", None, None));
        let stopped = format!("{STOPPED_PART_WAY} (an internal error): the steps before…");
        assert!(changes_access(
            "user_disabled",
            "failure",
            Some(&stopped),
            alice
        ));
        assert!(!changes_access(
            "user_disabled",
            "failure",
            Some(&stopped),
            None
        ));
        assert!(!changes_access(
            "user_disabled",
            "denied",
            Some(&stopped),
            alice
        ));
    }
}
