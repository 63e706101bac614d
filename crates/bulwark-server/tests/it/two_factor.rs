//! In-process tests of two-factor authentication: enrolment with a QR code, the second login
//! step (TOTP, recovery and e-mailed codes), replay and attempt limits, enforcement with grace,
//! device accounts, trusted devices, turning 2FA off, admin reset, secrets at rest and key
//! rotation, new-device mail.

use crate::support::*;
use axum::http::{header, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bulwark_core::totp::{self, TotpParams, TotpSecret};
use bulwark_server::clock::{format_time, Clock};
use bulwark_server::services::ClientInfo;
use bulwark_store::SessionStage;
use std::path::Path;

const PW: &str = "Correct-Horse-Battery-Staple-42";
const PW2: &str = "Quiet-Violet-Lantern-Harbor-77";
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";
/// Employees must use 2FA, 7 days of grace, no codes by e-mail.
const EMPLOYEES: &str =
    "[two_factor]\nenforcement = \"employees\"\ngrace_days = 7\nemail_codes = false\n";
const DAY: i64 = 86_400;
const GRACE_PROMPT: &str = "/account/security?prompt=grace&next=/account";

// ---------------------------------------------------------------------------------------
// Helpers

/// The code of the time step `offset` steps away from the current one.
fn code_at(t: &TestApp, secret: &TotpSecret, offset: i64) -> String {
    let step = i64::try_from(totp::time_step(t.clock.now(), 30)).unwrap() + offset;
    totp::generate(secret, &TotpParams::default(), u64::try_from(step).unwrap())
}

pub(crate) fn code_now(t: &TestApp, secret: &TotpSecret) -> String {
    code_at(t, secret, 0)
}

/// Moves the clock to the next time step and returns its code (a used step never works again).
pub(crate) fn next_code(t: &TestApp, secret: &TotpSecret) -> String {
    t.clock.advance(30);
    code_now(t, secret)
}

/// A code that is none of `avoid`.
fn wrong_code(avoid: &[&str]) -> String {
    ["123456", "654321", "111111"]
        .into_iter()
        .find(|c| !avoid.contains(c))
        .unwrap()
        .to_string()
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

fn all_between(text: &str, start: &str, end: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(from) = rest.find(start) {
        rest = &rest[from + start.len()..];
        let Some(len) = rest.find(end) else { break };
        out.push(rest[..len].to_string());
        rest = &rest[len..];
    }
    out
}

/// Undoes the HTML escaping of template output.
fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x2F;", "/")
        .replace("&#x3d;", "=")
        .replace("&#x3D;", "=")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// What the security page shows during enrolment.
pub(crate) struct Enrolment {
    pub(crate) secret: TotpSecret,
    /// The key as shown (grouped by four).
    grouped: String,
    uri: String,
    qr_svg: String,
}

pub(crate) fn read_enrolment(body: &str) -> Enrolment {
    let grouped = between(body, "<p class=\"secret\"><code>", "</code>").expect("key shown");
    let uri = unescape(between(body, "<p class=\"uri\"><code>", "</code>").expect("URI shown"));
    let qr = between(
        body,
        "<img class=\"qr\" src=\"data:image/svg+xml;base64,",
        "\"",
    )
    .expect("QR code shown");
    let qr_svg = String::from_utf8(STANDARD.decode(unescape(qr)).unwrap()).unwrap();
    Enrolment {
        secret: TotpSecret::from_base32(grouped).unwrap(),
        grouped: grouped.to_string(),
        uri,
        qr_svg,
    }
}

/// Starts enrolment with the password and reads the QR code, key and URI off the page.
async fn begin_enrolment(b: &Browser) -> Enrolment {
    let res = b.post("/account/security/enrol", &[("password", PW)]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account/security");
    let page = b.get("/account/security").await;
    assert_eq!(page.status, StatusCode::OK);
    read_enrolment(&page.body)
}

fn recovery_codes(body: &str) -> Vec<String> {
    all_between(body, "<li><code>", "</code></li>")
}

/// Turns TOTP on for the user signed in on `b`; returns the secret and the recovery codes.
pub(crate) async fn enrol(t: &TestApp, b: &Browser) -> (TotpSecret, Vec<String>) {
    let e = begin_enrolment(b).await;
    let res = b
        .post(
            "/account/security/confirm",
            &[("code", &code_now(t, &e.secret))],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let codes = recovery_codes(&res.body);
    assert_eq!(codes.len(), 10, "{}", res.body);
    (e.secret, codes)
}

/// A user (not under enforcement) who turned TOTP on; `b` stays signed in.
pub(crate) async fn user_with_totp(
    t: &TestApp,
    login: &str,
    groups: &[&str],
) -> (Browser, TotpSecret, Vec<String>) {
    t.add_user(login, PW, groups).await;
    let b = t.browser();
    let res = b.login(login, PW).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account");
    let (secret, codes) = enrol(t, &b).await;
    (b, secret, codes)
}

/// Logs in with the password and expects to be sent to the second step.
pub(crate) async fn half_login(b: &Browser, login: &str) -> Response {
    let res = b.login(login, PW).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/login/2fa");
    assert!(res.set_cookie("bulwark_session").is_some());
    res
}

pub(crate) async fn send_code(b: &Browser, code: &str) -> Response {
    b.post("/login/2fa", &[("code", code)]).await
}

pub(crate) async fn logout(b: &Browser) {
    let res = b.post("/logout", &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
}

/// Every mail queued for `login` with this subject, oldest first. (Read from the queue:
/// delivering to the outbox loses mail, see `two_login_codes_in_one_second_are_both_delivered`.)
async fn mails(t: &TestApp, login: &str, subject: &str) -> Vec<Mail> {
    let to = format!("{login}@example.com");
    t.queued_mails()
        .await
        .into_iter()
        .filter(|m| m.to.contains(&to) && m.subject == subject)
        .collect()
}

/// The code of the newest "Your login code" mail to `login`.
async fn last_login_code(t: &TestApp, login: &str) -> String {
    let all = mails(t, login, "Your login code").await;
    let text = &all.last().expect("a login code mail").text;
    let code = between(text, "Your login code is ", "\n")
        .expect("code in the mail")
        .trim()
        .to_string();
    assert!(
        code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()),
        "{code:?}"
    );
    code
}

/// Logs in under enforcement with an e-mailed code; returns the final redirect.
async fn login_with_email_code(t: &TestApp, b: &Browser, login: &str) -> Response {
    half_login(b, login).await;
    let res = b.post("/login/2fa/email", &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let code = last_login_code(t, login).await;
    send_code(b, &code).await
}

async fn user_id(t: &TestApp, login: &str) -> i64 {
    t.app.user_by_login(login).await.unwrap().id
}

fn device_cookie_of(res: &Response) -> String {
    let line = res
        .set_cookie("bulwark_device")
        .expect("trusted-device cookie");
    line.split(';').next().unwrap()["bulwark_device=".len()..].to_string()
}

// ---------------------------------------------------------------------------------------
// Enrolment

#[tokio::test]
async fn enrolment_needs_password_and_a_correct_code() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let id = user_id(&t, "alice").await;
    let b = t.browser();
    assert_eq!(b.login("alice", PW).await.location(), "/account");
    let page = b.get("/account/security").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<p>Off.</p>"), "{}", page.body);
    assert!(!page.body.contains("class=\"secret\""));

    // Wrong password: refused, nothing stored.
    let res = b
        .post(
            "/account/security/enrol",
            &[("password", "not-my-password-x")],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(
        res.body.contains("Your password is not correct."),
        "{}",
        res.body
    );
    assert!(t.store.find_totp(id).await.unwrap().is_none());
    assert!(!res.body.contains("class=\"secret\""));

    // Right password: QR code, key and URI; the factor is pending.
    let first = begin_enrolment(&b).await;
    let page = b.get("/account/security").await;
    assert!(page.body.contains("Almost done"), "{}", page.body);
    assert!(page
        .body
        .contains("<img class=\"qr\" src=\"data:image/svg+xml;base64,"));
    assert_eq!(first.secret.as_bytes().len(), 20, "160-bit secret");
    assert_eq!(first.grouped.len(), 32 + 7, "eight groups of four");
    assert!(first.uri.starts_with(&format!(
        "otpauth://totp/Bulwark:alice?secret={}&",
        first.grouped.replace(' ', "")
    )));
    assert!(first.qr_svg.starts_with("<?xml"));
    let pending = t.store.find_totp(id).await.unwrap().unwrap();
    assert!(pending.confirmed_at.is_none());

    // Starting again draws a new key; the first one no longer confirms.
    let e = begin_enrolment(&b).await;
    assert_ne!(e.secret.as_bytes(), first.secret.as_bytes());
    let res = b
        .post(
            "/account/security/confirm",
            &[("code", &code_now(&t, &first.secret))],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);

    // Not active yet: a login from another browser has no second step.
    let other = t.browser_from("198.51.100.40");
    let res = other.login("alice", PW).await;
    assert_eq!(res.location(), "/account");
    assert_eq!(other.get("/account").await.status, StatusCode::OK);

    // A wrong code is refused and the factor stays pending.
    let right = code_now(&t, &e.secret);
    let res = b
        .post(
            "/account/security/confirm",
            &[("code", &wrong_code(&[&right]))],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("That code is not right."), "{}", res.body);
    assert!(t
        .store
        .find_totp(id)
        .await
        .unwrap()
        .unwrap()
        .confirmed_at
        .is_none());

    // The right code: the codes page with ten codes and a download link, a new session id.
    let before = b.cookie("bulwark_session").unwrap();
    let res = b
        .post("/account/security/confirm", &[("code", &right)])
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let codes = recovery_codes(&res.body);
    assert_eq!(codes.len(), 10, "{}", res.body);
    let mut distinct = codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    for c in &codes {
        assert!(
            c.len() == 14 && c.as_bytes()[4] == b'-' && c.as_bytes()[9] == b'-',
            "{c}"
        );
    }
    let download = between(
        &res.body,
        "href=\"data:text/plain;charset=utf-8,",
        "\" download=\"bulwark-recovery-codes.txt\"",
    )
    .expect("download link");
    assert!(codes.iter().all(|c| download.contains(c.as_str())));
    let after = b.cookie("bulwark_session").unwrap();
    assert_ne!(before, after, "session id rotated");
    let factor = t.store.find_totp(id).await.unwrap().unwrap();
    assert_eq!(factor.confirmed_at, Some(T0));
    assert_eq!(t.store.count_recovery_codes(id).await.unwrap(), 10);

    // The account and security pages show it; the key is not shown again.
    let account = b.get("/account").await;
    assert_eq!(account.status, StatusCode::OK);
    assert!(
        account.body.contains("on, 10 recovery codes left"),
        "{}",
        account.body
    );
    let page = b.get("/account/security").await;
    assert!(
        page.body
            .contains("Recovery codes left: <strong>10</strong>"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("class=\"secret\""));
    assert!(!page.body.contains(&e.grouped));

    // Every other session ended.
    let res = other.get("/account").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(res.location().starts_with("/login"), "{}", res.location());
    let sessions = t.store.list_user_sessions(id).await.unwrap();
    assert_eq!(sessions.len(), 1);

    // Enrolling again while on is refused; the user was told by mail.
    let res = b.post("/account/security/enrol", &[("password", PW)]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("already on"), "{}", res.body);
    let on = mails(&t, "alice", "Two-factor authentication is on").await;
    assert_eq!(on.len(), 1);
    assert!(!on[0].text.contains(&e.grouped.replace(' ', "")));
}

/// Reads the QR code the `qrcode` SVG renderer drew (a white `<rect>` and one `<path>` of
/// `M x yhWvHH..V..` squares, one per dark module) and decodes it.
fn decode_qr_svg(svg: &str) -> String {
    let width: usize = between(svg, "width=\"", "\"").unwrap().parse().unwrap();
    let height: usize = between(svg, "height=\"", "\"").unwrap().parse().unwrap();
    assert_eq!(width, height);
    assert!(
        svg.contains(&format!(
            "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>"
        )),
        "{svg}"
    );
    let d = between(svg, "<path fill=\"#000\" d=\"", "\"").expect("dark modules");
    let mut dark = vec![false; width * height];
    let (mut module, mut min_x, mut min_y, mut max_x) = (usize::MAX, usize::MAX, usize::MAX, 0);
    for square in d.split('M').filter(|s| !s.is_empty()) {
        let (pos, rest) = square.split_once('h').unwrap();
        let (x, y) = pos.split_once(' ').unwrap();
        let (w, rest) = rest.split_once('v').unwrap();
        let (h, _) = rest.split_once('H').unwrap();
        let [x, y, w, h] = [x, y, w, h].map(|n| n.parse::<usize>().unwrap());
        assert_eq!(w, h, "square modules");
        module = module.min(w);
        min_x = min_x.min(x);
        min_y = min_y.min(y);
        max_x = max_x.max(x + w);
        for py in y..y + h {
            for px in x..x + w {
                dark[py * width + px] = true;
            }
        }
    }
    assert!(module >= 2, "at least 2 px per module");
    assert_eq!(width % module, 0);
    // The finder patterns touch the corners of the symbol: what is left is the quiet zone.
    assert_eq!(min_x, 4 * module, "4-module quiet zone");
    assert_eq!(min_y, 4 * module);
    assert_eq!(width - max_x, 4 * module);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        if dark[y * width + x] {
            0
        } else {
            255
        }
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().expect("decodes").1
}

#[tokio::test]
async fn qr_svg_decodes_to_the_otpauth_uri() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let e = begin_enrolment(&b).await;
    let decoded = decode_qr_svg(&e.qr_svg);
    assert_eq!(decoded, e.uri);
    let key = e.grouped.replace(' ', "");
    assert!(decoded.starts_with("otpauth://totp/Bulwark:alice?secret="));
    assert_eq!(
        decoded,
        format!(
            "otpauth://totp/Bulwark:alice?secret={key}&issuer=Bulwark&algorithm=SHA1&digits=6&period=30"
        )
    );
    // The key in the QR code is the one that confirms.
    let res = b
        .post(
            "/account/security/confirm",
            &[("code", &code_now(&t, &e.secret))],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// The second login step

#[tokio::test]
async fn login_with_totp_rotates_session_and_half_session_reaches_nothing_else() {
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    let id = user_id(&t, "alice").await;
    let b = t.browser_from("198.51.100.50");
    let res = half_login(&b, "alice").await;
    let half = b.cookie("bulwark_session").unwrap();
    assert!(res
        .set_cookie("bulwark_session")
        .unwrap()
        .contains("HttpOnly"));
    let stages: Vec<_> = t
        .store
        .list_user_sessions(id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stage)
        .collect();
    assert!(stages.contains(&SessionStage::SecondFactor), "{stages:?}");

    // The half session reaches only the second step.
    let page = b.get("/login/2fa").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("authenticator app"), "{}", page.body);
    assert!(!page.body.contains("E-mail me a code"));
    for path in ["/account", "/account/security", "/password/change"] {
        let res = b.get(path).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.location(), "/login/2fa", "{path}");
    }
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW),
                ("new_password", PW2),
                ("confirm_password", PW2),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/login/2fa");
    for (path, fields) in [
        ("/account/security/disable", vec![("password", PW)]),
        ("/account/security/enrol", vec![("password", PW)]),
        ("/account/security/recovery-codes", vec![("password", PW)]),
        ("/account/sessions/revoke-all", vec![]),
    ] {
        let res = b.post(path, &fields).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.location(), "/login/2fa", "{path}");
    }
    assert!(
        t.store
            .find_totp(id)
            .await
            .unwrap()
            .unwrap()
            .confirmed_at
            .is_some(),
        "a half session cannot turn 2FA off"
    );

    // The right code: a new full session under a new id.
    let res = send_code(&b, &next_code(&t, &secret)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account");
    let full = b.cookie("bulwark_session").unwrap();
    assert_ne!(full, half);
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    assert_eq!(b.get("/login/2fa").await.location(), "/account");

    // The half session's id is dead.
    let thief = t.browser();
    thief.set_cookie("bulwark_session", &half);
    assert!(thief.get("/account").await.location().starts_with("/login"));
    assert_eq!(thief.get("/login/2fa").await.location(), "/login");
    assert!(t
        .store
        .list_user_sessions(id)
        .await
        .unwrap()
        .iter()
        .all(|s| s.stage == SessionStage::Full));

    // A half session left alone dies after 10 minutes.
    let late = t.browser();
    half_login(&late, "alice").await;
    t.clock.advance(10 * 60);
    assert_eq!(late.get("/login/2fa").await.location(), "/login");
    let res = send_code(&late, &code_now(&t, &secret)).await;
    assert_eq!(res.location(), "/login");
}

#[tokio::test]
async fn totp_code_is_never_accepted_twice() {
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    let b = t.browser();

    // The code that confirmed enrolment cannot log in during the same step.
    half_login(&b, "alice").await;
    let confirmed_with = code_now(&t, &secret);
    let res = send_code(&b, &confirmed_with).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.body.contains("Codes work once"), "{}", res.body);

    // A fresh code works once.
    let code = next_code(&t, &secret);
    let res = send_code(&b, &code).await;
    assert_eq!(res.location(), "/account");
    logout(&b).await;
    half_login(&b, "alice").await;
    let res = send_code(&b, &code).await;
    assert_eq!(
        res.status,
        StatusCode::UNAUTHORIZED,
        "replayed code refused"
    );
    // Still within the same 30 s, from another browser and address: refused too.
    let other = t.browser_from("198.51.100.60");
    half_login(&other, "alice").await;
    assert_eq!(
        send_code(&other, &code).await.status,
        StatusCode::UNAUTHORIZED
    );
    let events = t.audit_events("second_factor").await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.outcome == "failure"));
    assert!(events
        .iter()
        .all(|e| !e.detail.clone().unwrap_or_default().contains(&code)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replay_is_accepted_once() {
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    for round in 0..3 {
        let b1 = t.browser_from("198.51.100.71");
        let b2 = t.browser_from("198.51.100.72");
        half_login(&b1, "alice").await;
        half_login(&b2, "alice").await;
        let (c1, c2) = (b1.csrf().await, b2.csrf().await);
        let code = next_code(&t, &secret);
        let f1 = [("csrf_token", c1.as_str()), ("code", code.as_str())];
        let f2 = [("csrf_token", c2.as_str()), ("code", code.as_str())];
        let (r1, r2) = tokio::join!(
            b1.post_raw("/login/2fa", &f1),
            b2.post_raw("/login/2fa", &f2)
        );
        let statuses = [r1.status, r2.status];
        let wins = [&r1, &r2]
            .iter()
            .filter(|r| r.status == StatusCode::SEE_OTHER && r.location() == "/account")
            .count();
        assert_eq!(wins, 1, "round {round}: {statuses:?}");
        assert!(
            statuses.contains(&StatusCode::UNAUTHORIZED),
            "round {round}: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn drift_minus_and_plus_one_step_accepted_two_steps_rejected() {
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    // The clock stands still in the middle of a step, well past the step that confirmed
    // enrolment (which, like every used step, would be refused).
    t.clock.advance(30 - (t.clock.now() % 30) + 15 + 60);
    let b = t.browser();
    half_login(&b, "alice").await;
    let near = [
        code_at(&t, &secret, -1),
        code_now(&t, &secret),
        code_at(&t, &secret, 1),
    ];
    for offset in [-2, 2] {
        let code = code_at(&t, &secret, offset);
        if near.contains(&code) {
            continue; // one chance in a few hundred thousand: not this step's business
        }
        let res = send_code(&b, &code).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "step {offset:+}");
    }
    let res = send_code(&b, &code_at(&t, &secret, -1)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "step -1: {}", res.body);
    assert_eq!(res.location(), "/account");
    logout(&b).await;

    // +1 is accepted too; a `next` survives the second step.
    let res = b
        .post(
            "/login",
            &[
                ("login", "alice"),
                ("password", PW),
                ("next", "/account/security"),
            ],
        )
        .await;
    assert_eq!(res.location(), "/login/2fa?next=/account/security");
    let page = b.get(res.location()).await;
    assert!(
        page.body
            .contains("name=\"next\" value=\"/account/security\""),
        "{}",
        page.body
    );
    let res = b
        .post(
            "/login/2fa",
            &[
                ("code", &code_at(&t, &secret, 1)),
                ("next", "/account/security"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "step +1: {}", res.body);
    assert_eq!(res.location(), "/account/security");
    let id = user_id(&t, "alice").await;
    let factor = t.store.find_totp(id).await.unwrap().unwrap();
    assert_eq!(
        factor.last_used_step,
        Some(i64::try_from(totp::time_step(t.clock.now(), 30)).unwrap() + 1)
    );
}

#[tokio::test]
async fn recovery_code_works_once_and_regeneration_invalidates_old() {
    let t = TestApp::new().await;
    let (_, secret, codes) = user_with_totp(&t, "alice", &["internal"]).await;
    let id = user_id(&t, "alice").await;
    let b = t.browser_from("198.51.100.80");
    half_login(&b, "alice").await;
    let res = send_code(&b, &codes[0]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account");
    assert_eq!(t.store.count_recovery_codes(id).await.unwrap(), 9);
    let account = b.get("/account").await;
    assert!(
        account.body.contains("on, 9 recovery codes left"),
        "{}",
        account.body
    );
    let page = b.get("/account/security").await;
    assert!(page
        .body
        .contains("Recovery codes left: <strong>9</strong>"));
    let used = mails(&t, "alice", "A recovery code was used").await;
    assert_eq!(used.len(), 1);
    assert!(
        used[0].text.contains("You have 9 recovery codes left"),
        "{}",
        used[0].text
    );
    assert!(used[0].text.contains("198.51.100.80"));
    assert!(!used[0].text.contains(&codes[0]));

    // The same code again fails.
    logout(&b).await;
    half_login(&b, "alice").await;
    let res = send_code(&b, &codes[0]).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    // Typed in capitals without dashes, another code works.
    let typed = codes[1].replace('-', "").to_uppercase();
    let res = send_code(&b, &typed).await;
    assert_eq!(res.location(), "/account", "{}", res.body);
    assert_eq!(t.store.count_recovery_codes(id).await.unwrap(), 8);

    // New codes need the password.
    let res = b
        .post(
            "/account/security/recovery-codes",
            &[("password", "not-my-password-x")],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("Your password is not correct."));
    assert_eq!(t.store.count_recovery_codes(id).await.unwrap(), 8);
    let res = b
        .post("/account/security/recovery-codes", &[("password", PW)])
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let fresh = recovery_codes(&res.body);
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !codes.contains(c)));
    assert_eq!(t.store.count_recovery_codes(id).await.unwrap(), 10);

    // The old unused codes are dead, the new ones work.
    logout(&b).await;
    half_login(&b, "alice").await;
    assert_eq!(
        send_code(&b, &codes[2]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send_code(&b, &fresh[0]).await.location(), "/account");
    assert_eq!(t.store.count_recovery_codes(id).await.unwrap(), 9);
    // TOTP still works next to them.
    logout(&b).await;
    half_login(&b, "alice").await;
    assert_eq!(
        send_code(&b, &next_code(&t, &secret)).await.location(),
        "/account"
    );
    assert_eq!(
        mails(&t, "alice", "A recovery code was used").await.len(),
        3
    );
}

#[tokio::test]
async fn code_guesses_spread_over_accounts_are_limited_per_client_address() {
    let t = TestApp::new().await;
    let mut users = Vec::new();
    for n in 0..8 {
        let login = format!("user{n}");
        let (_, secret, _) = user_with_totp(&t, &login, &["internal"]).await;
        users.push((login, secret));
    }
    t.clock.advance(30); // a step none of them has used
    let attacker = t.browser_from("198.51.100.77");
    // Three wrong codes for each of seven accounts: every account stays within its own free
    // attempts, but the address has failed 21 times, one more than its free 20.
    for (login, secret) in &users[..7] {
        half_login(&attacker, login).await;
        let near: Vec<String> = (-1..=1).map(|o| code_at(&t, secret, o)).collect();
        let near: Vec<&str> = near.iter().map(String::as_str).collect();
        let wrong = wrong_code(&near);
        for n in 1..=3 {
            let res = send_code(&attacker, &wrong).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{login}, attempt {n}");
        }
        logout(&attacker).await;
    }
    let (login, secret) = &users[7];
    half_login(&attacker, login).await;
    let res = send_code(&attacker, &code_now(&t, secret)).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
    assert_eq!(res.headers[header::RETRY_AFTER], "1");

    // The account itself is not held back: its owner, elsewhere, gets in.
    let owner = t.browser_from("203.0.113.92");
    half_login(&owner, login).await;
    assert_eq!(
        send_code(&owner, &code_now(&t, secret)).await.location(),
        "/account"
    );
    // Once the delay has passed, the address may try again.
    t.clock.advance(1);
    let (login, secret) = &users[0];
    logout(&attacker).await;
    half_login(&attacker, login).await;
    assert_eq!(
        send_code(&attacker, &code_now(&t, secret)).await.location(),
        "/account"
    );
}

#[tokio::test]
async fn an_address_locked_out_of_code_entry_is_audited_and_counted() {
    let t = TestApp::with_config("[lockout.ip]\nfree_attempts = 3\nlock_after = 5\n").await;
    let mut users = Vec::new();
    for n in 0..2 {
        let login = format!("user{n}");
        let (_, secret, _) = user_with_totp(&t, &login, &["internal"]).await;
        users.push((login, secret));
    }
    t.clock.advance(30);
    let attacker = t.browser_from("198.51.100.78");
    // Three wrong codes on the first account, two on the second: no account reaches its own
    // lock, the address reaches its lock at the fifth (the delays in between waited out).
    for (login, secret, tries) in [(&users[0].0, &users[0].1, 3), (&users[1].0, &users[1].1, 2)] {
        half_login(&attacker, login).await;
        let near: Vec<String> = (-1..=1).map(|o| code_at(&t, secret, o)).collect();
        let near: Vec<&str> = near.iter().map(String::as_str).collect();
        let wrong = wrong_code(&near);
        for n in 1..=tries {
            let res = send_code(&attacker, &wrong).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{login}, attempt {n}");
            t.clock.advance(30);
        }
        logout(&attacker).await;
    }
    let locked = t.audit_events("ip_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0].detail.as_deref(), Some("198.51.100.78"));
    let metrics = t.browser_from("127.0.0.1").get("/metrics").await;
    assert!(
        metrics
            .body
            .contains("bulwark_lockouts_total{kind=\"ip\"} 1"),
        "{}",
        metrics.body
    );
    // Locked: even the right code is held back.
    half_login(&attacker, &users[1].0).await;
    let res = send_code(&attacker, &code_now(&t, &users[1].1)).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
}

#[tokio::test]
async fn code_attempts_are_limited_with_retry_after() {
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    let b = t.browser_from("198.51.100.90");

    /// Five wrong codes (free 3, then a 1 s delay, then the lock at 5).
    async fn lock(t: &TestApp, b: &Browser, secret: &TotpSecret) {
        half_login(b, "alice").await;
        let near: Vec<String> = (-1..=1).map(|o| code_at(t, secret, o)).collect();
        let near: Vec<&str> = near.iter().map(String::as_str).collect();
        let wrong = wrong_code(&near);
        for n in 1..=4 {
            let res = send_code(b, &wrong).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "attempt {n}");
        }
        let res = send_code(b, &wrong).await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "delay after 4");
        assert_eq!(res.headers[header::RETRY_AFTER], "1");
        t.clock.advance(1);
        let res = send_code(b, &wrong).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "attempt 5");
    }

    let id = user_id(&t, "alice").await;
    let used_step = t.store.find_totp(id).await.unwrap().unwrap().last_used_step;
    lock(&t, &b, &secret).await;
    // Locked for an hour: even the right code (next step, inside the drift window) is
    // refused, by every browser.
    let right = code_at(&t, &secret, 1);
    for n in 6..=11 {
        let res = send_code(&b, &right).await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "attempt {n}");
        assert_eq!(res.headers[header::RETRY_AFTER], "3600");
        assert!(res.body.contains("locked"), "{}", res.body);
    }
    let other = t.browser_from("203.0.113.91");
    half_login(&other, "alice").await;
    let res = send_code(&other, &right).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        t.store.find_totp(id).await.unwrap().unwrap().last_used_step,
        used_step,
        "a refused code does not use up its step"
    );

    // After the lock, the right code works (a new login: half sessions last 10 minutes).
    t.clock.advance(3600);
    half_login(&b, "alice").await;
    let res = send_code(&b, &next_code(&t, &secret)).await;
    assert_eq!(res.location(), "/account", "{}", res.body);
    logout(&b).await;

    // An administrator's unlock lifts it at once.
    lock(&t, &b, &secret).await;
    let res = send_code(&b, &next_code(&t, &secret)).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    t.app
        .unlock_user("alice", "test", &ClientInfo::cli())
        .await
        .unwrap();
    let res = send_code(&b, &code_now(&t, &secret)).await;
    assert_eq!(res.location(), "/account", "{}", res.body);
}

// ---------------------------------------------------------------------------------------
// Enforcement, e-mailed codes, device accounts

#[tokio::test]
async fn enforcement_walk_with_grace() {
    let t = TestApp::with_config(EMPLOYEES).await;
    t.add_user("carol", PW, &["internal"]).await;
    t.add_user("paul", PW, &["portal"]).await;
    let b = t.browser();

    // First login: grace starts, the user is asked to enrol and may postpone.
    let res = b.login("carol", PW).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), GRACE_PROMPT);
    let deadline = format_time(T0 + 7 * DAY);
    let page = b.get(res.location()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains(&format!("Set it up before {deadline}")),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("<a href=\"/account\">Remind me later</a>"));
    let account = b.get("/account").await;
    assert_eq!(account.status, StatusCode::OK);
    assert!(account.body.contains("off — required by your organisation"));
    let carol = t.app.user_by_login("carol").await.unwrap();
    assert_eq!(carol.grace_started_at, Some(T0));
    // Without the prompt the page has no "later" link.
    assert!(!b
        .get("/account/security")
        .await
        .body
        .contains("Remind me later"));

    // Days later: asked again, same deadline (the grace does not restart).
    t.clock.advance(3 * DAY);
    logout(&b).await;
    assert_eq!(b.login("carol", PW).await.location(), GRACE_PROMPT);
    assert!(b
        .get(GRACE_PROMPT)
        .await
        .body
        .contains(&format!("Set it up before {deadline}")));

    // Grace over: only the enrolment page is reachable.
    t.clock.advance(4 * DAY);
    logout(&b).await;
    let res = b.login("carol", PW).await;
    assert_eq!(res.location(), "/account/security");
    for path in ["/account", "/account?done=session"] {
        let res = b.get(path).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.location(), "/account/security");
    }
    let res = b.post("/account/sessions/revoke-all", &[]).await;
    assert_eq!(res.location(), "/account/security");
    let page = b.get(GRACE_PROMPT).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("Set it up now to continue."),
        "{}",
        page.body
    );
    assert!(!page.body.contains("Remind me later"));
    assert!(!page.body.contains("Back to my account"));

    // Enrolling restores normal access; later logins ask for the code.
    let (secret, _) = enrol(&t, &b).await;
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    logout(&b).await;
    half_login(&b, "carol").await;
    assert_eq!(
        send_code(&b, &next_code(&t, &secret)).await.location(),
        "/account"
    );

    // Portal users are not under the "employees" preset...
    let p = t.browser();
    let res = p.login("paul", PW).await;
    assert_eq!(res.location(), "/account");
    assert_eq!(
        t.app.user_by_login("paul").await.unwrap().grace_started_at,
        None
    );

    // ...but are under "all".
    let t =
        TestApp::with_config("[two_factor]\nenforcement = \"all\"\nemail_codes = false\n").await;
    t.add_user("paul", PW, &["portal"]).await;
    let p = t.browser();
    assert_eq!(p.login("paul", PW).await.location(), GRACE_PROMPT);
}

#[tokio::test]
async fn overdue_enrolment_leaves_only_the_enrolment_pages() {
    let t = TestApp::with_config(EMPLOYEES).await;
    t.add_user("carol", PW, &["internal"]).await;
    let b = t.browser();
    assert_eq!(b.login("carol", PW).await.location(), GRACE_PROMPT);
    t.clock.advance(7 * DAY);
    logout(&b).await;
    assert_eq!(b.login("carol", PW).await.location(), "/account/security");
    assert_eq!(b.get("/account").await.location(), "/account/security");
    let res = b.get("/password/change").await;
    assert_eq!(
        res.status,
        StatusCode::SEE_OTHER,
        "the change page is reachable"
    );
    assert_eq!(res.location(), "/account/security");
}

#[tokio::test]
async fn email_code_second_step() {
    let t = TestApp::with_config("[two_factor]\nenforcement = \"employees\"\n").await;
    t.add_user("dave", PW, &["internal"]).await;
    let b = t.browser();

    // No authenticator yet: the second step offers a code by mail.
    half_login(&b, "dave").await;
    let page = b.get("/login/2fa").await;
    assert!(page.body.contains("E-mail me a code"), "{}", page.body);
    assert_eq!(b.get("/account").await.location(), "/login/2fa");
    let res = b.post("/login/2fa/email", &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/login/2fa?sent=1&next=");
    assert!(b
        .get(res.location())
        .await
        .body
        .contains("We sent a code to your e-mail address."));
    let code_a = last_login_code(&t, "dave").await;
    let res = send_code(&b, &wrong_code(&[&code_a])).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let half = b.cookie("bulwark_session").unwrap();
    let res = send_code(&b, &code_a).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), GRACE_PROMPT);
    assert_ne!(b.cookie("bulwark_session").unwrap(), half);
    assert_eq!(b.get("/account").await.status, StatusCode::OK);

    // It works once.
    logout(&b).await;
    half_login(&b, "dave").await;
    assert_eq!(
        send_code(&b, &code_a).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A code works for 10 minutes: at 9 it does...
    b.post("/login/2fa/email", &[]).await;
    let code_b = last_login_code(&t, "dave").await;
    t.clock.advance(9 * 60);
    assert_eq!(send_code(&b, &code_b).await.location(), GRACE_PROMPT);
    logout(&b).await;
    // ...after 10 it does not (the half session has expired too: log in again).
    half_login(&b, "dave").await;
    b.post("/login/2fa/email", &[]).await;
    let code_c = last_login_code(&t, "dave").await;
    t.clock.advance(10 * 60 + 1);
    assert_eq!(b.get("/login/2fa").await.location(), "/login");
    half_login(&b, "dave").await;
    assert_eq!(
        send_code(&b, &code_c).await.status,
        StatusCode::UNAUTHORIZED
    );

    // At most five mails an hour (three were sent in the last hour).
    for n in 4..=5 {
        let res = b.post("/login/2fa/email", &[]).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "mail {n}");
    }
    assert_eq!(mails(&t, "dave", "Your login code").await.len(), 5);
    let res = b.post("/login/2fa/email", &[]).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers[header::RETRY_AFTER], "3600");
    assert!(res.body.contains("too many codes"), "{}", res.body);
    assert_eq!(mails(&t, "dave", "Your login code").await.len(), 5);
    let last = last_login_code(&t, "dave").await;
    assert_eq!(send_code(&b, &last).await.location(), GRACE_PROMPT);

    // An hour later codes flow again; with an authenticator there are no mailed codes.
    t.clock.advance(3601);
    logout(&b).await;
    assert_eq!(
        login_with_email_code(&t, &b, "dave").await.location(),
        GRACE_PROMPT
    );
    let (secret, _) = enrol(&t, &b).await;
    logout(&b).await;
    half_login(&b, "dave").await;
    let page = b.get("/login/2fa").await;
    assert!(!page.body.contains("E-mail me a code"), "{}", page.body);
    let res = b.post("/login/2fa/email", &[]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(mails(&t, "dave", "Your login code").await.len(), 6);
    assert_eq!(
        send_code(&b, &next_code(&t, &secret)).await.location(),
        "/account"
    );
}

#[tokio::test]
async fn device_account_is_exempt_but_bound_to_networks() {
    let t = TestApp::with_config("[two_factor]\nenforcement = \"all\"\n").await;
    t.add_user("kiosk1", PW, &["internal"]).await;
    let u = t
        .app
        .set_device_account(
            "kiosk1",
            &["10.1.0.0/16".into()],
            "test",
            &ClientInfo::cli(),
        )
        .await
        .unwrap();
    assert!(u.device_account);
    assert_eq!(u.allowed_networks, vec!["10.1.0.0/16".to_string()]);

    let inside = t.browser_from("10.1.2.3");
    let res = inside.login("kiosk1", PW).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account");
    assert_eq!(inside.get("/account").await.status, StatusCode::OK);
    assert_eq!(
        t.app
            .user_by_login("kiosk1")
            .await
            .unwrap()
            .grace_started_at,
        None
    );

    let outside = t.browser_from("198.51.100.1");
    let res = outside.login("kiosk1", PW).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.body.contains("Incorrect login or password."));
    assert!(res.set_cookie("bulwark_session").is_none());
    // It counts as a failed login, and the right password does not wipe the count.
    let failures = || async {
        t.store
            .find_throttle("login:kiosk1")
            .await
            .unwrap()
            .map(|c| c.failures)
    };
    assert_eq!(failures().await, Some(1));
    outside.login("kiosk1", PW).await;
    assert_eq!(failures().await, Some(2));

    // Anyone else on that network is still asked for a second factor.
    t.add_user("olga", PW, &["internal"]).await;
    half_login(&t.browser_from("10.1.2.4"), "olga").await;

    // No longer a device account: enforcement applies, from anywhere.
    t.app
        .set_device_account("kiosk1", &[], "test", &ClientInfo::cli())
        .await
        .unwrap();
    assert_eq!(
        inside.get("/account").await.status,
        StatusCode::SEE_OTHER,
        "sessions ended"
    );
    half_login(&outside, "kiosk1").await;
    half_login(&t.browser_from("10.1.2.3"), "kiosk1").await;
}

// ---------------------------------------------------------------------------------------
// Trusted devices

/// Logs in with a TOTP code and "trust this browser"; returns the trusted-device cookie.
async fn trust_browser(t: &TestApp, b: &Browser, login: &str, secret: &TotpSecret) -> String {
    half_login(b, login).await;
    let res = b
        .post(
            "/login/2fa",
            &[("code", &next_code(t, secret)), ("remember", "1")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account");
    device_cookie_of(&res)
}

/// Logs in with the password only; true when no second step was asked.
async fn skips_second_step(b: &Browser, login: &str) -> bool {
    let res = b.login(login, PW).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    match res.location() {
        "/account" => true,
        "/login/2fa" => false,
        other => panic!("unexpected redirect to {other}"),
    }
}

#[tokio::test]
async fn trusted_device_skips_second_factor_and_dies_on_password_change_and_revoke() {
    // The password-change part is `trusted_device_dies_on_password_change`.
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    let (bob_b, bob_secret, _) = user_with_totp(&t, "bob", &["internal"]).await;
    let id = user_id(&t, "alice").await;
    let b = t.browser();

    // Without "remember", no cookie.
    half_login(&b, "alice").await;
    let res = send_code(&b, &next_code(&t, &secret)).await;
    assert!(res.set_cookie("bulwark_device").is_none());
    logout(&b).await;

    // With it: an HttpOnly, SameSite cookie for 30 days.
    half_login(&b, "alice").await;
    let res = b
        .post(
            "/login/2fa",
            &[("code", &next_code(&t, &secret)), ("remember", "1")],
        )
        .await;
    assert_eq!(res.location(), "/account");
    let line = res.set_cookie("bulwark_device").expect("device cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Max-Age=2592000", "Path=/"] {
        assert!(line.contains(attr), "{line}");
    }
    let cookie = device_cookie_of(&res);
    let devices = t.store.list_user_trusted_devices(id).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].name, "Chrome on Linux");
    assert_eq!(devices[0].expires_at, t.clock.now() + 30 * DAY);
    let page = b.get("/account/security").await;
    assert!(
        page.body.contains("<td>Chrome on Linux</td>"),
        "{}",
        page.body
    );

    // The next login from this browser skips the second step.
    logout(&b).await;
    assert!(skips_second_step(&b, "alice").await);
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    logout(&b).await;

    // Not for another user of the same browser.
    assert!(!skips_second_step(&b, "bob").await);
    logout(&b).await;

    // Not with an altered value.
    let altered = t.browser();
    let mut value = cookie.clone().into_bytes();
    value[10] = if value[10] == b'A' { b'B' } else { b'A' };
    altered.set_cookie("bulwark_device", &String::from_utf8(value).unwrap());
    assert!(!skips_second_step(&altered, "alice").await);

    // Not from another browser holding the copied cookie...
    let firefox = t.browser_with_user_agent("192.0.2.10", FIREFOX);
    firefox.set_cookie("bulwark_device", &cookie);
    assert!(!skips_second_step(&firefox, "alice").await);
    // ...but the same browser on another network is still this device.
    let travelling = t.browser_from("198.51.100.20");
    travelling.set_cookie("bulwark_device", &cookie);
    assert!(skips_second_step(&travelling, "alice").await);
    let devices = t.store.list_user_trusted_devices(id).await.unwrap();
    assert_eq!(devices[0].last_ip.as_deref(), Some("198.51.100.20"));

    // Another user cannot forget it; its owner can, one by one.
    let device_id = devices[0].id.to_string();
    let res = bob_b
        .post(
            "/account/security/devices/revoke",
            &[("device_id", &device_id)],
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.store.list_user_trusted_devices(id).await.unwrap().len(),
        1
    );
    let page = travelling.get("/account/security").await;
    assert!(page
        .body
        .contains(&format!("name=\"device_id\" value=\"{device_id}\"")));
    let res = travelling
        .post(
            "/account/security/devices/revoke",
            &[("device_id", &device_id)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/account/security?done=device");
    assert!(t
        .store
        .list_user_trusted_devices(id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        mails(&t, "alice", "A trusted device was removed")
            .await
            .len(),
        1
    );
    assert!(!skips_second_step(&b, "alice").await);
    logout(&b).await;

    // Forget all.
    trust_browser(&t, &b, "alice", &secret).await;
    let phone = t.browser_from("198.51.100.21");
    trust_browser(&t, &phone, "alice", &secret).await;
    assert_eq!(
        t.store.list_user_trusted_devices(id).await.unwrap().len(),
        2
    );
    let res = b.post("/account/security/devices/revoke-all", &[]).await;
    assert_eq!(res.location(), "/account/security?done=devices");
    assert!(res
        .set_cookie("bulwark_device")
        .unwrap()
        .contains("Max-Age=0"));
    assert!(t
        .store
        .list_user_trusted_devices(id)
        .await
        .unwrap()
        .is_empty());
    let all = mails(&t, "alice", "Your trusted devices were removed").await;
    assert_eq!(all.len(), 1);
    assert!(
        all[0].text.contains("All 2 trusted devices"),
        "{}",
        all[0].text
    );
    logout(&phone).await;
    assert!(!skips_second_step(&phone, "alice").await);

    // Expiry: still trusted just before 30 days, not at 30 days.
    logout(&b).await;
    trust_browser(&t, &b, "alice", &secret).await;
    logout(&b).await;
    t.clock.advance(30 * DAY - 60);
    assert!(skips_second_step(&b, "alice").await);
    logout(&b).await;
    t.clock.advance(60);
    assert!(!skips_second_step(&b, "alice").await);
    logout(&b).await;

    // Bob's own trusted browser is not affected by any of this.
    trust_browser(&t, &bob_b, "bob", &bob_secret).await;
    logout(&bob_b).await;
    assert!(skips_second_step(&bob_b, "bob").await);
}

#[tokio::test]
async fn trusted_device_dies_on_password_change() {
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    let id = user_id(&t, "alice").await;
    let b = t.browser();
    trust_browser(&t, &b, "alice", &secret).await;
    assert_eq!(
        t.store.list_user_trusted_devices(id).await.unwrap().len(),
        1
    );
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW),
                ("new_password", PW2),
                ("confirm_password", PW2),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account?done=password");
    assert!(
        t.store
            .list_user_trusted_devices(id)
            .await
            .unwrap()
            .is_empty(),
        "DESIGN item 7: all trusted devices are revoked on password change"
    );
    logout(&b).await;
    let res = b.login("alice", PW2).await;
    assert_eq!(res.location(), "/login/2fa");
}

// ---------------------------------------------------------------------------------------
// Turning off, admin reset

#[tokio::test]
async fn disable_two_factor_needs_password_and_clears_everything() {
    let t = TestApp::with_config(EMPLOYEES).await;
    t.add_user("erin", PW, &["internal"]).await;
    let id = user_id(&t, "erin").await;
    let b = t.browser();
    assert_eq!(b.login("erin", PW).await.location(), GRACE_PROMPT);
    let (secret, _) = enrol(&t, &b).await;
    let phone = t.browser_from("198.51.100.30");
    trust_browser(&t, &phone, "erin", &secret).await;
    assert_eq!(
        t.store.list_user_trusted_devices(id).await.unwrap().len(),
        1
    );
    let page = b.get("/account/security").await;
    assert!(page.body.contains("Turn off two-factor authentication"));

    // The password is required.
    let res = b
        .post(
            "/account/security/disable",
            &[("password", "not-my-password-x")],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("Your password is not correct."));
    assert!(t.store.find_totp(id).await.unwrap().is_some());
    assert_eq!(phone.get("/account").await.status, StatusCode::OK);

    // Off: factor, recovery codes, trusted devices and other sessions are gone.
    let before = b.cookie("bulwark_session").unwrap();
    let res = phone
        .post("/account/security/disable", &[("password", PW)])
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account/security?done=disabled");
    assert!(res
        .set_cookie("bulwark_device")
        .unwrap()
        .contains("Max-Age=0"));
    assert!(phone.cookie("bulwark_device").is_none());
    assert!(t.store.find_totp(id).await.unwrap().is_none());
    assert_eq!(t.store.count_recovery_codes(id).await.unwrap(), 0);
    assert!(t
        .store
        .list_user_trusted_devices(id)
        .await
        .unwrap()
        .is_empty());
    assert!(b.get("/account").await.location().starts_with("/login"));
    assert_ne!(phone.cookie("bulwark_session").unwrap(), before);
    let page = phone.get(res.location()).await;
    assert!(
        page.body.contains("Two-factor authentication is off."),
        "{}",
        page.body
    );
    assert!(page.body.contains("your organisation requires it"));
    let off = mails(&t, "erin", "Two-factor authentication is off").await;
    assert_eq!(off.len(), 1);
    assert!(off[0].text.contains("198.51.100.30"));

    // Under the policy, the next login asks to enrol again (still inside the grace period)...
    logout(&b).await;
    let res = b.login("erin", PW).await;
    assert_eq!(res.location(), GRACE_PROMPT);
    // ...and once it is over, nothing but enrolment is reachable.
    t.clock.advance(7 * DAY);
    logout(&b).await;
    assert_eq!(b.login("erin", PW).await.location(), "/account/security");
    assert_eq!(b.get("/account").await.location(), "/account/security");
}

#[tokio::test]
async fn admin_reset_clears_factor_and_mails_user() {
    let t = TestApp::with_config("[two_factor]\nenforcement = \"employees\"\n").await;
    // A portal user (not under the policy) and an employee (under it, codes by mail).
    t.add_user("gina", PW, &["portal"]).await;
    t.add_user("frank", PW, &["internal"]).await;
    let gb = t.browser();
    assert_eq!(gb.login("gina", PW).await.location(), "/account");
    let (gina_secret, _) = enrol(&t, &gb).await;
    let trusted = t.browser_from("198.51.100.31");
    trust_browser(&t, &trusted, "gina", &gina_secret).await;
    let fb = t.browser();
    assert_eq!(
        login_with_email_code(&t, &fb, "frank").await.location(),
        GRACE_PROMPT
    );
    let (frank_secret, _) = enrol(&t, &fb).await;
    let gina = user_id(&t, "gina").await;

    t.app
        .admin_reset_two_factor("gina", "test", &Default::default())
        .await
        .unwrap();
    assert!(t.store.find_totp(gina).await.unwrap().is_none());
    assert_eq!(t.store.count_recovery_codes(gina).await.unwrap(), 0);
    assert!(t
        .store
        .list_user_trusted_devices(gina)
        .await
        .unwrap()
        .is_empty());
    assert!(t.store.list_user_sessions(gina).await.unwrap().is_empty());
    assert!(gb.get("/account").await.location().starts_with("/login"));
    assert!(trusted
        .get("/account")
        .await
        .location()
        .starts_with("/login"));
    let reset = mails(&t, "gina", "Your two-factor authentication was reset").await;
    assert_eq!(reset.len(), 1);
    assert!(reset[0].text.contains("gina"));
    let audit = t.audit_events("totp_reset_by_admin").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].subject.as_deref(), Some("gina"));
    // No second step any more.
    assert_eq!(gb.login("gina", PW).await.location(), "/account");
    // The frank account is untouched.
    logout(&fb).await;
    half_login(&fb, "frank").await;
    assert_eq!(
        send_code(&fb, &next_code(&t, &frank_secret))
            .await
            .location(),
        "/account"
    );

    // Under the policy, the reset user gets the e-mailed code step instead of TOTP.
    t.app
        .admin_reset_two_factor("frank", "test", &Default::default())
        .await
        .unwrap();
    assert!(fb.get("/account").await.location().starts_with("/login"));
    half_login(&fb, "frank").await;
    let page = fb.get("/login/2fa").await;
    assert!(page.body.contains("E-mail me a code"), "{}", page.body);
    assert_eq!(
        send_code(&fb, &next_code(&t, &frank_secret)).await.status,
        StatusCode::UNAUTHORIZED,
        "the old authenticator is gone"
    );
    logout(&fb).await;
    assert_eq!(
        login_with_email_code(&t, &fb, "frank").await.location(),
        GRACE_PROMPT
    );
    assert_eq!(
        mails(&t, "frank", "Your two-factor authentication was reset")
            .await
            .len(),
        1
    );
}

// ---------------------------------------------------------------------------------------
// Secrets at rest, key rotation

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts no file in the data directory holds the secret (raw or base32) or a recovery code.
fn assert_not_at_rest(t: &TestApp, e: &Enrolment, codes: &[String]) {
    let files = files_under(&t.app.config.data_dir);
    let names: Vec<_> = files.iter().map(|(p, _)| p.clone()).collect();
    assert!(names.iter().any(|p| p.ends_with("bulwark.db")), "{names:?}");
    let plain = e.grouped.replace(' ', "");
    let mut needles: Vec<Vec<u8>> = vec![
        e.secret.as_bytes().to_vec(),
        plain.clone().into_bytes(),
        plain.to_lowercase().into_bytes(),
        e.grouped.clone().into_bytes(),
    ];
    for c in codes {
        needles.push(c.clone().into_bytes());
        needles.push(c.replace('-', "").into_bytes());
    }
    for (path, bytes) in &files {
        for n in &needles {
            assert!(
                !contains(bytes, n),
                "{} holds a secret in clear",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn encrypted_secret_is_not_in_the_database_file_and_key_rotation_keeps_logins_working() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let id = user_id(&t, "alice").await;
    let b = t.browser();
    b.login("alice", PW).await;
    let e = begin_enrolment(&b).await;
    let res = b
        .post(
            "/account/security/confirm",
            &[("code", &code_now(&t, &e.secret))],
        )
        .await;
    let codes = recovery_codes(&res.body);
    assert_eq!(codes.len(), 10);
    assert_not_at_rest(&t, &e, &codes);
    let before = t.store.find_totp(id).await.unwrap().unwrap();
    assert_eq!(before.key_id, t.app.key_ring().current_id());
    let old_ring = t.app.key_ring();

    // Rotation: a new key first in the key file, the secret re-sealed under it.
    assert_eq!(t.app.rotate_keys().await.unwrap(), 1);
    let after = t.store.find_totp(id).await.unwrap().unwrap();
    assert_ne!(after.key_id, before.key_id);
    assert_ne!(after.secret_sealed, before.secret_sealed);
    assert_eq!(after.key_id, t.app.key_ring().current_id());
    let file = std::fs::read_to_string(&t.app.config.secret_key_file).unwrap();
    let ring = bulwark_server::keys::KeyRing::parse(&file).unwrap();
    assert_eq!(
        ring.ids(),
        vec![after.key_id.clone(), before.key_id.clone()]
    );
    assert_eq!(
        t.app.reseal_secrets().await.unwrap(),
        0,
        "nothing left to re-seal"
    );
    assert_not_at_rest(&t, &e, &codes);

    // TOTP and recovery codes keep working.
    let c = t.browser();
    half_login(&c, "alice").await;
    assert_eq!(
        send_code(&c, &next_code(&t, &e.secret)).await.location(),
        "/account"
    );
    logout(&c).await;
    half_login(&c, "alice").await;
    assert_eq!(send_code(&c, &codes[0]).await.location(), "/account");

    // A node still holding the old ring re-reads the key file when it meets the new key id.
    let node_b = bulwark_server::app::App::new(
        (*t.app.config).clone(),
        t.store.clone(),
        t.clock.clone(),
        old_ring,
    )
    .unwrap();
    let client = ClientInfo {
        ip: Some("198.51.100.33".parse().unwrap()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0".into()),
    };
    let ok = node_b
        .login("alice", PW.into(), &client, None)
        .await
        .unwrap();
    assert_eq!(ok.stage, SessionStage::SecondFactor);
    let current = node_b
        .authenticate(ok.token.expose())
        .await
        .unwrap()
        .unwrap();
    let done = node_b
        .complete_second_factor(&current, &next_code(&t, &e.secret), false, &client)
        .await
        .unwrap();
    assert!(done.trusted_device.is_none());
    assert_eq!(node_b.key_ring().current_id(), after.key_id);
}

// ---------------------------------------------------------------------------------------
// Notifications

#[tokio::test]
async fn new_device_login_mails_the_user() {
    let t = TestApp::new().await;
    t.add_user("henry", PW, &["internal"]).await;
    let subject = "New login to your account";
    let office = t.browser();
    // The very first login has nothing to compare with; a repeat is known.
    assert_eq!(office.login("henry", PW).await.location(), "/account");
    logout(&office).await;
    assert_eq!(office.login("henry", PW).await.location(), "/account");
    assert!(mails(&t, "henry", subject).await.is_empty());

    // A new address: mailed once; the repeat is not.
    let cafe = t.browser_from("198.51.100.44");
    cafe.login("henry", PW).await;
    let sent = mails(&t, "henry", subject).await;
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].text.contains("IP: 198.51.100.44"),
        "{}",
        sent[0].text
    );
    assert!(sent[0].text.contains("Browser: Chrome on Linux"));
    logout(&cafe).await;
    cafe.login("henry", PW).await;
    assert_eq!(mails(&t, "henry", subject).await.len(), 1);

    // A new browser at a known address: mailed.
    let firefox = t.browser_with_user_agent("192.0.2.10", FIREFOX);
    firefox.login("henry", PW).await;
    let sent = mails(&t, "henry", subject).await;
    assert_eq!(sent.len(), 2);
    assert!(
        sent[1].text.contains("Browser: Firefox on Windows"),
        "{}",
        sent[1].text
    );

    // A wrong password from a new address is not a login.
    let stranger = t.browser_from("203.0.113.45");
    assert_eq!(
        stranger.login("henry", "not-my-password-x").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(mails(&t, "henry", subject).await.len(), 2);

    // With 2FA, the mail comes when the login completes.
    let (secret, _) = enrol(&t, &office).await;
    let roaming = t.browser_from("203.0.113.46");
    half_login(&roaming, "henry").await;
    assert_eq!(mails(&t, "henry", subject).await.len(), 2);
    send_code(&roaming, &next_code(&t, &secret)).await;
    let sent = mails(&t, "henry", subject).await;
    assert_eq!(sent.len(), 3);
    assert!(sent[2].text.contains("IP: 203.0.113.46"));
}

#[tokio::test]
async fn two_login_codes_in_one_second_are_both_delivered() {
    let t = TestApp::with_config("[two_factor]\nenforcement = \"employees\"\n").await;
    t.add_user("dave", PW, &["internal"]).await;
    let b = t.browser();
    half_login(&b, "dave").await;
    let delivered = |all: Vec<Mail>| {
        all.into_iter()
            .filter(|m| m.subject == "Your login code")
            .count()
    };
    assert_eq!(
        b.post("/login/2fa/email", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(delivered(t.mails().await), 1);
    // The delivery worker has emptied the queue; the user asks again in the same second.
    assert_eq!(
        b.post("/login/2fa/email", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(delivered(t.mails().await), 2, "both codes reach the outbox");
}

#[tokio::test]
async fn disabling_an_account_forgets_its_trusted_devices() {
    let t = TestApp::new().await;
    let (_, secret, _) = user_with_totp(&t, "alice", &["internal"]).await;
    let id = user_id(&t, "alice").await;
    let b = t.browser();
    trust_browser(&t, &b, "alice", &secret).await;
    logout(&b).await;
    assert!(skips_second_step(&b, "alice").await);
    logout(&b).await;
    let cli = ClientInfo::cli();
    t.app
        .set_user_active("alice", false, "test", &cli)
        .await
        .unwrap();
    t.app
        .set_user_active("alice", true, "test", &cli)
        .await
        .unwrap();
    assert!(t
        .store
        .list_user_trusted_devices(id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b.login("alice", PW).await.location(), "/login/2fa");
}
