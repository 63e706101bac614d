//! The compliance report on a generated population of 1,000 users with a known mix: the
//! numbers on the page, in the API's JSON and in the CSV export equal the ones an independent
//! count of the same rules gives, and only admins with a second factor see them.

use crate::api::{admin, error_code, json};
use crate::support::*;
use axum::http::StatusCode;
use bulwark_core::account::{DisplayName, Email, GroupName, Login};
use bulwark_core::password::hash::PasswordHash;
use bulwark_store::{NewAuditEvent, NewTotpFactor, NewUser};
use std::collections::BTreeMap;

const PW: &str = "Correct-Horse-Battery-Staple-42";
const DAY: i64 = 86_400;
const N: usize = 1000;

/// The mix, one rule per attribute, decided by the user's number.
struct Person {
    login: String,
    group: &'static str,
    active: bool,
    device: bool,
    two_factor: bool,
    codes_left: u32,
    created_at: i64,
    last_login: Option<i64>,
}

fn person(i: usize) -> Person {
    let group = match i % 10 {
        0..=5 => "internal",
        6..=8 => "portal",
        _ => "admins",
    };
    let device = i % 100 == 3;
    let two_factor = i % 2 == 0 && !device;
    Person {
        login: format!("user{i:04}"),
        group,
        active: i % 50 != 49,
        device,
        two_factor,
        codes_left: if two_factor { ((i / 2) % 5) as u32 } else { 0 },
        created_at: if i % 5 == 0 {
            T0 - 10 * DAY
        } else {
            T0 - 400 * DAY
        },
        last_login: match i % 3 {
            0 => Some(T0 - 10 * DAY),
            1 => Some(T0 - 100 * DAY),
            _ => None,
        },
    }
}

async fn populate(t: &TestApp) {
    let hash = PasswordHash::parse(
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
    )
    .unwrap();
    for i in 0..N {
        let p = person(i);
        let u = t
            .store
            .insert_user(&NewUser {
                login: Login::parse(&p.login).unwrap(),
                email: Some(Email::parse(&format!("{}@example.com", p.login)).unwrap()),
                display_name: DisplayName::parse(&format!("User {i}")).unwrap(),
                groups: vec![GroupName::parse(p.group).unwrap()],
                password_hash: Some(hash.clone()),
                must_change_password: false,
                created_at: p.created_at,
            })
            .await
            .unwrap();
        if !p.active {
            t.store.update_active(u.id, false).await.unwrap();
        }
        if p.device {
            t.store
                .update_device_account(u.id, true, &["10.0.0.0/24".into()])
                .await
                .unwrap();
        }
        if p.two_factor {
            t.store
                .upsert_pending_totp(&NewTotpFactor {
                    user: u.id,
                    secret_sealed: "sealed".into(),
                    key_id: "k1".into(),
                    algorithm: "sha1".into(),
                    digits: 6,
                    period: 30,
                    created_at: p.created_at,
                })
                .await
                .unwrap();
            assert!(t.store.confirm_totp(u.id, p.created_at, 1).await.unwrap());
            let codes: Vec<String> = (0..p.codes_left).map(|c| format!("code{c}")).collect();
            t.store
                .replace_recovery_codes(u.id, &codes, p.created_at)
                .await
                .unwrap();
        }
        if let Some(at) = p.last_login {
            t.store.update_last_login(u.id, at).await.unwrap();
        }
    }
    for (days_ago, event) in [
        (10, "account_locked"),
        (11, "account_locked"),
        (29, "account_locked"),
        (60, "account_locked"),
        (89, "account_locked"),
        (5, "totp_reset_by_admin"),
        (100, "totp_reset_by_admin"),
    ] {
        t.store
            .append_audit(&NewAuditEvent {
                at: T0 - days_ago * DAY,
                actor: Some("system".into()),
                subject: Some("user0001".into()),
                event: event.into(),
                outcome: "success".into(),
                detail: None,
                ip: None,
                user_agent: None,
            })
            .await
            .unwrap();
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    active: u64,
    with_2fa: u64,
    exempt: u64,
    without_2fa: u64,
    expired: u64,
    stale: u64,
    few_codes: u64,
    groups: BTreeMap<&'static str, (u64, u64, u64)>,
}

/// The same rules, counted directly. `root` is the admin the test logs in as: active, in
/// `admins` and `internal`, with 2FA, 10 fresh recovery codes, password set and logged in today.
fn expected() -> Expected {
    let mut e = Expected::default();
    let mut people: Vec<Person> = (0..N).map(person).collect();
    people.push(Person {
        login: "root".into(),
        group: "admins",
        active: true,
        device: false,
        two_factor: true,
        codes_left: 10,
        created_at: T0,
        last_login: Some(T0),
    });
    for p in people.iter().filter(|p| p.active) {
        e.active += 1;
        e.with_2fa += u64::from(p.two_factor);
        e.exempt += u64::from(p.device);
        e.without_2fa += u64::from(!p.two_factor && !p.device);
        // strict preset: passwords expire after 90 days; set at creation.
        e.expired += u64::from(p.created_at <= T0 - 90 * DAY);
        e.stale += u64::from(p.last_login.unwrap_or(p.created_at) < T0 - 90 * DAY);
        e.few_codes += u64::from(p.two_factor && p.codes_left <= 2);
        let g = e.groups.entry(p.group).or_default();
        g.0 += 1;
        g.1 += u64::from(p.two_factor);
        g.2 += u64::from(p.device);
    }
    let root_in_internal = e.groups.entry("internal").or_default();
    root_in_internal.0 += 1;
    root_in_internal.1 += 1;
    e
}

#[tokio::test]
async fn report_numbers_match_an_independent_count_on_page_api_and_csv() {
    let t = TestApp::with_config(
        "[policy]\npreset = \"strict\"\n[two_factor]\nenforcement = \"admins\"\ngrace_days = 14\n",
    )
    .await;
    let a = admin(&t).await;
    populate(&t).await;
    let e = expected();
    assert!(
        e.without_2fa > 100 && e.stale > 100 && e.few_codes > 50,
        "{e:?}"
    );

    let r = json(&a.get("/api/v1/reports/compliance").await);
    let totals = &r["totals"];
    assert_eq!(totals["active"], e.active, "{totals}");
    assert_eq!(totals["with_two_factor"], e.with_2fa);
    assert_eq!(totals["exempt"], e.exempt);
    let share = e.with_2fa as f64 * 100.0 / (e.active - e.exempt) as f64;
    assert!(
        (totals["percent"].as_f64().unwrap() - share).abs() < 0.051,
        "{totals} vs {share}"
    );
    for (key, want) in [
        ("without_two_factor", e.without_2fa),
        ("password_expired", e.expired),
        ("stale", e.stale),
        ("few_recovery_codes", e.few_codes),
    ] {
        assert_eq!(r["counts"][key], want, "{key}");
        assert_eq!(r[key].as_array().unwrap().len() as u64, want, "{key} list");
    }
    let groups: BTreeMap<String, (u64, u64, u64, bool)> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                (
                    g["active"].as_u64().unwrap(),
                    g["with_two_factor"].as_u64().unwrap(),
                    g["exempt"].as_u64().unwrap(),
                    g["two_factor_required"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    for (name, (active, with, exempt)) in &e.groups {
        let required = *name == "admins";
        assert_eq!(
            groups[*name],
            (*active, *with, *exempt, required),
            "group {name}"
        );
    }
    assert_eq!(r["events"]["lockouts"]["last_30_days"], 3);
    assert_eq!(r["events"]["lockouts"]["last_90_days"], 5);
    assert_eq!(r["events"]["two_factor_resets"]["last_30_days"], 1);
    assert_eq!(r["events"]["two_factor_resets"]["last_90_days"], 1);
    // A user under enforcement without 2FA carries their deadline (the grace starts now);
    // one who is not, none.
    let without = r["without_two_factor"].as_array().unwrap();
    let first_in = |group: &str| without.iter().find(|u| u["groups"][0] == group).unwrap();
    assert_eq!(first_in("admins")["standing"], "grace");
    let now = r["generated_at"].as_i64().unwrap();
    assert!((T0..T0 + 600).contains(&now));
    assert_eq!(first_in("admins")["grace_deadline"], now + 14 * DAY);
    assert_eq!(first_in("internal")["standing"], "optional");
    assert_eq!(
        first_in("internal")["grace_deadline"],
        serde_json::Value::Null
    );

    // The CSV: one line per active user, the same flags.
    let csv = a.get("/api/v1/reports/compliance?format=csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(lines[0].starts_with("login,email,display_name,groups,two_factor,"));
    assert_eq!(lines.len() as u64 - 1, e.active);
    let column = |name: &str| lines[0].split(',').position(|c| c == name).unwrap();
    let count = |name: &str, value: &str| {
        let c = column(name);
        lines[1..]
            .iter()
            .filter(|l| l.split(',').nth(c) == Some(value))
            .count() as u64
    };
    assert_eq!(count("two_factor", "yes"), e.with_2fa);
    assert_eq!(count("standing", "exempt"), e.exempt);
    assert_eq!(count("password_expired", "yes"), e.expired);
    assert_eq!(count("stale", "yes"), e.stale);
    let page_csv = a.get("/admin/compliance.csv").await;
    assert_eq!(page_csv.status, StatusCode::OK);
    assert_eq!(
        page_csv.body, csv.body,
        "the page's download is the same export"
    );
    assert!(page_csv.headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"bulwark-compliance-2027-01-15.csv"));

    // The page shows the same numbers.
    let page = a.get("/admin/compliance").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for fact in [
        format!("<dt>Active users</dt><dd>{}</dd>", e.active),
        format!("<dt>Without two-factor</dt><dd>{}</dd>", e.without_2fa),
        format!("<dt>Password expired</dt><dd>{}</dd>", e.expired),
        format!("<dt>No login for 90 days</dt><dd>{}</dd>", e.stale),
        format!(
            "<dt>Two or fewer recovery codes</dt><dd>{}</dd>",
            e.few_codes
        ),
        format!(
            "<dt>With two-factor</dt><dd>{} ({share:.1} %)</dd>",
            e.with_2fa
        ),
        "<dt>Account lockouts</dt><dd>3 in 30 days, 5 in 90 days</dd>".to_string(),
    ] {
        assert!(page.body.contains(&fact), "missing {fact}");
    }
    assert!(page.body.contains("Showing the first 200"));

    // A different stale threshold changes that number everywhere.
    let r10 = json(&a.get("/api/v1/reports/compliance?stale_days=5").await);
    assert!(r10["counts"]["stale"].as_u64().unwrap() > e.stale);
    for bad in ["stale_days=0", "stale_days=x", "format=xml"] {
        let res = a.get(&format!("/api/v1/reports/compliance?{bad}")).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(&res), "invalid_input");
    }
    assert_eq!(
        a.get("/admin/compliance?stale_days=-3").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_report_is_for_admins_with_a_second_factor_only() {
    let t = TestApp::with_config(
        "[two_factor]\nenforcement = \"admins\"\nemail_codes = false\ngrace_days = 7\n",
    )
    .await;
    t.add_user("alice", PW, &["internal"]).await;
    let clerk = t.browser();
    clerk.login("alice", PW).await;
    for path in [
        "/admin/compliance",
        "/admin/compliance.csv",
        "/admin/compliance.json",
    ] {
        let res = clerk.get(path).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
        assert!(res.body.contains("for administrators"), "{path}");
    }
    assert_eq!(
        clerk.get("/api/v1/reports/compliance").await.status,
        StatusCode::FORBIDDEN
    );
    let anonymous = t.browser().get("/admin/compliance").await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert!(anonymous.location().starts_with("/login?next="));

    // An admin who logged in with the password alone (no authenticator yet, in grace).
    t.add_user("boss", PW, &["admins"]).await;
    let boss = t.browser();
    boss.login("boss", PW).await;
    assert_eq!(
        boss.get("/account").await.status,
        StatusCode::OK,
        "logged in"
    );
    let res = boss.get("/admin/compliance").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    assert!(res.body.contains("second factor"));
}

#[tokio::test]
async fn users_without_two_factor_are_invited_from_the_page() {
    let t = TestApp::with_config("[two_factor]\nenforcement = \"admins\"\ngrace_days = 14\n").await;
    let a = admin(&t).await;
    t.add_user("alice", PW, &["internal"]).await;
    t.add_user("dora", PW, &["admins"]).await;
    let kiosk = t.add_user("kiosk", PW, &["internal"]).await;
    t.store
        .update_device_account(kiosk.id, true, &["10.0.0.0/24".into()])
        .await
        .unwrap();
    t.mails().await; // whatever the setup sent
    let page = a.get("/admin/compliance").await;
    assert!(page.body.contains("Mail the invitations"));
    let res = a.post("/admin/compliance/invite", &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/admin/compliance?invited=2");
    assert!(a
        .get(res.location())
        .await
        .body
        .contains("2 users without two-factor"));
    let mails = t.mails().await;
    let invited: Vec<&str> = mails
        .iter()
        .filter(|m| m.subject == "Please set up two-factor authentication")
        .map(|m| m.to.as_str())
        .collect();
    assert_eq!(invited.len(), 2, "{invited:?}");
    assert!(invited.iter().any(|to| to.contains("alice@")));
    let dora = mails.iter().find(|m| m.to.contains("dora@")).unwrap();
    assert!(dora.text.contains("Please do it by"), "{}", dora.text);
    assert!(dora.text.contains("/account/security"));
    // Refused to non-admins.
    let clerk = t.browser();
    clerk.login("alice", PW).await;
    assert_eq!(
        clerk.post("/admin/compliance/invite", &[]).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn reminders_go_out_before_deadlines_once_a_day() {
    let t = TestApp::with_config(
        "[policy]\npreset = \"strict\"\n[two_factor]\nenforcement = \"admins\"\ngrace_days = 14\n",
    )
    .await;
    // Grace started 12 days ago: it ends in 2 days.
    let dora = t.add_user("dora", PW, &["admins"]).await;
    t.store.start_grace(dora.id, T0 - 12 * DAY).await.unwrap();
    // Grace started today: 14 days left, no reminder yet.
    let eve = t.add_user("eve", PW, &["admins"]).await;
    t.store.start_grace(eve.id, T0).await.unwrap();
    assert_eq!(
        t.app.send_reminders().await.unwrap(),
        bulwark_server::services::compliance::RemindersSent {
            two_factor: 1,
            password: 0
        }
    );
    assert_eq!(
        t.app.send_reminders().await.unwrap(),
        Default::default(),
        "once a day"
    );
    let mails = t.mails().await;
    let reminder = mails
        .iter()
        .find(|m| m.subject == "Two-factor authentication: a few days left")
        .unwrap();
    assert!(reminder.to.contains("dora@"), "{}", reminder.to);

    // 87 days later every password (strict: 90 days) expires within 3 days; dora's grace is
    // over (no more 2FA reminder), eve's too.
    t.clock.advance(87 * DAY);
    let sent = t.app.send_reminders().await.unwrap();
    assert_eq!(sent.password, 2, "{sent:?}");
    assert_eq!(sent.two_factor, 0, "{sent:?}");
    assert!(t
        .mails()
        .await
        .iter()
        .any(|m| m.subject == "Your password expires soon" && m.text.contains("/password/change")));
    t.clock.advance(DAY + 1);
    assert_eq!(
        t.app.send_reminders().await.unwrap().password,
        2,
        "the next day again"
    );
}
