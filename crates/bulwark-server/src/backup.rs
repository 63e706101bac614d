//! Backups of the embedded SQLite database: an online copy named by time, pruned to 7 daily,
//! 4 weekly and 3 monthly copies; listing; a checked restore.
//!
//! A backup is one self-contained SQLite file, `bulwark-20261123T190205Z.db`, written with
//! `VACUUM INTO` while the server keeps running, then checked like a restore would check it.
//! PostgreSQL deployments back up with `pg_dump` (docs/operations.md).

use bulwark_core::UnixTime;
use bulwark_store_sqlite::SqliteStore;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const PREFIX: &str = "bulwark-";
const SUFFIX: &str = ".db";

/// Daily, weekly and monthly copies kept by pruning.
pub const KEEP_DAILY: usize = 7;
pub const KEEP_WEEKLY: usize = 4;
pub const KEEP_MONTHLY: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Check(String),
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// The file name of a backup taken at `t`.
pub fn backup_name(t: UnixTime) -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|dt| dt.format(&format).ok())
        .unwrap_or_else(|| t.to_string());
    format!("{PREFIX}{stamp}{SUFFIX}")
}

/// The time a backup file name says it was taken, if it is one of ours.
pub fn parse_backup_name(name: &str) -> Option<UnixTime> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if stamp.len() != 16
        || !stamp.is_ascii()
        || stamp.get(8..9) != Some("T")
        || !stamp.ends_with('Z')
    {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| {
        stamp
            .get(r)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
    };
    let text = format!(
        "{}-{}-{}T{}:{}:{}",
        digits(0..4)?,
        digits(4..6)?,
        digits(6..8)?,
        digits(9..11)?,
        digits(11..13)?,
        digits(13..15)?
    );
    crate::clock::parse_time(&text)
}

/// Which of the backups taken at `times` to keep: the newest of each of the last
/// [`KEEP_DAILY`] days that have one, of the last [`KEEP_WEEKLY`] ISO weeks and of the last
/// [`KEEP_MONTHLY`] months.
pub fn retained(times: &[UnixTime]) -> BTreeSet<UnixTime> {
    let mut newest_first: Vec<UnixTime> = times.to_vec();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    newest_first.dedup();
    let mut keep = BTreeSet::new();
    type Period = fn(time::OffsetDateTime) -> (i32, u32);
    let periods: [(usize, Period); 3] = [
        (KEEP_DAILY, |d| (d.year(), u32::from(d.ordinal()))),
        (KEEP_WEEKLY, |d| {
            let (year, week, _) = d.to_iso_week_date();
            (year, u32::from(week))
        }),
        (KEEP_MONTHLY, |d| (d.year(), u32::from(u8::from(d.month())))),
    ];
    for (count, period) in periods {
        let mut seen = Vec::new();
        for &t in &newest_first {
            let Ok(dt) = time::OffsetDateTime::from_unix_timestamp(t) else {
                continue;
            };
            let p = period(dt);
            if !seen.contains(&p) {
                if seen.len() == count {
                    break;
                }
                seen.push(p);
                keep.insert(t);
            }
        }
    }
    keep
}

/// A backup file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    pub path: PathBuf,
    pub taken_at: UnixTime,
    pub bytes: u64,
}

/// The backups in `dir`, oldest first (other files are ignored).
pub fn list(dir: &Path) -> Result<Vec<BackupFile>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io("read", dir, e))?;
        let name = entry.file_name();
        let Some(taken_at) = name.to_str().and_then(parse_backup_name) else {
            continue;
        };
        let meta = entry.metadata().map_err(|e| io("read", &entry.path(), e))?;
        if meta.is_file() {
            files.push(BackupFile {
                path: entry.path(),
                taken_at,
                bytes: meta.len(),
            });
        }
    }
    files.sort_by_key(|f| f.taken_at);
    Ok(files)
}

/// What `run` did.
#[derive(Debug)]
pub struct BackupOutcome {
    pub file: BackupFile,
    pub schema_version: i64,
    pub pruned: Vec<PathBuf>,
}

/// Takes a backup into `dir` (created private if missing), checks it, and prunes older
/// backups there to the retention scheme. `progress` is called about every second with the
/// bytes written so far, for long runs.
pub async fn run(
    store: &SqliteStore,
    source: &Path,
    dir: &Path,
    now: UnixTime,
    mut progress: impl FnMut(u64, u64),
) -> Result<BackupOutcome, BackupError> {
    crate::cli::create_private_dir(dir).map_err(|e| BackupError::Io(e.to_string()))?;
    let path = dir.join(backup_name(now));
    let expected = std::fs::metadata(source).map(|m| m.len()).unwrap_or(0);
    let target = path.clone();
    let copy = store.backup_into(&target);
    tokio::pin!(copy);
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    ticker.tick().await;
    let copied = loop {
        tokio::select! {
            result = &mut copy => break result,
            _ = ticker.tick() => {
                let written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                progress(written, expected);
            }
        }
    };
    copied.map_err(|e| BackupError::Io(format!("the backup failed: {e}")))?;
    let schema_version = match SqliteStore::check_file(&path).await {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(BackupError::Check(format!(
                "the new backup does not check out, so it was removed: {e}"
            )));
        }
    };
    let all = list(dir)?;
    let keep = retained(&all.iter().map(|f| f.taken_at).collect::<Vec<_>>());
    let mut pruned = Vec::new();
    for f in all.iter().filter(|f| !keep.contains(&f.taken_at)) {
        std::fs::remove_file(&f.path).map_err(|e| io("remove", &f.path, e))?;
        pruned.push(f.path.clone());
    }
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(BackupOutcome {
        file: BackupFile {
            path,
            taken_at: now,
            bytes,
        },
        schema_version,
        pruned,
    })
}

/// Puts the backup `file` in place of the database at `db`, after checking it. The database
/// it replaces is kept beside it as `bulwark.db.before-restore-<time>`; its journal files are
/// removed so they cannot be mixed with the restored file. Bulwark must not be running.
pub async fn restore(file: &Path, db: &Path, now: UnixTime) -> Result<i64, BackupError> {
    let version = SqliteStore::check_file(file)
        .await
        .map_err(|e| BackupError::Check(format!("refusing to restore: {e}")))?;
    let dir = db.parent().unwrap_or_else(|| Path::new("."));
    crate::cli::create_private_dir(dir).map_err(|e| BackupError::Io(e.to_string()))?;
    let staging = dir.join(format!(".restore-{now}.db"));
    copy_private(file, &staging)?;
    let name = db
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("bulwark.db");
    if db.exists() {
        let aside = dir.join(format!("{name}.before-restore-{}", backup_name(now)));
        std::fs::rename(db, &aside).map_err(|e| io("move aside", db, e))?;
    }
    for journal in ["-wal", "-shm"] {
        let j = dir.join(format!("{name}{journal}"));
        match std::fs::remove_file(&j) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &j, e)),
            _ => {}
        }
    }
    std::fs::rename(&staging, db).map_err(|e| io("move into place", db, e))?;
    Ok(version)
}

fn copy_private(from: &Path, to: &Path) -> Result<(), BackupError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options.open(to).map_err(|e| io("create", to, e))?;
    let mut input = std::fs::File::open(from).map_err(|e| io("read", from, e))?;
    std::io::copy(&mut input, &mut out).map_err(|e| io("copy to", to, e))?;
    out.sync_all().map_err(|e| io("write", to, e))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]
    use super::*;

    const DAY: i64 = 86_400;
    // 2026-11-23 03:00 UTC, a Monday.
    const MON: i64 = 1_795_402_800;

    #[test]
    fn names_carry_the_time_and_nothing_else_parses() {
        let name = backup_name(MON + 125);
        assert_eq!(name, "bulwark-20261123T030205Z.db");
        assert_eq!(parse_backup_name(&name), Some(MON + 125));
        for other in [
            "bulwark.db",
            "bulwark-x.db",
            "bulwark-20261123T030205Z.db-wal",
            "notes.txt",
        ] {
            assert_eq!(parse_backup_name(other), None, "{other}");
        }
    }

    #[test]
    fn nightly_backups_for_a_year_keep_seven_daily_four_weekly_three_monthly() {
        let times: Vec<i64> = (0..365).map(|d| MON - d * DAY).collect();
        let keep = retained(&times);
        // The last 7 days...
        for d in 0..7 {
            assert!(keep.contains(&(MON - d * DAY)), "day {d}");
        }
        // ...the newest of the 4 latest ISO weeks (this Monday, and the Sundays before)...
        for sunday in [1, 8, 15] {
            assert!(keep.contains(&(MON - sunday * DAY)), "sunday -{sunday}");
        }
        // ...and of the 3 latest months (Nov 23, Oct 31, Sep 30).
        assert!(keep.contains(&(MON - 23 * DAY)), "Oct 31");
        assert!(keep.contains(&(MON - 54 * DAY)), "Sep 30");
        assert_eq!(keep.len(), 7 + 2 + 2, "{keep:?}");
        assert!(!keep.contains(&(MON - 100 * DAY)));
    }

    #[test]
    fn several_backups_a_day_keep_the_newest_of_the_day() {
        let times = [MON, MON + 3600, MON + 7200, MON - DAY, MON - DAY + 60];
        let keep = retained(&times);
        assert_eq!(
            keep.into_iter().collect::<Vec<_>>(),
            vec![MON - DAY + 60, MON + 7200]
        );
        assert!(retained(&[]).is_empty());
    }
}
