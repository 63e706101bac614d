//! The head of the audit chain as this store last wrote it.
//!
//! Appending an event means reading the head of the chain and linking to it, and no two
//! events may link to the same head. Done in a locked transaction, that is four or five
//! round trips to the database for every security event (a login writes one). A store that
//! remembers the head it wrote last can instead link to it in one conditional `INSERT`: the
//! database inserts the event only if the remembered head is still the newest event (same
//! id, same hash), and the event's id, the head's id + 1, is a primary key, so two appenders
//! linking to the same head cannot both succeed. When the condition fails (another process
//! or node appended meanwhile, or the log was pruned to nothing) the backend appends the
//! slow way and remembers the new head.
//!
//! Appends of one store are serialised by the lock here, held for the whole append: the
//! database serialises them anyway (SQLite has one writer; PostgreSQL appends took a lock),
//! and without it two appends of one store would link to the same head and one of them
//! would go the slow way.

use crate::NewAuditEvent;
use tokio::sync::{Mutex, MutexGuard};

/// The newest event of the chain: its id and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub id: i64,
    pub hash: String,
}

impl ChainHead {
    /// The head once `e` is appended after this one: the next id, and `e`'s hash linked to
    /// this head's.
    pub fn after(&self, e: &NewAuditEvent) -> ChainHead {
        let id = self.id + 1;
        ChainHead {
            id,
            hash: e.link_hash(id, &self.hash),
        }
    }
}

/// The head this store last wrote, or none (not known yet, or the last append failed).
#[derive(Debug, Default)]
pub struct AuditHead(Mutex<Option<ChainHead>>);

/// The event to try linking to the remembered head in one statement.
#[derive(Debug)]
pub struct Link {
    /// The remembered head, which must still be the newest event.
    pub head: ChainHead,
    /// The new event's id and hash.
    pub next: ChainHead,
}

impl AuditHead {
    /// Waits for this store's other appends; the guard says how to link the next event.
    pub async fn lock(&self) -> AppendGuard<'_> {
        AppendGuard(self.0.lock().await)
    }
}

/// Held for one append. Without a call to [`AppendGuard::appended`] the head is forgotten,
/// and the next append reads it again.
#[derive(Debug)]
pub struct AppendGuard<'a>(MutexGuard<'a, Option<ChainHead>>);

impl AppendGuard<'_> {
    /// How `e` would link to the remembered head, if one is remembered.
    pub fn link(&mut self, e: &NewAuditEvent) -> Option<Link> {
        let head = self.0.take()?;
        let next = head.after(e);
        Some(Link { head, next })
    }

    /// Records the event just appended as the head; returns its id.
    pub fn appended(&mut self, head: ChainHead) -> i64 {
        let id = head.id;
        *self.0 = Some(head);
        id
    }
}
