//! The `bulwark` binary end to end, as an admin and a browser use it: real processes on free
//! loopback ports, a fresh data directory per test, a tiny HTTP/1.1 client and cookie jar
//! (see `procs`).

use crate::procs::{
    bulwark, csrf_in, form_encode, free_port, http, run, ChildGuard, Jar, Response, DEADLINE,
};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A password every policy preset accepts.
const STRONG: &str = "Correct-Horse-Battery-Staple-42";

// ---------------------------------------------------------------------------------------
// Processes

fn data_dir(root: &Path) -> PathBuf {
    root.join("data")
}

/// A `bulwark --data-dir ROOT/data ARGS…` command.
fn admin(root: &Path, args: &[&str]) -> Command {
    let mut cmd = bulwark(root);
    cmd.arg("--data-dir").arg(data_dir(root)).args(args);
    cmd
}

/// Runs an admin command that must succeed; returns its standard output.
fn admin_ok(root: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let r = run(&mut admin(root, args), stdin);
    assert!(r.success(), "bulwark {args:?} failed: {r:?}");
    r.stdout
}

/// Creates a user with a password through the CLI.
fn add_user(root: &Path, login: &str, password: &str) {
    let email = format!("{login}@example.com");
    let out = admin_ok(
        root,
        &[
            "user",
            "add",
            login,
            "--email",
            &email,
            "--group",
            "internal",
            "--password-stdin",
        ],
        Some(&format!("{password}\n")),
    );
    assert_eq!(out, format!("created user {login} (groups: internal)\n"));
}

/// A running `bulwark serve`, killed when dropped.
struct Server {
    child: ChildGuard,
    port: u16,
    outbox: PathBuf,
    /// What it printed on standard output up to the end of its banner.
    banner: Vec<String>,
    stderr_path: PathBuf,
}

impl Server {
    /// Starts `serve` on a free port with `ROOT/data`; returns once `/healthz` answers 200.
    fn start(root: &Path, envs: &[(&str, &str)]) -> Self {
        let port = free_port();
        let stderr_path = root.join(format!("serve-{port}.stderr"));
        let stderr = File::create(&stderr_path).expect("create stderr file");
        let mut cmd = admin(root, &["--listen", &format!("127.0.0.1:{port}"), "serve"]);
        cmd.envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = ChildGuard(cmd.spawn().expect("spawn bulwark serve"));
        let stdout = child.0.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the banner so the server never writes to a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let started = Instant::now();
        let mut banner = Vec::new();
        loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let last = line.starts_with("Or from a shell") || line.starts_with("Log in at");
                    banner.push(line);
                    if last {
                        break;
                    }
                }
                Err(e) => panic!(
                    "serve printed no complete banner ({e}): stdout {banner:#?}\nstderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                ),
            }
        }
        let server = Self {
            child,
            port,
            outbox: data_dir(root).join("outbox"),
            banner,
            stderr_path,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let started = Instant::now();
        loop {
            if let Ok(res) = http(self.port, "GET", "/healthz", &[], None) {
                if res.status == 200 {
                    assert_eq!(res.body, "ok\n");
                    return;
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "/healthz did not answer 200 within {DEADLINE:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stdout(&self) -> String {
        self.banner.join("\n")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The one-time setup link of the banner, if it printed one.
    fn setup_link(&self) -> Option<String> {
        let prefix = format!("{}/setup/", self.base());
        self.banner
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(&prefix))
            .map(str::to_string)
    }

    fn browser(&self) -> Browser {
        Browser::new(self.port, self.outbox.clone())
    }

    /// Stops the server and waits for it to exit.
    fn stop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Browser

/// A browser: a cookie jar in front of the client. Redirects are not followed.
struct Browser {
    port: u16,
    /// The server's mail outbox, for e-mailed login codes.
    outbox: PathBuf,
    jar: Jar,
    /// Every cookie value the server ever set, for the log check.
    seen: Vec<(String, String)>,
}

impl Browser {
    fn new(port: u16, outbox: PathBuf) -> Self {
        Self {
            port,
            outbox,
            jar: Jar::default(),
            seen: Vec::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name)
    }

    fn send(&mut self, method: &str, path: &str, form: Option<&str>) -> Response {
        let cookie = self.jar.header();
        let headers: &[(&str, &str)] = if cookie.is_empty() {
            &[]
        } else {
            &[("Cookie", &cookie)]
        };
        let body = form.map(|f| ("application/x-www-form-urlencoded", f));
        let res = http(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        self.seen.extend(self.jar.absorb(&res));
        res
    }

    fn get(&mut self, path: &str) -> Response {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        self.send("POST", path, Some(&form_encode(fields)))
    }

    /// GETs a page that must render (200) and returns its CSRF token.
    fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path);
        assert_eq!(page.status, 200, "GET {path}: {page:#?}");
        csrf_in(&page.body)
    }

    /// Opens the login page and posts the form.
    fn login(&mut self, login: &str, password: &str) -> Response {
        let csrf = self.csrf("/login");
        self.post(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("login", login),
                ("password", password),
            ],
        )
    }

    /// Asks for a login code by mail, reads it from the outbox and enters it.
    fn second_step_by_email(&mut self) -> Response {
        let before = login_codes(&self.outbox).len();
        let csrf = self.csrf("/login/2fa");
        let res = self.post("/login/2fa/email", &[("csrf_token", &csrf)]);
        assert_eq!(res.status, 303, "{res:#?}");
        let started = Instant::now();
        let code = loop {
            let codes = login_codes(&self.outbox);
            if codes.len() > before {
                break codes.last().cloned().expect("a code");
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no login code mail within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let csrf = self.csrf("/login/2fa");
        self.post("/login/2fa", &[("csrf_token", &csrf), ("code", &code)])
    }

    /// Logs in and checks the session works. Users under 2FA enforcement without an
    /// authenticator get the second step by e-mailed code, read from the outbox.
    fn login_ok(&mut self, login: &str, password: &str) {
        let mut res = self.login(login, password);
        assert_eq!(res.status, 303, "login of {login}: {res:#?}");
        if res.location() == "/login/2fa" {
            res = self.second_step_by_email();
        }
        assert_eq!(res.status, 303, "login of {login}: {res:#?}");
        assert!(
            res.location() == "/account"
                || res.location().starts_with("/account/security?prompt=grace"),
            "{res:#?}"
        );
        let set = res
            .set_cookie("bulwark_session")
            .unwrap_or_else(|| panic!("no session cookie: {res:#?}"));
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite="),
            "{set}"
        );
        let account = self.get("/account");
        assert_eq!(account.status, 200, "{account:#?}");
        assert!(
            account.body.contains(&format!("<dd>{login}</dd>")),
            "{}",
            account.body
        );
    }

    /// Every value the server set for the cookie `name`.
    fn seen(&self, name: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn is_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The path (and token) of the setup link printed by `serve`.
fn setup_path(server: &Server) -> (String, String) {
    let link = server
        .setup_link()
        .unwrap_or_else(|| panic!("no setup link in:\n{}", server.stdout()));
    let token = link
        .strip_prefix(&format!("{}/setup/", server.base()))
        .expect("link on the public URL")
        .to_string();
    assert!(is_token(&token), "{token:?}");
    (format!("/setup/{token}"), token)
}

/// Creates the first administrator through the setup form (link already followed).
fn setup_fields<'a>(csrf: &'a str, password: &'a str) -> [(&'a str, &'a str); 6] {
    [
        ("csrf_token", csrf),
        ("login", "root"),
        ("email", "root@example.com"),
        ("display_name", "Rita Root"),
        ("new_password", password),
        ("confirm_password", password),
    ]
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn serve_prints_url_and_one_time_setup_link() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), &[]);
    let base = server.base();
    assert_eq!(
        server.banner.first().map(String::as_str),
        Some(format!("Bulwark is running: open {base}").as_str()),
        "{}",
        server.stdout()
    );
    let (setup, token) = setup_path(&server);

    let mut b = server.browser();
    let res = b.get(&setup);
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/password/set");
    assert_eq!(
        b.cookie("bulwark_link"),
        Some(format!("s.{token}").as_str())
    );
    let link_cookie = res.set_cookie("bulwark_link").unwrap();
    assert!(
        link_cookie.contains("HttpOnly") && link_cookie.contains("Max-Age="),
        "{link_cookie}"
    );
    assert!(b.cookie("bulwark_csrf").is_some(), "{res:#?}");

    let form = b.get("/password/set");
    assert_eq!(form.status, 200, "{form:#?}");
    assert!(form.body.contains("Create the first administrator"));
    for field in [
        "login",
        "email",
        "display_name",
        "new_password",
        "confirm_password",
    ] {
        assert!(
            form.body.contains(&format!(r#"name="{field}""#)),
            "{field} in {}",
            form.body
        );
    }
    let csrf = csrf_in(&form.body);

    // A weak password is refused with every broken rule, and the link stays usable.
    let res = b.post("/password/set", &setup_fields(&csrf, "password"));
    assert_eq!(res.status, 400, "{res:#?}");
    assert!(
        res.body.contains("Use at least 12 characters."),
        "{}",
        res.body
    );
    assert!(
        res.body.contains("lists of common or breached passwords"),
        "{}",
        res.body
    );
    assert!(res.body.contains(r#"value="root""#), "values are kept");

    let res = b.post("/password/set", &setup_fields(&csrf, STRONG));
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/login?done=password");
    assert_eq!(b.cookie("bulwark_link"), None, "the link cookie is cleared");

    let page = b.get("/login?done=password");
    assert!(page.body.contains("Your password is set."), "{}", page.body);
    b.login_ok("root", STRONG);
    let account = b.get("/account");
    assert!(
        account.body.contains("root@example.com"),
        "{}",
        account.body
    );
    assert!(
        account.body.contains("admins, internal"),
        "{}",
        account.body
    );

    // The link works once, in any browser.
    for mut browser in [b, server.browser()] {
        let res = browser.get(&setup);
        assert_eq!(res.status, 400, "{res:#?}");
        assert!(
            res.body.contains("This link cannot be used"),
            "{}",
            res.body
        );
        assert_eq!(res.header("location"), None);
    }

    // Once an administrator exists, a restart prints no new link.
    server.stop();
    let server = Server::start(tmp.path(), &[]);
    assert_eq!(server.setup_link(), None, "{}", server.stdout());
    assert!(
        server
            .banner
            .contains(&format!("Log in at {}/login", server.base())),
        "{}",
        server.stdout()
    );
}

#[test]
fn user_add_then_login_works() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    add_user(root, "alice", STRONG);

    // A password against the policy: nothing is created and every broken rule is named.
    let r = run(
        &mut admin(
            root,
            &[
                "user",
                "add",
                "bob",
                "--email",
                "bob@example.com",
                "--password-stdin",
            ],
        ),
        Some("password\n"),
    );
    assert!(!r.success() && r.code.is_some(), "{r:?}");
    assert!(
        r.stderr.contains("the password does not meet the policy"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("  - Use at least 12 characters."),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("  - This password appears in lists"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("created"), "{r:?}");
    let r = run(&mut admin(root, &["user", "show", "bob"]), None);
    assert!(!r.success() && r.stderr.contains("no such user"), "{r:?}");

    let list = admin_ok(root, &["user", "list"], None);
    let row = list
        .lines()
        .find(|l| l.starts_with("alice "))
        .unwrap_or_else(|| panic!("alice in:\n{list}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols,
        ["alice", "alice@example.com", "internal", "yes", "never"]
    );
    let show = admin_ok(root, &["user", "show", "alice"], None);
    for line in [
        "login:            alice",
        "email:            alice@example.com",
        "groups:           internal",
        "active:           yes",
        "last login:       never",
        "must change:      no",
        "locked:           no",
        "trusted devices:  0",
        "device account:   no",
    ] {
        assert!(show.lines().any(|l| l == line), "{line:?} in:\n{show}");
    }
    // Internal staff are under the default enforcement and have no authenticator yet.
    assert!(
        show.lines()
            .any(|l| l.starts_with("two-factor:       off; required, must enrol by ")),
        "{show}"
    );

    let server = Server::start(root, &[]);
    let mut b = server.browser();
    b.login_ok("alice", STRONG);
    let show = admin_ok(root, &["user", "show", "alice"], None);
    assert!(!show.contains("last login:       never"), "{show}");

    // Disabling ends the session and refuses the password.
    let out = admin_ok(root, &["user", "disable", "alice"], None);
    assert_eq!(out, "disabled alice and ended their sessions\n");
    let res = b.get("/account");
    assert_eq!(res.status, 303, "{res:#?}");
    assert!(res.location().starts_with("/login"), "{res:#?}");
    let res = b.login("alice", STRONG);
    assert_eq!(res.status, 401, "{res:#?}");
    assert!(res.body.contains("Incorrect login or password."));
    assert!(res.set_cookie("bulwark_session").is_none());
    let show = admin_ok(root, &["user", "show", "alice"], None);
    assert!(show.contains("active:           no (disabled)"), "{show}");

    let out = admin_ok(root, &["user", "enable", "alice"], None);
    assert_eq!(out, "enabled alice\n");
    b.login_ok("alice", STRONG);

    let out = admin_ok(root, &["user", "groups", "alice", "--add", "portal"], None);
    assert_eq!(out, "alice: internal,portal\n");
    let out = admin_ok(root, &["user", "groups", "alice"], None);
    assert_eq!(out, "alice: internal,portal\n");

    let r = run(&mut admin(root, &["user", "delete", "alice"]), None);
    assert!(!r.success(), "{r:?}");
    assert!(r.stderr.contains("add --yes to confirm"), "{r:?}");
    admin_ok(root, &["user", "show", "alice"], None);

    let out = admin_ok(root, &["user", "delete", "alice", "--yes"], None);
    assert_eq!(out, "deleted alice\n");
    let r = run(&mut admin(root, &["user", "show", "alice"]), None);
    assert!(!r.success() && r.stderr.contains("no such user"), "{r:?}");
    let res = b.get("/account");
    assert_eq!(
        res.status, 303,
        "the deleted user's session is gone: {res:#?}"
    );
    let res = server.browser().login("alice", STRONG);
    assert_eq!(res.status, 401, "{res:#?}");
}

#[test]
fn bad_config_key_stops_startup_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = |name: &str, text: &str| {
        let path = root.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let check = |file: Option<&Path>, envs: &[(&str, &str)], cmd: &[&str]| {
        let mut c = bulwark(root);
        if let Some(f) = file {
            c.arg("--config").arg(f);
        }
        c.arg("--data-dir").arg(data_dir(root));
        c.envs(envs.iter().copied()).args(cmd);
        run(&mut c, None)
    };

    let typo = config("typo.toml", "[server]\nlistne = \"x\"\n");
    for cmd in [&["config", "check"][..], &["serve"][..]] {
        let r = check(Some(&typo), &[], cmd);
        assert_eq!(r.code, Some(2), "{cmd:?}: {r:?}");
        assert!(r.stderr.contains("`server.listne`"), "{cmd:?}: {r:?}");
        assert_eq!(r.stdout, "", "{cmd:?}");
    }
    assert!(
        !data_dir(root).exists(),
        "nothing is created on a bad config"
    );

    let bad_value = config("value.toml", "[server]\nlisten = \"nope\"\n");
    let r = check(Some(&bad_value), &[], &["config", "check"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("`server.listen`") && r.stderr.contains("`nope`"),
        "{r:?}"
    );

    let r = check(
        None,
        &[("BULWARK_SESSIONS__IDLE_MINUTES", "abc")],
        &["config", "check"],
    );
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("`sessions.idle_minutes`"), "{r:?}");

    let file_secret = "Smtp-File-Secret-8842";
    let env_secret = "Smtp-Env-Secret-1937";
    let smtp = config(
        "smtp.toml",
        &format!(
            "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mail.example.com\"\nusername = \"bulwark\"\npassword = \"{file_secret}\"\n"
        ),
    );
    let r = check(Some(&smtp), &[], &["config", "check"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("host = \"mail.example.com\""), "{r:?}");
    assert!(r.stdout.contains("password = \"<redacted>\""), "{r:?}");
    assert!(r.stderr.contains("configuration is valid"), "{r:?}");
    assert!(
        !r.stdout.contains(file_secret) && !r.stderr.contains(file_secret),
        "{r:?}"
    );
    let r = check(
        Some(&smtp),
        &[("BULWARK_MAIL__SMTP__PASSWORD", env_secret)],
        &["config", "check"],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("password = \"<redacted>\""), "{r:?}");
    for secret in [file_secret, env_secret] {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "{r:?}"
        );
    }
}

#[test]
fn lockout_via_cli_unlock() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Delays capped at 1 s (instead of 30) so ten failures are counted in seconds; the lock
    // (after 10 failures, for 15 minutes) keeps its default.
    let server = Server::start(root, &[("BULWARK_LOCKOUT__ACCOUNT__MAX_DELAY_SECS", "1")]);
    add_user(root, "carol", STRONG);
    add_user(root, "dave", STRONG);

    let mut b = server.browser();
    let csrf = b.csrf("/login");
    let attempt = |b: &mut Browser, password: &str| {
        b.post(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("login", "carol"),
                ("password", password),
            ],
        )
    };
    // Three free failures, and the fourth is checked too (it starts the delays).
    for _ in 0..4 {
        let res = attempt(&mut b, "Not-Carols-Password-1");
        assert_eq!(res.status, 401, "{res:#?}");
        assert_eq!(res.header("retry-after"), None);
    }
    let mut failures = 4;
    let started = Instant::now();
    while failures < 10 {
        assert!(started.elapsed() < 3 * DEADLINE, "{failures} failures");
        let res = attempt(&mut b, "Not-Carols-Password-1");
        match res.status {
            401 => failures += 1,
            429 => {
                let wait = res.retry_after();
                assert_eq!(wait, 1, "delays are capped at 1 s: {res:#?}");
                assert!(
                    res.body.contains("Too many failed attempts."),
                    "{}",
                    res.body
                );
                assert!(!res.body.contains("locked"), "{}", res.body);
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => panic!("unexpected answer: {res:#?}"),
        }
    }

    // Locked: even the right password is refused before it is checked.
    let res = attempt(&mut b, STRONG);
    assert_eq!(res.status, 429, "{res:#?}");
    let wait = res.retry_after();
    assert!((60..=900).contains(&wait), "a 15-minute lock: {wait}");
    assert!(res.body.contains("locked"), "{}", res.body);
    assert!(res.set_cookie("bulwark_session").is_none());
    let show = admin_ok(root, &["user", "show", "carol"], None);
    assert!(show.contains("locked:           until "), "{show}");

    // The lock is per account: another user at the same address still gets in.
    server.browser().login_ok("dave", STRONG);

    let out = admin_ok(root, &["user", "unlock", "carol"], None);
    assert_eq!(out, "unlocked carol\n");
    let show = admin_ok(root, &["user", "show", "carol"], None);
    assert!(show.contains("locked:           no"), "{show}");
    let res = attempt(&mut b, STRONG);
    assert_eq!(res.status, 303, "{res:#?}");
    // Past the password; carol is an employee, so the second step follows.
    assert_eq!(res.location(), "/login/2fa");
    assert!(res.set_cookie("bulwark_session").is_some(), "{res:#?}");
}

/// The reset link in an `.eml` of the outbox whose subject is "Reset your password".
fn wait_for_reset_link(outbox: &Path, base: &str) -> String {
    wait_for_link(
        outbox,
        "Subject: Reset your password",
        &format!("{base}/password/reset/"),
    )
}

/// The token of the link starting with `prefix` in the first mail with `subject`.
fn wait_for_link(outbox: &Path, subject: &str, prefix: &str) -> String {
    let started = Instant::now();
    loop {
        let mails = std::fs::read_dir(outbox)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .filter_map(|p| std::fs::read_to_string(p).ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for mail in mails {
            if !mail.contains(subject) {
                continue;
            }
            // Undo quoted-printable soft line breaks and `=` escapes.
            let text = mail
                .replace("=\r\n", "")
                .replace("=\n", "")
                .replace("=3D", "=");
            let start = text
                .find(prefix)
                .unwrap_or_else(|| panic!("no {prefix} link in:\n{mail}"))
                + prefix.len();
            let token: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(is_token(&token), "{token:?} in:\n{mail}");
            return token;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no {subject:?} mail in {} within {DEADLINE:?}",
            outbox.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The codes of every "Your login code" mail in the outbox, oldest first.
fn login_codes(outbox: &Path) -> Vec<String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(outbox)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter(|m| m.contains("Subject: Your login code"))
        .filter_map(|m| {
            let start = m.find("Your login code is ")? + "Your login code is ".len();
            Some(m[start..start + 6].to_string())
        })
        .collect()
}

/// Removes ANSI colour sequences (`ESC [ … letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn logs_never_contain_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let first = STRONG;
    let wrong = "Wrong-Guess-Pumpkin-Harbor-58";
    let changed = "Violet-Tangerine-Orbit-Lantern-77";
    let reset = "Quiet-Meadow-Copper-Falcon-19";
    let mut server = Server::start(root, &[("BULWARK_LOG", "debug")]);
    let base = server.base();
    let mut form_tokens = Vec::new();

    // First administrator through the setup link.
    let (setup, setup_token) = setup_path(&server);
    let mut b = server.browser();
    assert_eq!(b.get(&setup).status, 303);
    let csrf = b.csrf("/password/set");
    form_tokens.push(csrf.clone());
    let res = b.post("/password/set", &setup_fields(&csrf, first));
    assert_eq!(res.status, 303, "{res:#?}");

    // A failed login, then a good one.
    let res = b.login("root", wrong);
    assert_eq!(res.status, 401, "{res:#?}");
    b.login_ok("root", first);

    // A password change.
    let csrf = b.csrf("/password/change");
    form_tokens.push(csrf.clone());
    let res = b.post(
        "/password/change",
        &[
            ("csrf_token", &csrf),
            ("current_password", first),
            ("new_password", changed),
            ("confirm_password", changed),
        ],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/account?done=password");
    let account = b.get("/account?done=password");
    assert_eq!(account.status, 200);
    assert!(account.body.contains("Your password was changed."));

    // Forgot password, from another browser, then the link from the mail.
    let mut anon = server.browser();
    let csrf = anon.csrf("/password/forgot");
    form_tokens.push(csrf.clone());
    let res = anon.post(
        "/password/forgot",
        &[("csrf_token", &csrf), ("login_or_email", "root")],
    );
    assert_eq!(res.status, 200, "{res:#?}");
    assert!(res.body.contains("If an account matches"), "{}", res.body);
    let outbox = data_dir(root).join("outbox");
    // The password change mailed a "this wasn't me" link: opening it changes nothing.
    let not_me_token = wait_for_link(
        &outbox,
        "Subject: Your password was changed",
        &format!("{base}/not-me/"),
    );
    assert_eq!(anon.get(&format!("/not-me/{not_me_token}")).status, 200);
    let reset_token = wait_for_reset_link(&outbox, &base);
    let res = anon.get(&format!("/password/reset/{reset_token}"));
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/password/set");
    let page = anon.get("/password/set");
    assert_eq!(page.status, 200, "{page:#?}");
    assert!(page.body.contains("Choose a new password"), "{}", page.body);
    let csrf = csrf_in(&page.body);
    form_tokens.push(csrf.clone());
    let res = anon.post(
        "/password/set",
        &[
            ("csrf_token", &csrf),
            ("new_password", reset),
            ("confirm_password", reset),
        ],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/login?done=password");
    assert_eq!(anon.login("root", changed).status, 401);
    anon.login_ok("root", reset);
    assert_eq!(
        anon.get(&format!("/password/reset/{reset_token}")).status,
        400,
        "the reset link works once"
    );

    server.stop();
    let raw = server.stderr();
    let logs = strip_ansi(&raw);
    assert!(!logs.trim().is_empty(), "no logs at all");
    for expected in [
        "path=/login",
        "path=/password/change",
        "path=/password/forgot",
        "path=/setup/<token>",
        "path=/password/reset/<token>",
        "path=/not-me/<token>",
        "status=303",
        "status=401",
    ] {
        assert!(logs.contains(expected), "{expected:?} in the logs:\n{logs}");
    }

    let mut secrets: Vec<(&str, String)> = vec![
        ("first password", first.into()),
        ("wrong password", wrong.into()),
        ("changed password", changed.into()),
        ("reset password", reset.into()),
        ("setup token", setup_token),
        ("reset token", reset_token),
        ("this-wasn't-me token", not_me_token),
    ];
    for browser in [&b, &anon] {
        for name in ["bulwark_session", "bulwark_csrf", "bulwark_link"] {
            secrets.extend(browser.seen(name).into_iter().map(|v| (name, v)));
        }
    }
    assert!(b.seen("bulwark_session").len() >= 2 && !anon.seen("bulwark_csrf").is_empty());
    secrets.extend(form_tokens.into_iter().map(|t| ("csrf form token", t)));
    // The administrator's logins went through the e-mailed second step.
    let codes = login_codes(&data_dir(root).join("outbox"));
    assert!(!codes.is_empty(), "the admin logins used e-mailed codes");
    // Six digits also occur in timestamps (`.048876Z`): a code counts when it stands alone,
    // not as a fraction of a second.
    for code in &codes {
        let leaked = logs.match_indices(code.as_str()).any(|(i, _)| {
            let before = logs[..i].chars().next_back();
            let after = logs[i + code.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
                && !after.is_some_and(|c| c.is_ascii_digit())
        });
        assert!(!leaked, "login code {code} is in the logs:\n{logs}");
    }
    for (what, secret) in &secrets {
        assert!(!secret.is_empty(), "{what}");
        assert!(
            !raw.contains(secret.as_str()) && !logs.contains(secret.as_str()),
            "the {what} is in the logs:\n{logs}"
        );
    }
    for marker in ["$argon2id$", "$argon2", "$pbkdf2-sha512$"] {
        assert!(!logs.contains(marker), "a password hash is in the logs");
    }
}

#[test]
fn healthcheck_reports_server_state() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let healthcheck = |port: u16| {
        run(
            &mut admin(
                root,
                &["--listen", &format!("127.0.0.1:{port}"), "healthcheck"],
            ),
            None,
        )
    };

    let idle = free_port();
    let r = healthcheck(idle);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.starts_with("unhealthy: cannot reach"), "{r:?}");

    let mut server = Server::start(root, &[]);
    let r = healthcheck(server.port);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, format!("healthy: 127.0.0.1:{}\n", server.port));

    server.stop();
    let r = healthcheck(server.port);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.starts_with("unhealthy:"), "{r:?}");
}

#[test]
fn serve_refuses_a_key_file_that_cannot_open_the_stored_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    add_user(root, "alice", STRONG);
    let key_file = data_dir(root).join("secret.key");
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    let key_id = key_text.split(':').next().unwrap().to_string();
    // Alice has an authenticator, sealed under the current key.
    let db = data_dir(root).join("bulwark.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use bulwark_store::{TwoFactorStore, UserStore};
        let store = bulwark_store_sqlite::SqliteStore::open(&db, 1)
            .await
            .unwrap();
        let login = bulwark_core::account::Login::parse("alice").unwrap();
        let alice = store.find_user_by_login(&login).await.unwrap().unwrap();
        store
            .upsert_pending_totp(&bulwark_store::NewTotpFactor {
                user: alice.id,
                secret_sealed: "sealed-secret".into(),
                key_id: key_id.clone(),
                algorithm: "sha1".into(),
                digits: 6,
                period: 30,
                created_at: 1_700_000_000,
            })
            .await
            .unwrap();
    });
    drop(Server::start(root, &[]));

    // The key file is lost; a new one would be created, without alice's key.
    std::fs::remove_file(&key_file).unwrap();
    let r = run(&mut admin(root, &["serve"]), None);
    assert!(!r.success(), "{r:?}");
    assert!(
        r.stderr.contains("`secret_key_file`") && r.stderr.contains(&key_id),
        "{r:?}"
    );
    assert!(r.stderr.contains("bulwark user reset-2fa"), "{r:?}");
    assert!(!r.stdout.contains("Bulwark is running"), "{r:?}");

    // The way out when the key is gone for good: other commands still run.
    admin_ok(root, &["user", "reset-2fa", "alice"], None);
    drop(Server::start(root, &[]));
}

// ---------------------------------------------------------------------------------------
// API keys

/// The proxy on loopback, RPC paths needing a key, last use written every second.
const API_KEY_CONFIG: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[gateway]
# Far longer than the tests wait: what a CLI command revokes stops passing through the
# audit sync, not by the cached check expiring.
cache_seconds = 60

[[gateway.rules]]
hosts = ["odoo.example.com"]
paths = ["/xmlrpc/*"]
policy = "api_key"

[api_keys]
flush_secs = 1
"#;

/// Asks the running server's `auth-request` endpoint about an XML-RPC call, as nginx does.
fn ask_gateway(port: u16, authorization: Option<&str>) -> Response {
    let mut headers = vec![
        ("X-Original-URL", "https://odoo.example.com/xmlrpc/2/object"),
        ("X-Original-Method", "POST"),
    ];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    http(port, "GET", "/api/authz/auth-request", &headers, None).expect("an HTTP response")
}

/// Every subject line in the outbox.
fn outbox_subjects(outbox: &Path) -> Vec<String> {
    std::fs::read_dir(outbox)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn api_keys_from_the_command_line_open_the_gateway_until_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = root.join("bulwark.toml");
    std::fs::write(&config, API_KEY_CONFIG).unwrap();
    let config = config.to_str().unwrap().to_string();
    let apikey = |args: &[&str]| {
        let mut all = vec!["apikey"];
        all.extend_from_slice(args);
        run(admin(root, &all).env("BULWARK_CONFIG", &config), None)
    };
    add_user(root, "alice", STRONG);

    let r = apikey(&[
        "create", "alice", "--name", "deploy", "--scope", "gateway", "--days", "30",
    ]);
    assert!(r.success(), "{r:?}");
    let key = r.stdout.trim_end().to_string();
    assert_eq!(
        r.stdout,
        format!("{key}\n"),
        "the key alone on standard output"
    );
    assert!(key.starts_with("bwk_") && key.len() == 44, "{key}");
    assert!(
        r.stderr.contains("\"deploy\" for alice") && r.stderr.contains("shown only once"),
        "{r:?}"
    );
    for (args, want) in [
        (
            &["create", "nobody", "--name", "x", "--scope", "gateway"][..],
            "no such user",
        ),
        (
            &["create", "alice", "--name", "x", "--scope", "root"],
            "is not a scope",
        ),
        (
            &[
                "create", "alice", "--name", "x", "--scope", "gateway", "--days", "400",
            ],
            "at most 365 days",
        ),
        (
            &["create", "alice", "--name", "deploy", "--scope", "gateway"],
            "already a key named",
        ),
        (
            &["revoke", "alice", "nightly"],
            "no API key named or numbered `nightly`",
        ),
        (&["revoke", "nobody", "deploy"], "no such user"),
    ] {
        let r = apikey(args);
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
        assert!(!r.stdout.contains("bwk_"), "{args:?}: {r:?}");
    }

    let server = Server::start(root, &[("BULWARK_CONFIG", &config)]);
    let res = ask_gateway(server.port, Some(&format!("Bearer {key}")));
    assert_eq!(res.status, 200, "{res:#?}");
    assert_eq!(res.header("remote-user"), Some("alice"));
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("odoo-db:{key}"))
    };
    let res = ask_gateway(server.port, Some(&format!("Basic {basic}")));
    assert_eq!(res.status, 200, "{res:#?}");
    let res = ask_gateway(server.port, None);
    assert_eq!(res.status, 401);
    assert_eq!(
        res.header("www-authenticate"),
        Some("Bearer realm=\"bulwark\"")
    );

    // The server writes the last use within a second; the CLI reads it from the database.
    let started = Instant::now();
    loop {
        let r = apikey(&["list", "alice"]);
        assert!(r.success(), "{r:?}");
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains("deploy"))
            .unwrap_or_else(|| panic!("{r:?}"));
        assert!(
            line.contains(&key[..12]) && line.contains("active"),
            "{line}"
        );
        assert!(!r.stdout.contains(&key), "never the whole key");
        if line.matches("UTC").count() == 3 {
            break; // created, expires and last used
        }
        assert!(
            started.elapsed() < DEADLINE,
            "last use never written: {line}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let r = apikey(&["revoke", "alice", "deploy"]);
    assert!(r.success(), "{r:?}");
    assert!(
        r.stdout.contains("revoked API key") && r.stdout.contains("\"deploy\" of alice"),
        "{r:?}"
    );
    // The command is another process: the server learns of it from the audit log, which it
    // reads every second, not by its cached check expiring (cache_seconds = 60).
    let revoked_at = Instant::now();
    while ask_gateway(server.port, Some(&format!("Bearer {key}"))).status != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "a key revoked by the CLI still passes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = apikey(&["list"]);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains("deploy") && l.ends_with("revoked")),
        "{r:?}"
    );
    let subjects = outbox_subjects(&data_dir(root).join("outbox"));
    for want in ["A new API key was created", "An API key was revoked"] {
        assert!(subjects.iter().any(|s| s == want), "{want}: {subjects:?}");
    }
    let logs = server.stderr();
    assert!(!logs.contains(&key[4..]), "no key in the server's log");
}

/// Alters a stored audit event as an attacker with the database file would.
fn tamper_with_audit(root: &Path, sql: &str) {
    let path = data_dir(root).join("bulwark.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
        )
        .await
        .unwrap();
        for statement in ["DROP TRIGGER audit_log_no_update", sql] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
}

#[test]
fn audit_verify_and_export_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_user(root, "alice", STRONG);
    add_user(root, "bob", STRONG);
    admin_ok(root, &["user", "disable", "bob"], None);

    let out = admin_ok(root, &["audit", "verify"], None);
    assert!(out.starts_with("audit log intact: "), "{out}");
    assert!(out.contains("from the first event"), "{out}");
    assert!(out.contains("\nhead: event "), "{out}");

    let export = admin_ok(root, &["audit", "export"], None);
    let events: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 3, "{export}");
    assert!(events
        .windows(2)
        .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));
    assert!(events.windows(2).all(|w| w[0]["hash"] == w[1]["prev_hash"]));
    let bobs = admin_ok(root, &["audit", "export", "--subject", "bob"], None);
    assert!(bobs.lines().count() >= 2 && bobs.lines().all(|l| l.contains("\"subject\":\"bob\"")));
    let list = admin_ok(root, &["audit", "list", "--event", "user_disabled"], None);
    assert!(list.contains("subject=bob"), "{list}");
    let bad = run(
        &mut admin(root, &["audit", "list", "--since", "last week"]),
        None,
    );
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("is not a time"), "{bad:?}");
    let off = run(&mut admin(root, &["audit", "prune"]), None);
    assert!(
        !off.success() && off.stderr.contains("audit.retention_days"),
        "{off:?}"
    );

    // Undo the disabling of bob in the log: verify names the event and fails.
    let disabled = events
        .iter()
        .find(|e| e["event"] == "user_disabled")
        .unwrap_or_else(|| panic!("no user_disabled event in {export}"));
    let id = disabled["id"].as_i64().unwrap();
    tamper_with_audit(
        root,
        &format!("UPDATE audit_log SET subject = 'carol' WHERE id = {id}"),
    );
    let broken = run(&mut admin(root, &["audit", "verify"]), None);
    assert_eq!(broken.code, Some(1), "{broken:?}");
    assert!(
        broken
            .stdout
            .starts_with(&format!("audit log BROKEN: record {id} was altered")),
        "{broken:?}"
    );
}

#[test]
fn compliance_report_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_user(root, "alice", STRONG);
    add_user(root, "bob", STRONG);
    add_user(root, "carol", STRONG);
    admin_ok(root, &["user", "disable", "carol"], None);

    let json: serde_json::Value =
        serde_json::from_str(&admin_ok(root, &["report", "compliance"], None)).unwrap();
    assert_eq!(json["totals"]["active"], 2, "{json}");
    assert_eq!(json["totals"]["with_two_factor"], 0);
    assert_eq!(json["counts"]["without_two_factor"], 2);
    assert_eq!(json["groups"][0]["name"], "internal");
    let logins: Vec<&str> = json["without_two_factor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["login"].as_str().unwrap())
        .collect();
    assert_eq!(logins, ["alice", "bob"], "disabled users are left out");

    let csv = admin_ok(root, &["report", "compliance", "--format", "csv"], None);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].starts_with("alice,alice@example.com,"), "{csv}");
    assert!(lines[2].contains(",no,grace,"), "{csv}");

    let bad = run(
        &mut admin(root, &["report", "compliance", "--format", "xml"]),
        None,
    );
    assert_eq!(bad.code, Some(2), "{bad:?}");
}

#[test]
fn backup_while_serving_then_restore_after_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    add_user(root, "alice", STRONG);
    let mut server = Server::start(root, &[]);
    let listen = format!("127.0.0.1:{}", server.port);
    let backups = root.join("backups");
    let backups_arg = backups.to_str().unwrap();

    // Online: the server keeps running and writing (sessions, audit events) during the copy.
    // Each login stops at its password step: the e-mailed codes of the second are limited
    // per hour, and a backup may take longer than a handful of logins.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let (port, outbox) = (server.port, server.outbox.clone());
        std::thread::spawn(move || {
            let mut logins = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let res = Browser::new(port, outbox.clone()).login("alice", STRONG);
                assert_eq!(res.status, 303, "{res:#?}");
                logins += 1;
            }
            logins
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = admin_ok(root, &["backup", "run", "--to", backups_arg], None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        writer.join().unwrap() > 0,
        "logins went on during the backup"
    );
    assert!(out.starts_with("backup "), "{out}");
    assert!(out.contains("taken and checked"), "{out}");
    let files = std::fs::read_dir(&backups).unwrap().count();
    assert_eq!(files, 1);
    let file = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("bulwark-") && name.ends_with("Z.db"),
        "{name}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a backup holds password hashes");
    }
    let list = admin_ok(root, &["backup", "list", "--dir", backups_arg], None);
    assert!(list.contains(&name), "{list}");
    let check = admin_ok(root, &["backup", "check", file.to_str().unwrap()], None);
    assert!(check.contains("is intact (schema version"), "{check}");

    // A user added after the backup disappears with the restore.
    add_user(root, "bob", STRONG);
    let refused = run(
        &mut admin(
            root,
            &["--listen", &listen, "restore", file.to_str().unwrap()],
        ),
        None,
    );
    assert!(!refused.success(), "{refused:?}");
    assert!(
        refused.stderr.contains("stop it before restoring"),
        "{refused:?}"
    );
    server.stop();

    // A corrupt file is refused and changes nothing.
    let corrupt = root.join("corrupt.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4096] {
        *b = 0x5a;
    }
    std::fs::write(&corrupt, &bytes).unwrap();
    for bad in [
        corrupt.clone(),
        root.join("missing.db"),
        root.join("data").join("secret.key"),
    ] {
        let r = run(
            &mut admin(
                root,
                &["--listen", &listen, "restore", bad.to_str().unwrap()],
            ),
            None,
        );
        assert!(!r.success(), "{bad:?}: {r:?}");
        assert!(r.stderr.contains("refusing to restore"), "{bad:?}: {r:?}");
    }
    assert!(admin_ok(root, &["user", "list"], None).contains("bob"));

    let out = admin_ok(
        root,
        &["--listen", &listen, "restore", file.to_str().unwrap()],
        None,
    );
    assert!(out.contains("restored "), "{out}");
    let users = admin_ok(root, &["user", "list"], None);
    assert!(users.contains("alice") && !users.contains("bob"), "{users}");
    let aside: Vec<String> = std::fs::read_dir(data_dir(root))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bulwark.db.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "the replaced database is kept");
    // The restored database serves again, and alice logs in.
    let server = Server::start(root, &[]);
    server.browser().login_ok("alice", STRONG);
    drop(server);

    // A restore onto a new machine: a fresh data directory with only the key file copied.
    let fresh = tempfile::tempdir().unwrap();
    let fresh = fresh.path();
    std::fs::create_dir_all(data_dir(fresh)).unwrap();
    std::fs::copy(
        data_dir(root).join("secret.key"),
        data_dir(fresh).join("secret.key"),
    )
    .unwrap();
    let out = admin_ok(
        fresh,
        &["--listen", &listen, "restore", file.to_str().unwrap()],
        None,
    );
    assert!(out.contains("restored "), "{out}");
    let server = Server::start(fresh, &[]);
    server.browser().login_ok("alice", STRONG);
}

#[test]
fn policy_set_in_a_shell_reaches_the_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = Server::start(root, &[]);
    add_user(root, "carol", STRONG);
    let show = admin_ok(root, &["policy", "show"], None);
    assert!(
        show.contains("policy.min_length = 12    # from the preset\n"),
        "{show}"
    );
    assert!(show.contains("lockout.account.lock_after = 10\n"), "{show}");
    let json_show = admin_ok(root, &["policy", "show", "--json"], None);
    let doc: serde_json::Value = serde_json::from_str(&json_show).unwrap();
    assert!(doc["settings"].as_array().unwrap().len() > 30);

    let out = admin_ok(
        root,
        &[
            "policy",
            "set",
            "lockout.account.free_attempts=1",
            "lockout.account.lock_after=2",
            "lockout.account.max_delay_secs=1",
        ],
        None,
    );
    assert_eq!(
        out,
        "lockout.account.free_attempts: 3 -> 1\nlockout.account.lock_after: 10 -> 2\n\
         lockout.account.max_delay_secs: 30 -> 1\n"
    );
    // Refusals name the setting and change nothing.
    for args in [
        &["policy", "set", "sessions.idle_minutes=0"][..],
        &["policy", "set", "sessions.idle_minutes"][..],
        &["policy", "set", "server.listen=0.0.0.0:80"][..],
        &["policy", "unset", "sessions.idle_minutes"][..],
    ] {
        let r = run(&mut admin(root, args), None);
        assert!(!r.success(), "{args:?}: {r:?}");
        let named = if args[2].starts_with("server") {
            "server.listen"
        } else {
            "sessions.idle_minutes"
        };
        assert!(r.stderr.contains(named), "{args:?}: {r:?}");
    }

    // The server re-reads the policy within its refresh period (5 s).
    let started = Instant::now();
    while !server.stderr().contains("the security policy changed") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the server did not pick up the change: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two wrong passwords now lock carol (a one-second delay after the first).
    let mut b = server.browser();
    let csrf = b.csrf("/login");
    let mut attempt = |password: &str| {
        b.post(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("login", "carol"),
                ("password", password),
            ],
        )
    };
    assert_eq!(attempt("Not-Carols-Password-1").status, 401);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(attempt("Not-Carols-Password-1").status, 401);
    let res = attempt(STRONG);
    assert_eq!(res.status, 429, "{res:#?}");
    assert!(res.body.contains("locked"), "{}", res.body);

    let audit = admin_ok(root, &["audit", "list", "--event", "policy_changed"], None);
    assert_eq!(audit.matches("policy_changed").count(), 3, "{audit}");
    assert!(audit.contains("cli"), "{audit}");
}
