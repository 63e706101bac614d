//! Real `bulwark` processes for the tests that need them (`cli`, `nodes`, `outage`): children
//! killed on drop, free loopback ports, commands run to completion under a deadline, a small
//! HTTP/1.1 client (one request per connection, redirects not followed) with a cookie jar,
//! and a deployment of `bulwark serve` nodes sharing one PostgreSQL database.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound of every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Processes

/// Kills the child when dropped, so a failing test never leaves a server running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `bulwark` command run from `cwd`, with no `BULWARK_*` variable of the caller's
/// environment leaking in.
pub fn bulwark(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulwark"));
    cmd.current_dir(cwd);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BULWARK_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The outcome of a finished command.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs a command to completion (killing it after [`DEADLINE`]), feeding it `stdin`.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Run {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn bulwark"));
    if let Some(text) = stdin {
        let mut pipe = child.0.stdin.take().expect("stdin pipe");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.0.stdout.take().expect("stdout pipe")));
    let err = drain(Box::new(child.0.stderr.take().expect("stderr pipe")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for bulwark") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "`{cmd:?}` did not finish within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `ready` every 50 ms until it holds; fails with `what` (evaluated then) after `limit`.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool, what: impl Fn() -> String) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{} (waited {limit:?})", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 client

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lowercased, in order, repeated headers kept.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location header in {self:#?}"))
    }

    pub fn set_cookies(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
    }

    /// The `Set-Cookie` header for `name`, if the response sets it.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies()
            .find(|c| c.split_once('=').is_some_and(|(n, _)| n.trim() == name))
    }

    pub fn retry_after(&self) -> i64 {
        self.header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After header in {self:#?}"))
            .parse()
            .expect("Retry-After is a number of seconds")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }
}

/// Sends one request to `127.0.0.1:port` and reads the whole answer (the connection is
/// closed after it). `body` is `(content type, text)`; reads time out after [`DEADLINE`].
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nUser-Agent: bulwark-process-tests\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    match body {
        Some((content_type, text)) => {
            req.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                text.len()
            ));
        }
        None if method != "GET" && method != "HEAD" => req.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    req.push_str("\r\n");
    req.push_str(body.map_or("", |(_, text)| text));
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("malformed response to {method} {path}")))
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect::<Option<_>>()?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Percent-encodes form fields (everything but unreserved characters).
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The CSRF token a page embeds in its forms.
pub fn csrf_in(page: &str) -> String {
    let marker = r#"name="csrf_token" value=""#;
    let start = page
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf_token field in:\n{page}"))
        + marker.len();
    let len = page[start..].find('"').expect("closing quote");
    let token = page[start..start + len].to_string();
    assert!(!token.is_empty(), "empty csrf_token in:\n{page}");
    token
}

/// The cookies a browser keeps for 127.0.0.1: host-only cookies are shared by every port.
#[derive(Debug, Default, Clone)]
pub struct Jar(BTreeMap<String, String>);

impl Jar {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.0.insert(name.into(), value.into());
    }

    /// The value of a `Cookie` header, empty when the jar is.
    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Keeps what the response sets and drops what it expires; returns the cookies it set.
    pub fn absorb(&mut self, res: &Response) -> Vec<(String, String)> {
        let mut set = Vec::new();
        for line in res.set_cookies() {
            let mut attrs = line.split(';');
            let Some((name, value)) = attrs.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            if attrs.any(|a| a.trim().eq_ignore_ascii_case("max-age=0")) {
                self.0.remove(&name);
            } else {
                self.0.insert(name.clone(), value.clone());
                set.push((name, value));
            }
        }
        set
    }
}

/// A browser in front of several nodes: one cookie jar for all their ports, as a browser
/// behind a load balancer has. Redirects are not followed.
#[derive(Debug, Default, Clone)]
pub struct Agent {
    pub jar: Jar,
    /// Sent with every request.
    headers: Vec<(String, String)>,
}

impl Agent {
    /// Sends every later request with this extra header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn send(
        &mut self,
        port: u16,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> Response {
        let cookie = self.jar.header();
        let mut headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if !cookie.is_empty() {
            headers.push(("Cookie", &cookie));
        }
        let res = http(port, method, path, &headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"));
        self.jar.absorb(&res);
        res
    }

    pub fn get(&mut self, port: u16, path: &str) -> Response {
        self.send(port, "GET", path, None)
    }

    /// Posts exactly these fields (no CSRF token added).
    pub fn post(&mut self, port: u16, path: &str, fields: &[(&str, &str)]) -> Response {
        let form = form_encode(fields);
        self.send(
            port,
            "POST",
            path,
            Some(("application/x-www-form-urlencoded", &form)),
        )
    }

    /// GETs a page that must render (200) and returns its CSRF token.
    pub fn csrf(&mut self, port: u16, page: &str) -> String {
        let res = self.get(port, page);
        assert_eq!(res.status, 200, "GET {page} on port {port}: {res:#?}");
        csrf_in(&res.body)
    }

    /// Opens `page` for its CSRF token and posts `fields` with it to `action`, as a person
    /// filling in the form does.
    pub fn submit(
        &mut self,
        port: u16,
        page: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Response {
        let csrf = self.csrf(port, page);
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(port, action, &all)
    }

    /// Posts the login form.
    pub fn login(&mut self, port: u16, login: &str, password: &str) -> Response {
        self.submit(
            port,
            "/login",
            "/login",
            &[("login", login), ("password", password)],
        )
    }
}

// ---------------------------------------------------------------------------------------
// Nodes of one deployment

/// What every node of one deployment shares: a PostgreSQL database, the server key and the
/// configuration file. Each node and the operator's commands get a data directory of their
/// own, as on machines of their own.
pub struct Deployment {
    dir: tempfile::TempDir,
    url: String,
    key: String,
    config: PathBuf,
}

impl Deployment {
    /// A deployment on the (possibly empty) database at `url`, configured with `config`.
    pub fn new(url: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("bulwark.toml");
        std::fs::write(&path, config).expect("write the configuration");
        Self {
            dir,
            url: url.to_string(),
            key: bulwark_server::keys::KeyRing::generate().to_text(),
            config: path,
        }
    }

    /// `bulwark ARGS…` with the deployment's configuration, key and database, on a data
    /// directory of its own under `name`.
    fn command(&self, name: &str) -> Command {
        let data = self.dir.path().join(name);
        std::fs::create_dir_all(&data).expect("a data directory");
        let mut cmd = bulwark(&data);
        cmd.env("BULWARK_SECRET_KEY", &self.key)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&data)
            .arg("--database-url")
            .arg(&self.url);
        cmd
    }

    /// Runs an operator's command (`user add …`, `audit verify`) against the database.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run(self.command("cli").args(args), stdin)
    }

    /// Runs an operator's command that must succeed; returns its standard output.
    pub fn cli_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let r = self.cli(args, stdin);
        assert!(r.success(), "bulwark {args:?} failed: {r:?}");
        r.stdout
    }

    /// Creates a user of the `internal` group with a password through the CLI.
    pub fn add_user(&self, login: &str, password: &str) {
        let email = format!("{login}@example.com");
        self.cli_ok(
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
    }

    /// Starts `count` `serve` processes at once, each on a free loopback port; returns once
    /// every one answers `/healthz` with 200.
    pub fn start_nodes(&self, count: usize) -> Vec<Node> {
        let nodes: Vec<Node> = (0..count).map(|_| self.spawn_node()).collect();
        for node in &nodes {
            node.wait_healthy();
        }
        nodes
    }

    fn spawn_node(&self) -> Node {
        let port = free_port();
        let name = format!("node-{port}");
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = File::create(&log).expect("create the node's log");
        let child = self
            .command(&name)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn bulwark serve");
        Node {
            child: ChildGuard(child),
            port,
            log,
        }
    }
}

/// A running `bulwark serve`, killed when dropped.
pub struct Node {
    child: ChildGuard,
    pub port: u16,
    log: PathBuf,
}

impl Node {
    /// The status of `GET /healthz`, or None when nothing answers.
    pub fn health(&self) -> Option<u16> {
        http(self.port, "GET", "/healthz", &[], None)
            .ok()
            .map(|r| r.status)
    }

    /// Waits (at most [`DEADLINE`]) until `/healthz` answers 200.
    pub fn wait_healthy(&self) {
        wait_until(
            DEADLINE,
            || self.health() == Some(200),
            || format!("node {} not healthy; its log:\n{}", self.port, self.log()),
        );
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// What it wrote on standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
