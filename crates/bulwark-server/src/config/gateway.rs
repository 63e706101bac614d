//! The `[gateway]` section: protected origins, the session cookie's domain, access rules.

use super::{parse_net, ConfigError};
use bulwark_core::access::{HostPattern, PathPattern, Policy, Rule, Rules, Subject};
use bulwark_core::redirect::ProtectedOrigin;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    protected: Option<Vec<String>>,
    cookie_domain: Option<String>,
    default_policy: Option<String>,
    cache_seconds: Option<i64>,
    cache_entries: Option<usize>,
    rules: Option<Vec<RawRule>>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    path_regex: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subjects: Vec<String>,
    #[serde(default)]
    policy: String,
}

/// The validated gateway settings.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    /// Origins (`https://odoo.example.com`, `https://*.example.com`) a login may return to.
    pub protected: Vec<String>,
    /// Domain the session cookie is set for, so one login covers every app under it.
    pub cookie_domain: Option<String>,
    pub default_policy: String,
    /// How long the check path may reuse a session it read (0: read it every time). A session
    /// revoked on another node keeps passing at most this long.
    pub cache_seconds: i64,
    /// Most sessions kept in that cache.
    pub cache_entries: usize,
    /// The rules as written, for `config check`.
    pub rules: Vec<RawRule>,
    #[serde(skip)]
    pub origins: Vec<ProtectedOrigin>,
    #[serde(skip)]
    pub compiled: Rules,
}

pub(super) fn validate(raw: RawGateway, public_host: &str) -> Result<GatewayConfig, ConfigError> {
    let protected = raw.protected.unwrap_or_default();
    let origins = protected
        .iter()
        .enumerate()
        .map(|(i, o)| {
            ProtectedOrigin::parse(o)
                .map_err(|m| ConfigError::new(format!("gateway.protected[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let cookie_domain = match raw.cookie_domain {
        None => None,
        Some(d) => {
            let d = d.trim().trim_start_matches('.').to_ascii_lowercase();
            let valid = matches!(HostPattern::parse(&d), Some(HostPattern::Exact(_)))
                && d.contains('.')
                && d.parse::<std::net::IpAddr>().is_err();
            if !valid {
                return Err(ConfigError::new(
                    "gateway.cookie_domain",
                    format!("`{d}` is not a domain name like example.com"),
                ));
            }
            let public = public_host.to_ascii_lowercase();
            if public != d && !public.ends_with(&format!(".{d}")) {
                return Err(ConfigError::new(
                    "gateway.cookie_domain",
                    format!(
                        "`{d}` does not contain the host of server.public_url (`{public_host}`): \
                         the portal could not set its own cookie"
                    ),
                ));
            }
            Some(d)
        }
    };

    let default_policy = raw.default_policy.unwrap_or_else(|| "deny".into());
    let default = Policy::parse(&default_policy).ok_or_else(|| {
        ConfigError::new(
            "gateway.default_policy",
            format!(
                "`{default_policy}` is not one of bypass, deny, one_factor, two_factor, api_key"
            ),
        )
    })?;

    let cache_seconds = raw.cache_seconds.unwrap_or(5);
    if !(0..=60).contains(&cache_seconds) {
        return Err(ConfigError::new(
            "gateway.cache_seconds",
            format!("{cache_seconds} is out of range: give 0 (no cache) to 60 seconds"),
        ));
    }
    let cache_entries = raw.cache_entries.unwrap_or(100_000);
    if !(1..=10_000_000).contains(&cache_entries) {
        return Err(ConfigError::new(
            "gateway.cache_entries",
            format!("{cache_entries} is out of range: give 1 to 10000000"),
        ));
    }

    let raw_rules = raw.rules.unwrap_or_default();
    let rules = raw_rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GatewayConfig {
        protected,
        cookie_domain,
        default_policy,
        cache_seconds,
        cache_entries,
        rules: raw_rules,
        origins,
        compiled: Rules {
            rules,
            default_policy: default,
        },
    })
}

fn rule(i: usize, r: &RawRule) -> Result<Rule, ConfigError> {
    let key = |field: &str| format!("gateway.rules[{i}].{field}");
    let each = |field: &str, values: &[String], parse: &dyn Fn(&str) -> Result<(), String>| {
        for (j, v) in values.iter().enumerate() {
            parse(v).map_err(|m| ConfigError::new(format!("{}[{j}]", key(field)), m))?;
        }
        Ok::<(), ConfigError>(())
    };
    let policy = Policy::parse(&r.policy).ok_or_else(|| {
        ConfigError::new(
            key("policy"),
            format!(
                "`{}` is not one of bypass, deny, one_factor, two_factor, api_key",
                r.policy
            ),
        )
    })?;
    each("hosts", &r.hosts, &|v| {
        HostPattern::parse(v)
            .map(|_| ())
            .ok_or_else(|| format!("`{v}` is not a host name or a pattern like *.example.com"))
    })?;
    each("paths", &r.paths, &|v| {
        PathPattern::parse(v).map(|_| ()).ok_or_else(|| {
            format!("`{v}` is not a path like /jsonrpc or a prefix like /web/static/*")
        })
    })?;
    each("path_regex", &r.path_regex, &|v| {
        PathPattern::regex(v)
            .map(|_| ())
            .map_err(|e| format!("invalid regular expression: {e}"))
    })?;
    each("methods", &r.methods, &|v| {
        let ok = !v.is_empty() && v.len() <= 20 && v.chars().all(|c| c.is_ascii_alphabetic());
        ok.then_some(())
            .ok_or_else(|| format!("`{v}` is not an HTTP method like GET"))
    })?;
    each("networks", &r.networks, &|v| {
        parse_net(v)
            .map(|_| ())
            .ok_or_else(|| format!("`{v}` is not an IP address or CIDR like 10.20.0.0/24"))
    })?;
    each("subjects", &r.subjects, &|v| {
        Subject::parse(v)
            .map(|_| ())
            .ok_or_else(|| format!("`{v}` is not `user:LOGIN` or `group:NAME`"))
    })?;
    if policy == Policy::Bypass && !r.subjects.is_empty() {
        return Err(ConfigError::new(
            key("subjects"),
            "a bypass rule cannot name subjects: bypass never identifies the requester",
        ));
    }
    let mut paths: Vec<PathPattern> = r
        .paths
        .iter()
        .filter_map(|p| PathPattern::parse(p))
        .collect();
    for re in &r.path_regex {
        if let Ok(p) = PathPattern::regex(re) {
            paths.push(p);
        }
    }
    Ok(Rule {
        hosts: r
            .hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h))
            .collect(),
        paths,
        methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
        networks: r.networks.iter().filter_map(|n| parse_net(n)).collect(),
        subjects: r
            .subjects
            .iter()
            .filter_map(|s| Subject::parse(s))
            .collect(),
        policy,
    })
}
