//! The compliance report: who is protected and who is not, as an auditor asks it.
//!
//! One pass over every user (a page of users with their second factors per query) feeds
//! the group coverage, the counts and the lists; the page, the API and the CLI all render this
//! one computation, so their numbers agree.
//!
//! Definitions (also in docs/compliance.md):
//! - only **active** users count; disabled ones are left out;
//! - **with 2FA**: a confirmed authenticator;
//! - **exempt**: device accounts (no second factor, bound to networks); they are counted apart
//!   and left out of the share, which is `with 2FA / (active - exempt)`;
//! - **without 2FA**: active, not exempt, no confirmed authenticator;
//! - **password expired**: the password's age passed the expiry of the user's policy;
//! - **stale**: no login for `stale_days` (or never, and created that long ago);
//! - **few recovery codes**: with 2FA and at most 2 unused recovery codes.

use super::ServiceError;
use crate::app::App;
use bulwark_core::enforcement::{self, Standing};
use bulwark_core::UnixTime;
use bulwark_store::{SecurityPage, SecurityRow, StoreError, UserId};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Users read per query. Small enough to stream about 150 kB at a time; a page
/// costs about 20 µs more than its rows.
const PAGE: u32 = 1000;
/// At most this many recovery codes left counts as "few".
pub const FEW_RECOVERY_CODES: u32 = 2;
const DAY: i64 = 86_400;

/// What a report covers.
#[derive(Debug, Clone, Copy)]
pub struct ComplianceOptions {
    /// No login for this many days makes an account stale.
    pub stale_days: u32,
}

impl Default for ComplianceOptions {
    fn default() -> Self {
        Self { stale_days: 90 }
    }
}

/// One active user, as the report sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCompliance {
    pub login: String,
    pub email: Option<String>,
    pub display_name: String,
    pub groups: Vec<String>,
    pub two_factor: bool,
    pub standing: Standing,
    pub recovery_codes_left: u32,
    pub last_login_at: Option<UnixTime>,
    pub password_changed_at: Option<UnixTime>,
    pub password_expires_at: Option<UnixTime>,
    pub password_expired: bool,
    pub stale: bool,
}

impl UserCompliance {
    fn new(u: &SecurityRow<'_>, v: Verdict) -> Self {
        Self {
            login: u.login.to_string(),
            email: u.email.map(str::to_string),
            display_name: u.display_name.to_string(),
            groups: u.groups().map(str::to_string).collect(),
            two_factor: v.two_factor,
            standing: v.standing,
            recovery_codes_left: v.recovery_codes_left,
            last_login_at: u.last_login_at,
            password_changed_at: u.password_changed_at,
            password_expires_at: v.password_expires_at,
            password_expired: v.password_expired,
            stale: v.stale,
        }
    }

    fn verdict(&self) -> Verdict {
        Verdict {
            two_factor: self.two_factor,
            standing: self.standing,
            recovery_codes_left: self.recovery_codes_left,
            password_expires_at: self.password_expires_at,
            password_expired: self.password_expired,
            stale: self.stale,
        }
    }

    pub fn exempt(&self) -> bool {
        self.verdict().exempt()
    }

    pub fn without_two_factor(&self) -> bool {
        self.verdict().without_two_factor()
    }

    pub fn few_recovery_codes(&self) -> bool {
        self.verdict().few_recovery_codes()
    }

    /// The end of the 2FA grace period, for users still inside it.
    pub fn grace_deadline(&self) -> Option<UnixTime> {
        self.verdict().grace_deadline()
    }

    /// The standing as one word: optional, exempt, satisfied, grace, enrolment_required.
    pub fn standing_name(&self) -> &'static str {
        self.verdict().standing_name()
    }
}

/// What the report says of one user, apart from who they are: what the lines, the counts and
/// the CSV are made of.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    two_factor: bool,
    standing: Standing,
    recovery_codes_left: u32,
    password_expires_at: Option<UnixTime>,
    password_expired: bool,
    stale: bool,
}

impl Verdict {
    fn exempt(&self) -> bool {
        self.standing == Standing::Exempt
    }

    fn without_two_factor(&self) -> bool {
        !self.two_factor && !self.exempt()
    }

    fn few_recovery_codes(&self) -> bool {
        self.two_factor && self.recovery_codes_left <= FEW_RECOVERY_CODES
    }

    fn grace_deadline(&self) -> Option<UnixTime> {
        match self.standing {
            Standing::Grace { deadline } => Some(deadline),
            _ => None,
        }
    }

    fn standing_name(&self) -> &'static str {
        match self.standing {
            Standing::Optional => "optional",
            Standing::Exempt => "exempt",
            Standing::Satisfied => "satisfied",
            Standing::Grace { .. } => "grace",
            Standing::EnrolmentRequired => "enrolment_required",
        }
    }
}

/// Active users of one group (or of all groups) and their second factors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub active: u64,
    pub with_two_factor: u64,
    pub exempt: u64,
}

impl Coverage {
    fn add(&mut self, u: &Verdict) {
        self.active += 1;
        self.with_two_factor += u64::from(u.two_factor);
        self.exempt += u64::from(u.exempt());
    }

    fn merge(&mut self, other: &Coverage) {
        self.active += other.active;
        self.with_two_factor += other.with_two_factor;
        self.exempt += other.exempt;
    }

    /// Share of the active, non-exempt users with 2FA, in percent (100 when there are none).
    pub fn percent(&self) -> f64 {
        let counted = self.active.saturating_sub(self.exempt);
        if counted == 0 {
            return 100.0;
        }
        // Counts stay far below 2^52, where u64 -> f64 is exact.
        (self.with_two_factor.min(counted) as f64) * 100.0 / (counted as f64)
    }
}

/// Security events of the last 30 and 90 days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub two_factor_resets_30d: u64,
    pub two_factor_resets_90d: u64,
    pub lockouts_30d: u64,
    pub lockouts_90d: u64,
}

/// The numbers of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplianceSummary {
    pub generated_at: UnixTime,
    pub stale_days: u32,
    pub all: Coverage,
    /// Per group, by name; `required` says whether the group is under 2FA enforcement.
    pub groups: BTreeMap<String, (bool, Coverage)>,
    pub without_two_factor: u64,
    pub password_expired: u64,
    pub stale: u64,
    pub few_recovery_codes: u64,
    pub events: EventCounts,
}

/// The numbers and the lists of users who need attention.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplianceReport {
    pub summary: ComplianceSummary,
    pub without_two_factor: Vec<UserCompliance>,
    pub password_expired: Vec<UserCompliance>,
    pub stale: Vec<UserCompliance>,
    pub few_recovery_codes: Vec<UserCompliance>,
    /// The lists were cut at the limit asked for (the counts are whole).
    pub truncated: bool,
}

/// A walk over every active user, a page at a time: [`ComplianceScan::next_page`] (or
/// [`ComplianceScan::next_csv`] for a scan started as an export) until it returns `None`,
/// then [`ComplianceScan::summary`]. Memory stays bounded whatever the number of users, and
/// a caller can pause between pages (e.g. while a client reads the export).
pub struct ComplianceScan {
    store: Arc<dyn bulwark_store::Store>,
    judge: Arc<Judge>,
    output: Output,
    /// The ids of the walk: every user up to the highest id when it started, in ranges of
    /// [`PAGE`] ids (a range of unique ids holds at most that many users). Ranges already
    /// handed to a read end at `scheduled`.
    max_id: UserId,
    scheduled: UserId,
    summary: ComplianceSummary,
    /// The next ranges, in order, each read and judged (and written as CSV for an export)
    /// by a task of its own: on SQLite each read runs on a blocking thread with its own
    /// connection, so the pages in flight share the cores while the caller sends the
    /// current one.
    ahead: VecDeque<ReadAhead>,
}

/// What the scan hands back of each page besides the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// The users' lines ([`ComplianceScan::next_page`]).
    Lines,
    /// The page as CSV lines ([`ComplianceScan::next_csv`]).
    Csv,
    /// Nothing: the numbers only.
    Counts,
}

/// Pages being read and judged while the caller handles one.
const READ_AHEAD: usize = 3;

/// A page being read; a scan dropped half-way (a client that went away) stops it.
struct ReadAhead(tokio::task::JoinHandle<Result<Judged, ServiceError>>);

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every page of one scan is judged by, fixed when the scan starts: the policy in
/// force then, and the time.
struct Judge {
    policy: Arc<crate::config::policy::Policy>,
    now: UnixTime,
    stale_before: UnixTime,
}

/// A page judged: its lines (or their CSV) and its numbers.
struct Judged {
    lines: Vec<UserCompliance>,
    csv: String,
    tally: Tally,
}

/// The numbers of one page, added to the scan's summary in page order.
#[derive(Default)]
struct Tally {
    all: Coverage,
    groups: HashMap<String, Coverage>,
    without_two_factor: u64,
    password_expired: u64,
    stale: u64,
    few_recovery_codes: u64,
}

impl Judge {
    /// The active users of `page`, judged and counted, written as CSV if asked.
    fn page(&self, page: &SecurityPage, output: Output) -> Judged {
        // Users share a handful of group sets: policy and enforcement are decided, and users
        // counted, once per set; the groups' figures are added up from the sets' at the end.
        let mut sets: HashMap<&str, (bool, Option<u32>, Coverage)> = HashMap::new();
        let mut tally = Tally::default();
        let mut lines = Vec::new();
        let mut csv = String::new();
        if output == Output::Csv {
            csv.reserve(page.len() * 160);
        }
        let mut scratch = String::new();
        for u in page.iter().filter(|u| u.active) {
            let (required, expiry_days, coverage) = sets.entry(u.groups).or_insert_with(|| {
                let groups: Vec<&str> = u.groups().collect();
                let expiry = self.policy.passwords.for_groups(&groups).expiry_days;
                (
                    self.policy.two_factor.required_for(&groups),
                    (expiry > 0).then_some(expiry),
                    Coverage::default(),
                )
            });
            let v = verdict(&u, self, *required, *expiry_days);
            coverage.add(&v);
            tally.all.add(&v);
            tally.without_two_factor += u64::from(v.without_two_factor());
            tally.password_expired += u64::from(v.password_expired);
            tally.stale += u64::from(v.stale);
            tally.few_recovery_codes += u64::from(v.few_recovery_codes());
            match output {
                Output::Lines => lines.push(UserCompliance::new(&u, v)),
                Output::Csv => write_csv_line(&mut csv, &mut scratch, &u, &v),
                Output::Counts => {}
            }
        }
        for (groups, (_, _, coverage)) in sets {
            for g in groups.split(',').filter(|g| !g.is_empty()) {
                match tally.groups.get_mut(g) {
                    Some(total) => total.merge(&coverage),
                    None => {
                        tally.groups.insert(g.to_string(), coverage.clone());
                    }
                }
            }
        }
        Judged { lines, csv, tally }
    }
}

impl ComplianceScan {
    /// Starts reading the next ranges, up to [`READ_AHEAD`] in flight.
    fn read_ahead(&mut self) {
        while self.ahead.len() < READ_AHEAD && self.scheduled < self.max_id {
            let store = self.store.clone();
            let judge = Arc::clone(&self.judge);
            let output = self.output;
            let after = self.scheduled;
            let up_to = after.saturating_add(UserId::from(PAGE)).min(self.max_id);
            self.scheduled = up_to;
            self.ahead.push_back(ReadAhead(tokio::spawn(async move {
                let page = store.list_user_security(after, up_to, PAGE).await?;
                // About a millisecond of work a page: off the threads that answer requests.
                tokio::task::spawn_blocking(move || judge.page(&page, output))
                    .await
                    .map_err(|e| stopped(&e))
            })));
        }
    }

    /// The next page judged, its numbers added to the summary, or `None` when every user
    /// was seen.
    async fn next_judged(&mut self) -> Result<Option<Judged>, ServiceError> {
        self.read_ahead();
        let Some(mut read) = self.ahead.pop_front() else {
            return Ok(None);
        };
        let judged = (&mut read.0).await.map_err(|e| stopped(&e))??;
        self.read_ahead();
        let (summary, tally) = (&mut self.summary, &judged.tally);
        summary.all.merge(&tally.all);
        for (g, coverage) in &tally.groups {
            match summary.groups.get_mut(g) {
                Some((_, total)) => total.merge(coverage),
                None => {
                    let required = self
                        .judge
                        .policy
                        .two_factor
                        .required_for(std::slice::from_ref(g));
                    summary
                        .groups
                        .insert(g.clone(), (required, coverage.clone()));
                }
            }
        }
        summary.without_two_factor += tally.without_two_factor;
        summary.password_expired += tally.password_expired;
        summary.stale += tally.stale;
        summary.few_recovery_codes += tally.few_recovery_codes;
        Ok(Some(judged))
    }

    /// The next page of active users (possibly empty), or `None` when every user was seen.
    /// Empty pages only for a scan started by [`App::compliance_csv_scan`].
    pub async fn next_page(&mut self) -> Result<Option<Vec<UserCompliance>>, ServiceError> {
        Ok(self.next_judged().await?.map(|j| j.lines))
    }

    /// The CSV lines of the next page of active users (possibly empty), or `None` when
    /// every user was seen. Empty unless the scan was started by
    /// [`App::compliance_csv_scan`].
    pub async fn next_csv(&mut self) -> Result<Option<String>, ServiceError> {
        Ok(self.next_judged().await?.map(|j| j.csv))
    }

    /// The numbers over the users seen so far (all of them once `next_page` gave `None`).
    pub fn summary(&self) -> &ComplianceSummary {
        &self.summary
    }
}

fn stopped(e: &tokio::task::JoinError) -> ServiceError {
    StoreError::Backend(format!("the user read stopped: {e}")).into()
}

impl App {
    /// Starts a walk over every active user (see [`ComplianceScan`]).
    pub async fn compliance_scan(
        &self,
        options: ComplianceOptions,
    ) -> Result<ComplianceScan, ServiceError> {
        self.start_scan(options, Output::Lines).await
    }

    /// Starts the CSV export: a walk whose pages come as CSV lines
    /// ([`ComplianceScan::next_csv`]), written while they are read.
    pub async fn compliance_csv_scan(
        &self,
        options: ComplianceOptions,
    ) -> Result<ComplianceScan, ServiceError> {
        self.start_scan(options, Output::Csv).await
    }

    /// The numbers of a walk over every user, without the lists.
    pub async fn compliance_summary(
        &self,
        options: ComplianceOptions,
    ) -> Result<ComplianceSummary, ServiceError> {
        let mut scan = self.start_scan(options, Output::Counts).await?;
        while scan.next_judged().await?.is_some() {}
        Ok(scan.summary)
    }

    async fn start_scan(
        &self,
        options: ComplianceOptions,
        output: Output,
    ) -> Result<ComplianceScan, ServiceError> {
        let now = self.now();
        Ok(ComplianceScan {
            store: self.store.clone(),
            judge: Arc::new(Judge {
                policy: self.policy(),
                now,
                stale_before: now.saturating_sub(i64::from(options.stale_days) * DAY),
            }),
            output,
            max_id: self.store.max_user_id().await?,
            scheduled: 0,
            ahead: VecDeque::new(),
            summary: ComplianceSummary {
                generated_at: now,
                stale_days: options.stale_days,
                all: Coverage::default(),
                groups: BTreeMap::new(),
                without_two_factor: 0,
                password_expired: 0,
                stale: 0,
                few_recovery_codes: 0,
                events: self.event_counts(now).await?,
            },
        })
    }

    /// The numbers and the lists, each list cut at `list_limit` users if given.
    pub async fn compliance_report(
        &self,
        options: ComplianceOptions,
        list_limit: Option<usize>,
    ) -> Result<ComplianceReport, ServiceError> {
        let limit = list_limit.unwrap_or(usize::MAX);
        let mut scan = self.compliance_scan(options).await?;
        let mut lists: [Vec<UserCompliance>; 4] = Default::default();
        let mut truncated = false;
        while let Some(page) = scan.next_page().await? {
            for u in page {
                let wanted = [
                    u.without_two_factor(),
                    u.password_expired,
                    u.stale,
                    u.few_recovery_codes(),
                ];
                for (list, wanted) in lists.iter_mut().zip(wanted) {
                    if !wanted {
                        continue;
                    }
                    if list.len() < limit {
                        list.push(u.clone());
                    } else {
                        truncated = true;
                    }
                }
            }
        }
        for list in &mut lists {
            list.sort_by(|a, b| a.login.cmp(&b.login));
        }
        let [without_two_factor, password_expired, stale, few_recovery_codes] = lists;
        Ok(ComplianceReport {
            summary: scan.summary,
            without_two_factor,
            password_expired,
            stale,
            few_recovery_codes,
            truncated,
        })
    }

    async fn event_counts(&self, now: UnixTime) -> Result<EventCounts, ServiceError> {
        let count = |event: &'static str, days: i64| async move {
            self.store
                .count_audit_events(event, now.saturating_sub(days * DAY))
                .await
        };
        Ok(EventCounts {
            two_factor_resets_30d: count("totp_reset_by_admin", 30).await?,
            two_factor_resets_90d: count("totp_reset_by_admin", 90).await?,
            lockouts_30d: count("account_locked", 30).await?,
            lockouts_90d: count("account_locked", 90).await?,
        })
    }
}

/// What the report says of `u`, under the scan's policy and time.
fn verdict(
    u: &SecurityRow<'_>,
    judge: &Judge,
    required: bool,
    expiry_days: Option<u32>,
) -> Verdict {
    let standing = enforcement::standing(
        required,
        u.device_account,
        u.totp_active,
        u.grace_started_at,
        judge.policy.two_factor.grace_days,
        judge.now,
    );
    let password_expires_at = match (u.has_password, u.password_changed_at, expiry_days) {
        (true, Some(changed), Some(days)) => Some(changed.saturating_add(i64::from(days) * DAY)),
        _ => None,
    };
    Verdict {
        two_factor: u.totp_active,
        standing,
        recovery_codes_left: u.recovery_codes_left,
        password_expires_at,
        password_expired: password_expires_at.is_some_and(|at| judge.now >= at),
        stale: u.last_login_at.unwrap_or(u.created_at) < judge.stale_before,
    }
}

/// The CSV export: one line per active user, with a header. Fields that could start a
/// spreadsheet formula are prefixed with `'`.
pub struct CsvWriter;

impl CsvWriter {
    pub const HEADER: &'static str = "login,email,display_name,groups,two_factor,standing,grace_deadline,recovery_codes_left,last_login,password_changed,password_expires,password_expired,stale\r\n";
}

/// Appends the CSV line of `u` (with its CRLF); `scratch` is room for a field being built.
fn write_csv_line(out: &mut String, scratch: &mut String, u: &SecurityRow<'_>, v: &Verdict) {
    push_field(out, u.login);
    out.push(',');
    push_field(out, u.email.unwrap_or_default());
    out.push(',');
    push_field(out, u.display_name);
    out.push(',');
    scratch.clear();
    for (i, g) in u.groups().enumerate() {
        if i > 0 {
            scratch.push(' ');
        }
        scratch.push_str(g);
    }
    push_field(out, scratch);
    out.push(',');
    out.push_str(yes_no(v.two_factor));
    out.push(',');
    out.push_str(v.standing_name());
    out.push(',');
    push_time(out, v.grace_deadline());
    out.push(',');
    {
        use std::fmt::Write;
        // Digits: nothing to quote or defuse.
        let _ = write!(out, "{}", v.recovery_codes_left);
    }
    out.push(',');
    push_time(out, u.last_login_at);
    out.push(',');
    push_time(out, u.password_changed_at);
    out.push(',');
    push_time(out, v.password_expires_at);
    out.push(',');
    out.push_str(yes_no(v.password_expired));
    out.push(',');
    out.push_str(yes_no(v.stale));
    out.push_str("\r\n");
}

/// Appends a time as a CSV field (empty for none). ISO text of the years 0–9999 starts with
/// a digit and holds nothing CSV quotes, so it is written as it is; any other (a year before
/// 0 starts with `-`) goes through [`push_field`].
fn push_time(out: &mut String, t: Option<UnixTime>) {
    let Some(t) = t else {
        return;
    };
    let start = out.len();
    crate::clock::write_iso(out, t);
    if !out.as_bytes().get(start).is_some_and(u8::is_ascii_digit) {
        let text = out.split_off(start);
        push_field(out, &text);
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Appends a CSV field, quoted when needed (RFC 4180), with spreadsheet formulas defused by
/// a leading `'`.
fn push_field(out: &mut String, value: &str) {
    let quoted = value
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
    if quoted {
        out.push('"');
    }
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        out.push('\'');
    }
    if quoted {
        for (i, part) in value.split('"').enumerate() {
            if i > 0 {
                out.push_str("\"\"");
            }
            out.push_str(part);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// A user of a report's lists, as JSON. Fields in the order of their names: the shape the
/// report had when it was built as a `serde_json::Value`, whose maps sort their keys.
#[derive(Serialize)]
struct UserJson<'a> {
    display_name: &'a str,
    email: Option<&'a str>,
    grace_deadline: Option<UnixTime>,
    groups: &'a [String],
    last_login_at: Option<UnixTime>,
    login: &'a str,
    password_changed_at: Option<UnixTime>,
    password_expired: bool,
    password_expires_at: Option<UnixTime>,
    recovery_codes_left: u32,
    stale: bool,
    standing: &'static str,
    two_factor: bool,
}

impl<'a> From<&'a UserCompliance> for UserJson<'a> {
    fn from(u: &'a UserCompliance) -> Self {
        Self {
            display_name: &u.display_name,
            email: u.email.as_deref(),
            grace_deadline: u.grace_deadline(),
            groups: &u.groups,
            last_login_at: u.last_login_at,
            login: &u.login,
            password_changed_at: u.password_changed_at,
            password_expired: u.password_expired,
            password_expires_at: u.password_expires_at,
            recovery_codes_left: u.recovery_codes_left,
            stale: u.stale,
            standing: u.standing_name(),
            two_factor: u.two_factor,
        }
    }
}

/// Users serialized one at a time, never gathered into a document first.
struct UsersJson<'a>(&'a [UserCompliance]);

impl Serialize for UsersJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(UserJson::from))
    }
}

#[derive(Serialize)]
struct CoverageJson<'a> {
    active: u64,
    exempt: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    two_factor_required: Option<bool>,
    with_two_factor: u64,
}

impl<'a> CoverageJson<'a> {
    fn new(c: &Coverage, group: Option<(&'a str, bool)>) -> Self {
        Self {
            active: c.active,
            exempt: c.exempt,
            name: group.map(|(name, _)| name),
            percent: (c.percent() * 10.0).round() / 10.0,
            two_factor_required: group.map(|(_, required)| required),
            with_two_factor: c.with_two_factor,
        }
    }
}

#[derive(Serialize)]
struct LastDays {
    last_30_days: u64,
    last_90_days: u64,
}

#[derive(Serialize)]
struct EventsJson {
    lockouts: LastDays,
    two_factor_resets: LastDays,
}

#[derive(Serialize)]
struct CountsJson {
    few_recovery_codes: u64,
    password_expired: u64,
    stale: u64,
    without_two_factor: u64,
}

/// The report as JSON (the API's and the CLI's shape), written as it is serialized: the CLI
/// streams the lists of a million users without building a document of them in memory.
#[derive(Serialize)]
pub struct ReportJson<'a> {
    counts: CountsJson,
    events: EventsJson,
    few_recovery_codes: UsersJson<'a>,
    generated_at: UnixTime,
    groups: Vec<CoverageJson<'a>>,
    password_expired: UsersJson<'a>,
    stale: UsersJson<'a>,
    stale_days: u32,
    totals: CoverageJson<'a>,
    truncated: bool,
    without_two_factor: UsersJson<'a>,
}

/// The report as JSON (see [`ReportJson`]).
pub fn report_json(r: &ComplianceReport) -> ReportJson<'_> {
    let s = &r.summary;
    ReportJson {
        counts: CountsJson {
            few_recovery_codes: s.few_recovery_codes,
            password_expired: s.password_expired,
            stale: s.stale,
            without_two_factor: s.without_two_factor,
        },
        events: EventsJson {
            lockouts: LastDays {
                last_30_days: s.events.lockouts_30d,
                last_90_days: s.events.lockouts_90d,
            },
            two_factor_resets: LastDays {
                last_30_days: s.events.two_factor_resets_30d,
                last_90_days: s.events.two_factor_resets_90d,
            },
        },
        few_recovery_codes: UsersJson(&r.few_recovery_codes),
        generated_at: s.generated_at,
        groups: s
            .groups
            .iter()
            .map(|(name, (required, c))| CoverageJson::new(c, Some((name.as_str(), *required))))
            .collect(),
        password_expired: UsersJson(&r.password_expired),
        stale: UsersJson(&r.stale),
        stale_days: s.stale_days,
        totals: CoverageJson::new(&s.all, None),
        truncated: r.truncated,
        without_two_factor: UsersJson(&r.without_two_factor),
    }
}

/// Reminders go out this many days before a deadline (end of 2FA grace, password expiry).
pub const REMIND_DAYS_BEFORE: i64 = 3;

/// What a reminder run sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemindersSent {
    pub two_factor: u64,
    pub password: u64,
}

impl App {
    /// Mails every active user without 2FA (device accounts aside) who has an address an
    /// invitation to set it up, with a link to the enrolment page and their deadline.
    /// Returns how many were mailed.
    pub async fn invite_users_without_two_factor(
        &self,
        actor: &str,
        client: &super::ClientInfo,
    ) -> Result<u64, ServiceError> {
        let mut scan = self.compliance_scan(ComplianceOptions::default()).await?;
        let now = scan.judge.now;
        let link = self.url("/account/security");
        let mut sent = 0;
        while let Some(page) = scan.next_page().await? {
            for u in page.iter().filter(|u| u.without_two_factor()) {
                let Some(email) = &u.email else { continue };
                let deadline = match u.grace_deadline() {
                    Some(d) => format!("Please do it by {}: after that date, your account will only open the set-up page.", crate::clock::format_time(d)),
                    None if u.standing == Standing::EnrolmentRequired => "It is required for your account and overdue: until you set it up, your account only opens the set-up page.".to_string(),
                    None => "It takes two minutes and protects your account even if your password leaks.".to_string(),
                };
                let text = format!(
                    "Your administrator asks you to turn on two-factor authentication for your account {}. You need an authenticator app on your phone (for example Google Authenticator, Microsoft Authenticator, FreeOTP or 1Password).\n\n{deadline}",
                    u.login
                );
                self.mailer
                    .send(
                        email,
                        "Please set up two-factor authentication",
                        &text,
                        Some((&link, "Set up two-factor authentication")),
                        now,
                    )
                    .await;
                sent += 1;
            }
        }
        self.audit(
            super::Audit::event("two_factor_invitations_sent", "success")
                .actor(actor)
                .detail(format!("{sent} users mailed"))
                .client(client),
            now,
        )
        .await;
        Ok(sent)
    }

    /// Mails the users whose 2FA grace period or password ends within
    /// [`REMIND_DAYS_BEFORE`] days, each kind at most once a day per user (the audit log
    /// remembers). Run by every node's maintenance task; a second node finds the reminders
    /// already logged.
    pub async fn send_reminders(&self) -> Result<RemindersSent, ServiceError> {
        let mut scan = self.compliance_scan(ComplianceOptions::default()).await?;
        let now = scan.judge.now;
        let soon = now + REMIND_DAYS_BEFORE * DAY;
        let mut sent = RemindersSent::default();
        while let Some(page) = scan.next_page().await? {
            for u in &page {
                let Some(email) = &u.email else { continue };
                if let Some(deadline) = u.grace_deadline().filter(|d| *d <= soon) {
                    if self.remind_once(u, "two_factor_reminder", now).await? {
                        let text = format!("Two-factor authentication becomes required for your account {} on {}. After that, until it is set up, your account only opens the set-up page. It takes two minutes with an authenticator app on your phone.", u.login, crate::clock::format_time(deadline));
                        let link = self.url("/account/security");
                        self.mailer
                            .send(
                                email,
                                "Two-factor authentication: a few days left",
                                &text,
                                Some((&link, "Set up two-factor authentication")),
                                now,
                            )
                            .await;
                        sent.two_factor += 1;
                    }
                }
                if let Some(expires) = u.password_expires_at.filter(|e| *e > now && *e <= soon) {
                    if self.remind_once(u, "password_expiry_reminder", now).await? {
                        let text = format!("The password of your account {} expires on {}. Choose a new one before then; after that you will be asked to at your next login.", u.login, crate::clock::format_time(expires));
                        let link = self.url("/password/change");
                        self.mailer
                            .send(
                                email,
                                "Your password expires soon",
                                &text,
                                Some((&link, "Change my password")),
                                now,
                            )
                            .await;
                        sent.password += 1;
                    }
                }
            }
        }
        Ok(sent)
    }

    /// Logs a reminder of `kind` for `u` unless one was logged in the last day; says whether
    /// to send it.
    async fn remind_once(
        &self,
        u: &UserCompliance,
        kind: &str,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        let recent = self
            .store
            .list_audit(&bulwark_store::AuditFilter {
                subject: Some(u.login.clone()),
                event: Some(kind.to_string()),
                since: Some(now - DAY),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if !recent.is_empty() {
            return Ok(false);
        }
        self.audit(
            super::Audit::event(kind, "success")
                .actor("system")
                .subject(&u.login),
            now,
        )
        .await;
        Ok(true)
    }
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

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        let csv_field = |v: &str| {
            let mut out = String::new();
            push_field(&mut out, v);
            out
        };
        assert_eq!(csv_field("alice"), "alice");
        assert_eq!(csv_field("Smith, Ann"), "\"Smith, Ann\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    }

    #[test]
    fn csv_times_are_written_as_they_are_and_odd_ones_defused() {
        let mut out = String::from("x,");
        push_time(&mut out, Some(1_795_460_525));
        assert_eq!(out, "x,2026-11-23T19:02:05Z");
        out.truncate(2);
        push_time(&mut out, None);
        assert_eq!(out, "x,");
        // A year before 0 starts with `-`, which a spreadsheet would read as a formula.
        push_time(&mut out, Some(-62_167_219_201));
        assert!(out.starts_with("x,'-"), "{out}");
        assert!(out.ends_with("-12-31T23:59:59Z"), "{out}");
    }

    #[test]
    fn report_json_has_every_field_with_keys_in_order() {
        let user = UserCompliance {
            login: "ann".into(),
            email: None,
            display_name: "Ann \"A\" Smith".into(),
            groups: vec!["internal".into(), "sales".into()],
            two_factor: false,
            standing: Standing::Grace {
                deadline: 1_700_600_000,
            },
            recovery_codes_left: 0,
            last_login_at: Some(1_700_000_000),
            password_changed_at: None,
            password_expires_at: None,
            password_expired: false,
            stale: true,
        };
        let coverage = Coverage {
            active: 3,
            with_two_factor: 1,
            exempt: 1,
        };
        let report = ComplianceReport {
            summary: ComplianceSummary {
                generated_at: 1_700_000_100,
                stale_days: 90,
                all: coverage.clone(),
                groups: BTreeMap::from([("internal".to_string(), (true, coverage))]),
                without_two_factor: 1,
                password_expired: 0,
                stale: 1,
                few_recovery_codes: 0,
                events: EventCounts {
                    two_factor_resets_30d: 1,
                    two_factor_resets_90d: 2,
                    lockouts_30d: 3,
                    lockouts_90d: 4,
                },
            },
            without_two_factor: vec![user.clone()],
            password_expired: vec![],
            stale: vec![user],
            few_recovery_codes: vec![],
            truncated: false,
        };
        let user_value = serde_json::json!({
            "login": "ann", "email": null, "display_name": "Ann \"A\" Smith",
            "groups": ["internal", "sales"], "two_factor": false, "standing": "grace",
            "grace_deadline": 1_700_600_000, "recovery_codes_left": 0,
            "last_login_at": 1_700_000_000, "password_changed_at": null,
            "password_expires_at": null, "password_expired": false, "stale": true,
        });
        // A `serde_json::Value` map sorts its keys: the same text means the same fields,
        // values and order.
        let expected = serde_json::json!({
            "generated_at": 1_700_000_100,
            "stale_days": 90,
            "totals": {"active": 3, "with_two_factor": 1, "exempt": 1, "percent": 50.0},
            "groups": [{"active": 3, "with_two_factor": 1, "exempt": 1, "percent": 50.0,
                        "name": "internal", "two_factor_required": true}],
            "counts": {"without_two_factor": 1, "password_expired": 0, "stale": 1,
                       "few_recovery_codes": 0},
            "events": {"two_factor_resets": {"last_30_days": 1, "last_90_days": 2},
                       "lockouts": {"last_30_days": 3, "last_90_days": 4}},
            "without_two_factor": [user_value.clone()],
            "password_expired": [],
            "stale": [user_value],
            "few_recovery_codes": [],
            "truncated": false,
        });
        let json = report_json(&report);
        assert_eq!(
            serde_json::to_string_pretty(&json).unwrap(),
            serde_json::to_string_pretty(&expected).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }

    #[test]
    fn coverage_leaves_exempt_accounts_out_of_the_share() {
        let c = Coverage {
            active: 10,
            with_two_factor: 6,
            exempt: 2,
        };
        assert!((c.percent() - 75.0).abs() < 1e-9);
        assert!((Coverage::default().percent() - 100.0).abs() < 1e-9);
    }
}
