//! A page of users as the reports over every user read them (the compliance report and its
//! export, the reminders, the metrics' coverage): only what decides each one's standing,
//! with every user's text in one buffer of the page.
//!
//! A million users are read a thousand at a time. With a `String` per value, a page costs
//! several thousand allocations, and freeing them on another thread costs as much again:
//! about a quarter of a million-user export. A page here is three buffers, reused for
//! nothing and freed at once.

use crate::{UserId, UserSecurity};
use bulwark_core::UnixTime;
use std::ops::Range;

/// One user of a [`SecurityPage`], borrowed from it (or, before [`SecurityPage::push`],
/// from the row a store read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityRow<'a> {
    pub id: UserId,
    pub login: &'a str,
    pub email: Option<&'a str>,
    pub display_name: &'a str,
    pub active: bool,
    /// Group names separated by commas. A page keeps them sorted, without empty names.
    pub groups: &'a str,
    pub created_at: UnixTime,
    pub last_login_at: Option<UnixTime>,
    pub password_changed_at: Option<UnixTime>,
    pub has_password: bool,
    /// Kiosk, POS or scanner account: exempt from 2FA.
    pub device_account: bool,
    /// When the 2FA enforcement grace period started for this user, if it has.
    pub grace_started_at: Option<UnixTime>,
    /// The user has a confirmed authenticator.
    pub totp_active: bool,
    /// Recovery codes not used yet.
    pub recovery_codes_left: u32,
}

impl<'a> SecurityRow<'a> {
    /// The group names, in order.
    pub fn groups(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.groups.split(',').filter(|g| !g.is_empty())
    }

    /// Whether this row says the same as `u` (a user as the admin list reads them) on
    /// every field it has.
    pub fn agrees_with(&self, u: &UserSecurity) -> bool {
        let r = &u.user;
        self.id == r.id
            && self.login == r.login
            && self.email == r.email.as_deref()
            && self.display_name == r.display_name
            && self.active == r.active
            && self.groups().eq(r.groups.iter().map(String::as_str))
            && self.created_at == r.created_at
            && self.last_login_at == r.last_login_at
            && self.password_changed_at == r.password_changed_at
            && self.has_password == r.has_password
            && self.device_account == r.device_account
            && self.grace_started_at == r.grace_started_at
            && self.totp_active == u.totp_active
            && self.recovery_codes_left == u.recovery_codes_left
    }
}

/// Users in id order with their text in one buffer; see the module's documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityPage {
    text: String,
    rows: Vec<Packed>,
}

/// A row with its text as ranges of the page's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed {
    id: UserId,
    login: Range<u32>,
    email: Option<Range<u32>>,
    display_name: Range<u32>,
    groups: Range<u32>,
    active: bool,
    created_at: UnixTime,
    last_login_at: Option<UnixTime>,
    password_changed_at: Option<UnixTime>,
    has_password: bool,
    device_account: bool,
    grace_started_at: Option<UnixTime>,
    totp_active: bool,
    recovery_codes_left: u32,
}

/// Text a row of a page usually holds, to size its buffer.
const TEXT_PER_ROW: usize = 64;

impl SecurityPage {
    /// An empty page with room for `rows` users.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            text: String::with_capacity(rows.saturating_mul(TEXT_PER_ROW)),
            rows: Vec::with_capacity(rows),
        }
    }

    /// Adds a user after the last one, copying their text. Groups are kept sorted. (Text
    /// beyond the first 4 GiB of a page would read back empty; a thousand users hold about
    /// 64 kB.)
    pub fn push(&mut self, row: SecurityRow<'_>) {
        let login = self.add(row.login);
        let email = row.email.map(|e| self.add(e));
        let display_name = self.add(row.display_name);
        let groups = self.add_groups(row.groups);
        self.rows.push(Packed {
            id: row.id,
            login,
            email,
            display_name,
            groups,
            active: row.active,
            created_at: row.created_at,
            last_login_at: row.last_login_at,
            password_changed_at: row.password_changed_at,
            has_password: row.has_password,
            device_account: row.device_account,
            grace_started_at: row.grace_started_at,
            totp_active: row.totp_active,
            recovery_codes_left: row.recovery_codes_left,
        });
    }

    fn offset(&self) -> u32 {
        u32::try_from(self.text.len()).unwrap_or(u32::MAX)
    }

    fn add(&mut self, s: &str) -> Range<u32> {
        let start = self.offset();
        self.text.push_str(s);
        start..self.offset()
    }

    /// Appends a comma-separated list of groups, sorted and without empty names. The
    /// stores keep the list in name order already; another order costs a sort.
    fn add_groups(&mut self, list: &str) -> Range<u32> {
        let names = || list.split(',').filter(|g| !g.is_empty());
        let in_order = names().zip(names().skip(1)).all(|(a, b)| a <= b);
        let start = self.offset();
        if in_order && !list.starts_with(',') && !list.ends_with(',') && !list.contains(",,") {
            self.text.push_str(list);
        } else {
            let mut sorted: Vec<&str> = names().collect();
            sorted.sort_unstable();
            for (i, g) in sorted.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(g);
            }
        }
        start..self.offset()
    }

    fn str(&self, r: &Range<u32>) -> &str {
        let range = r.start as usize..r.end as usize;
        self.text.get(range).unwrap_or_default()
    }

    fn row(&self, p: &Packed) -> SecurityRow<'_> {
        SecurityRow {
            id: p.id,
            login: self.str(&p.login),
            email: p.email.as_ref().map(|e| self.str(e)),
            display_name: self.str(&p.display_name),
            active: p.active,
            groups: self.str(&p.groups),
            created_at: p.created_at,
            last_login_at: p.last_login_at,
            password_changed_at: p.password_changed_at,
            has_password: p.has_password,
            device_account: p.device_account,
            grace_started_at: p.grace_started_at,
            totp_active: p.totp_active,
            recovery_codes_left: p.recovery_codes_left,
        }
    }

    /// The users in id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SecurityRow<'_>> {
        self.rows.iter().map(|p| self.row(p))
    }

    /// The `i`-th user.
    pub fn get(&self, i: usize) -> Option<SecurityRow<'_>> {
        self.rows.get(i).map(|p| self.row(p))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn row<'a>(id: UserId, login: &'a str, groups: &'a str) -> SecurityRow<'a> {
        SecurityRow {
            id,
            login,
            email: (id % 2 == 0).then_some("e@example.com"),
            display_name: "Name, with comma",
            active: true,
            groups,
            created_at: 10,
            last_login_at: None,
            password_changed_at: Some(20),
            has_password: true,
            device_account: false,
            grace_started_at: None,
            totp_active: id % 3 == 0,
            recovery_codes_left: 7,
        }
    }

    #[test]
    fn a_page_gives_back_what_was_pushed_with_groups_in_order() {
        let mut page = SecurityPage::with_capacity(2);
        let lists = ["b,a", "", ",x,,a,", "a,b", "émile,zoé"];
        for (i, groups) in lists.iter().enumerate() {
            page.push(row(i as UserId, &format!("user{i}"), groups));
        }
        assert_eq!(page.len(), 5);
        // Byte order, as the records' `groups` are sorted.
        let sorted = ["a,b", "", "a,x", "a,b", "zoé,émile"];
        for (i, (got, groups)) in page.iter().zip(sorted).enumerate() {
            let login = format!("user{i}");
            assert_eq!(got, row(i as UserId, &login, groups));
        }
        assert_eq!(
            page.get(2).unwrap().groups().collect::<Vec<_>>(),
            ["a", "x"]
        );
        assert!(page.get(1).unwrap().groups().next().is_none());
        assert!(page.get(5).is_none());
    }
}
