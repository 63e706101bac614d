//! Return URLs after login: only to the protected applications, never an open redirect.
//!
//! A return URL is accepted only when it is an absolute `http://` or `https://` URL (written
//! in lower case, as browsers and proxies send it) whose scheme, host and port equal one of the
//! configured protected origins, with no user name or password in it. It is parsed with the
//! WHATWG URL rules browsers use, so what is checked is what the browser will open; anything
//! a browser and a checker might read differently (backslashes, whitespace, control
//! characters) is refused before parsing.

use crate::access::HostPattern;
use url::{Host, Url};

/// Longest return URL accepted, in bytes.
pub const MAX_RETURN_URL_LEN: usize = 2048;

/// An origin the gateway protects: `https://odoo.example.com`, `https://*.example.com`,
/// `http://127.0.0.1:8080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedOrigin {
    https: bool,
    host: HostPattern,
    port: u16,
}

impl ProtectedOrigin {
    /// Parses `scheme://host[:port]` (a `*.` host covers every subdomain); no path.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{s}` does not start with https:// or http://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@', '\\']) || rest.is_empty() {
            return Err(format!(
                "`{s}` is not an origin like https://odoo.example.com (no path, no user)"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}` has an invalid port"))?,
            ),
            _ => (rest, if https { 443 } else { 80 }),
        };
        let host = HostPattern::parse(host.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| format!("`{s}` has an invalid host"))?;
        Ok(Self { https, host, port })
    }

    /// The origin as a CSP source expression (`https://*.example.com:443`), for the pages'
    /// `form-action`: a login form's redirect back to the application must be allowed there.
    /// `None` for an IPv6 host, which source expressions cannot name.
    pub fn csp_source(&self) -> Option<String> {
        let host = match &self.host {
            HostPattern::Exact(h) if h.contains(':') => return None,
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Subdomains(suffix) => format!("*{suffix}"),
        };
        let scheme = if self.https { "https" } else { "http" };
        Some(format!("{scheme}://{host}:{}", self.port))
    }

    fn allows(&self, url: &Url) -> bool {
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_string(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => return false,
        };
        (url.scheme() == "https") == self.https
            && url.port_or_known_default() == Some(self.port)
            && self.host.matches(&host)
    }
}

/// The return URL to send the browser to, if `raw` is safe; `None` otherwise.
pub fn safe_return_url(raw: &str, allowed: &[ProtectedOrigin]) -> Option<String> {
    if raw.len() > MAX_RETURN_URL_LEN
        || !(raw.starts_with("https://") || raw.starts_with("http://"))
        || raw
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    let url = Url::parse(raw).ok()?;
    if !url.username().is_empty() || url.password().is_some() || url.cannot_be_a_base() {
        return None;
    }
    allowed
        .iter()
        .any(|origin| origin.allows(&url))
        .then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins() -> Vec<ProtectedOrigin> {
        [
            "https://odoo.example.com",
            "https://*.apps.example.com",
            "http://127.0.0.1:8080",
        ]
        .iter()
        .map(|s| ProtectedOrigin::parse(s).unwrap())
        .collect()
    }

    #[test]
    fn origins_become_csp_sources() {
        let sources: Vec<Option<String>> = origins().iter().map(|o| o.csp_source()).collect();
        assert_eq!(
            sources,
            [
                Some("https://odoo.example.com:443".to_string()),
                Some("https://*.apps.example.com:443".to_string()),
                Some("http://127.0.0.1:8080".to_string()),
            ]
        );
        let v6 = ProtectedOrigin::parse("http://[::1]:8080").unwrap();
        assert_eq!(v6.csp_source(), None);
    }

    #[test]
    fn hostile_return_urls_are_refused() {
        let hostile = [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/web",
            "evil.example",
            "https://odoo.example.com@evil.example/",
            "https://odoo.example.com:443@evil.example/",
            "https://user:pass@odoo.example.com/",
            "https://odoo.example.com%2f@evil.example/",
            "https://odoo.example.com%40evil.example/",
            "https://evil.example\\@odoo.example.com/",
            "https://evil.example/odoo.example.com",
            "https://evil.example?https://odoo.example.com",
            "https://odoo.example.com.evil.example/",
            "https://odoo.example.com./web",
            "https://evilodoo.example.com/",
            "https://apps.example.com/",
            "https://xapps.example.com/",
            "https://example.com/",
            "HTTPS://odoo.example.com/",
            "hTTps://odoo.example.com/",
            "Https://odoo.example.com/",
            "https:odoo.example.com/web",
            "https:/odoo.example.com/web",
            "https:\\\\odoo.example.com/web",
            "%68ttps://odoo.example.com/",
            "http://odoo.example.com/",
            "https://odoo.example.com:8443/",
            "https://odoo.example.com:80/",
            "http://127.0.0.1:8081/",
            "https://127.0.0.1:8080/",
            "http://127.0.0.1/",
            "http://[::1]:8080/",
            "http://2130706433:8081/",
            "javascript:alert(1)",
            "javascript://odoo.example.com/%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "ftp://odoo.example.com/",
            "file:///etc/passwd",
            " https://odoo.example.com/",
            "https://odoo.example.com/\t",
            "https://odoo.example.com/\r\nSet-Cookie: a=b",
            "https://odoo.example.com/%0d%0a\n",
            "https://оdoo.example.com/",
            "https://odoo.example.com\u{3002}evil.example/",
            "https://odoo.example.com%00.evil.example/",
            "",
        ];
        let origins = origins();
        for url in hostile {
            assert_eq!(safe_return_url(url, &origins), None, "{url:?}");
        }
        let long = format!(
            "https://odoo.example.com/{}",
            "a".repeat(MAX_RETURN_URL_LEN)
        );
        assert_eq!(safe_return_url(&long, &origins), None);
        assert!(hostile.len() >= 25);
    }

    #[test]
    fn return_urls_to_protected_apps_are_kept() {
        let origins = origins();
        let table = [
            ("https://odoo.example.com", "https://odoo.example.com/"),
            (
                "https://odoo.example.com/web",
                "https://odoo.example.com/web",
            ),
            (
                "https://odoo.example.com/web?debug=1#action=12&model=res.partner",
                "https://odoo.example.com/web?debug=1#action=12&model=res.partner",
            ),
            (
                "https://odoo.example.com:443/web",
                "https://odoo.example.com/web",
            ),
            (
                "https://ODOO.Example.com/web",
                "https://odoo.example.com/web",
            ),
            (
                "https://crm.apps.example.com/x",
                "https://crm.apps.example.com/x",
            ),
            (
                "https://a.b.apps.example.com/",
                "https://a.b.apps.example.com/",
            ),
            ("http://127.0.0.1:8080/web", "http://127.0.0.1:8080/web"),
            (
                "https://odoo.example.com/web/../shop",
                "https://odoo.example.com/shop",
            ),
        ];
        for (raw, want) in table {
            assert_eq!(
                safe_return_url(raw, &origins).as_deref(),
                Some(want),
                "{raw}"
            );
        }
    }

    #[test]
    fn origins_parse_strictly() {
        assert!(ProtectedOrigin::parse("https://odoo.example.com/").is_ok());
        assert!(ProtectedOrigin::parse("https://odoo.example.com:8443").is_ok());
        assert!(ProtectedOrigin::parse("http://[::1]:8080").is_ok());
        for bad in [
            "odoo.example.com",
            "https://",
            "https://odoo.example.com/web",
            "https://u@odoo.example.com",
            "https://odoo.example.com:0",
            "https://odoo.example.com:99999",
            "https://odoo.example.com:x",
            "ftp://odoo.example.com",
            "https://*",
        ] {
            assert!(ProtectedOrigin::parse(bad).is_err(), "{bad}");
        }
    }
}
