//! Account identifiers, parsed once at the edge: logins, e-mail addresses, names, groups.

use std::fmt;

/// Why an account field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountInputError {
    #[error("login must be 1 to 64 characters: letters, digits and . _ - @ +")]
    Login,
    #[error("e-mail address is not valid")]
    Email,
    #[error("display name must be at most 128 characters, without control characters")]
    DisplayName,
    #[error("group name must be 1 to 32 characters: lowercase letters, digits, - and _")]
    Group,
}

/// A login, compared case-insensitively: stored lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Login(String);

impl Login {
    /// Trims, lowercases and checks the allowed characters.
    pub fn parse(input: &str) -> Result<Self, AccountInputError> {
        let login = input.trim().to_lowercase();
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-@+".contains(c);
        if login.is_empty() || login.chars().count() > 64 || !login.chars().all(ok_char) {
            return Err(AccountInputError::Login);
        }
        Ok(Self(login))
    }

    /// The normalised (lowercase) login.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address with one `@`, a non-empty local part and a dotted domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Accepts the practical subset of RFC 5321 addresses that mail servers deliver to.
    pub fn parse(input: &str) -> Result<Self, AccountInputError> {
        let email = input.trim();
        let valid = email.len() <= 254
            && !email
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"\\".contains(c))
            && match email.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.len() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains("..")
                }
                None => false,
            };
        if valid {
            Ok(Self(email.to_string()))
        } else {
            Err(AccountInputError::Email)
        }
    }

    /// The address as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: free text, bounded, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Trims and bounds the name; an empty name is allowed.
    pub fn parse(input: &str) -> Result<Self, AccountInputError> {
        let name = input.trim();
        if name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(AccountInputError::DisplayName);
        }
        Ok(Self(name.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A group name such as `admins`, `internal` or `portal`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    /// Administrators: full access to the console and CLI actions.
    pub const ADMINS: &'static str = "admins";
    /// Employees.
    pub const INTERNAL: &'static str = "internal";
    /// Customers and vendors.
    pub const PORTAL: &'static str = "portal";
    /// The groups every installation has.
    pub const BUILT_IN: [&'static str; 3] = [Self::ADMINS, Self::INTERNAL, Self::PORTAL];

    /// Lowercases and checks the allowed characters.
    pub fn parse(input: &str) -> Result<Self, AccountInputError> {
        let name = input.trim().to_lowercase();
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if name.is_empty() || name.len() > 32 || !name.chars().all(ok_char) {
            return Err(AccountInputError::Group);
        }
        Ok(Self(name))
    }

    /// The group name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_is_case_insensitive() {
        assert_eq!(
            Login::parse(" Alice.Smith ").unwrap().as_str(),
            "alice.smith"
        );
    }

    #[test]
    fn login_rejects_bad_characters_and_lengths() {
        for bad in ["", "   ", "a b", "a/b", "<script>", &"a".repeat(65), "a\0b"] {
            assert_eq!(Login::parse(bad), Err(AccountInputError::Login), "{bad:?}");
        }
        assert!(Login::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn email_needs_local_part_and_dotted_domain() {
        assert!(Email::parse("ops@example.com").is_ok());
        for bad in [
            "",
            "ops",
            "@example.com",
            "ops@",
            "ops@localhost",
            "a@b@c.com",
            "a b@c.com",
            "a@.com",
            "a@c..com",
            "a@c.com\r\nBcc: x@y.z",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_name_rejects_control_characters() {
        assert!(DisplayName::parse("Ada Lovelace").is_ok());
        assert!(DisplayName::parse("Ada\nBcc").is_err());
        assert!(DisplayName::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn group_names_are_lowercase_words() {
        assert_eq!(GroupName::parse("Admins").unwrap().as_str(), "admins");
        assert!(GroupName::parse("a b").is_err());
        assert!(GroupName::parse("").is_err());
    }
}
