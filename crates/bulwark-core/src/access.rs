//! Access rules of the gateway: which requests to protected applications pass, and with what.
//!
//! Rules are checked in order; the first rule whose every condition matches decides. A rule
//! with no condition of some kind (no hosts, say) matches every value of it. A request that
//! no rule matches gets the default policy, `deny` unless configured.
//!
//! Paths are matched after [`normalize_path`]: percent-decoding, dot segments and repeated
//! slashes are resolved first, so `/web/static/../../xmlrpc/2/object` is checked as
//! `/xmlrpc/2/object`, the path the application will serve.
//!
//! A rule that names subjects (users or groups) can only be decided once the requester is
//! known: for an anonymous request that matches such a rule on everything else, the answer
//! is [`Decision::NeedsIdentity`] (log in first, then decide again).

use ipnet::IpNet;
use regex::Regex;
use std::fmt;
use std::net::IpAddr;

/// What a matching rule asks of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Passes without any identity.
    Bypass,
    /// Refused.
    Deny,
    /// A logged-in session (password; a second factor if the user's own policy asks for it).
    OneFactor,
    /// A session that passed a second factor (or a browser trusted after one).
    TwoFactor,
    /// An API key with the `gateway` scope (for programs: XML-RPC, JSON-RPC).
    ApiKey,
}

impl Policy {
    /// Parses the configuration name of a policy.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bypass" => Self::Bypass,
            "deny" => Self::Deny,
            "one_factor" => Self::OneFactor,
            "two_factor" => Self::TwoFactor,
            "api_key" => Self::ApiKey,
            _ => return None,
        })
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Deny => "deny",
            Self::OneFactor => "one_factor",
            Self::TwoFactor => "two_factor",
            Self::ApiKey => "api_key",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host condition: `odoo.example.com` (exact) or `*.example.com` (any subdomain, not the
/// domain itself). Compared without case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its leading dot: `.example.com`.
    Subdomains(String),
}

impl HostPattern {
    /// Parses a host pattern; `None` if it is not a host name or `*.` pattern.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        // `[::1]` is written with brackets in URLs; targets carry the bare address.
        let s = match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner.to_string(),
            _ => s,
        };
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, s),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        let ip = name.parse::<IpAddr>().is_ok()
            || name.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        match (wild, valid || ip) {
            (_, false) => None,
            (true, true) if ip => None,
            (true, true) => Some(Self::Subdomains(format!(".{name}"))),
            (false, true) => Some(Self::Exact(name)),
        }
    }

    /// Whether `host` (without port) is covered.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Subdomains(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// A path condition.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// `/jsonrpc`: exactly this path.
    Exact(String),
    /// `/web/static/*` or `/web*`: every path starting with the text before the `*`.
    Prefix(String),
    /// A regular expression, searched in the normalised path (anchor it with `^…$`).
    Regex(Regex),
}

impl PathPattern {
    /// Parses a path pattern (`/exact`, `/prefix*`); `None` if it does not start with `/`
    /// or has a `*` anywhere but at the end.
    pub fn parse(s: &str) -> Option<Self> {
        if !s.starts_with('/') {
            return None;
        }
        match s.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Some(Self::Prefix(prefix.to_string())),
            Some(_) => None,
            None if s.contains('*') => None,
            None => Some(Self::Exact(s.to_string())),
        }
    }

    /// Compiles a regular expression pattern.
    pub fn regex(s: &str) -> Result<Self, String> {
        regex::RegexBuilder::new(s)
            .size_limit(1 << 20)
            .build()
            .map(Self::Regex)
            .map_err(|e| e.to_string())
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(path),
        }
    }
}

/// A subject condition: `user:LOGIN` or `group:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Group(String),
}

impl Subject {
    /// Parses `user:alice` or `group:admins`.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, name) = s.split_once(':')?;
        let name = name.trim().to_lowercase();
        if name.is_empty() {
            return None;
        }
        match kind.trim() {
            "user" => Some(Self::User(name)),
            "group" => Some(Self::Group(name)),
            _ => None,
        }
    }

    fn matches(&self, who: &Identity<'_>) -> bool {
        match self {
            Self::User(login) => who.login.eq_ignore_ascii_case(login),
            Self::Group(group) => who.groups.iter().any(|g| g.eq_ignore_ascii_case(group)),
        }
    }
}

/// One access rule. Empty condition lists match everything.
#[derive(Debug, Clone)]
pub struct Rule {
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathPattern>,
    /// Upper-case method names.
    pub methods: Vec<String>,
    pub networks: Vec<IpNet>,
    pub subjects: Vec<Subject>,
    pub policy: Policy,
}

/// The request being decided, as the proxy described it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Host name without port, lower case.
    pub host: &'a str,
    /// Path after [`normalize_path`].
    pub path: &'a str,
    /// Upper-case method.
    pub method: &'a str,
    /// The client's address, if known.
    pub ip: Option<IpAddr>,
}

/// Who is asking, when known (a session or an API key).
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub login: &'a str,
    pub groups: &'a [String],
}

/// The outcome of the rules for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The policy to enforce, and which rule chose it (`None`: the default policy).
    Apply { policy: Policy, rule: Option<usize> },
    /// A rule with subjects might match: identify the requester, then decide again.
    NeedsIdentity { rule: usize },
}

/// Ordered rules with a default.
#[derive(Debug, Clone)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub default_policy: Policy,
}

impl Rules {
    /// Decides a request. `who` is the requester if already known.
    pub fn decide(&self, target: &Target<'_>, who: Option<&Identity<'_>>) -> Decision {
        for (i, rule) in self.rules.iter().enumerate() {
            let matches = (rule.hosts.is_empty()
                || rule.hosts.iter().any(|h| h.matches(target.host)))
                && (rule.paths.is_empty() || rule.paths.iter().any(|p| p.matches(target.path)))
                && (rule.methods.is_empty()
                    || rule
                        .methods
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(target.method)))
                && (rule.networks.is_empty()
                    || target
                        .ip
                        .is_some_and(|ip| rule.networks.iter().any(|n| n.contains(&ip))));
            if !matches {
                continue;
            }
            if rule.subjects.is_empty() {
                return Decision::Apply {
                    policy: rule.policy,
                    rule: Some(i),
                };
            }
            match who {
                None => return Decision::NeedsIdentity { rule: i },
                Some(who) if rule.subjects.iter().any(|s| s.matches(who)) => {
                    return Decision::Apply {
                        policy: rule.policy,
                        rule: Some(i),
                    }
                }
                Some(_) => {}
            }
        }
        Decision::Apply {
            policy: self.default_policy,
            rule: None,
        }
    }
}

/// Why a path cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("the path has an invalid percent escape or is not UTF-8 once decoded")]
    BadEncoding,
    #[error("the path contains a control character or a backslash")]
    BadCharacter,
    #[error("the path is too long")]
    TooLong,
}

/// Longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// [`normalize_path`] without an allocation when the path is already normal (the usual case:
/// no escapes, no dot segments, no repeated slashes); the same result either way.
pub fn normalized_path(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let plain = path.starts_with('/')
        && path.len() <= MAX_PATH_LEN
        && !path.contains("//")
        && !path
            .bytes()
            .any(|b| b == b'%' || b == b'\\' || b.is_ascii_control())
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|segment| segment != "." && segment != "..");
    if plain {
        Ok(std::borrow::Cow::Borrowed(path))
    } else {
        normalize_path(raw).map(std::borrow::Cow::Owned)
    }
}

/// The path an application will serve for a request path: query removed, percent escapes
/// decoded (once), `.` and `..` segments resolved, repeated `/` collapsed.
///
/// Anything an application might read differently is refused rather than guessed at:
/// backslashes, control characters (including an encoded NUL), invalid escapes, non-UTF-8.
/// A decoded `%2F` is a `/` like any other, so an encoded slash cannot hide a segment.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let raw = raw.split(['?', '#']).next().unwrap_or_default();
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?;
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadEncoding)?;
    if decoded.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::BadCharacter);
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut path = String::with_capacity(decoded.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_like_the_application_will_see_them() {
        let table = [
            ("/", "/"),
            ("/web", "/web"),
            ("/web/", "/web/"),
            ("/web?debug=1", "/web"),
            ("/web#x", "/web"),
            ("//xmlrpc//2/object", "/xmlrpc/2/object"),
            ("/web/static/../../xmlrpc/2/object", "/xmlrpc/2/object"),
            ("/web/static/%2e%2e/%2E%2E/jsonrpc", "/jsonrpc"),
            ("/web/static/..%2f..%2fjsonrpc", "/jsonrpc"),
            ("/web/./static/./x.css", "/web/static/x.css"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/web/..", "/"),
            ("/web/static/.", "/web/static/"),
            ("/%77eb", "/web"),
            ("/caf%C3%A9", "/café"),
        ];
        for (raw, want) in table {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_normalisation() {
        for raw in [
            "/",
            "/web",
            "/web/",
            "/web?x=1",
            "/a/b/c.css",
            "/web//x",
            "/web/./x",
            "/web/../x",
            "/web/.",
            "/web/..",
            "/%77eb",
            "/web%00",
            "/a\\b",
            "web",
            "",
            "/caf\u{e9}",
            "/web\u{85}x",
            "/.hidden/..x",
            "/..a/b.",
            "/a?b/../c",
        ] {
            assert_eq!(
                normalized_path(raw).map(|p| p.into_owned()),
                normalize_path(raw),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let table = [
            ("web", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/web%", PathError::BadEncoding),
            ("/web%2", PathError::BadEncoding),
            ("/web%zz", PathError::BadEncoding),
            ("/web%ff", PathError::BadEncoding),
            ("/web%00.css", PathError::BadCharacter),
            ("/web\\..\\xmlrpc", PathError::BadCharacter),
            ("/web%5c..%5cxmlrpc", PathError::BadCharacter),
            ("/web%0d%0aX: y", PathError::BadCharacter),
        ];
        for (raw, want) in table {
            assert_eq!(normalize_path(raw), Err(want.clone()), "{raw}");
        }
        assert_eq!(
            normalize_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("Odoo.Example.com").unwrap();
        assert!(exact.matches("odoo.example.com"));
        assert!(exact.matches("ODOO.example.COM"));
        assert!(!exact.matches("xodoo.example.com"));
        assert!(!exact.matches("odoo.example.com.evil"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("odoo.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"), "not the domain itself");
        assert!(!wild.matches("evilexample.com"));
        assert!(!wild.matches("example.com.evil"));
        assert!(HostPattern::parse("127.0.0.1")
            .unwrap()
            .matches("127.0.0.1"));
        assert!(HostPattern::parse("[::1]").unwrap().matches("::1"));
        assert!(HostPattern::parse("::1").unwrap().matches("::1"));
        for bad in [
            "",
            "*.",
            "*",
            "a..b",
            "exa mple.com",
            "*.127.0.0.1",
            "ex*mple.com",
            "a/b",
        ] {
            assert_eq!(HostPattern::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn path_patterns() {
        assert!(PathPattern::parse("/jsonrpc").unwrap().matches("/jsonrpc"));
        assert!(!PathPattern::parse("/jsonrpc")
            .unwrap()
            .matches("/jsonrpc/x"));
        let prefix = PathPattern::parse("/xmlrpc/*").unwrap();
        assert!(prefix.matches("/xmlrpc/2/object"));
        assert!(!prefix.matches("/xmlrpc"));
        let web = PathPattern::parse("/web*").unwrap();
        assert!(web.matches("/web") && web.matches("/web/login") && web.matches("/website"));
        assert!(PathPattern::parse("web").is_none());
        assert!(PathPattern::parse("/a*b").is_none());
        assert!(PathPattern::parse("/a**").is_none());
        assert!(PathPattern::regex("^/web(/|$)")
            .unwrap()
            .matches("/web/login"));
        assert!(!PathPattern::regex("^/web(/|$)")
            .unwrap()
            .matches("/website"));
        assert!(PathPattern::regex("^/web(").is_err());
    }

    fn rule(policy: Policy) -> Rule {
        Rule {
            hosts: vec![],
            paths: vec![],
            methods: vec![],
            networks: vec![],
            subjects: vec![],
            policy,
        }
    }

    fn target<'a>(host: &'a str, path: &'a str, method: &'a str, ip: &str) -> Target<'a> {
        Target {
            host,
            path,
            method,
            ip: ip.parse().ok(),
        }
    }

    /// The Odoo example of docs/gateway.md.
    fn odoo() -> Rules {
        Rules {
            rules: vec![
                Rule {
                    hosts: vec![HostPattern::parse("odoo.example.com").unwrap()],
                    paths: vec![PathPattern::parse("/web/static/*").unwrap()],
                    ..rule(Policy::Bypass)
                },
                Rule {
                    hosts: vec![HostPattern::parse("odoo.example.com").unwrap()],
                    paths: vec![
                        PathPattern::parse("/xmlrpc/*").unwrap(),
                        PathPattern::parse("/jsonrpc").unwrap(),
                    ],
                    networks: vec!["10.20.0.0/16".parse().unwrap()],
                    ..rule(Policy::Bypass)
                },
                Rule {
                    hosts: vec![HostPattern::parse("odoo.example.com").unwrap()],
                    paths: vec![
                        PathPattern::parse("/xmlrpc/*").unwrap(),
                        PathPattern::parse("/jsonrpc").unwrap(),
                    ],
                    ..rule(Policy::ApiKey)
                },
                Rule {
                    hosts: vec![HostPattern::parse("*.example.com").unwrap()],
                    paths: vec![PathPattern::parse("/admin*").unwrap()],
                    subjects: vec![Subject::parse("group:admins").unwrap()],
                    ..rule(Policy::TwoFactor)
                },
                Rule {
                    hosts: vec![HostPattern::parse("*.example.com").unwrap()],
                    paths: vec![PathPattern::parse("/admin*").unwrap()],
                    ..rule(Policy::Deny)
                },
                Rule {
                    hosts: vec![HostPattern::parse("odoo.example.com").unwrap()],
                    methods: vec!["GET".into(), "HEAD".into()],
                    paths: vec![PathPattern::regex("^/shop(/|$)").unwrap()],
                    ..rule(Policy::OneFactor)
                },
                Rule {
                    hosts: vec![HostPattern::parse("odoo.example.com").unwrap()],
                    ..rule(Policy::TwoFactor)
                },
            ],
            default_policy: Policy::Deny,
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let rules = odoo();
        let apply = |policy, rule| Decision::Apply {
            policy,
            rule: Some(rule),
        };
        let table = [
            (
                target(
                    "odoo.example.com",
                    "/web/static/x.css",
                    "GET",
                    "203.0.113.1",
                ),
                apply(Policy::Bypass, 0),
            ),
            (
                target("odoo.example.com", "/xmlrpc/2/object", "POST", "10.20.3.4"),
                apply(Policy::Bypass, 1),
            ),
            (
                target(
                    "odoo.example.com",
                    "/xmlrpc/2/object",
                    "POST",
                    "203.0.113.1",
                ),
                apply(Policy::ApiKey, 2),
            ),
            (
                target("odoo.example.com", "/jsonrpc", "POST", "203.0.113.1"),
                apply(Policy::ApiKey, 2),
            ),
            (
                target("odoo.example.com", "/jsonrpc", "POST", "not an ip"),
                apply(Policy::ApiKey, 2),
            ),
            (
                target("odoo.example.com", "/web", "GET", "203.0.113.1"),
                apply(Policy::TwoFactor, 6),
            ),
            (
                target("odoo.example.com", "/shop/cart", "GET", "203.0.113.1"),
                apply(Policy::OneFactor, 5),
            ),
            (
                target("odoo.example.com", "/shop/cart", "POST", "203.0.113.1"),
                apply(Policy::TwoFactor, 6),
            ),
            (
                target("odoo.example.com", "/shopping", "GET", "203.0.113.1"),
                apply(Policy::TwoFactor, 6),
            ),
            (
                target("odoo.example.com", "/admin", "GET", "203.0.113.1"),
                Decision::NeedsIdentity { rule: 3 },
            ),
            (
                target("other.example.com", "/", "GET", "203.0.113.1"),
                Decision::Apply {
                    policy: Policy::Deny,
                    rule: None,
                },
            ),
            (
                target("example.com", "/web", "GET", "203.0.113.1"),
                Decision::Apply {
                    policy: Policy::Deny,
                    rule: None,
                },
            ),
        ];
        for (t, want) in table {
            assert_eq!(rules.decide(&t, None), want, "{t:?}");
        }
    }

    #[test]
    fn subjects_decide_once_the_requester_is_known() {
        let rules = odoo();
        let admins = vec!["admins".to_string(), "internal".to_string()];
        let staff = vec!["internal".to_string()];
        let t = target("crm.example.com", "/admin/users", "GET", "203.0.113.1");
        let admin = Identity {
            login: "root",
            groups: &admins,
        };
        let clerk = Identity {
            login: "bob",
            groups: &staff,
        };
        assert_eq!(
            rules.decide(&t, Some(&admin)),
            Decision::Apply {
                policy: Policy::TwoFactor,
                rule: Some(3)
            }
        );
        assert_eq!(
            rules.decide(&t, Some(&clerk)),
            Decision::Apply {
                policy: Policy::Deny,
                rule: Some(4)
            },
            "a subject rule that does not match falls through"
        );
        let by_user = Rules {
            rules: vec![Rule {
                subjects: vec![Subject::parse("user:Bob").unwrap()],
                ..rule(Policy::OneFactor)
            }],
            default_policy: Policy::TwoFactor,
        };
        assert_eq!(
            by_user.decide(&t, Some(&clerk)),
            Decision::Apply {
                policy: Policy::OneFactor,
                rule: Some(0)
            }
        );
        assert_eq!(
            by_user.decide(&t, Some(&admin)),
            Decision::Apply {
                policy: Policy::TwoFactor,
                rule: None
            }
        );
    }

    #[test]
    fn empty_rules_fall_to_the_default() {
        let rules = Rules {
            rules: vec![],
            default_policy: Policy::Deny,
        };
        assert_eq!(
            rules.decide(&target("a.example.com", "/", "GET", "192.0.2.1"), None),
            Decision::Apply {
                policy: Policy::Deny,
                rule: None
            }
        );
        let open = Rules {
            rules: vec![rule(Policy::OneFactor)],
            default_policy: Policy::Deny,
        };
        assert_eq!(
            open.decide(&target("anything", "/", "DELETE", "-"), None),
            Decision::Apply {
                policy: Policy::OneFactor,
                rule: Some(0)
            }
        );
    }

    #[test]
    fn networks_need_a_known_address() {
        let rules = Rules {
            rules: vec![Rule {
                networks: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                ..rule(Policy::Bypass)
            }],
            default_policy: Policy::Deny,
        };
        let pass = Decision::Apply {
            policy: Policy::Bypass,
            rule: Some(0),
        };
        let deny = Decision::Apply {
            policy: Policy::Deny,
            rule: None,
        };
        assert_eq!(
            rules.decide(&target("h", "/", "GET", "10.1.2.3"), None),
            pass
        );
        assert_eq!(
            rules.decide(&target("h", "/", "GET", "2001:db8::7"), None),
            pass
        );
        assert_eq!(
            rules.decide(&target("h", "/", "GET", "11.1.2.3"), None),
            deny
        );
        assert_eq!(rules.decide(&target("h", "/", "GET", ""), None), deny);
    }

    #[test]
    fn policy_names_round_trip() {
        for p in [
            Policy::Bypass,
            Policy::Deny,
            Policy::OneFactor,
            Policy::TwoFactor,
            Policy::ApiKey,
        ] {
            assert_eq!(Policy::parse(p.as_str()), Some(p));
        }
        assert_eq!(Policy::parse("allow"), None);
        assert_eq!(Subject::parse("user:"), None);
        assert_eq!(Subject::parse("role:x"), None);
        assert_eq!(
            Subject::parse("group: Admins"),
            Some(Subject::Group("admins".into()))
        );
    }
}
