//! The audit log: verifying its hash chain, pruning it behind signed checkpoints, searching
//! and exporting it.

use super::ServiceError;
use crate::app::App;
use bulwark_core::audit::{self, ChainBreak, ChainVerifier, CheckpointFields};
use bulwark_core::UnixTime;
use bulwark_store::{AuditCheckpoint, AuditFilter, AuditRecord, NewAuditEvent};
use serde_json::{json, Value};

/// Events read per page when walking the chain.
const PAGE: u32 = 1000;

/// Where a walk of the chain started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStart {
    Genesis,
    /// After the newest checkpoint (events up to `last_id` were pruned at `at`).
    Checkpoint {
        last_id: i64,
        at: UnixTime,
    },
}

/// The result of `verify_audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    pub start: ChainStart,
    /// Checkpoints whose signatures were checked.
    pub checkpoints: usize,
    /// Events checked.
    pub checked: u64,
    /// The last event checked: its id and hash (record them elsewhere to detect a rewrite
    /// of the whole tail).
    pub head: Option<(i64, String)>,
    /// The first problem found; `None`: the log is intact.
    pub problem: Option<String>,
}

impl AuditVerification {
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

impl App {
    /// Checks every checkpoint's signature and walks the chain from the newest checkpoint
    /// (or the first event) to the newest event, stopping at the first broken link.
    pub async fn verify_audit(&self) -> Result<AuditVerification, ServiceError> {
        // A pruning that runs during the walk removes events ahead of it; start again then.
        let mut attempts = 0;
        loop {
            let checkpoints = self.store.list_audit_checkpoints().await?;
            let result = self.verify_from(&checkpoints).await?;
            attempts += 1;
            if result.intact()
                || attempts == 2
                || self.store.list_audit_checkpoints().await? == checkpoints
            {
                return Ok(result);
            }
        }
    }

    async fn verify_from(
        &self,
        checkpoints: &[AuditCheckpoint],
    ) -> Result<AuditVerification, ServiceError> {
        let ring = self.key_ring();
        let mut report = AuditVerification {
            start: ChainStart::Genesis,
            checkpoints: checkpoints.len(),
            checked: 0,
            head: None,
            problem: None,
        };
        for c in checkpoints {
            let fields = CheckpointFields {
                at: c.at,
                last_id: c.last_id,
                last_hash: &c.last_hash,
            };
            let problem = match ring.audit_verifying_key(&c.key_id) {
                None => Some(format!(
                    "the checkpoint after event {} is signed by key `{}`, which is not in the key file",
                    c.last_id, c.key_id
                )),
                Some(key) if !audit::checkpoint_signature_ok(&key, &fields, &c.signature) => {
                    Some(format!(
                        "the checkpoint after event {} has a wrong signature: it was forged or altered",
                        c.last_id
                    ))
                }
                Some(_) => None,
            };
            if problem.is_some() {
                report.problem = problem;
                return Ok(report);
            }
        }
        let (mut verifier, mut after) = match checkpoints.last() {
            Some(c) => {
                report.start = ChainStart::Checkpoint {
                    last_id: c.last_id,
                    at: c.at,
                };
                (
                    ChainVerifier::from_checkpoint(c.last_id, &c.last_hash),
                    c.last_id,
                )
            }
            None => (ChainVerifier::from_genesis(), 0),
        };
        let outcome = self.walk(&mut verifier, &mut after, None).await?;
        report.checked = verifier.checked();
        report.head = verifier.head().map(|(id, h)| (id, h.to_string()));
        report.problem = outcome.err().map(|b| b.to_string());
        Ok(report)
    }

    /// Walks events after `*after` (up to `until_id` if given) through `verifier`.
    async fn walk(
        &self,
        verifier: &mut ChainVerifier,
        after: &mut i64,
        until_id: Option<i64>,
    ) -> Result<Result<(), ChainBreak>, ServiceError> {
        loop {
            let page = self.store.audit_chain(*after, PAGE).await?;
            if page.is_empty() {
                return Ok(Ok(()));
            }
            for r in &page {
                if until_id.is_some_and(|until| r.id > until) {
                    return Ok(Ok(()));
                }
                if let Err(b) =
                    verifier.push(&r.link_fields(), r.prev_hash.as_deref(), r.hash.as_deref())
                {
                    return Ok(Err(b));
                }
                *after = r.id;
            }
        }
    }

    /// Removes the events older than `keep_secs` behind a checkpoint signed with the current
    /// key, after checking that the events it removes are intact (pruning never launders a
    /// tampered event). Returns the checkpoint, or `None` when nothing is old enough.
    pub async fn prune_audit(
        &self,
        keep_secs: i64,
    ) -> Result<Option<AuditCheckpoint>, ServiceError> {
        let now = self.now();
        let Some(last) = self.store.last_audit_before(now - keep_secs).await? else {
            return Ok(None);
        };
        let checkpoints = self.store.list_audit_checkpoints().await?;
        let (mut verifier, mut after) = match checkpoints.last() {
            Some(c) if c.last_id >= last.id => return Ok(None),
            Some(c) => (
                ChainVerifier::from_checkpoint(c.last_id, &c.last_hash),
                c.last_id,
            ),
            None => (ChainVerifier::from_genesis(), 0),
        };
        let first = after;
        if let Err(b) = self.walk(&mut verifier, &mut after, Some(last.id)).await? {
            return Err(ServiceError::Refused(format!(
                "the audit log is not intact, so nothing was pruned: {b}"
            )));
        }
        let Some((last_id, last_hash)) = verifier.head().map(|(id, h)| (id, h.to_string())) else {
            return Ok(None);
        };
        let ring = self.key_ring();
        let (key_id, key) = ring
            .audit_signing_key()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let signature = audit::sign_checkpoint(
            &key,
            &CheckpointFields {
                at: now,
                last_id,
                last_hash: &last_hash,
            },
        );
        let checkpoint = AuditCheckpoint {
            at: now,
            last_id,
            last_hash,
            pruned: i64::try_from(verifier.checked()).unwrap_or(i64::MAX),
            key_id: key_id.to_string(),
            signature,
        };
        let removed = self.store.prune_audit(&checkpoint).await?;
        self.store
            .append_audit(&NewAuditEvent {
                at: now,
                actor: Some("system".into()),
                subject: None,
                event: "audit_pruned".into(),
                outcome: "success".into(),
                detail: Some(format!(
                    "{removed} events after {first} up to {last_id} removed behind a checkpoint signed by key {key_id}"
                )),
                ip: None,
                user_agent: None,
            })
            .await?;
        Ok(Some(checkpoint))
    }

    /// Events matching `filter`, newest first.
    pub async fn search_audit(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, ServiceError> {
        Ok(self.store.list_audit(filter).await?)
    }

    /// Calls `each` with every event matching `filter` (its `limit` and `before_id` ignored),
    /// oldest first, a page at a time, so an export of any size runs in bounded memory.
    pub async fn export_audit<F>(
        &self,
        filter: &AuditFilter,
        mut each: F,
    ) -> Result<u64, ServiceError>
    where
        F: FnMut(&AuditRecord) -> bool,
    {
        let mut after = 0;
        let mut written = 0;
        loop {
            let page = self.store.audit_chain(after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(written);
            };
            after = last.id;
            for r in page.iter().filter(|r| matches(filter, r)) {
                if !each(r) {
                    return Ok(written);
                }
                written += 1;
            }
        }
    }
}

pub(crate) fn matches(f: &AuditFilter, r: &AuditRecord) -> bool {
    f.subject
        .as_ref()
        .is_none_or(|s| r.subject.as_ref() == Some(s))
        && f.event.as_ref().is_none_or(|e| &r.event == e)
        && f.since.is_none_or(|t| r.at >= t)
        && f.until.is_none_or(|t| r.at < t)
}

/// An event as JSON (the API's and the export's shape).
pub fn event_json(r: &AuditRecord) -> Value {
    json!({
        "id": r.id,
        "at": r.at,
        "actor": r.actor,
        "subject": r.subject,
        "event": r.event,
        "outcome": r.outcome,
        "detail": r.detail,
        "ip": r.ip,
        "user_agent": r.user_agent,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    })
}
