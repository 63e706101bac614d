-- The audit log becomes a hash chain: each event carries the hash of the one before it and
-- its own (computed by the store when it appends, see bulwark_core::audit). Events written
-- before this migration are sealed into the chain, in id order, when the store migrates.
--
-- Pruning (the retention setting) first stores a signed checkpoint naming the last pruned
-- event and its hash; only events up to a checkpoint can ever be deleted.

ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_log ADD COLUMN hash TEXT;
-- Time-range searches and pruning by age.
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    last_id   INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    pruned    INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);

-- Only an event not yet sealed into the chain may be updated (once, by the sealing).
DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log WHEN OLD.hash IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
-- Only events covered by a checkpoint may be deleted.
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.id > (SELECT coalesce(max(last_id), 0) FROM audit_checkpoints)
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
