//! Bulwark behind real reverse proxies, with the configuration files users copy
//! (`deploy/nginx/bulwark-odoo.conf`, `deploy/caddy/Caddyfile`) used as they are: `bulwark
//! serve`, an Odoo-like upstream, nginx or Caddy, a browser with a cookie jar and Python's
//! `xmlrpc.client`, all on loopback, every process stopped when its test ends.
//!
//! nginx, Caddy and python3 must be installed: `scripts/test` installs them. A missing one
//! fails the test rather than skipping it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use bulwark_core::totp::{self, TotpParams, TotpSecret};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bound of every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);
const LOGIN: &str = "alice";
const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
/// Every identity header the upstream should see for alice, as it echoes them.
const ALICE: [&str; 4] = [
    "remote-email: alice@example.com",
    "remote-groups: internal",
    "remote-name: Alice Martin",
    "remote-user: alice",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn repo_file(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

const NGINX_CONF: &str = "deploy/nginx/bulwark-odoo.conf";
const CADDYFILE: &str = "deploy/caddy/Caddyfile";

// ---------------------------------------------------------------------------------------
// Processes

/// Kills the child when dropped, so a failing test never leaves a server running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of a program the tests need, from `PATH` or `/usr/sbin` (where Debian puts
/// nginx, and which is not in every user's `PATH`).
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (looked in PATH and /usr/sbin): these tests need it. \
                 scripts/test installs it (Debian package `{package}`)."
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Waits until `port` accepts connections, failing with `log` if `child` exits first.
fn wait_listening(child: &mut ChildGuard, port: u16, what: &str, log: &Path) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            panic!(
                "{what} exited ({status}) before listening on {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what} did not listen on {port} within {DEADLINE:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs a command to completion (killed after [`DEADLINE`]); returns (success, stdout, stderr).
fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
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
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "`{cmd:?}` did not finish within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

// ---------------------------------------------------------------------------------------
// Bulwark

/// A running `bulwark serve` with the Odoo rules, protecting the proxy at `proxy_port`.
struct Bulwark {
    _child: ChildGuard,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    /// An API key of alice's with the `gateway` scope, made with `bulwark apikey create`.
    api_key: String,
}

impl Bulwark {
    fn start(dir: &Path, proxy_port: u16) -> Self {
        let port = free_port();
        let config = dir.join("bulwark.toml");
        // The Odoo example of docs/gateway.md, with the proxy's loopback origin as the
        // application, 127.0.0.2 as the office network and nobody required to use 2FA by
        // group (the `two_factor` rule asks for it).
        let text = format!(
            r#"data_dir = "{data}"

[server]
listen = "127.0.0.1:{port}"
trusted_proxies = ["127.0.0.1"]

[two_factor]
enforcement = "admins"

[gateway]
protected = ["http://127.0.0.1:{proxy_port}"]
default_policy = "deny"
# Far longer than the tests wait: what a CLI command revokes stops passing through the
# audit sync, not by the cached check expiring.
cache_seconds = 60

[[gateway.rules]]
hosts = ["127.0.0.1"]
paths = ["/web/static/*"]
policy = "bypass"

[[gateway.rules]]
hosts = ["127.0.0.1"]
paths = ["/xmlrpc/*", "/jsonrpc"]
networks = ["127.0.0.2/32"]
policy = "bypass"

[[gateway.rules]]
hosts = ["127.0.0.1"]
paths = ["/xmlrpc/*", "/jsonrpc"]
policy = "api_key"

[[gateway.rules]]
hosts = ["127.0.0.1"]
policy = "two_factor"
"#,
            data = dir.join("data").display(),
        );
        std::fs::write(&config, text).unwrap();
        let bulwark = |args: &[&str]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulwark"));
            cmd.current_dir(dir).arg("--config").arg(&config).args(args);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("BULWARK_") {
                    cmd.env_remove(name);
                }
            }
            cmd
        };
        let (ok, out, err) = run(
            &mut bulwark(&[
                "user",
                "add",
                LOGIN,
                "--email",
                "alice@example.com",
                "--name",
                "Alice Martin",
                "--group",
                "internal",
                "--password-stdin",
            ]),
            Some(&format!("{PASSWORD}\n")),
        );
        assert!(ok, "user add failed:\n{out}\n{err}");
        let (ok, api_key, err) = run(
            &mut bulwark(&[
                "apikey",
                "create",
                LOGIN,
                "--name",
                "odoo-script",
                "--scope",
                "gateway",
            ]),
            None,
        );
        assert!(ok, "apikey create failed:\n{api_key}\n{err}");
        let api_key = api_key.trim().to_string();
        assert!(api_key.starts_with("bwk_"), "{api_key}");

        let log = dir.join("bulwark.log");
        let mut child = ChildGuard(
            bulwark(&["serve"])
                .stdin(Stdio::null())
                .stdout(File::create(dir.join("bulwark.out")).unwrap())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .expect("spawn bulwark serve"),
        );
        wait_listening(&mut child, port, "bulwark serve", &log);
        let started = Instant::now();
        while http(port, "GET", "/healthz", &[], None).status != 200 {
            assert!(started.elapsed() < DEADLINE, "/healthz never answered 200");
            std::thread::sleep(Duration::from_millis(25));
        }
        Self {
            _child: child,
            port,
            dir: dir.to_path_buf(),
            config,
            api_key,
        }
    }

    /// Runs a `bulwark` admin command against this server's configuration.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulwark"));
        cmd.current_dir(&self.dir)
            .arg("--config")
            .arg(&self.config)
            .args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BULWARK_") {
                cmd.env_remove(name);
            }
        }
        run(&mut cmd, None)
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------------------
// The Odoo-like upstream

/// One request the upstream served.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Headers whose name reads as `remote-…` once `_` is taken for `-` (as WSGI does),
    /// as `name: value`, names lowercased, sorted.
    identity: Vec<String>,
}

/// A tiny stand-in for Odoo on a loopback port: `/web…` pages, static files, XML-RPC and
/// JSON-RPC, each answer echoing the identity headers it received.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let seen = Arc::clone(&seen);
                            std::thread::spawn(move || serve_odoo(stream, &seen));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Self {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Every request so far for exactly `path`.
    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen_if(|p| p == path)
    }

    /// Every request so far whose path starts with `prefix`.
    fn seen_under(&self, prefix: &str) -> Vec<Seen> {
        self.seen_if(|p| p.starts_with(prefix))
    }

    fn seen_if(&self, keep: impl Fn(&str) -> bool) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| keep(&s.path))
            .cloned()
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request as the upstream received it.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.x request.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut body = raw[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&buf[..n]);
        }
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&buf[..n]);
        }
        body = dechunk(&body)?;
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn serve_odoo(mut stream: TcpStream, seen: &Mutex<Vec<Seen>>) {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let Some(Request {
        method,
        target,
        headers,
        body,
    }) = read_request(&mut stream)
    else {
        return;
    };
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut identity: Vec<String> = headers
        .iter()
        .filter(|(n, _)| {
            n.to_ascii_lowercase()
                .replace('_', "-")
                .starts_with("remote-")
        })
        .map(|(n, v)| format!("{}: {v}", n.to_ascii_lowercase()))
        .collect();
    identity.sort();
    let remote_user = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("remote-user"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        identity: identity.clone(),
    });
    let echo: String = identity.iter().map(|l| format!("{l}\n")).collect();
    let body = String::from_utf8_lossy(&body);
    let (status, kind, text) = match path.as_str() {
        "/web" | "/web/login" | "/websocket" => {
            ("200 OK", "text/plain", format!("odoo {path}\n{echo}"))
        }
        p if p.starts_with("/web/static/") => ("200 OK", "text/css", format!("/* {p} */\n")),
        "/xmlrpc/2/common" if method == "POST" => {
            let call = between(&body, "<methodName>", "</methodName>").unwrap_or_default();
            if call == "version" {
                ("200 OK", "text/xml", xmlrpc_version(&remote_user))
            } else {
                (
                    "200 OK",
                    "text/xml",
                    xmlrpc_fault(&format!("no method {call}")),
                )
            }
        }
        "/xmlrpc/2/object" if method == "POST" => (
            "200 OK",
            "text/xml",
            "<?xml version=\"1.0\"?>\n<methodResponse><params><param><value><array><data>\
             </data></array></value></param></params></methodResponse>\n"
                .to_string(),
        ),
        "/jsonrpc" if method == "POST" => (
            "200 OK",
            "application/json",
            format!(
                "{{\"jsonrpc\": \"2.0\", \"id\": null, \"result\": {{\"server_version\": \"17.0\", \
                 \"remote_user\": \"{remote_user}\"}}}}\n"
            ),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// What Odoo's `common.version()` answers, plus the identity the upstream saw.
fn xmlrpc_version(remote_user: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><params><param><value><struct>\
         <member><name>server_version</name><value><string>17.0</string></value></member>\
         <member><name>server_serie</name><value><string>17.0</string></value></member>\
         <member><name>protocol_version</name><value><int>1</int></value></member>\
         <member><name>remote_user</name><value><string>{remote_user}</string></value></member>\
         </struct></value></param></params></methodResponse>\n"
    )
}

fn xmlrpc_fault(message: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><fault><value><struct>\
         <member><name>faultCode</name><value><int>1</int></value></member>\
         <member><name>faultString</name><value><string>{message}</string></value></member>\
         </struct></value></fault></methodResponse>\n"
    )
}

// ---------------------------------------------------------------------------------------
// The proxies

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Nginx,
    Caddy,
}

/// Replaces each placeholder of a deploy file; every one must occur and none may remain.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    for (name, value) in values {
        assert!(text.contains(name), "the template has no {name}");
        text = text.replace(name, value);
    }
    assert!(
        !text.contains("__"),
        "a placeholder was left unfilled:\n{text}"
    );
    text
}

/// Starts the proxy on `port` in front of `upstream`, asking `bulwark`.
fn start_proxy(kind: Proxy, dir: &Path, port: u16, bulwark: u16, upstream: u16) -> ChildGuard {
    let odoo = format!("127.0.0.1:{upstream}");
    let bulwark = format!("127.0.0.1:{bulwark}");
    let log = dir.join(format!("{kind:?}.log").to_lowercase());
    match kind {
        Proxy::Nginx => {
            let site = fill(
                &repo_file(NGINX_CONF),
                &[
                    ("__LISTEN__", format!("127.0.0.1:{port}")),
                    ("__SERVER_NAME__", "127.0.0.1".into()),
                    ("__BULWARK__", bulwark),
                    ("__ODOO_WS__", odoo.clone()),
                    ("__ODOO__", odoo),
                ],
            );
            let d = dir.display();
            let conf = dir.join("nginx.conf");
            std::fs::write(
                &conf,
                format!(
                    "events {{\n    worker_connections 64;\n}}\n\nhttp {{\n    access_log off;\n    \
                     client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n    \
                     fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
                     scgi_temp_path {d}/scgi;\n\n{site}\n}}\n"
                ),
            )
            .unwrap();
            let mut child = ChildGuard(
                Command::new(tool("nginx", "nginx"))
                    .arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(&log)
                    .arg("-g")
                    // One process, so that killing it stops nginx entirely.
                    .arg(format!(
                        "daemon off; master_process off; pid {d}/nginx.pid;"
                    ))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(File::create(dir.join("nginx.stderr")).unwrap())
                    .spawn()
                    .expect("spawn nginx"),
            );
            wait_listening(&mut child, port, "nginx", &log);
            child
        }
        Proxy::Caddy => {
            let site = fill(
                &repo_file(CADDYFILE),
                &[
                    ("__SITE__", format!("http://127.0.0.1:{port}")),
                    ("__BULWARK__", bulwark),
                    ("__ODOO_WS__", odoo.clone()),
                    ("__ODOO__", odoo),
                ],
            );
            let home = dir.join("caddy-home");
            std::fs::create_dir_all(&home).unwrap();
            let file = dir.join("Caddyfile");
            std::fs::write(
                &file,
                format!(
                    "{{\n\tauto_https off\n\tadmin off\n\tdefault_bind 127.0.0.1\n\t\
                     storage file_system {}\n}}\n\n{site}",
                    home.join("storage").display()
                ),
            )
            .unwrap();
            let mut child = ChildGuard(
                Command::new(tool("caddy", "caddy"))
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&file)
                    .env("HOME", &home)
                    .env("XDG_CONFIG_HOME", home.join("config"))
                    .env("XDG_DATA_HOME", home.join("data"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(File::create(&log).unwrap())
                    .spawn()
                    .expect("spawn caddy"),
            );
            wait_listening(&mut child, port, "caddy", &log);
            child
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 client

#[derive(Debug)]
struct Response {
    status: u16,
    /// Names lowercased, in order, repeated headers kept.
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location header in {self:#?}"))
    }

    fn set_cookies(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection. `headers` go out as written (any spelling).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         User-Agent: bulwark-proxy-tests\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some((kind, text)) = body {
        req.push_str(&format!(
            "Content-Type: {kind}\r\nContent-Length: {}\r\n",
            text.len()
        ));
    }
    req.push_str("\r\n");
    if let Some((_, text)) = body {
        req.push_str(text);
    }
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path} on {port}: {e}"));
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "malformed response to {method} {path} on {port}: {}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.splitn(3, ' ');
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

fn encode(s: &str) -> String {
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

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], s.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The CSRF token a page embeds in its forms.
fn csrf_in(page: &Response) -> String {
    between(&page.body, r#"name="csrf_token" value=""#, "\"")
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("no csrf_token field in {page:#?}"))
        .to_string()
}

/// A browser on 127.0.0.1: one cookie jar for every port, as browsers share host-only
/// cookies across the ports of one host. Redirects are not followed.
#[derive(Default)]
struct Browser {
    jar: BTreeMap<String, String>,
}

impl Browser {
    fn send(
        &mut self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        fields: Option<&[(&str, &str)]>,
    ) -> Response {
        let cookie = self
            .jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut all = headers.to_vec();
        if !cookie.is_empty() {
            all.push(("Cookie", &cookie));
        }
        let body = fields.map(form);
        let res = http(
            port,
            method,
            path,
            &all,
            body.as_deref()
                .map(|b| ("application/x-www-form-urlencoded", b)),
        );
        for set in res.set_cookies() {
            let mut attrs = set.split(';');
            let Some((name, value)) = attrs.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            if attrs.any(|a| a.trim().eq_ignore_ascii_case("max-age=0")) {
                self.jar.remove(&name);
            } else {
                self.jar.insert(name, value);
            }
        }
        res
    }

    fn get(&mut self, port: u16, path: &str) -> Response {
        self.send(port, "GET", path, &[], None)
    }

    fn post(&mut self, port: u16, path: &str, fields: &[(&str, &str)]) -> Response {
        self.send(port, "POST", path, &[], Some(fields))
    }

    /// GETs a page that must render (200) and returns its CSRF token.
    fn csrf(&mut self, port: u16, path: &str) -> String {
        let page = self.get(port, path);
        assert_eq!(page.status, 200, "GET {path}: {page:#?}");
        csrf_in(&page)
    }
}

// ---------------------------------------------------------------------------------------
// TOTP and XML-RPC clients

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The code of the time step `offset` steps from now (a step is accepted once, ±1 around
/// the server's clock).
fn code(secret: &TotpSecret, offset: u64) -> String {
    totp::generate(
        secret,
        &TotpParams::default(),
        totp::time_step(now(), 30) + offset,
    )
}

/// Calls `common.version()` like an Odoo script does, from the source address `source`,
/// with `Authorization: Bearer KEY` when a key is given. Prints one JSON line: the result,
/// or the HTTP error of the call.
const XMLRPC_CLIENT: &str = r#"
import http.client, json, sys, xmlrpc.client

url, source = sys.argv[1], sys.argv[2]
key = sys.argv[3] if len(sys.argv) > 3 else ""

class BoundTransport(xmlrpc.client.Transport):
    """Connects from a chosen local address (the office network of the access rules)."""
    def make_connection(self, host):
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, _ = self.get_host_info(host)
        self._connection = host, http.client.HTTPConnection(
            chost, timeout=10, source_address=(source, 0))
        return self._connection[1]

    def send_headers(self, connection, headers):
        if key:
            headers = list(headers) + [("Authorization", "Bearer " + key)]
        super().send_headers(connection, headers)

common = xmlrpc.client.ServerProxy(url + "/xmlrpc/2/common", transport=BoundTransport())
try:
    print(json.dumps({"result": common.version()}))
except xmlrpc.client.ProtocolError as e:
    # The headers come as a plain dict, names spelled as the server sent them.
    headers = {name.lower(): value for name, value in e.headers.items()}
    print(json.dumps({"status": e.errcode,
                      "www_authenticate": headers.get("www-authenticate"),
                      "location": headers.get("location")}))
"#;

fn xmlrpc_version_call(proxy_port: u16, source: &str) -> String {
    xmlrpc_version_call_with_key(proxy_port, source, "")
}

fn xmlrpc_version_call_with_key(proxy_port: u16, source: &str, key: &str) -> String {
    let (ok, out, err) = run(
        Command::new(tool("python3", "python3"))
            .arg("-c")
            .arg(XMLRPC_CLIENT)
            .arg(format!("http://127.0.0.1:{proxy_port}"))
            .arg(source)
            .arg(key),
        None,
    );
    assert!(ok, "the XML-RPC client failed:\n{out}\n{err}");
    out.trim().to_string()
}

// ---------------------------------------------------------------------------------------
// The journeys

/// Everything one test runs: Bulwark, the upstream and one proxy, stopped on drop.
struct Stack {
    bulwark: Bulwark,
    upstream: Upstream,
    _proxy: ChildGuard,
    proxy_port: u16,
    _dir: tempfile::TempDir,
}

impl Stack {
    fn start(kind: Proxy) -> Self {
        // Fail early, before anything starts, when a tool is missing.
        tool("python3", "python3");
        match kind {
            Proxy::Nginx => tool("nginx", "nginx"),
            Proxy::Caddy => tool("caddy", "caddy"),
        };
        let dir = tempfile::tempdir().unwrap();
        let proxy_port = free_port();
        let bulwark = Bulwark::start(dir.path(), proxy_port);
        let upstream = Upstream::start();
        let proxy = start_proxy(kind, dir.path(), proxy_port, bulwark.port, upstream.port);
        Self {
            bulwark,
            upstream,
            _proxy: proxy,
            proxy_port,
            _dir: dir,
        }
    }

    fn app_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proxy_port)
    }

    /// Asserts a redirect to the portal's login that returns to `url` afterwards.
    fn assert_sent_to_login(&self, res: &Response, url: &str) {
        assert_eq!(res.status, 302, "{res:#?}");
        let prefix = format!("{}/login?next=", self.bulwark.base());
        let next = res
            .location()
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("not a login redirect: {res:#?}"));
        assert_eq!(decode(next), url);
    }
}

fn journeys(kind: Proxy) {
    let s = Stack::start(kind);
    let (app, portal) = (s.proxy_port, s.bulwark.port);
    let original = s.app_url("/web?debug=1");

    // An anonymous browser is sent to the portal, which will send it back.
    let mut b = Browser::default();
    let res = b.get(app, "/web?debug=1");
    s.assert_sent_to_login(&res, &original);
    let login_page = res
        .location()
        .strip_prefix(&s.bulwark.base())
        .unwrap()
        .to_string();
    assert!(s.upstream.seen("/web").is_empty(), "Odoo was not reached");

    // Password login: back to Odoo, which needs a second factor alice does not have yet.
    let csrf = b.csrf(portal, &login_page);
    let res = b.post(
        portal,
        "/login",
        &[
            ("csrf_token", &csrf),
            ("login", LOGIN),
            ("password", PASSWORD),
            ("next", &original),
        ],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), original);
    let res = b.get(app, "/web?debug=1");
    assert_eq!(res.status, 302, "{res:#?}");
    let prompt = format!(
        "{}/account/security?prompt=required&next=",
        s.bulwark.base()
    );
    assert!(res.location().starts_with(&prompt), "{res:#?}");
    assert!(s.upstream.seen("/web").is_empty());

    // Enrolment on the page the gateway sent her to: password, key off the page, a code.
    let security = res.location().strip_prefix(&s.bulwark.base()).unwrap();
    let csrf = b.csrf(portal, security);
    let res = b.post(
        portal,
        "/account/security/enrol",
        &[("csrf_token", &csrf), ("password", PASSWORD)],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    let page = b.get(portal, "/account/security");
    let key = between(&page.body, "<p class=\"secret\"><code>", "</code>")
        .unwrap_or_else(|| panic!("no key on the page: {page:#?}"));
    let secret = TotpSecret::from_base32(key).unwrap();
    let res = b.post(
        portal,
        "/account/security/confirm",
        &[("csrf_token", &csrf_in(&page)), ("code", &code(&secret, 0))],
    );
    assert_eq!(res.status, 200, "{res:#?}");
    assert!(res.body.contains("<li><code>"), "recovery codes: {res:#?}");

    // Log out, then the whole way again: password and TOTP code, back to Odoo.
    let csrf = b.csrf(portal, "/account");
    let res = b.post(portal, "/logout", &[("csrf_token", &csrf)]);
    assert_eq!(res.status, 303, "{res:#?}");
    let res = b.get(app, "/web?debug=1");
    s.assert_sent_to_login(&res, &original);
    let csrf = b.csrf(portal, &login_page);
    let res = b.post(
        portal,
        "/login",
        &[
            ("csrf_token", &csrf),
            ("login", LOGIN),
            ("password", PASSWORD),
            ("next", &original),
        ],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    let second_step = res.location().to_string();
    assert!(second_step.starts_with("/login/2fa?next="), "{res:#?}");
    let csrf = b.csrf(portal, &second_step);
    let res = b.post(
        portal,
        "/login/2fa",
        &[
            ("csrf_token", &csrf),
            // The enrolment used this step's code: the next step's is new and in the window.
            ("code", &code(&secret, 1)),
            ("next", &original),
        ],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), original, "back where she started");

    // Odoo now opens, and it learns who she is from Bulwark only: identity headers the
    // browser made up (in either spelling) never reach it.
    let forged = [
        ("Remote-User", "mallory"),
        ("Remote_User", "mallory"),
        ("Remote-Groups", "admins"),
    ];
    let res = b.send(app, "GET", "/web?debug=1", &forged, None);
    assert_eq!(res.status, 200, "{res:#?}");
    assert!(res.body.starts_with("odoo /web\n"), "{}", res.body);
    let seen = s.upstream.seen("/web");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].identity, ALICE, "{kind:?}: {seen:?}");
    assert!(res.body.contains("remote-user: alice\n") && !res.body.contains("mallory"));
    let res = b.send(app, "GET", "/websocket", &forged, None);
    assert_eq!(res.status, 200, "{res:#?}");
    assert_eq!(s.upstream.seen("/websocket")[0].identity, ALICE);

    // Static files pass without a session, and without any identity.
    let mut anonymous = Browser::default();
    let res = anonymous.send(app, "GET", "/web/static/src/x.css", &forged, None);
    assert_eq!(res.status, 200, "{res:#?}");
    let seen = s.upstream.seen_under("/web/static/");
    assert_eq!(seen.len(), 1);
    assert!(seen[0].identity.is_empty(), "{kind:?}: {seen:?}");
    let res = anonymous.get(app, "/websocket");
    s.assert_sent_to_login(&res, &s.app_url("/websocket"));

    // XML-RPC: a script without an API key gets a 401 challenge, not a login page...
    let out = xmlrpc_version_call(app, "127.0.0.1");
    assert_eq!(
        out, r#"{"status": 401, "www_authenticate": "Bearer realm=\"bulwark\"", "location": null}"#,
        "{kind:?}"
    );
    let res = anonymous.send(
        app,
        "POST",
        "/jsonrpc",
        &forged,
        Some(&[("jsonrpc", "2.0")]),
    );
    assert_eq!(res.status, 401, "{res:#?}");
    assert_eq!(res.header("location"), None);
    assert!(s.upstream.seen_under("/xmlrpc/").is_empty() && s.upstream.seen("/jsonrpc").is_empty());
    // ...while from the office network (127.0.0.2) the call goes through, body and all.
    let out = xmlrpc_version_call(app, "127.0.0.2");
    assert_eq!(
        out,
        r#"{"result": {"server_version": "17.0", "server_serie": "17.0", "protocol_version": 1, "remote_user": ""}}"#,
        "{kind:?}"
    );
    let seen = s.upstream.seen("/xmlrpc/2/common");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");

    // With alice's API key in an Authorization header, the script gets through from anywhere,
    // and Odoo is told who it is; a wrong key, or the key once revoked, gets the challenge.
    let out = xmlrpc_version_call_with_key(app, "127.0.0.1", &s.bulwark.api_key);
    assert_eq!(
        out,
        r#"{"result": {"server_version": "17.0", "server_serie": "17.0", "protocol_version": 1, "remote_user": "alice"}}"#,
        "{kind:?}"
    );
    let challenge =
        r#"{"status": 401, "www_authenticate": "Bearer realm=\"bulwark\"", "location": null}"#;
    let mut wrong = s.bulwark.api_key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        xmlrpc_version_call_with_key(app, "127.0.0.1", &wrong),
        challenge
    );
    let (ok, out, err) = s.bulwark.cli(&["apikey", "revoke", LOGIN, "odoo-script"]);
    assert!(ok, "apikey revoke failed:\n{out}\n{err}");
    // The command is another process: the server learns of it from the audit log, which it
    // reads every second, not by its cached check expiring (cache_seconds = 60).
    let revoked_at = Instant::now();
    let mut passed_meanwhile = 0;
    loop {
        let out = xmlrpc_version_call_with_key(app, "127.0.0.1", &s.bulwark.api_key);
        if out == challenge {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "{kind:?}: a key revoked by the CLI still passes: {out}"
        );
        passed_meanwhile += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.upstream.seen("/xmlrpc/2/common").len(),
        2 + passed_meanwhile,
        "the refused call never reached Odoo"
    );

    // Logging out at the portal ends access at once: the old cookie, replayed, is sent to
    // log in again.
    let old = b.jar.clone();
    let csrf = b.csrf(portal, "/account");
    let res = b.post(portal, "/logout", &[("csrf_token", &csrf)]);
    assert_eq!(res.status, 303, "{res:#?}");
    let mut replay = Browser { jar: old };
    let res = replay.get(app, "/web?debug=1");
    s.assert_sent_to_login(&res, &original);
    assert_eq!(
        s.upstream.seen("/web").len(),
        1,
        "Odoo was not reached again"
    );
}

#[test]
fn nginx_auth_request_protects_odoo() {
    journeys(Proxy::Nginx);
}

#[test]
fn caddy_forward_auth_protects_odoo() {
    journeys(Proxy::Caddy);
}
/// docs/gateway.md shows the deploy files as they are, and their headers name every
/// placeholder the tests fill in.
#[test]
fn the_docs_carry_the_deploy_files_verbatim() {
    let docs = repo_file("docs/gateway.md");
    for (path, placeholders) in [
        (
            NGINX_CONF,
            &[
                "__LISTEN__",
                "__SERVER_NAME__",
                "__BULWARK__",
                "__ODOO__",
                "__ODOO_WS__",
            ][..],
        ),
        (
            CADDYFILE,
            &["__SITE__", "__BULWARK__", "__ODOO__", "__ODOO_WS__"][..],
        ),
    ] {
        let text = repo_file(path);
        assert!(
            docs.contains(&text),
            "docs/gateway.md does not contain {path} exactly as it is: copy it again"
        );
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let body: String = text
            .lines()
            .skip_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for p in placeholders {
            assert!(
                header.contains(p),
                "{path}: {p} is not explained at the top"
            );
            assert!(body.contains(p), "{path}: {p} is not used");
        }
        // Nothing else looks like a placeholder.
        let mut rest = body.as_str();
        while let Some(i) = rest.find("__") {
            let word: String = rest[i..]
                .chars()
                .skip(2)
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            let name = format!("__{}", word);
            assert!(
                placeholders.contains(&name.as_str()),
                "{path}: unknown placeholder {name}"
            );
            rest = &rest[i + name.len()..];
        }
    }
}
