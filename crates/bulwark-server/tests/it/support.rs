//! An in-process Bulwark with a manual clock, a fresh store and a cookie-keeping browser.
//!
//! The store is a temp SQLite file, or a fresh PostgreSQL database when
//! `TEST_STORE=postgres` (on the server in `TEST_POSTGRES_URL`):
//! `scripts/test` runs this suite both ways.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use bulwark_server::app::App;
use bulwark_server::clock::{Clock, ManualClock};
use bulwark_server::config::{CliOverrides, Config};
use bulwark_server::mail::Transport;
use bulwark_server::services::users::NewUserInput;
use bulwark_server::services::ClientInfo;
use bulwark_server::web::Web;
use bulwark_store::{Store, UserRecord};
use bulwark_store_sqlite::SqliteStore;
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// The fixed start time of every test (2027-01-15).
pub const T0: i64 = 1_800_000_000;

pub struct TestApp {
    pub app: App,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    router: Web,
    outbox: PathBuf,
    /// The PostgreSQL database's URL when the app runs on one it made.
    postgres_url: Option<String>,
    _dir: tempfile::TempDir,
}

/// Which backend this run tests: `TEST_STORE` = `sqlite` (default) or `postgres`.
pub fn on_postgres() -> bool {
    match std::env::var("TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("TEST_STORE must be sqlite or postgres, not {other:?}"),
    }
}

/// Whether `TEST_POSTGRES_URL` names a server, for the tests that need PostgreSQL whatever
/// `TEST_STORE` says (several nodes, a database outage). Without one they return early with
/// a note; `scripts/test` and `scripts/with-postgres` start a server and set it.
pub fn postgres_configured() -> bool {
    let var = bulwark_store_postgres::testing::URL_VAR;
    if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
        return true;
    }
    let thread = std::thread::current();
    eprintln!(
        "skipped {}: {var} is not set (run it under scripts/with-postgres)",
        thread.name().unwrap_or("this test")
    );
    false
}

/// A fresh, migrated store of the backend under test, and its URL on PostgreSQL.
async fn fresh_store(dir: &std::path::Path) -> (Arc<dyn Store>, Option<String>) {
    if on_postgres() {
        let (store, url) = bulwark_store_postgres::testing::fresh_store_with_url().await;
        return (Arc::new(store), Some(url));
    }
    let store = SqliteStore::open(&dir.join("bulwark.db"), 4).await.unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), None)
}

/// A node's own pool on the PostgreSQL database at `url`, migrated.
pub async fn postgres_store(url: &str) -> Arc<dyn Store> {
    let store = bulwark_store_postgres::PgStore::connect(
        url,
        bulwark_store_postgres::PoolSettings {
            max_connections: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

impl TestApp {
    /// An app where only admins must use 2FA, so foundation tests log in with a password.
    pub async fn new() -> Self {
        Self::with_config("").await
    }

    /// An app configured with extra TOML (on top of the defaults). Without a `[two_factor]`
    /// section only admins are under enforcement.
    pub async fn with_config(toml_text: &str) -> Self {
        let toml_text = if toml_text.contains("[two_factor]") {
            toml_text.to_string()
        } else {
            format!("{toml_text}\n[two_factor]\nenforcement = \"admins\"\n")
        };
        let dir = tempfile::tempdir().unwrap();
        let (store, postgres_url) = fresh_store(dir.path()).await;
        let mut app = Self::assemble(&toml_text, store, dir).await;
        app.postgres_url = postgres_url;
        app
    }

    /// An app on the given (migrated) store, configured like [`TestApp::with_config`].
    pub async fn with_store(toml_text: &str, store: Arc<dyn Store>) -> Self {
        Self::node(toml_text, store, bulwark_server::keys::KeyRing::generate()).await
    }

    /// One node of several sharing a store: the same configuration and server key on each,
    /// as a deployment must have, but its own state (clock, caches, connection pool).
    pub async fn node(
        toml_text: &str,
        store: Arc<dyn Store>,
        keys: bulwark_server::keys::KeyRing,
    ) -> Self {
        let toml_text = if toml_text.contains("[two_factor]") {
            toml_text.to_string()
        } else {
            format!("{toml_text}\n[two_factor]\nenforcement = \"admins\"\n")
        };
        Self::assemble_with_keys(&toml_text, store, tempfile::tempdir().unwrap(), keys).await
    }

    async fn assemble(toml_text: &str, store: Arc<dyn Store>, dir: tempfile::TempDir) -> Self {
        let keys = bulwark_server::keys::KeyRing::generate();
        Self::assemble_with_keys(toml_text, store, dir, keys).await
    }

    async fn assemble_with_keys(
        toml_text: &str,
        store: Arc<dyn Store>,
        dir: tempfile::TempDir,
        keys: bulwark_server::keys::KeyRing,
    ) -> Self {
        let file = dir.path().join("bulwark.toml");
        std::fs::write(&file, toml_text).unwrap();
        let overrides = CliOverrides {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let config = Config::load(Some(&file), &[], &overrides).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let outbox = dir.path().join("outbox");
        let app = App::new(config, store.clone(), clock.clone(), keys).unwrap();
        let router = bulwark_server::web::router(app.clone());
        Self {
            app,
            clock,
            store,
            router,
            outbox,
            postgres_url: None,
            _dir: dir,
        }
    }

    /// A browser with an empty cookie jar, connecting from `ip`.
    pub fn browser_from(&self, ip: &str) -> Browser {
        Browser {
            router: self.router.clone(),
            jar: Mutex::new(BTreeMap::new()),
            peer: format!("{ip}:40000").parse().unwrap(),
            headers: Vec::new(),
            user_agent: BROWSER_USER_AGENT,
        }
    }

    /// The SQLite file behind the app (SQLite runs only).
    pub fn database_path(&self) -> PathBuf {
        self._dir.path().join("bulwark.db")
    }

    /// Runs SQL on the app's database as an attacker with database access would: around the
    /// store, with the audit log's protecting triggers switched off first.
    /// A trigger running before each session delete, as someone with access to the database
    /// would add one: `plpgsql` is the body of its function on PostgreSQL, `sqlite` the body
    /// of the trigger on SQLite. To make ending sessions fail, or take its time.
    pub async fn before_session_deletes(&self, plpgsql: &str, sqlite: &str) {
        if on_postgres() {
            self.as_attacker(&format!(
                "CREATE FUNCTION before_session_delete() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN {plpgsql} END $$"
            ))
            .await;
            self.as_attacker(
                "CREATE TRIGGER before_session_deletes BEFORE DELETE ON sessions \
                 FOR EACH ROW EXECUTE FUNCTION before_session_delete()",
            )
            .await;
        } else {
            self.as_attacker(&format!(
                "CREATE TRIGGER before_session_deletes BEFORE DELETE ON sessions \
                 BEGIN {sqlite} END"
            ))
            .await;
        }
    }

    pub async fn as_attacker(&self, sql: &str) {
        match &self.postgres_url {
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                for statement in [
                    "ALTER TABLE audit_log DISABLE TRIGGER USER",
                    "ALTER TABLE audit_checkpoints DISABLE TRIGGER USER",
                    sql,
                ] {
                    sqlx::query(statement).execute(&pool).await.unwrap();
                }
                pool.close().await;
            }
            None => {
                let options =
                    sqlx::sqlite::SqliteConnectOptions::new().filename(self.database_path());
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                for statement in [
                    "DROP TRIGGER IF EXISTS audit_log_no_update",
                    "DROP TRIGGER IF EXISTS audit_log_no_delete",
                    "DROP TRIGGER IF EXISTS audit_checkpoints_no_update",
                    sql,
                ] {
                    sqlx::query(statement).execute(&pool).await.unwrap();
                }
                pool.close().await;
            }
        }
    }

    /// Serves the app on a loopback port, as `bulwark serve` does, until the test ends.
    pub async fn serve_on_loopback(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = self
            .router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
        addr
    }

    pub fn browser(&self) -> Browser {
        self.browser_from("192.0.2.10")
    }

    /// Creates a user through the service, as the CLI does.
    pub async fn add_user(&self, login: &str, password: &str, groups: &[&str]) -> UserRecord {
        self.app
            .add_user(
                NewUserInput {
                    login: login.into(),
                    email: Some(format!("{login}@example.com")),
                    display_name: format!("{login} tester"),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    password: Some(password.into()),
                    must_change_password: false,
                },
                "test",
                &ClientInfo::cli(),
            )
            .await
            .unwrap()
    }

    /// The audit events named `event` (at most 100), newest first.
    pub async fn audit_events(&self, event: &str) -> Vec<bulwark_store::AuditRecord> {
        self.store
            .list_audit(&bulwark_store::AuditFilter {
                event: Some(event.into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// Delivers queued mail to the outbox directory and returns every message there.
    pub async fn mails(&self) -> Vec<Mail> {
        self.app
            .mailer
            .deliver_due(&Transport::Outbox(self.outbox.clone()), self.clock.now())
            .await;
        let mut mails = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.outbox) {
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect();
            paths.sort();
            for p in paths {
                mails.push(Mail::parse(&std::fs::read_to_string(p).unwrap()));
            }
        }
        mails
    }

    /// Waits (bounded) until `n` mails are queued: some are sent from a background task.
    pub async fn wait_for_queued_mail(&self, n: usize) {
        for _ in 0..200 {
            if self.store.list_due_mail(i64::MAX, 100).await.unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("expected {n} queued mails");
    }
}

/// A delivered message, decoded enough for assertions.
#[derive(Debug)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    /// Raw text with quoted-printable soft breaks undone.
    pub text: String,
}

impl Mail {
    fn parse(raw: &str) -> Self {
        let header = |name: &str| {
            raw.lines()
                .find(|l| {
                    l.to_ascii_lowercase()
                        .starts_with(&format!("{}:", name.to_ascii_lowercase()))
                })
                .map(|l| l[name.len() + 1..].trim().to_string())
                .unwrap_or_default()
        };
        let text = raw
            .replace("=\r\n", "")
            .replace("=\n", "")
            .replace("=3D", "=");
        Self {
            to: header("To"),
            subject: header("Subject"),
            text,
        }
    }

    /// The first link in the message starting with `prefix` (e.g. the public URL + path).
    pub fn link(&self, path_prefix: &str) -> Option<String> {
        let start = self.text.find(path_prefix)?;
        let rest = &self.text[start..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == '<')
            .unwrap_or(rest.len());
        Some(rest[..end].to_string())
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// The `Set-Cookie` line for a cookie name, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The CSRF token embedded in the page.
    pub fn csrf_token(&self) -> Option<String> {
        let marker = "name=\"csrf_token\" value=\"";
        let start = self.body.find(marker)? + marker.len();
        let end = self.body[start..].find('"')?;
        Some(self.body[start..start + end].to_string())
    }
}

/// A client that keeps cookies like a browser.
pub struct Browser {
    router: Web,
    jar: Mutex<BTreeMap<String, String>>,
    peer: SocketAddr,
    headers: Vec<(String, String)>,
    user_agent: &'static str,
}

/// The `User-Agent` a test browser presents unless told otherwise.
const BROWSER_USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36";

impl Browser {
    /// Sends every later request with this extra header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar.lock().unwrap().insert(name.into(), value.into());
    }

    /// The `Cookie` header this browser sends, if it holds any cookie.
    pub fn cookie_header(&self) -> Option<String> {
        let jar = self.jar.lock().unwrap();
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub fn clear_cookies(&self) {
        self.jar.lock().unwrap().clear();
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::USER_AGENT, self.user_agent);
        if let Some(cookies) = self.cookie_header() {
            req = req.header(header::COOKIE, cookies);
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut req = req.body(Body::from(body)).unwrap();
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes())
            .to_string();
        let response = Response {
            status,
            headers,
            body,
        };
        let mut jar = self.jar.lock().unwrap();
        for c in response.set_cookies() {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                jar.remove(k);
            } else {
                jar.insert(k.into(), v.into());
            }
        }
        response
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, None, Vec::new()).await
    }

    /// Posts exactly these fields (no CSRF token added).
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        let body = encode_form(fields);
        self.request(
            Method::POST,
            path,
            Some("application/x-www-form-urlencoded"),
            body.into_bytes(),
        )
        .await
    }

    /// A valid CSRF token for this browser (fetching the login page sets the cookie).
    pub async fn csrf(&self) -> String {
        self.get("/password/forgot")
            .await
            .csrf_token()
            .expect("page has a csrf token")
    }

    /// Posts the fields plus a valid CSRF token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Response {
        let token = self.csrf().await;
        let mut all = vec![("csrf_token", token.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    pub async fn login(&self, login: &str, password: &str) -> Response {
        self.post("/login", &[("login", login), ("password", password)])
            .await
    }
}

pub fn encode_form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl TestApp {
    /// A browser with an empty cookie jar, connecting from `ip` and presenting `user_agent`
    /// instead of the default Chrome-on-Linux one.
    pub fn browser_with_user_agent(&self, ip: &str, user_agent: &'static str) -> Browser {
        Browser {
            user_agent,
            ..self.browser_from(ip)
        }
    }
}

impl TestApp {
    /// Every message in the mail queue, oldest first, without delivering any. Unlike
    /// [`TestApp::mails`] it leaves the queue as it is, so no two messages share an id.
    pub async fn queued_mails(&self) -> Vec<Mail> {
        let mut queued = self.store.list_due_mail(i64::MAX, 10_000).await.unwrap();
        queued.sort_by_key(|m| m.id);
        queued
            .into_iter()
            .map(|m| Mail {
                to: m.to,
                subject: m.subject,
                text: m.body_text,
            })
            .collect()
    }
}
