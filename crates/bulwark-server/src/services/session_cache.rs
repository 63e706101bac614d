//! A short-lived cache of authenticated sessions for the gateway's check path.
//!
//! A forward-auth check runs for every request to every protected application, so it must not
//! cost three database reads each time. Entries live at most `gateway.cache_seconds` (by the
//! app clock) and are keyed by the SHA-256 of the session token, never the token itself.
//!
//! Every security event on this node is audited, and auditing bumps the cache's epoch, which
//! drops every entry at once: a logout, revocation, password change, disable or group change
//! made here stops passing at the next request. A change made on another node sharing the
//! database stops passing within `cache_seconds`. The bound is documented in docs/gateway.md.

use super::auth::CurrentSession;
use bulwark_core::UnixTime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

struct Entry {
    epoch: u64,
    at: UnixTime,
    /// Shared with every check that hits it: no copy of the user's fields per request.
    session: Arc<CurrentSession>,
}

/// Bounded, time-limited, epoch-invalidated map from token digest to session.
pub struct SessionCache {
    ttl_secs: i64,
    max_entries: usize,
    epoch: AtomicU64,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
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
            epoch: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        self.ttl_secs > 0
    }

    /// Drops every entry (cheaply: entries of older epochs are never returned).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters: at worst an entry is missing.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached session for a token digest, if fresh and of the current epoch.
    pub fn get(&self, digest: &[u8; 32], now: UnixTime) -> Option<Arc<CurrentSession>> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let map = self.lock();
        let e = map.get(digest)?;
        (e.epoch == epoch && now >= e.at && now - e.at < self.ttl_secs).then(|| e.session.clone())
    }

    /// Remembers a session read at `now`, under the epoch current before it was read.
    pub fn put(&self, digest: [u8; 32], epoch: u64, now: UnixTime, session: Arc<CurrentSession>) {
        if !self.enabled() {
            return;
        }
        let current = self.epoch.load(Ordering::SeqCst);
        if epoch != current {
            // Something changed while the session was being read: do not keep it.
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.max_entries {
            map.retain(|_, e| e.epoch == current && now - e.at < self.ttl_secs);
            if map.len() >= self.max_entries {
                map.clear();
            }
        }
        map.insert(
            digest,
            Entry {
                epoch,
                at: now,
                session,
            },
        );
    }

    /// The epoch to pass to [`put`](Self::put) for a read that starts now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}
