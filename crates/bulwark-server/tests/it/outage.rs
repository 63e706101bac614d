//! A database outage: every kind of client gets a clear 503 (never a 500, never a panic) and
//! the node serves again by itself once the database is back.
//!
//! Twice: in process, with the connection to the database cut by a relay; and with real
//! `bulwark serve` processes on a PostgreSQL cluster of the test's own, stopped as a crash
//! would stop it and started again, after which every committed write must still be there.
//! Both need a PostgreSQL server (`TEST_POSTGRES_URL`) and return early without one.

use crate::procs::{http, Agent, Deployment, DEADLINE};
use crate::proxy::CuttableRelay;
use crate::support::*;
use axum::http::StatusCode;
use bulwark_store::Store;
use bulwark_store_postgres::{testing, PgStore, PoolSettings};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const PW: &str = "Correct-Horse-Battery-Staple-42";

const CONFIG: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[gateway]
protected = ["https://app.example.com"]
default_policy = "one_factor"
"#;

/// An app whose store reaches a fresh database through a relay the test can cut.
async fn app_behind_relay() -> (TestApp, CuttableRelay) {
    // Always PostgreSQL: the relay stands between the node and its database server.
    let url = testing::fresh_database_url().await;
    let options = PgStore::parse_url(&url).unwrap();
    let target = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .unwrap();
    let relay = CuttableRelay::to(target).await;
    let store = PgStore::connect_with(
        options.port(relay.port),
        PoolSettings {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(1),
            ..PoolSettings::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    (TestApp::with_store(CONFIG, store).await, relay)
}

/// What the proxy asks the gateway for a browser that presents `session`.
async fn gateway_check(t: &TestApp, session: &str) -> Response {
    let p = t
        .browser_from("127.0.0.1")
        .with_header("x-forwarded-for", "203.0.113.7")
        .with_header("x-original-url", "https://app.example.com/")
        .with_header("x-original-method", "GET");
    p.set_cookie("bulwark_session", session);
    p.get("/api/authz/auth-request").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_answered_with_503_and_the_node_recovers_by_itself() {
    if !postgres_configured() {
        return;
    }
    let (t, relay) = app_behind_relay().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    assert_eq!(b.login("alice", PW).await.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    assert_eq!(b.get("/api/v1/me").await.status, StatusCode::OK);
    let session = b.cookie("bulwark_session").unwrap();

    relay.cut();
    let started = Instant::now();

    let page = b.get("/account").await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Temporarily unavailable"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("error returned from database"),
        "no internals"
    );

    let api = b.get("/api/v1/me").await;
    assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE, "{}", api.body);
    let json: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(json["error"]["code"], "unavailable", "{}", api.body);

    let login = t.browser().login("alice", PW).await;
    assert_eq!(
        login.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        login.body
    );

    // A session the gateway has not cached must be read from the database.
    let uncached = "A".repeat(43);
    let check = gateway_check(&t, &uncached).await;
    assert_eq!(
        check.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        check.body
    );
    assert_eq!(
        t.browser().get("/healthz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "each answer within about acquire_timeout: {:?}",
        started.elapsed()
    );

    relay.restore();
    // The pool replaces its broken connections on its own: no restart, no reconnect call.
    let mut healthy = false;
    for _ in 0..50 {
        if t.browser().get("/healthz").await.status == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "healthy again once the database is back");
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    assert_eq!(b.get("/api/v1/me").await.status, StatusCode::OK);
    assert_eq!(gateway_check(&t, &session).await.status, StatusCode::OK);
    let again = t.browser();
    assert_eq!(again.login("alice", PW).await.status, StatusCode::SEE_OTHER);
}

// ---------------------------------------------------------------------------------------
// Real processes, PostgreSQL stopped under them

/// A PostgreSQL cluster of this test's own, so that stopping it leaves the shared test
/// server to the other tests: loopback only, on a free port, its socket directory inside
/// its temp dir. Stopped and deleted on drop, whatever happened.
///
/// Set up as `scripts/test-postgres.sh` does (root runs it as `postgres`, which PostgreSQL
/// insists on), except that commits stay synchronous: a commit is answered once its WAL is
/// written, so an immediate stop (a crash of PostgreSQL, not of the machine: `fsync` can
/// stay off) must lose nothing that was committed.
struct OwnCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Who runs the server, when it is not this process's user.
    owner: Option<&'static str>,
    port: u16,
}

impl OwnCluster {
    fn start() -> Self {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let as_root = std::fs::metadata(dir.path()).unwrap().uid() == 0;
        let owner = as_root.then_some("postgres");
        if let Some(user) = owner {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id").args([flag, user]).output().unwrap();
                assert!(
                    out.status.success(),
                    "no `{user}` user to run PostgreSQL as"
                );
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let cluster = Self {
            dir,
            bin,
            owner,
            port: crate::procs::free_port(),
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                &format!("--pgdata={data}"),
                "--username=postgres",
                "--auth-local=trust",
                "--auth-host=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs a PostgreSQL program as the cluster's owner; it must succeed.
    fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = match self.owner {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again, on the same port) and waits until it accepts connections.
    fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c full_page_writes=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                &format!("--pgdata={}", self.data()),
                &format!("--log={log}"),
                "--wait",
                "--timeout=60",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would: no checkpoint, clients cut off.
    fn crash(&self) {
        self.pg(
            "pg_ctl",
            &[
                &format!("--pgdata={}", self.data()),
                "--mode=immediate",
                "--wait",
                "stop",
            ],
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if self.dir.path().join("data/postmaster.pid").exists() {
            // Not `crash()`: a failed stop must not panic while a failed test unwinds.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.crash()));
        }
    }
}

/// Debian keeps the server programs in /usr/lib/postgresql/<version>/bin; the newest is used,
/// else `initdb` from PATH.
fn postgres_bin() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .filter(|(_, bin)| bin.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    if let Some((_, bin)) = dirs.pop() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").is_file())
        .unwrap_or_else(|| {
            panic!("no PostgreSQL server programs (initdb): install the postgresql package")
        })
}

/// A request waits at most `database.acquire_timeout_secs` for a connection (the pool keeps
/// trying to open one meanwhile), then gets 503: one second here.
const OUTAGE_CONFIG: &str = r#"
[two_factor]
enforcement = "admins"

[database]
acquire_timeout_secs = 1

[server]
trusted_proxies = ["127.0.0.1"]

[gateway]
protected = ["https://app.example.com"]
default_policy = "one_factor"
"#;

/// How long an answer may take while the database is down: the acquire timeout and slack.
const OUTAGE_BOUND: Duration = Duration::from_secs(4);

const PW2: &str = "Quiet-Violet-Lantern-Harbor-77";

/// How long `f` took, and what it returned.
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let out = f();
    (started.elapsed(), out)
}

/// Asserts that every kind of request the node gets while its database is down is answered
/// 503, without internals, within [`OUTAGE_BOUND`]; `alice` holds a session, `key` is her
/// API key.
fn assert_unavailable(port: u16, mut alice: Agent, key: &str) {
    let answered = |what: &str, (took, res): (Duration, crate::procs::Response)| {
        assert_eq!(res.status, 503, "{what} on node {port}: {res:#?}");
        assert!(took < OUTAGE_BOUND, "{what} on node {port} took {took:?}");
        for internal in ["error returned from database", "os error", "pool timed out"] {
            assert!(!res.body.contains(internal), "{what}: {res:#?}");
        }
        res
    };
    answered(
        "health check",
        timed(|| http(port, "GET", "/healthz", &[], None).unwrap()),
    );
    for page in [
        answered(
            "login form",
            timed(|| Agent::default().login(port, "alice", PW2)),
        ),
        answered("account page", timed(|| alice.get(port, "/account"))),
    ] {
        assert!(page.body.contains("Temporarily unavailable"), "{page:#?}");
    }
    let bearer = format!("Bearer {key}");
    for api in [
        answered("JSON API, session", timed(|| alice.get(port, "/api/v1/me"))),
        answered(
            "JSON API, key",
            timed(|| {
                http(
                    port,
                    "GET",
                    "/api/v1/me",
                    &[("Authorization", &bearer)],
                    None,
                )
                .unwrap()
            }),
        ),
    ] {
        assert_eq!(api.json()["error"]["code"], "unavailable", "{api:#?}");
    }
    // A session no node has cached: the check must read it from the database.
    let unknown = format!("bulwark_session={}", "A".repeat(43));
    let proxy = [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Forwarded-Uri", "/"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Cookie", unknown.as_str()),
    ];
    answered(
        "gateway",
        timed(|| http(port, "GET", "/api/authz/forward-auth", &proxy, None).unwrap()),
    );
}

#[test]
fn a_crashed_database_gets_503_from_serve_processes_and_loses_no_committed_write() {
    if !postgres_configured() {
        return;
    }
    let cluster = OwnCluster::start();
    let deployment = Deployment::new(&cluster.url(), OUTAGE_CONFIG);
    let mut nodes = deployment.start_nodes(2);
    let (a, b) = (nodes[0].port, nodes[1].port);
    for login in ["alice", "bob", "carol"] {
        deployment.add_user(login, PW);
    }

    // Committed writes, each confirmed by its answer, spread over both nodes and the CLI.
    let mut alice = Agent::default();
    assert_eq!(alice.login(a, "alice", PW).status, 303);
    let res = alice.submit(
        a,
        "/password/change",
        "/password/change",
        &[
            ("current_password", PW),
            ("new_password", PW2),
            ("confirm_password", PW2),
        ],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/account?done=password");
    let me = alice.get(b, "/api/v1/me");
    assert_eq!(me.status, 200, "{me:#?}");
    let csrf = me.json()["csrf_token"].as_str().unwrap().to_string();
    let mut alice = alice.with_header("X-CSRF-Token", &csrf);
    let body =
        serde_json::json!({"name": "sync", "scopes": ["api:read"], "days": 30, "password": PW2});
    let res = alice.send(
        b,
        "POST",
        "/api/v1/me/api-keys",
        Some(("application/json", &body.to_string())),
    );
    assert_eq!(res.status, 200, "{res:#?}");
    let key = res.json()["key"].as_str().unwrap().to_string();
    let mut bob = Agent::default();
    assert_eq!(bob.login(b, "bob", PW).status, 303);
    deployment.cli_ok(&["user", "disable", "carol"], None);

    // Alice keeps logging in, on one node then the other, while PostgreSQL goes down.
    let stop = AtomicBool::new(false);
    let (logged_in, answered) = mpsc::channel();
    let during = std::thread::scope(|s| {
        let logins = s.spawn(|| {
            let mut answers = Vec::new();
            for port in [a, b].into_iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut browser = Agent::default();
                let res = browser.login(port, "alice", PW2);
                let session = browser.jar.get("bulwark_session").map(str::to_string);
                answers.push((res.status, session));
                let _ = logged_in.send(());
            }
            answers
        });
        // A few logins on each node first, then the crash while the next is under way.
        for _ in 0..4 {
            answered.recv_timeout(DEADLINE).unwrap();
        }
        cluster.crash();
        let checks: Vec<_> = nodes
            .iter()
            .map(|node| {
                let alice = alice.clone();
                let key = key.as_str();
                s.spawn(move || assert_unavailable(node.port, alice, key))
            })
            .collect();
        for check in checks {
            check.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        logins.join().unwrap()
    });
    for node in &mut nodes {
        assert!(node.running(), "node {} exited: {}", node.port, node.log());
    }
    // Each login was let in, its session committed, or refused with 503: never a 500.
    let statuses: Vec<u16> = during.iter().map(|(status, _)| *status).collect();
    assert!(
        statuses.iter().all(|s| [303, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");

    cluster.start_again();
    // The nodes reconnect by themselves: no restart, no signal.
    for node in &nodes {
        node.wait_healthy();
    }
    // Sessions made before the crash are still there, up to the last login let in before it.
    for (status, session) in &during {
        if *status == 303 {
            let mut browser = Agent::default();
            let session = session.as_deref().unwrap();
            browser.jar.set("bulwark_session", session);
            let page = browser.get(b, "/account");
            assert_eq!(page.status, 200, "{page:#?}");
        }
    }
    for port in [a, b] {
        let page = alice.get(port, "/account");
        assert_eq!(page.status, 200, "{page:#?}");
        assert!(page.body.contains("<dd>alice</dd>"), "{}", page.body);
        let page = bob.get(port, "/account");
        assert_eq!(page.status, 200, "{page:#?}");
    }
    // The new password, not the old one; the key; carol still disabled.
    let mut fresh = Agent::default();
    assert_eq!(fresh.login(b, "alice", PW).status, 401);
    let res = fresh.login(b, "alice", PW2);
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/account");
    let bearer = format!("Bearer {key}");
    let res = http(a, "GET", "/api/v1/me", &[("Authorization", &bearer)], None).unwrap();
    assert_eq!(res.status, 200, "{res:#?}");
    assert_eq!(res.json()["login"], "alice", "{res:#?}");
    assert_eq!(Agent::default().login(a, "carol", PW).status, 401);
    // And the audit log holds every event, its chain whole.
    let out = deployment.cli_ok(&["audit", "verify"], None);
    assert!(out.starts_with("audit log intact: "), "{out}");
    let events = deployment.cli_ok(&["audit", "list", "--subject", "alice"], None);
    for event in ["password_change", "api_key_created"] {
        assert!(events.contains(event), "{event} in:\n{events}");
    }
    assert!(deployment
        .cli_ok(&["audit", "list", "--event", "user_disabled"], None)
        .contains("subject=carol"));
    for node in &mut nodes {
        assert!(node.running());
        assert!(!node.log().contains("panicked"), "{}", node.log());
    }
}
