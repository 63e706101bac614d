//! A short-lived cache of authenticated sessions for the gateway's check path.
//!
//! A forward-auth check runs for every request to every protected application, so it must not
//! cost three database reads each time. Entries live at most `gateway.cache_seconds` (by the
//! app clock) and are keyed by the SHA-256 of the session token, never the token itself.
//!
//! Every security event on this node is audited, and auditing invalidates: an event about a
//! user drops that user's entries (a logout, revocation, password change, disable or group
//! change made here stops passing at the next request), an event about no user drops them
//! all. Other users' entries stay, so a busy login page does not empty the cache. A change
//! made on another node sharing the database, or by a CLI command (another process), stops
//! passing within `cache_seconds`. The bound is documented in docs/gateway.md.
//!
//! Race: a check that reads a session while an event is audited must not cache what it
//! read. Every event bumps a global counter; a read caches its result only if the counter
//! did not move while it ran.

use super::auth::CurrentSession;
use bulwark_core::UnixTime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

struct Entry {
    /// The user's invalidation count when the entry was made.
    user_epoch: u64,
    /// The all-users invalidation count when the entry was made.
    all_epoch: u64,
    at: UnixTime,
    /// Shared with every check that hits it: no copy of the user's fields per request.
    session: Arc<CurrentSession>,
}

#[derive(Default)]
struct State {
    entries: HashMap<[u8; 32], Entry>,
    /// Invalidations per login; a login never invalidated counts 0.
    users: HashMap<String, u64>,
    all_epoch: u64,
}

/// Bounded, time-limited, event-invalidated map from token digest to session.
pub struct SessionCache {
    ttl_secs: i64,
    max_entries: usize,
    /// Bumped by every event: reads that overlap one do not cache.
    events: AtomicU64,
    state: Mutex<State>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl SessionCache {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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
        match subject {
            Some(login) => *state.users.entry(login.to_lowercase()).or_insert(0) += 1,
            None => {
                state.all_epoch += 1;
                state.entries.clear();
                state.users.clear();
            }
        }
    }

    /// The cached session for a token digest, if fresh and not invalidated since.
    pub fn get(&self, digest: &[u8; 32], now: UnixTime) -> Option<Arc<CurrentSession>> {
        let state = self.lock();
        let e = state.entries.get(digest)?;
        let user_epoch = state.users.get(&e.session.user.login).copied().unwrap_or(0);
        (e.all_epoch == state.all_epoch
            && e.user_epoch == user_epoch
            && now >= e.at
            && now - e.at < self.ttl_secs)
            .then(|| e.session.clone())
    }

    /// The marker to pass to [`put`](Self::put) for a read that starts now.
    pub fn epoch(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }

    /// Remembers a session read at `now` by a read that started at `epoch`; skipped when an
    /// event happened meanwhile (what was read may already be stale).
    pub fn put(&self, digest: [u8; 32], epoch: u64, now: UnixTime, session: Arc<CurrentSession>) {
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
        let user_epoch = state.users.get(&session.user.login).copied().unwrap_or(0);
        let all_epoch = state.all_epoch;
        state.entries.insert(
            digest,
            Entry {
                user_epoch,
                all_epoch,
                at: now,
                session,
            },
        );
    }
}
