//! Second factors: TOTP enrolment and use, recovery codes, e-mailed codes, trusted devices,
//! enforcement with grace, admin reset and key rotation.
//!
//! After the password (see `auth`), the flow continues:
//!
//! ```text
//!  PasswordOk --trusted device cookie valid for this user and browser--> Full session
//!      |--has a TOTP factor, or is under enforcement with e-mail codes--> SecondFactor session
//!      |                      (reaches only /login/2fa; 10 minutes to finish)
//!      |                           --TOTP / recovery / e-mailed code OK--> new Full session id
//!      '--otherwise--> Full session
//!  Full session, under enforcement without a factor:
//!      in grace     -> asked to enrol after login, may postpone
//!      grace over   -> only the enrolment pages are reachable
//! ```
//! Every code entry goes through the same per-account and per-IP throttle, kept in the store.

use super::auth::{account_key, CurrentSession};
use super::{browser_name, Audit, ClientInfo, ServiceError};
use crate::app::App;
use bulwark_core::enforcement::{self, Standing};
use bulwark_core::password::Password;
use bulwark_core::recovery::{self, RecoveryCode};
use bulwark_core::token::{self, TokenHash};
use bulwark_core::totp::{self, Algorithm, TotpCode, TotpParams, TotpSecret};
use bulwark_core::{SecretString, UnixTime};
use bulwark_store::{
    NewTotpFactor, NewTrustedDevice, SessionStage, TotpFactorRecord, TrustedDeviceRecord,
    UserRecord,
};
use rand::Rng;

/// How long a half-logged-in session may take to present its second factor.
pub const SECOND_FACTOR_WINDOW_SECS: i64 = 10 * 60;
/// Lifetime of an e-mailed code.
pub const EMAIL_CODE_SECS: i64 = 10 * 60;
/// E-mailed codes per account per hour.
pub const EMAIL_CODES_PER_HOUR: u32 = 5;
/// A login from an IP and browser seen in none of the account's last this many successful
/// logins mails the owner.
const KNOWN_DEVICE_LOGINS: u32 = 200;

/// What a pending enrolment shows the user.
#[derive(Debug)]
pub struct EnrolmentView {
    /// The secret grouped in fours, for typing.
    pub secret_grouped: SecretString,
    /// The `otpauth://` URI the QR code encodes.
    pub uri: SecretString,
    /// The QR code as an SVG document.
    pub qr_svg: String,
}

/// The state the account security page shows.
#[derive(Debug)]
pub struct TwoFactorStatus {
    pub active: bool,
    pub pending: bool,
    pub recovery_codes_left: u32,
    pub trusted_devices: Vec<TrustedDeviceRecord>,
    pub standing: Standing,
    pub required: bool,
}

/// How a second factor may be given at login.
#[derive(Debug, Clone, Copy)]
pub struct SecondFactorOptions {
    pub totp: bool,
    pub email: bool,
    pub remember_days: u32,
}

/// A finished second step: the new session and, if asked, a trusted-device cookie.
#[derive(Debug)]
pub struct SecondFactorDone {
    pub token: SecretString,
    pub trusted_device: Option<SecretString>,
    pub standing: Standing,
}

fn params_of(f: &TotpFactorRecord) -> TotpParams {
    let algorithm = match f.algorithm.as_str() {
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        _ => Algorithm::Sha1,
    };
    TotpParams {
        algorithm,
        digits: f.digits,
        period: u64::from(f.period),
        skew: 1,
    }
}

fn aad(user: i64) -> Vec<u8> {
    format!("totp:{user}").into_bytes()
}

fn ip_allowed(client: &ClientInfo, networks: &[String]) -> bool {
    let Some(ip) = client.ip else { return false };
    networks
        .iter()
        .filter_map(|n| crate::config::parse_net(n))
        .any(|net| net.contains(&ip))
}

impl App {
    pub(crate) fn code_key(&self, user: i64) -> String {
        format!("code:{user}")
    }

    /// The counter of second-step failures from one client address (apart from its
    /// password failures).
    fn code_ip_key(ip: std::net::IpAddr) -> String {
        format!("code-{}", super::auth::ip_key(ip))
    }

    pub(crate) async fn confirmed_factor(
        &self,
        user: i64,
    ) -> Result<Option<TotpFactorRecord>, ServiceError> {
        Ok(self
            .store
            .find_totp(user)
            .await?
            .filter(|f| f.confirmed_at.is_some()))
    }

    /// The user's 2FA standing now (without starting the grace clock).
    pub async fn standing_of(
        &self,
        user: &UserRecord,
        now: UnixTime,
    ) -> Result<Standing, ServiceError> {
        let has_factor = self.confirmed_factor(user.id).await?.is_some();
        Ok(self.standing_with(user, has_factor, now))
    }

    /// The user's 2FA standing now, knowing whether they have a confirmed authenticator.
    fn standing_with(&self, user: &UserRecord, has_factor: bool, now: UnixTime) -> Standing {
        let policy = self.policy();
        enforcement::standing(
            policy.two_factor.required_for(&user.groups),
            user.device_account,
            has_factor,
            user.grace_started_at,
            policy.two_factor.grace_days,
            now,
        )
    }

    fn email_codes_allowed(&self, user: &UserRecord, standing: Standing) -> bool {
        self.config.two_factor.email_codes
            && user.email.is_some()
            && matches!(
                standing,
                Standing::Grace { .. } | Standing::EnrolmentRequired
            )
    }

    /// Decides the session stage after a correct password and starts the session.
    /// `has_factor`: whether the user has a confirmed authenticator.
    pub(crate) async fn after_password(
        &self,
        user: &UserRecord,
        has_factor: bool,
        client: &ClientInfo,
        trusted_cookie: Option<&str>,
        now: UnixTime,
    ) -> Result<(SecretString, SessionStage, Standing), ServiceError> {
        if user.device_account && !ip_allowed(client, &user.allowed_networks) {
            self.audit(
                Audit::event("login", "denied")
                    .subject(&user.login)
                    .detail("device account outside its networks")
                    .client(client),
                now,
            )
            .await;
            return Err(ServiceError::InvalidCredentials);
        }
        let required = self.policy().two_factor.required_for(&user.groups);
        // The grace clock starts at the first login under enforcement, once.
        let grace_started = match user.grace_started_at {
            None if required && !has_factor && !user.device_account => {
                Some(self.store.start_grace(user.id, now).await?)
            }
            started => started,
        };
        let standing = enforcement::standing(
            required,
            user.device_account,
            has_factor,
            grace_started,
            self.policy().two_factor.grace_days,
            now,
        );
        let needs_second = has_factor || self.email_codes_allowed(user, standing);
        let trusted = needs_second
            && self
                .trusted_device_valid(user, client, trusted_cookie, now)
                .await?;
        let stage = if needs_second && !trusted {
            SessionStage::SecondFactor
        } else {
            SessionStage::Full
        };
        let token = self
            .start_session_at(user, client, stage, trusted, now)
            .await?;
        if stage == SessionStage::Full {
            self.finish_login(
                user,
                client,
                if trusted {
                    "trusted device"
                } else {
                    "password"
                },
                now,
            )
            .await?;
        } else {
            self.audit(
                Audit::event("login_password", "success")
                    .actor(&user.login)
                    .subject(&user.login)
                    .detail("second factor pending")
                    .client(client),
                now,
            )
            .await;
        }
        Ok((token, stage, standing))
    }

    /// Bookkeeping of a completed login: last login, audit, new-device mail.
    async fn finish_login(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        how: &str,
        now: UnixTime,
    ) -> Result<(), ServiceError> {
        self.notify_if_new_device(user, client, now).await?;
        self.store.update_last_login(user.id, now).await?;
        self.audit(
            Audit::event("login", "success")
                .actor(&user.login)
                .subject(&user.login)
                .detail(how)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    async fn trusted_device_valid(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        cookie: Option<&str>,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        let Some(cookie) = cookie.filter(|c| token::looks_like_token(c)) else {
            return Ok(false);
        };
        if self.policy().two_factor.trusted_device_days == 0 {
            return Ok(false);
        }
        let Some(device) = self
            .store
            .find_trusted_device(&TokenHash::of(cookie))
            .await?
        else {
            return Ok(false);
        };
        // Bound to the user and to the browser it was issued to.
        let ok = device.user == user.id
            && device.expires_at > now
            && device.name == browser_name(client.user_agent.as_deref());
        if ok {
            self.store
                .touch_trusted_device(
                    device.id,
                    now,
                    client.ip.map(|ip| ip.to_string()).as_deref(),
                )
                .await?;
        }
        Ok(ok)
    }

    /// How the signed-in-but-unfinished user may give a second factor.
    pub async fn second_factor_options(
        &self,
        current: &CurrentSession,
    ) -> Result<SecondFactorOptions, ServiceError> {
        let now = self.now();
        let totp = self.confirmed_factor(current.user.id).await?.is_some();
        let standing = self.standing_of(&current.user, now).await?;
        Ok(SecondFactorOptions {
            totp,
            email: !totp && self.email_codes_allowed(&current.user, standing),
            remember_days: self.policy().two_factor.trusted_device_days,
        })
    }

    /// Refuses code entry while the user's or the client address's code counter blocks;
    /// returns whether the user has a code failure counter.
    async fn gate_code(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        self.gate_key_and_ip(
            &self.code_key(user.id),
            &self.policy().lockout.code,
            client.ip.map(Self::code_ip_key),
            now,
        )
        .await
    }

    async fn count_code_failure(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        now: UnixTime,
    ) -> Result<(), ServiceError> {
        let lockout = &self.policy().lockout;
        if self
            .count_key_and_ip_failure(
                &self.code_key(user.id),
                &lockout.code,
                Self::code_ip_key,
                client,
                now,
            )
            .await?
        {
            self.audit(
                Audit::event("code_entry_locked", "success")
                    .actor("system")
                    .subject(&user.login)
                    .client(client),
                now,
            )
            .await;
        }
        Ok(())
    }

    /// Checks a TOTP code for a confirmed factor and records its step (never accepted twice).
    async fn accept_totp(
        &self,
        factor: &TotpFactorRecord,
        code: &str,
        now: UnixTime,
    ) -> Result<bool, ServiceError> {
        let params = params_of(factor);
        let Ok(code) = TotpCode::parse(code, params.digits) else {
            return Ok(false);
        };
        let secret = self.open_factor(factor)?;
        let last = factor.last_used_step.and_then(|s| u64::try_from(s).ok());
        let Some(step) = totp::verify(&secret, &params, &code, now, last) else {
            return Ok(false);
        };
        let step = i64::try_from(step)
            .map_err(|_| ServiceError::Internal("time step out of range".into()))?;
        Ok(self.store.update_totp_step(factor.user, step).await?)
    }

    fn open_factor(&self, factor: &TotpFactorRecord) -> Result<TotpSecret, ServiceError> {
        let raw = self
            .open_secret(&factor.key_id, &factor.secret_sealed, &aad(factor.user))
            .map_err(|e| ServiceError::Internal(format!("cannot open TOTP secret: {e}")))?;
        TotpSecret::from_bytes(raw).map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// Finishes a half login with a TOTP code, a recovery code or an e-mailed code. The half
    /// session is replaced by a new full one; with `remember` the browser becomes trusted.
    pub async fn complete_second_factor(
        &self,
        current: &CurrentSession,
        code: &str,
        remember: bool,
        client: &ClientInfo,
    ) -> Result<SecondFactorDone, ServiceError> {
        let now = self.now();
        let user = &current.user;
        if current.session.stage != SessionStage::SecondFactor {
            return Err(ServiceError::InvalidInput(
                "This login is already complete.".into(),
            ));
        }
        let counted = self.gate_code(user, client, now).await?;
        let code = code.trim();
        if code.is_empty() || code.len() > 64 {
            return Err(ServiceError::InvalidInput("Enter the code.".into()));
        }
        let factor = self.confirmed_factor(user.id).await?;
        let mut method = None;
        if let Some(f) = &factor {
            if self.accept_totp(f, code, now).await? {
                method = Some("totp");
            } else if let Some(normalized) = recovery::normalize(code) {
                let hash = recovery::hash_code(&self.key_ring().code_hash_key(), &normalized);
                if self.store.use_recovery_code(user.id, &hash, now).await? {
                    method = Some("recovery code");
                }
            }
        } else {
            let digits: String = code.chars().filter(char::is_ascii_digit).collect();
            if digits.len() == 6
                && code
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
            {
                let hash = recovery::hash_code(
                    &self.key_ring().code_hash_key(),
                    &format!("email:{digits}"),
                );
                if self.store.consume_email_code(user.id, &hash, now).await? {
                    method = Some("e-mailed code");
                }
            }
        }
        let Some(method) = method else {
            self.count_code_failure(user, client, now).await?;
            self.audit(
                Audit::event("second_factor", "failure")
                    .actor(&user.login)
                    .subject(&user.login)
                    .detail("wrong or reused code")
                    .client(client),
                now,
            )
            .await;
            return Err(ServiceError::InvalidInput(
                "That code is not valid. Codes work once; wait for the next one.".into(),
            ));
        };
        if counted {
            self.store.delete_throttle(&self.code_key(user.id)).await?;
        }
        self.store.delete_session(current.session.id).await?;
        let token = self
            .start_session_at(user, client, SessionStage::Full, true, now)
            .await?;
        self.finish_login(user, client, method, now).await?;
        if method == "recovery code" {
            let left = self.store.count_recovery_codes(user.id).await?;
            self.audit(
                Audit::event("recovery_code_used", "success")
                    .actor(&user.login)
                    .subject(&user.login)
                    .detail(format!("{left} left"))
                    .client(client),
                now,
            )
            .await;
            self.mail_user(user, "A recovery code was used", &format!("A recovery code was used to log in to your account {} from IP {} ({}) at {}. You have {left} recovery codes left.\n\nIf this was not you, change your password and contact your administrator now.", user.login, ip_text(client), browser_name(client.user_agent.as_deref()), crate::clock::format_time(now)), now).await;
        }
        let trusted_device = if remember && self.policy().two_factor.trusted_device_days > 0 {
            let (cookie, hash) = token::generate();
            let days = i64::from(self.policy().two_factor.trusted_device_days);
            self.store
                .insert_trusted_device(&NewTrustedDevice {
                    token_hash: hash,
                    user: user.id,
                    name: browser_name(client.user_agent.as_deref()),
                    created_at: now,
                    ip: client.ip.map(|ip| ip.to_string()),
                    expires_at: now + days * 86_400,
                })
                .await?;
            self.audit(
                Audit::event("trusted_device_added", "success")
                    .actor(&user.login)
                    .subject(&user.login)
                    .client(client),
                now,
            )
            .await;
            Some(cookie)
        } else {
            None
        };
        // The authenticator read above: this step changes none.
        let standing = self.standing_with(user, factor.is_some(), now);
        Ok(SecondFactorDone {
            token,
            trusted_device,
            standing,
        })
    }

    /// Mails a one-time 6-digit code to a half-logged-in user under enforcement without an
    /// authenticator (at most 5 an hour).
    pub async fn send_login_email_code(
        &self,
        current: &CurrentSession,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let user = &current.user;
        let options = self.second_factor_options(current).await?;
        let Some(email) = user
            .email
            .clone()
            .filter(|_| options.email && current.session.stage == SessionStage::SecondFactor)
        else {
            return Err(ServiceError::Refused(
                "Codes by e-mail are not available for this account.".into(),
            ));
        };
        if self
            .store
            .count_email_codes_since(user.id, now - 3600)
            .await?
            >= EMAIL_CODES_PER_HOUR
        {
            return Err(ServiceError::Throttled {
                retry_after: 3600,
                locked: false,
            });
        }
        let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
        let hash = recovery::hash_code(&self.key_ring().code_hash_key(), &format!("email:{code}"));
        self.store
            .insert_email_code(user.id, &hash, now, now + EMAIL_CODE_SECS)
            .await?;
        let text = format!("Your login code is {code}\n\nIt works once, for 10 minutes. It was asked for from IP {} ({}).\n\nIf you did not just enter your password, someone else knows it: change it now.", ip_text(client), browser_name(client.user_agent.as_deref()));
        self.mailer
            .send(&email, "Your login code", &text, None, now)
            .await;
        self.audit(
            Audit::event("email_code_sent", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// Starts (or restarts) TOTP enrolment after re-checking the password.
    pub async fn begin_enrolment(
        &self,
        current: &CurrentSession,
        password: String,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let user = &current.user;
        self.check_own_password(user, password, client, now).await?;
        if self.confirmed_factor(user.id).await?.is_some() {
            return Err(ServiceError::Refused("Two-factor authentication is already on. Turn it off first to enrol a new authenticator.".into()));
        }
        let secret = TotpSecret::generate();
        let (key_id, sealed) = self
            .key_ring()
            .seal(secret.as_bytes(), &aad(user.id))
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let params = TotpParams::default();
        self.store
            .upsert_pending_totp(&NewTotpFactor {
                user: user.id,
                secret_sealed: sealed,
                key_id,
                algorithm: "sha1".into(),
                digits: params.digits,
                period: u32::try_from(params.period).unwrap_or(30),
                created_at: now,
            })
            .await?;
        self.audit(
            Audit::event("totp_enrolment_started", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(())
    }

    /// The pending enrolment (QR code, secret, URI), if one is in progress.
    pub async fn pending_enrolment(
        &self,
        user: &UserRecord,
    ) -> Result<Option<EnrolmentView>, ServiceError> {
        let Some(factor) = self
            .store
            .find_totp(user.id)
            .await?
            .filter(|f| f.confirmed_at.is_none())
        else {
            return Ok(None);
        };
        let secret = self.open_factor(&factor)?;
        let uri = totp::otpauth_uri(
            &secret,
            &params_of(&factor),
            &self.config.two_factor.issuer,
            &user.login,
        );
        let qr = qrcode::QrCode::with_error_correction_level(
            uri.expose().as_bytes(),
            qrcode::EcLevel::M,
        )
        .map_err(|e| ServiceError::Internal(format!("cannot draw QR code: {e}")))?;
        let qr_svg = qr
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build();
        Ok(Some(EnrolmentView {
            secret_grouped: secret.to_base32_grouped(),
            uri,
            qr_svg,
        }))
    }

    /// Activates the pending factor with a first correct code. Returns the recovery codes
    /// (shown once) and a new session id; every other session ends.
    pub async fn confirm_enrolment(
        &self,
        current: &CurrentSession,
        code: &str,
        client: &ClientInfo,
    ) -> Result<(Vec<RecoveryCode>, SecretString), ServiceError> {
        let now = self.now();
        let user = &current.user;
        let counted = self.gate_code(user, client, now).await?;
        let factor = self
            .store
            .find_totp(user.id)
            .await?
            .filter(|f| f.confirmed_at.is_none())
            .ok_or_else(|| {
                ServiceError::Refused(
                    "Start the set-up again: no authenticator is waiting for confirmation.".into(),
                )
            })?;
        let params = params_of(&factor);
        let secret = self.open_factor(&factor)?;
        let step = TotpCode::parse(code, params.digits)
            .ok()
            .and_then(|c| totp::verify(&secret, &params, &c, now, None));
        let Some(step) = step.and_then(|s| i64::try_from(s).ok()) else {
            self.count_code_failure(user, client, now).await?;
            return Err(ServiceError::InvalidInput(
                "That code is not right. Check the time on your phone and enter the current code."
                    .into(),
            ));
        };
        if !self.store.confirm_totp(user.id, now, step).await? {
            return Err(ServiceError::Refused(
                "This authenticator was already confirmed.".into(),
            ));
        }
        let codes = self.new_recovery_codes(user.id, now).await?;
        if counted {
            self.store.delete_throttle(&self.code_key(user.id)).await?;
        }
        // The code just entered is a second factor: this session now has two.
        let token = self.restart_sessions(current, client, true, now).await?;
        self.audit(
            Audit::event("totp_enabled", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        self.mail_user(user, "Two-factor authentication is on", &format!("Two-factor authentication was turned on for your account {} at {} from IP {} ({}).\n\nIf this was not you, contact your administrator now.", user.login, crate::clock::format_time(now), ip_text(client), browser_name(client.user_agent.as_deref())), now).await;
        Ok((codes, token))
    }

    async fn new_recovery_codes(
        &self,
        user: i64,
        now: UnixTime,
    ) -> Result<Vec<RecoveryCode>, ServiceError> {
        let codes = recovery::generate_set();
        let key = self.key_ring().code_hash_key();
        let hashes: Vec<String> = codes
            .iter()
            .map(|c| recovery::hash_code(&key, &c.normalized()))
            .collect();
        self.store
            .replace_recovery_codes(user, &hashes, now)
            .await?;
        Ok(codes)
    }

    /// Ends every session of the user and starts a fresh one for this browser.
    async fn restart_sessions(
        &self,
        current: &CurrentSession,
        client: &ClientInfo,
        two_factor: bool,
        now: UnixTime,
    ) -> Result<SecretString, ServiceError> {
        self.store
            .delete_user_sessions(current.user.id, None)
            .await?;
        self.start_session_at(&current.user, client, SessionStage::Full, two_factor, now)
            .await
    }

    pub(crate) async fn check_own_password(
        &self,
        user: &UserRecord,
        password: String,
        client: &ClientInfo,
        now: UnixTime,
    ) -> Result<(), ServiceError> {
        self.gate_key(
            &account_key(&user.login),
            &self.policy().lockout.account,
            now,
        )
        .await?;
        let password = Password::parse(password)
            .map_err(|_| ServiceError::InvalidInput("Enter your password.".into()))?;
        let stored = self
            .store
            .find_password_hash(user.id)
            .await?
            .ok_or(ServiceError::InvalidCredentials)?;
        if self.hashes.verify(password, stored).await?.is_valid() {
            Ok(())
        } else {
            self.count_key_failure(
                &account_key(&user.login),
                &self.policy().lockout.account,
                now,
            )
            .await?;
            self.audit(
                Audit::event("password_check", "failure")
                    .actor(&user.login)
                    .subject(&user.login)
                    .client(client),
                now,
            )
            .await;
            Err(ServiceError::InvalidInput(
                "Your password is not correct.".into(),
            ))
        }
    }

    /// Turns 2FA off after re-checking the password: removes the factor, recovery codes and
    /// trusted devices, ends other sessions. Returns the new session id.
    pub async fn disable_two_factor(
        &self,
        current: &CurrentSession,
        password: String,
        client: &ClientInfo,
    ) -> Result<SecretString, ServiceError> {
        let now = self.now();
        let user = &current.user;
        self.check_own_password(user, password, client, now).await?;
        let stopped = Audit::event("totp_disabled", "failure")
            .actor(&user.login)
            .subject(&user.login)
            .client(client);
        let token = self
            .run_steps(&user.login, stopped, now, async {
                self.clear_second_factors(user).await?;
                self.restart_sessions(current, client, false, now).await
            })
            .await?;
        self.audit(
            Audit::event("totp_disabled", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        self.mail_user(user, "Two-factor authentication is off", &format!("Two-factor authentication was turned off for your account {} at {} from IP {} ({}). Your trusted devices were forgotten.\n\nIf this was not you, change your password and contact your administrator now.", user.login, crate::clock::format_time(now), ip_text(client), browser_name(client.user_agent.as_deref())), now).await;
        Ok(token)
    }

    async fn clear_second_factors(&self, user: &UserRecord) -> Result<(), ServiceError> {
        self.store.delete_totp(user.id).await?;
        self.store.delete_recovery_codes(user.id).await?;
        self.store.delete_user_trusted_devices(user.id).await?;
        Ok(())
    }

    /// New recovery codes after re-checking the password; the old ones stop working.
    pub async fn regenerate_recovery_codes(
        &self,
        current: &CurrentSession,
        password: String,
        client: &ClientInfo,
    ) -> Result<Vec<RecoveryCode>, ServiceError> {
        let now = self.now();
        let user = &current.user;
        self.check_own_password(user, password, client, now).await?;
        if self.confirmed_factor(user.id).await?.is_none() {
            return Err(ServiceError::Refused(
                "Turn on two-factor authentication first.".into(),
            ));
        }
        let codes = self.new_recovery_codes(user.id, now).await?;
        self.audit(
            Audit::event("recovery_codes_regenerated", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        Ok(codes)
    }

    /// What the account security page shows.
    pub async fn two_factor_status(
        &self,
        user: &UserRecord,
    ) -> Result<TwoFactorStatus, ServiceError> {
        let now = self.now();
        let factor = self.store.find_totp(user.id).await?;
        Ok(TwoFactorStatus {
            active: factor.as_ref().is_some_and(|f| f.confirmed_at.is_some()),
            pending: factor.as_ref().is_some_and(|f| f.confirmed_at.is_none()),
            recovery_codes_left: self.store.count_recovery_codes(user.id).await?,
            trusted_devices: self
                .store
                .list_user_trusted_devices(user.id)
                .await?
                .into_iter()
                .filter(|d| d.expires_at > now)
                .collect(),
            standing: self.standing_of(user, now).await?,
            required: self.policy().two_factor.required_for(&user.groups),
        })
    }

    /// Forgets one trusted device of the signed-in user.
    pub async fn revoke_trusted_device(
        &self,
        user: &UserRecord,
        id: i64,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        if !self.store.delete_trusted_device(user.id, id).await? {
            return Err(ServiceError::NotFound);
        }
        self.audit(
            Audit::event("trusted_device_revoked", "success")
                .actor(&user.login)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        self.mail_user(user, "A trusted device was removed", &format!("A device was removed from the trusted devices of your account {} at {}. It will be asked for a second factor at its next login.", user.login, crate::clock::format_time(now)), now).await;
        Ok(())
    }

    /// Forgets every trusted device of the signed-in user.
    pub async fn revoke_all_trusted_devices(
        &self,
        current: &CurrentSession,
        client: &ClientInfo,
    ) -> Result<u64, ServiceError> {
        let now = self.now();
        let n = self
            .store
            .delete_user_trusted_devices(current.user.id)
            .await?;
        self.audit(
            Audit::event("trusted_devices_revoked", "success")
                .actor(&current.user.login)
                .subject(&current.user.login)
                .detail(format!("{n} devices"))
                .client(client),
            now,
        )
        .await;
        self.mail_user(&current.user, "Your trusted devices were removed", &format!("All {n} trusted devices of your account {} were removed at {}. Each will be asked for a second factor at its next login.", current.user.login, crate::clock::format_time(now)), now).await;
        Ok(n)
    }

    /// Admin reset: clears the factor, recovery codes, trusted devices and sessions; mails the user.
    pub async fn admin_reset_two_factor(
        &self,
        login: &str,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        let stopped = Audit::event("totp_reset_by_admin", "failure")
            .actor(actor)
            .subject(&user.login)
            .client(client);
        self.run_steps(&user.login, stopped, now, async {
            self.clear_second_factors(&user).await?;
            self.store.delete_user_sessions(user.id, None).await?;
            self.store.delete_throttle(&self.code_key(user.id)).await?;
            Ok(())
        })
        .await?;
        self.audit(
            Audit::event("totp_reset_by_admin", "success")
                .actor(actor)
                .subject(&user.login)
                .client(client),
            now,
        )
        .await;
        self.mail_user(&user, "Your two-factor authentication was reset", &format!("An administrator reset two-factor authentication for your account {} at {}. At your next login you will be asked to set up an authenticator again. Your trusted devices were forgotten and all sessions ended.", user.login, crate::clock::format_time(now)), now).await;
        Ok(())
    }

    /// Marks a device account and the networks it may log in from (empty: not a device account).
    pub async fn set_device_account(
        &self,
        login: &str,
        networks: &[String],
        actor: &str,
        client: &ClientInfo,
    ) -> Result<UserRecord, ServiceError> {
        let now = self.now();
        let user = self.user_by_login(login).await?;
        let mut parsed = Vec::new();
        for n in networks.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let net = crate::config::parse_net(n).ok_or_else(|| {
                ServiceError::InvalidInput(format!(
                    "`{n}` is not an IP address or CIDR like 10.20.0.0/24"
                ))
            })?;
            parsed.push(net.to_string());
        }
        self.store
            .update_device_account(user.id, !parsed.is_empty(), &parsed)
            .await?;
        self.store.delete_user_sessions(user.id, None).await?;
        self.audit(
            Audit::event("device_account_changed", "success")
                .actor(actor)
                .subject(&user.login)
                .detail(if parsed.is_empty() {
                    "not a device account".to_string()
                } else {
                    parsed.join(",")
                })
                .client(client),
            now,
        )
        .await;
        Ok(self.store.get_user(user.id).await?)
    }

    /// Puts a new key first in the key file and re-seals every TOTP secret under it.
    /// Returns how many secrets were re-sealed.
    pub async fn rotate_keys(&self) -> Result<usize, ServiceError> {
        let now = self.now();
        if self.config.secret_key.is_some() {
            return Err(ServiceError::Refused("the key ring is given inline (`secret_key`, BULWARK_SECRET_KEY): put a new key first there, restart every node, then run `bulwark key reseal`".into()));
        }
        let rotated = self.key_ring().rotated();
        crate::keys::replace_file(&self.config.secret_key_file, &rotated)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.reload_keys()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let n = self.reseal_secrets().await?;
        self.audit(
            Audit::event("keys_rotated", "success")
                .actor("cli")
                .detail(format!(
                    "new key {}, {n} secrets re-sealed",
                    rotated.current_id()
                )),
            now,
        )
        .await;
        Ok(n)
    }

    /// Re-seals every secret not yet under the current key.
    pub async fn reseal_secrets(&self) -> Result<usize, ServiceError> {
        let ring = self.key_ring();
        let mut n = 0;
        for factor in self.store.list_totp_factors().await? {
            if factor.key_id == ring.current_id() {
                continue;
            }
            let plain = ring
                .open(&factor.key_id, &factor.secret_sealed, &aad(factor.user))
                .map_err(|e| {
                    ServiceError::Internal(format!(
                        "cannot open the secret of user {}: {e}",
                        factor.user
                    ))
                })?;
            let (key_id, sealed) = ring
                .seal(&plain, &aad(factor.user))
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            if self
                .store
                .update_totp_secret(factor.user, &sealed, &key_id, &factor.key_id)
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn notify_if_new_device(
        &self,
        user: &UserRecord,
        client: &ClientInfo,
        now: UnixTime,
    ) -> Result<(), ServiceError> {
        // Most logins come from the device of the last one: asked exactly first, in the
        // store, before reading the recent devices out to compare browser names.
        let ip = client.ip_string();
        if self
            .store
            .login_client_seen(
                user.login.as_str(),
                ip.as_deref(),
                client.user_agent_bounded().as_deref(),
                KNOWN_DEVICE_LOGINS,
            )
            .await?
        {
            return Ok(());
        }
        let known = self
            .store
            .recent_login_clients(user.login.as_str(), KNOWN_DEVICE_LOGINS)
            .await?;
        if known.is_empty() {
            // The first login of an account has nothing to compare with.
            return Ok(());
        }
        let browser = browser_name(client.user_agent.as_deref());
        let seen = known
            .iter()
            .any(|(i, ua)| *i == ip && browser_name(ua.as_deref()) == browser);
        if let (false, Some(email)) = (seen, &user.email) {
            let text = format!("Your account {} was used to log in from a device not seen before:\n\nBrowser: {browser}\nIP: {}\nTime: {}\n\nIf this was you, nothing to do. If it was not, use the link below: it logs out every session, forgets your trusted devices, revokes your API keys, stops your password from working and lets you choose a new one.", user.login, ip_text(client), crate::clock::format_time(now));
            let link = self.not_me_link(user, now).await?;
            self.mailer
                .send(
                    email,
                    "New login to your account",
                    &text,
                    Some((&link, "This wasn't me: secure my account")),
                    now,
                )
                .await;
        }
        Ok(())
    }

    /// Mails a notification to the user, if they have an address.
    pub(crate) async fn mail_user(
        &self,
        user: &UserRecord,
        subject: &str,
        text: &str,
        now: UnixTime,
    ) {
        if let Some(email) = &user.email {
            let link = self.url("/account/security");
            self.mailer
                .send(
                    email,
                    subject,
                    text,
                    Some((&link, "Review my account security")),
                    now,
                )
                .await;
        }
    }
}

fn ip_text(client: &ClientInfo) -> String {
    client
        .ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}
