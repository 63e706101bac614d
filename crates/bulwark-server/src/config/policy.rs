//! The security policy admins change while Bulwark runs: password rules, two-factor
//! enforcement, trusted devices, session timeouts and lockout thresholds.
//!
//! The configuration file's `[policy]`, `[sessions]` and `[lockout]` sections and the
//! enforcement part of `[two_factor]` only *seed* it: the first start stores them in the
//! database, one JSON value per dotted setting name (the same names as in the file), and from
//! then on the database is the source, changed through the console, the API and
//! `bulwark policy set`. A stored policy is read back through the very validation the file
//! goes through, so a setting can never hold a value the file would refuse.
//!
//! Password rules are stored as written: the preset plus the rules that differ from it (and,
//! per group, the rules that differ from the base). Changing the preset therefore moves every
//! rule not set explicitly, and unsetting a rule returns it to the preset (or, in a group, to
//! the base rules).

use super::{
    validate_lockout, validate_policy, validate_sessions, validate_two_factor, ConfigError,
    LockoutConfig, PolicyConfig, RawLockout, RawPolicy, RawSessions, RawTwoFactor, SessionsConfig,
};
use bulwark_core::account::GroupName;
use bulwark_core::lockout::LockoutPolicy;
use bulwark_core::password::policy::PasswordPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The password rules, by their setting name (`policy.NAME`, `policy.groups.GROUP.NAME`).
pub const RULES: [&str; 11] = [
    "min_length",
    "max_length",
    "min_lower",
    "min_upper",
    "min_digit",
    "min_special",
    "min_score",
    "blocklist",
    "history",
    "expiry_days",
    "min_age_hours",
];

/// The three throttles of `[lockout]`.
pub const LOCKOUT_KINDS: [&str; 3] = ["account", "ip", "code"];

/// The settings of each throttle.
pub const LOCKOUT_FIELDS: [&str; 5] = [
    "free_attempts",
    "max_delay_secs",
    "lock_after",
    "lock_minutes",
    "window_minutes",
];

/// The settings that are not password rules, in the order they are shown.
pub const FIXED: [&str; 5] = [
    "two_factor.required_groups",
    "two_factor.grace_days",
    "two_factor.trusted_device_days",
    "sessions.idle_minutes",
    "sessions.absolute_hours",
];

/// Who must use a second factor, and the trusted-device lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enforcement {
    /// Groups whose members must use 2FA (always includes `admins`).
    pub required_groups: Vec<String>,
    /// Days a user under enforcement may postpone enrolment.
    pub grace_days: u32,
    /// Lifetime of "remember this device"; 0 switches the feature off.
    pub trusted_device_days: u32,
}

impl Enforcement {
    /// Whether a member of `groups` must use a second factor.
    pub fn required_for<S: AsRef<str>>(&self, groups: &[S]) -> bool {
        bulwark_core::enforcement::required_for(&self.required_groups, groups)
    }
}

/// The validated policy in force, and the settings it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub passwords: PolicyConfig,
    pub two_factor: Enforcement,
    pub sessions: SessionsConfig,
    pub lockout: LockoutConfig,
    stored: BTreeMap<String, Value>,
}

/// One setting as shown by `policy show`, the console and the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingView {
    pub name: String,
    pub value: Value,
    /// Stored explicitly; a password rule that is not comes from the preset.
    pub set: bool,
}

/// One setting a change moved: `None` means "not stored" (a rule left to its preset).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingDiff {
    pub name: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

impl SettingDiff {
    /// "name: old -> new", each value written by `show`, an unset one as `(preset)`.
    pub fn describe(&self, show: impl Fn(&Value) -> String) -> String {
        let side = |v: &Option<Value>| v.as_ref().map_or_else(|| "(preset)".into(), &show);
        format!("{}: {} -> {}", self.name, side(&self.old), side(&self.new))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    two_factor: RawEnforcement,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    lockout: RawLockout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnforcement {
    required_groups: Option<Vec<String>>,
    grace_days: Option<u32>,
    trusted_device_days: Option<u32>,
}

/// The kind of value a setting holds, for reading it from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Switch,
    Preset,
    Groups,
}

/// The kind of the setting `name`, or an error naming it if there is no such setting.
fn kind(name: &str) -> Result<Kind, ConfigError> {
    let parts: Vec<&str> = name.split('.').collect();
    let rule_kind = |rule: &str| match rule {
        "blocklist" => Some(Kind::Switch),
        r if RULES.contains(&r) => Some(Kind::Number),
        _ => None,
    };
    let found = match parts.as_slice() {
        ["policy", "preset"] => Some(Kind::Preset),
        ["policy", rule] => rule_kind(rule),
        ["policy", "groups", group, rule] => {
            match GroupName::parse(group) {
                Ok(g) if g.as_str() == *group => {}
                _ => {
                    return Err(ConfigError::new(
                        name,
                        format!(
                            "`{group}` is not a group name (lowercase letters, digits, `-`, `_`)"
                        ),
                    ))
                }
            }
            rule_kind(rule)
        }
        ["two_factor", "required_groups"] => Some(Kind::Groups),
        ["lockout", throttle, field]
            if LOCKOUT_KINDS.contains(throttle) && LOCKOUT_FIELDS.contains(field) =>
        {
            Some(Kind::Number)
        }
        _ if FIXED.contains(&name) => Some(Kind::Number),
        _ => None,
    };
    found.ok_or_else(|| {
        ConfigError::new(
            name,
            "is not a policy setting (`bulwark policy show` lists them)",
        )
    })
}

/// Whether the setting may be removed: password rules fall back to the preset (or, in a
/// group, to the base rules); everything else always has a stored value.
pub fn can_unset(name: &str) -> bool {
    name.starts_with("policy.") && name != "policy.preset"
}

/// Reads a setting's value from text (the CLI and the console's form): whole numbers,
/// `true`/`false` (also `on`/`off`, `yes`/`no`), a preset name, or comma-separated groups.
pub fn parse_value(name: &str, text: &str) -> Result<Value, ConfigError> {
    let text = text.trim();
    match kind(name)? {
        Kind::Number => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| ConfigError::new(name, format!("`{text}` is not a whole number"))),
        Kind::Switch => match text.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" => Ok(Value::Bool(true)),
            "false" | "off" | "no" => Ok(Value::Bool(false)),
            _ => Err(ConfigError::new(
                name,
                format!("`{text}` is not true or false"),
            )),
        },
        Kind::Preset => Ok(Value::String(text.to_string())),
        Kind::Groups => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(|g| Value::String(g.to_string()))
                .collect(),
        )),
    }
}

/// A setting's value as text, the form `parse_value` reads back.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A setting's name in words, for the console.
pub fn label(name: &str) -> String {
    let rule = |r: &str| -> &'static str {
        match r {
            "min_length" => "Minimum length (characters)",
            "max_length" => "Maximum length (characters)",
            "min_lower" => "Lowercase letters, at least",
            "min_upper" => "Uppercase letters, at least",
            "min_digit" => "Digits, at least",
            "min_special" => "Special characters, at least",
            "min_score" => "Strength score, at least (0 to 4)",
            "blocklist" => "Refuse common passwords",
            "history" => "Previous passwords that may not be reused",
            "expiry_days" => "Expires after (days, 0: never)",
            "min_age_hours" => "Hours before it may be changed again",
            _ => "Rule",
        }
    };
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["policy", "preset"] => "Preset (nist or strict)".into(),
        ["policy", r] => rule(r).into(),
        ["policy", "groups", g, r] => format!("{g}: {}", rule(r)),
        ["two_factor", "required_groups"] => {
            "Groups that must use two-factor (comma-separated; admins always do)".into()
        }
        ["two_factor", "grace_days"] => "Days a user has to set it up".into(),
        ["two_factor", "trusted_device_days"] => {
            "Remember a browser for (days, 0: never remember)".into()
        }
        ["sessions", "idle_minutes"] => "Sign out after this many idle minutes".into(),
        ["sessions", "absolute_hours"] => "Sign out after this many hours, however active".into(),
        ["lockout", _, f] => match *f {
            "free_attempts" => "Failures before any delay",
            "max_delay_secs" => "Longest delay between attempts (seconds)",
            "lock_after" => "Failures that lock",
            "lock_minutes" => "A lock lasts (minutes)",
            "window_minutes" => "Failures are forgotten after (minutes)",
            _ => "Setting",
        }
        .into(),
        _ => name.into(),
    }
}

/// A password policy's rules as a JSON object keyed by rule name.
fn rules_of(p: &PasswordPolicy) -> Map<String, Value> {
    match serde_json::to_value(p) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

impl Policy {
    /// The policy the configuration file describes: what the first start stores.
    pub fn from_config(config: &super::Config) -> Self {
        let two_factor = Enforcement {
            required_groups: config.two_factor.required_groups.clone(),
            grace_days: config.two_factor.grace_days,
            trusted_device_days: config.two_factor.trusted_device_days,
        };
        let mut policy = Self {
            passwords: config.policy.clone(),
            two_factor,
            sessions: config.sessions,
            lockout: config.lockout,
            stored: BTreeMap::new(),
        };
        policy.stored = policy.settings_to_store();
        policy
    }

    /// The stored form of this policy: the preset and the rules that differ from it, every
    /// other setting explicitly.
    fn settings_to_store(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let p = &self.passwords;
        out.insert("policy.preset".into(), serde_json::json!(p.preset));
        let preset = rules_of(&PasswordPolicy::preset(p.preset));
        let base = rules_of(&p.base);
        for rule in RULES {
            if base.get(rule) != preset.get(rule) {
                if let Some(v) = base.get(rule) {
                    out.insert(format!("policy.{rule}"), v.clone());
                }
            }
        }
        for (group, gp) in &p.groups {
            let rules = rules_of(gp);
            for rule in RULES {
                if rules.get(rule) != base.get(rule) {
                    if let Some(v) = rules.get(rule) {
                        out.insert(format!("policy.groups.{group}.{rule}"), v.clone());
                    }
                }
            }
        }
        out.extend(self.fixed_settings());
        out
    }

    /// The settings that are not password rules, always stored, in the order they are
    /// shown: enforcement, sessions, then each throttle.
    fn fixed_settings(&self) -> Vec<(String, Value)> {
        let fixed: [Value; 5] = [
            serde_json::json!(self.two_factor.required_groups),
            self.two_factor.grace_days.into(),
            self.two_factor.trusted_device_days.into(),
            self.sessions.idle_minutes.into(),
            self.sessions.absolute_hours.into(),
        ];
        let mut out: Vec<(String, Value)> = FIXED
            .iter()
            .map(|name| (*name).to_string())
            .zip(fixed)
            .collect();
        let throttles: [(&str, LockoutPolicy); 3] = [
            ("account", self.lockout.account),
            ("ip", self.lockout.ip),
            ("code", self.lockout.code),
        ];
        for (kind, l) in throttles {
            let fields: [(&str, Value); 5] = [
                ("free_attempts", l.free_attempts.into()),
                ("max_delay_secs", l.max_delay_secs.into()),
                ("lock_after", l.lock_after.into()),
                ("lock_minutes", (l.lock_secs / 60).into()),
                ("window_minutes", (l.window_secs / 60).into()),
            ];
            for (field, v) in fields {
                out.push((format!("lockout.{kind}.{field}"), v));
            }
        }
        out
    }

    /// Reads a stored policy through the configuration file's validation; the error names
    /// the setting at fault.
    pub fn from_stored(stored: BTreeMap<String, Value>) -> Result<Self, ConfigError> {
        let mut tree = Map::new();
        for (name, value) in &stored {
            kind(name)?;
            let mut node = &mut tree;
            let parts: Vec<&str> = name.split('.').collect();
            let Some((last, parents)) = parts.split_last() else {
                continue;
            };
            for part in parents {
                let entry = node
                    .entry((*part).to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                node = match entry {
                    Value::Object(m) => m,
                    _ => {
                        return Err(ConfigError::new(
                            name.as_str(),
                            "clashes with another setting",
                        ))
                    }
                };
            }
            node.insert((*last).to_string(), value.clone());
        }
        let raw: RawSettings = serde_path_to_error::deserialize(Value::Object(tree))
            .map_err(|e| ConfigError::new(e.path().to_string(), e.into_inner().to_string()))?;
        let passwords = validate_policy(raw.policy)?;
        let sessions = validate_sessions(raw.sessions)?;
        let lockout = validate_lockout(raw.lockout)?;
        // `admins` always need a second factor: the list is read as the `admins` preset plus
        // the groups named.
        let tf = validate_two_factor(RawTwoFactor {
            enforcement: Some("admins".into()),
            required_groups: raw.two_factor.required_groups,
            grace_days: raw.two_factor.grace_days,
            trusted_device_days: raw.two_factor.trusted_device_days,
            ..RawTwoFactor::default()
        })?;
        let mut policy = Self {
            passwords,
            two_factor: Enforcement {
                required_groups: tf.required_groups,
                grace_days: tf.grace_days,
                trusted_device_days: tf.trusted_device_days,
            },
            sessions,
            lockout,
            stored,
        };
        // Stored in the normal form: sorted, without repeats, with `admins`.
        policy.stored.insert(
            "two_factor.required_groups".into(),
            serde_json::json!(policy.two_factor.required_groups),
        );
        Ok(policy)
    }

    /// The settings as stored.
    pub fn stored(&self) -> &BTreeMap<String, Value> {
        &self.stored
    }

    /// Every setting in force, in a stable order: the preset, the base rules (stored or from
    /// the preset), the group rules that are stored, then enforcement, sessions and lockout.
    pub fn settings(&self) -> Vec<SettingView> {
        let mut out = Vec::new();
        let mut push = |name: String, value: Value| {
            let set = self.stored.contains_key(&name);
            out.push(SettingView { name, value, set });
        };
        push(
            "policy.preset".into(),
            serde_json::json!(self.passwords.preset),
        );
        let base = rules_of(&self.passwords.base);
        for rule in RULES {
            push(
                format!("policy.{rule}"),
                base.get(rule).cloned().unwrap_or(Value::Null),
            );
        }
        for (name, value) in &self.stored {
            if name.starts_with("policy.groups.") {
                push(name.clone(), value.clone());
            }
        }
        for (name, value) in self.fixed_settings() {
            push(name, value);
        }
        out
    }

    /// The settings of the file that differ from this (stored) policy: shown as a warning at
    /// start, since the file no longer decides them.
    pub fn differences_from(&self, other: &Self) -> Vec<String> {
        let a = self.settings();
        let b = other.settings();
        let mut names: Vec<String> = a
            .iter()
            .filter(|s| !b.iter().any(|o| o.name == s.name && o.value == s.value))
            .map(|s| s.name.clone())
            .collect();
        names.extend(
            b.iter()
                .filter(|o| !a.iter().any(|s| s.name == o.name))
                .map(|o| o.name.clone()),
        );
        names
    }
}

/// The policy `stored` becomes after `changes` (a value to store, or `None` to unset),
/// validated whole, and the settings that actually moved. Changes that leave a setting as it
/// is are no change at all.
pub fn apply_changes(
    stored: &BTreeMap<String, Value>,
    changes: &[(String, Option<Value>)],
) -> Result<(Policy, Vec<SettingDiff>), ConfigError> {
    let mut next = stored.clone();
    for (name, value) in changes {
        kind(name)?;
        match value {
            Some(v) => {
                next.insert(name.clone(), v.clone());
            }
            None if can_unset(name) => {
                next.remove(name);
            }
            None => {
                return Err(ConfigError::new(
                    name.as_str(),
                    "cannot be unset, only given another value",
                ))
            }
        }
    }
    let next = Policy::from_stored(next)?;
    let mut names: Vec<&String> = stored.keys().chain(next.stored.keys()).collect();
    names.sort();
    names.dedup();
    let diffs = names
        .into_iter()
        .filter_map(|name| {
            let (old, new) = (stored.get(name), next.stored.get(name));
            (old != new).then(|| SettingDiff {
                name: name.clone(),
                old: old.cloned(),
                new: new.cloned(),
            })
        })
        .collect();
    Ok((next, diffs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(toml_text: &str) -> super::super::Config {
        let dir = std::env::temp_dir();
        let text = format!("data_dir = {:?}\n{toml_text}", dir.display().to_string());
        // Tests run in parallel: one file each.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(
            "bulwark-policy-test-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        let c =
            super::super::Config::load(Some(&path), &[], &super::super::CliOverrides::default());
        let _ = std::fs::remove_file(&path);
        c.unwrap()
    }

    #[test]
    fn the_stored_form_reads_back_to_the_same_policy() {
        for file in [
            "",
            "[policy]\npreset = \"strict\"\nmin_length = 14\n[policy.groups.admins]\nmin_length = 20\nexpiry_days = 30\n",
            "[two_factor]\nenforcement = \"all\"\nrequired_groups = [\"ops\"]\ngrace_days = 0\ntrusted_device_days = 0\n",
            "[sessions]\nidle_minutes = 5\nabsolute_hours = 2\n[lockout.account]\nlock_after = 5\nlock_minutes = 60\n",
        ] {
            let from_file = Policy::from_config(&config(file));
            let read_back = Policy::from_stored(from_file.stored().clone()).unwrap();
            assert_eq!(read_back, from_file, "{file}");
        }
    }

    #[test]
    fn rules_not_set_follow_the_preset() {
        let p = Policy::from_config(&config("[policy]\nmin_length = 14\n"));
        assert!(!p.stored().contains_key("policy.min_upper"));
        let (strict, diffs) = apply_changes(
            p.stored(),
            &[("policy.preset".into(), Some(json!("strict")))],
        )
        .unwrap();
        assert_eq!(strict.passwords.base.min_upper, 1, "from the strict preset");
        assert_eq!(strict.passwords.base.min_length, 14, "set explicitly, kept");
        assert_eq!(
            diffs,
            vec![SettingDiff {
                name: "policy.preset".into(),
                old: Some(json!("nist")),
                new: Some(json!("strict"))
            }]
        );
        let (back, _) =
            apply_changes(strict.stored(), &[("policy.min_length".into(), None)]).unwrap();
        assert_eq!(
            back.passwords.base.min_length,
            PasswordPolicy::preset(back.passwords.preset).min_length
        );
        let view = back.settings();
        let min_length = view.iter().find(|s| s.name == "policy.min_length").unwrap();
        assert!(!min_length.set);
    }

    #[test]
    fn group_rules_tighten_the_base_and_unset_back_to_it() {
        let p = Policy::from_config(&config(""));
        let (p, _) = apply_changes(
            p.stored(),
            &[("policy.groups.finance.min_length".into(), Some(json!(18)))],
        )
        .unwrap();
        assert_eq!(p.passwords.for_groups(&["finance"]).min_length, 18);
        assert_eq!(p.passwords.for_groups(&["internal"]).min_length, 12);
        let (p, _) = apply_changes(
            p.stored(),
            &[("policy.groups.finance.min_length".into(), None)],
        )
        .unwrap();
        assert_eq!(p.passwords.for_groups(&["finance"]).min_length, 12);
    }

    #[test]
    fn bad_changes_name_the_setting_and_change_nothing() {
        let p = Policy::from_config(&config(""));
        for (name, value, key) in [
            ("policy.min_length", Some(json!(0)), "policy.min_length"),
            ("policy.min_length", Some(json!("ten")), "policy.min_length"),
            ("policy.preset", Some(json!("lax")), "policy.preset"),
            ("policy.colour", Some(json!(1)), "policy.colour"),
            (
                "policy.groups.Fin.min_length",
                Some(json!(14)),
                "policy.groups.Fin.min_length",
            ),
            (
                "sessions.idle_minutes",
                Some(json!(0)),
                "sessions.idle_minutes",
            ),
            ("sessions.idle_minutes", None, "sessions.idle_minutes"),
            (
                "two_factor.grace_days",
                Some(json!(-1)),
                "two_factor.grace_days",
            ),
            (
                "two_factor.required_groups",
                Some(json!(["bad group"])),
                "two_factor.required_groups[0]",
            ),
            (
                "lockout.account.lock_after",
                Some(json!(0)),
                "lockout.account",
            ),
            (
                "lockout.door.lock_after",
                Some(json!(3)),
                "lockout.door.lock_after",
            ),
            ("server.listen", Some(json!("0.0.0.0:80")), "server.listen"),
        ] {
            let err = apply_changes(p.stored(), &[(name.into(), value.clone())]).unwrap_err();
            assert_eq!(err.key, key, "{name} = {value:?}: {err}");
        }
    }

    #[test]
    fn admins_always_need_two_factors() {
        let p = Policy::from_config(&config(""));
        let (p, diffs) = apply_changes(
            p.stored(),
            &[(
                "two_factor.required_groups".into(),
                Some(json!(["portal", "internal", "portal"])),
            )],
        )
        .unwrap();
        assert_eq!(
            p.two_factor.required_groups,
            ["admins", "internal", "portal"]
        );
        assert_eq!(
            p.stored()["two_factor.required_groups"],
            json!(["admins", "internal", "portal"])
        );
        assert_eq!(diffs.len(), 1);
        let (p, diffs) = apply_changes(
            p.stored(),
            &[("two_factor.required_groups".into(), Some(json!([])))],
        )
        .unwrap();
        assert_eq!(p.two_factor.required_groups, ["admins"]);
        assert_eq!(diffs[0].new, Some(json!(["admins"])));
    }

    #[test]
    fn setting_a_value_it_already_has_is_no_change() {
        let p = Policy::from_config(&config(""));
        let (_, diffs) = apply_changes(
            p.stored(),
            &[("sessions.idle_minutes".into(), Some(json!(30)))],
        )
        .unwrap();
        assert!(diffs.is_empty());
    }

    #[test]
    fn text_values_are_read_by_the_kind_of_setting() {
        assert_eq!(parse_value("policy.min_length", " 14 ").unwrap(), json!(14));
        assert_eq!(
            parse_value("policy.blocklist", "off").unwrap(),
            json!(false)
        );
        assert_eq!(
            parse_value("two_factor.required_groups", "admins, ops,").unwrap(),
            json!(["admins", "ops"])
        );
        assert_eq!(
            parse_value("policy.preset", "strict").unwrap(),
            json!("strict")
        );
        assert_eq!(
            parse_value("sessions.idle_minutes", "ten").unwrap_err().key,
            "sessions.idle_minutes"
        );
        assert!(parse_value("nothing", "1").is_err());
        for v in [json!(14), json!(false), json!(["a", "b"]), json!("strict")] {
            assert!(!value_text(&v).is_empty());
        }
        assert_eq!(value_text(&json!(["a", "b"])), "a,b");
    }
}
