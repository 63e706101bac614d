//! Administration of accounts: create, invite, disable, enable, delete, set password,
//! unlock, groups. Used by the CLI now and by the admin console later.

use super::auth::context_words;
use super::{Audit, ClientInfo, ServiceError};
use crate::app::App;
use bulwark_core::account::{DisplayName, Email, GroupName, Login};
use bulwark_core::password::Password;
use bulwark_store::{NewUser, TokenPurpose, UserFilter, UserRecord};

/// A user to create.
#[derive(Debug, Default)]
pub struct NewUserInput {
    pub login: String,
    pub email: Option<String>,
    pub display_name: String,
    pub groups: Vec<String>,
    /// None: no password yet (send an invitation).
    pub password: Option<String>,
    pub must_change_password: bool,
}

fn invalid(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::InvalidInput(e.to_string())
}

fn parse_groups(groups: &[String]) -> Result<Vec<GroupName>, ServiceError> {
    let mut parsed: Vec<GroupName> = groups
        .iter()
        .map(|g| GroupName::parse(g).map_err(invalid))
        .collect::<Result<_, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

impl App {
    /// Looks a user up by login; `NotFound` if there is none.
    pub async fn user_by_login(&self, login: &str) -> Result<UserRecord, ServiceError> {
        let login = Login::parse(login).map_err(invalid)?;
        self.store
            .find_user_by_login(&login)
            .await?
            .ok_or(ServiceError::NotFound)
    }

    /// Creates a user. A given password must pass the policy of the user's groups.
    pub async fn add_user(
        &self,
        input: NewUserInput,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<UserRecord, ServiceError> {
        let now = self.now();
        let login = Login::parse(&input.login).map_err(invalid)?;
        let email = input
            .email
            .as_deref()
            .filter(|e| !e.trim().is_empty())
            .map(Email::parse)
            .transpose()
            .map_err(invalid)?;
        let display_name = DisplayName::parse(&input.display_name).map_err(invalid)?;
        let groups = parse_groups(&input.groups)?;
        let password_hash = match input.password {
            Some(p) => {
                let password = Password::parse(p).map_err(invalid)?;
                let names: Vec<String> = groups.iter().map(ToString::to_string).collect();
                let context = context_words(
                    login.as_str(),
                    email.as_ref().map(Email::as_str),
                    display_name.as_str(),
                );
                let context: Vec<&str> = context.iter().map(String::as_str).collect();
                let violations = self.policy_for(&names).check(&password, &context);
                if !violations.is_empty() {
                    return Err(ServiceError::PolicyRejected(violations));
                }
                Some(self.hashes.hash(password).await?)
            }
            None => None,
        };
        let user = self
            .store
            .insert_user(&NewUser {
                login,
                email,
                display_name,
                groups,
                password_hash,
                must_change_password: input.must_change_password,
                created_at: now,
            })
            .await
            .map_err(|e| match e {
                bulwark_store::StoreError::Conflict(_) => ServiceError::Conflict(format!(
                    "the login `{}` is taken",
                    input.login.trim().to_lowercase()
                )),
                e => e.into(),
            })?;
        self.audit(
            Audit::event("user_created", "success")
                .actor(actor)
                .subject(&user.login)
                .detail(format!("groups: {}", user.groups.join(",")))
                .client(client),
            now,
        )
        .await;
        Ok(user)
    }

    /// Lists users by login.
    pub async fn list_users(&self, filter: &UserFilter) -> Result<Vec<UserRecord>, ServiceError> {
        Ok(self.store.list_users(filter).await?)
    }

    async fn refuse_last_admin(&self, user: &UserRecord, what: &str) -> Result<(), ServiceError> {
        if user.active && user.in_group(GroupName::ADMINS) {
            let admins = GroupName::parse(GroupName::ADMINS).map_err(invalid)?;
            if self.store.count_active_in_group(&admins).await? <= 1 {
                return Err(ServiceError::Refused(format!(
                    "cannot {what} the last active administrator"
                )));
            }
        }
        Ok(())
    }

    /// Disables (`active = false`) or re-enables an account. Disabling ends its sessions.
    pub async fn set_user_active(
        &self,
        login: &str,
        active: bool,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<UserRecord, ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        if !active {
            self.refuse_last_admin(&user, "disable").await?;
        }
        let event = if active {
            "user_enabled"
        } else {
            "user_disabled"
        };
        let stopped = Audit::event(event, "failure")
            .actor(actor)
            .subject(&user.login)
            .client(client);
        self.run_steps(&user.login, stopped, now, async {
            self.store.update_active(user.id, active).await?;
            self.store.delete_user_sessions(user.id, None).await?;
            if !active {
                // Re-enabling later must not bring back browsers that skip the second step,
                // nor keys that programs (or whoever copied them) still hold.
                self.store.delete_user_trusted_devices(user.id).await?;
                self.store.revoke_user_api_keys(user.id, now).await?;
            }
            Ok(())
        })
        .await?;
        self.audit(
            Audit::event(event, "success")
                .actor(actor)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(self.store.get_user(user.id).await?)
    }

    /// Deletes an account and everything that belongs to it.
    pub async fn delete_user(
        &self,
        login: &str,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        self.refuse_last_admin(&user, "delete").await?;
        self.store.delete_user(user.id).await?;
        self.audit(
            Audit::event("user_deleted", "success")
                .actor(actor)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// Sets a user's password as an administrator: policy (and history) apply, every session
    /// ends; with `must_change` the user must pick a new one at next login.
    pub async fn admin_set_password(
        &self,
        login: &str,
        password: String,
        must_change: bool,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        let password = Password::parse(password).map_err(invalid)?;
        let policy = self.policy_for(&user.groups);
        let context = context_words(&user.login, user.email.as_deref(), &user.display_name);
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        let mut violations = policy.check(&password, &context);
        if policy.history > 0 {
            let history = self
                .store
                .list_password_history(user.id, policy.history)
                .await?;
            if self.hashes.matches_any(password.clone(), history).await? {
                violations.push(bulwark_core::password::policy::PolicyViolation::Reused {
                    history: policy.history,
                });
            }
        }
        if !violations.is_empty() {
            return Err(ServiceError::PolicyRejected(violations));
        }
        let stopped = Audit::event("password_set_by_admin", "failure")
            .actor(actor)
            .subject(&user.login)
            .client(client);
        self.run_steps(
            &user.login,
            stopped,
            now,
            self.apply_new_password(&user, password, must_change, now),
        )
        .await?;
        self.audit(
            Audit::event("password_set_by_admin", "success")
                .actor(actor)
                .subject(&user.login)
                .detail(if must_change {
                    "must change at next login"
                } else {
                    ""
                })
                .client(client),
            now,
        )
        .await;
        self.notify_password_changed(&user, client, now).await;
        Ok(())
    }

    /// Forces (or clears) a password change at next login.
    pub async fn force_password_change(
        &self,
        login: &str,
        must_change: bool,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        self.store
            .update_must_change_password(user.id, must_change)
            .await?;
        self.audit(
            Audit::event("password_change_forced", "success")
                .actor(actor)
                .subject(&user.login)
                .detail(must_change.to_string())
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// Mails an invitation with a set-password link; returns the link's expiry time.
    pub async fn invite_user(
        &self,
        login: &str,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<i64, ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        let email = user.email.clone().ok_or_else(|| {
            ServiceError::InvalidInput(format!("user `{}` has no e-mail address", user.login))
        })?;
        if !user.active {
            return Err(ServiceError::Refused(format!(
                "user `{}` is disabled",
                user.login
            )));
        }
        self.store
            .revoke_user_tokens(user.id, TokenPurpose::Invitation, now)
            .await?;
        let ttl = self.config.links.invitation_hours * 3600;
        let token = self
            .issue_link(TokenPurpose::Invitation, Some(user.id), now, ttl)
            .await?;
        let link = self.url(&format!("/invite/{}", token.expose()));
        let text = format!(
            "You have been invited to an account ({}) protected by Bulwark.\n\nChoose your password with the link below. It works once, until {}.",
            user.login,
            crate::clock::format_time(now + ttl)
        );
        self.mailer
            .send(
                &email,
                "Set up your account",
                &text,
                Some((&link, "Choose my password")),
                now,
            )
            .await;
        self.audit(
            Audit::event("user_invited", "success")
                .actor(actor)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(now + ttl)
    }

    /// Lifts a login lock on an account.
    pub async fn unlock_user(
        &self,
        login: &str,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        self.store
            .delete_throttle(&super::auth::account_key(&user.login))
            .await?;
        self.store.delete_throttle(&self.code_key(user.id)).await?;
        self.audit(
            Audit::event("user_unlocked", "success")
                .actor(actor)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// Whether an account is currently blocked by login throttling, and until when.
    pub async fn user_lock(&self, user: &UserRecord) -> Result<Option<i64>, ServiceError> {
        let now = self.now();
        Ok(self
            .store
            .find_throttle(&super::auth::account_key(&user.login))
            .await?
            .map(|t| t.blocked_until)
            .filter(|&until| until > now))
    }

    /// Adds and removes groups (or replaces them all with `set`).
    pub async fn update_user_groups(
        &self,
        login: &str,
        add: &[String],
        remove: &[String],
        set: Option<&[String]>,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<UserRecord, ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        let mut groups: Vec<String> = match set {
            Some(set) => set.to_vec(),
            None => user.groups.clone(),
        };
        groups.extend(add.iter().cloned());
        let remove = parse_groups(remove)?;
        let mut parsed = parse_groups(&groups)?;
        parsed.retain(|g| !remove.contains(g));
        if user.in_group(GroupName::ADMINS)
            && !parsed.iter().any(|g| g.as_str() == GroupName::ADMINS)
        {
            self.refuse_last_admin(&user, "remove from admins").await?;
        }
        self.store.update_groups(user.id, &parsed).await?;
        let updated = self.store.get_user(user.id).await?;
        self.audit(
            Audit::event("groups_changed", "success")
                .actor(actor)
                .subject(&user.login)
                .detail(format!(
                    "{} -> {}",
                    user.groups.join(","),
                    updated.groups.join(",")
                ))
                .client(client),
            now,
        )
        .await;
        Ok(updated)
    }
}
