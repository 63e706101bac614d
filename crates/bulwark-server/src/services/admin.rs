//! What the admin console needs beyond the user services: the fresh password check before
//! sensitive acts, the filtered user list, and the acts that end a user's sessions or trusted
//! browsers.

use super::auth::CurrentSession;
use super::{Audit, ClientInfo, ServiceError};
use crate::app::App;
use bulwark_core::UnixTime;
use bulwark_store::{AdminUserFilter, UserSecurity};

/// How long a password check keeps sensitive acts open: after that, the admin types their
/// password again.
pub const FRESH_PASSWORD_SECS: i64 = 600;

/// Users per page in the console.
pub const USERS_PER_PAGE: u32 = 50;

/// The console's user filters, as an admin picks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserStatus {
    #[default]
    All,
    TwoFactorOn,
    TwoFactorOff,
    Locked,
    Disabled,
    /// No login for `STALE_DAYS`.
    Stale,
    PasswordExpired,
}

/// No login for this many days makes an account stale in the console's filter.
pub const STALE_DAYS: i64 = 90;

impl UserStatus {
    pub const ALL: [UserStatus; 7] = [
        Self::All,
        Self::TwoFactorOn,
        Self::TwoFactorOff,
        Self::Locked,
        Self::Disabled,
        Self::Stale,
        Self::PasswordExpired,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::TwoFactorOn => "2fa-on",
            Self::TwoFactorOff => "2fa-off",
            Self::Locked => "locked",
            Self::Disabled => "disabled",
            Self::Stale => "stale",
            Self::PasswordExpired => "password-expired",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::All => "Everyone",
            Self::TwoFactorOn => "Two-factor on",
            Self::TwoFactorOff => "Two-factor off",
            Self::Locked => "Locked",
            Self::Disabled => "Disabled",
            Self::Stale => "No login for 90 days",
            Self::PasswordExpired => "Password expired",
        }
    }
}

/// One page of the console's user list.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<UserSecurity>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next_after: Option<String>,
}

impl App {
    /// The groups an admin can pick from: the built-in ones and every group the
    /// configuration names.
    pub fn known_groups(&self) -> Vec<String> {
        let mut groups: std::collections::BTreeSet<String> = ["admins", "internal", "portal"]
            .into_iter()
            .map(String::from)
            .collect();
        groups.extend(self.policy().two_factor.required_groups.iter().cloned());
        groups.extend(self.policy().passwords.groups.keys().cloned());
        groups.extend(self.config.api_keys.groups.keys().cloned());
        groups.into_iter().collect()
    }

    /// Whether the session's password check is recent enough for a sensitive act.
    pub fn password_fresh(&self, current: &CurrentSession, now: UnixTime) -> bool {
        now - current.session.password_checked_at <= FRESH_PASSWORD_SECS
    }

    /// Checks the signed-in user's password again (counted like a login failure when wrong)
    /// and records the time on the session, opening sensitive acts for
    /// [`FRESH_PASSWORD_SECS`].
    pub async fn confirm_password(
        &self,
        current: &CurrentSession,
        password: String,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        self.check_own_password(&current.user, password, client, now)
            .await?;
        self.store
            .update_session_password_checked(current.session.id, now)
            .await?;
        // The audit event also drops the user's cached sessions, so the new time is seen at
        // once by every check.
        self.audit(
            Audit::event("password_confirmed", "success")
                .actor(&current.user.login)
                .subject(&current.user.login)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// A page of users matching `search`, `group` and `status`, after the login `after`.
    pub async fn admin_user_page(
        &self,
        search: Option<String>,
        group: Option<String>,
        status: UserStatus,
        after: Option<String>,
    ) -> Result<UserPage, ServiceError> {
        let now = self.now();
        let mut filter = AdminUserFilter {
            search,
            group,
            after_login: after,
            limit: USERS_PER_PAGE + 1,
            ..Default::default()
        };
        match status {
            UserStatus::All => {}
            UserStatus::TwoFactorOn => filter.two_factor = Some(true),
            UserStatus::TwoFactorOff => filter.two_factor = Some(false),
            UserStatus::Locked => filter.locked_at = Some(now),
            UserStatus::Disabled => filter.active = Some(false),
            UserStatus::Stale => filter.idle_since = Some(now - STALE_DAYS * 86_400),
            UserStatus::PasswordExpired => {
                // The database narrows by the shortest expiry of any policy; the exact policy
                // of each user decides.
                let Some(days) = self.policy().passwords.shortest_expiry_days() else {
                    return Ok(UserPage {
                        users: Vec::new(),
                        next_after: None,
                    });
                };
                filter.password_changed_before = Some(now - i64::from(days) * 86_400);
            }
        }
        let mut users = Vec::new();
        loop {
            let page = self.store.list_users_for_admin(&filter).await?;
            let exhausted = page.len() < filter.limit as usize;
            filter.after_login = page.last().map(|u| u.user.login.clone());
            users.extend(page.into_iter().filter(|u| {
                status != UserStatus::PasswordExpired
                    || u.user
                        .password_changed_at
                        .is_some_and(|at| self.policy_for(&u.user.groups).is_expired(at, now))
            }));
            if exhausted || users.len() > USERS_PER_PAGE as usize {
                break;
            }
        }
        let next_after = if users.len() > USERS_PER_PAGE as usize {
            users.truncate(USERS_PER_PAGE as usize);
            users.last().map(|u| u.user.login.clone())
        } else {
            None
        };
        Ok(UserPage { users, next_after })
    }

    /// Ends every session of a user.
    pub async fn revoke_user_sessions(
        &self,
        login: &str,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<u64, ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        let n = self.store.delete_user_sessions(user.id, None).await?;
        self.audit(
            Audit::event("sessions_revoked_by_admin", "success")
                .actor(actor)
                .subject(&user.login)
                .detail(format!("{n} sessions"))
                .client(client),
            now,
        )
        .await;
        Ok(n)
    }

    /// Forgets every browser a user trusted for the second factor.
    pub async fn revoke_user_trusted_devices(
        &self,
        login: &str,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<u64, ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        let n = self.store.delete_user_trusted_devices(user.id).await?;
        self.audit(
            Audit::event("trusted_devices_revoked_by_admin", "success")
                .actor(actor)
                .subject(&user.login)
                .detail(format!("{n} devices"))
                .client(client),
            now,
        )
        .await;
        Ok(n)
    }
}
