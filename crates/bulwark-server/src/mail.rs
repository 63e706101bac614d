//! Outgoing mail: a durable queue in the store, drained by a background worker.
//!
//! Services only enqueue (one insert), so a slow or broken mail server never delays a login.
//! The worker sends due messages, deletes each once delivered (bodies can hold link tokens)
//! and retries failures with exponential backoff (30 s doubling, at most 1 h between tries).

use crate::app::StartError;
use crate::clock::Clock;
use crate::config::{MailConfig, MailTransportConfig, SmtpConfig, SmtpSecurity};
use askama::Template;
use bulwark_core::UnixTime;
use bulwark_store::{MailRecord, NewMail, Store};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Messages that fail this many times are dropped (and logged): about two days of retries.
const MAX_ATTEMPTS: u32 = 50;

#[derive(Template)]
#[template(path = "mail.html")]
struct MailHtml<'a> {
    subject: &'a str,
    paragraphs: Vec<&'a str>,
    link: Option<(&'a str, &'a str)>,
}

/// Queues mail; cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    store: Arc<dyn Store>,
    metrics: Arc<crate::metrics::Metrics>,
    from: Mailbox,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer sending as `config.from`.
    pub fn new(
        store: Arc<dyn Store>,
        config: &MailConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StartError> {
        let from = config.from.parse().map_err(|_| {
            StartError::Config(format!(
                "invalid configuration: `mail.from`: `{}` is not a mailbox",
                config.from
            ))
        })?;
        Ok(Self {
            store,
            metrics,
            from,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Queues a message with a text and an HTML part; `link` is (URL, button label).
    /// Failure to queue is logged, never returned: a notification must not break the action.
    pub async fn send(
        &self,
        to: &str,
        subject: &str,
        text: &str,
        link: Option<(&str, &str)>,
        now: UnixTime,
    ) {
        let body_text = match link {
            Some((url, label)) => {
                format!("{text}\n\n{label}:\n{url}\n\n-- \nBulwark account security\n")
            }
            None => format!("{text}\n\n-- \nBulwark account security\n"),
        };
        let html = MailHtml {
            subject,
            paragraphs: text.split("\n\n").collect(),
            link,
        };
        let body_html = match html.render() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot render mail template");
                return;
            }
        };
        let mail = NewMail {
            to: to.into(),
            subject: subject.into(),
            body_text,
            body_html,
            created_at: now,
        };
        match self.store.enqueue_mail(&mail).await {
            Ok(_) => self.wake.notify_one(),
            Err(e) => tracing::error!(error = %e, subject, "cannot queue mail"),
        }
    }

    /// Starts the delivery worker; it runs until the runtime shuts down.
    pub fn spawn_worker(
        &self,
        transport: Transport,
        clock: Arc<dyn Clock>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.deliver_due(&transport, clock.now()).await;
                tokio::select! {
                    () = this.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        })
    }

    /// Sends every message due at `now`; returns how many were delivered.
    pub async fn deliver_due(&self, transport: &Transport, now: UnixTime) -> usize {
        let due = match self.store.list_due_mail(now, 50).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mail queue");
                return 0;
            }
        };
        let mut delivered = 0;
        for mail in due {
            let outcome = self.deliver(transport, &mail).await;
            let counter = if outcome.is_ok() {
                &self.metrics.mail_sent
            } else {
                &self.metrics.mail_failures
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    delivered += 1;
                    if let Err(e) = self.store.delete_mail(mail.id).await {
                        tracing::warn!(error = %e, mail_id = mail.id, "mail sent but not removed from the queue");
                    }
                }
                Err(Failure::Permanent(why)) => {
                    tracing::error!(mail_id = mail.id, reason = %why, "dropping undeliverable mail");
                    let _ = self.store.delete_mail(mail.id).await;
                }
                Err(Failure::Retry(why)) if mail.attempts + 1 >= MAX_ATTEMPTS => {
                    tracing::error!(mail_id = mail.id, reason = %why, "giving up on mail after {MAX_ATTEMPTS} attempts");
                    let _ = self.store.delete_mail(mail.id).await;
                }
                Err(Failure::Retry(why)) => {
                    let backoff = 30i64.saturating_mul(1 << mail.attempts.min(7)).min(3600);
                    tracing::warn!(mail_id = mail.id, attempt = mail.attempts + 1, retry_in_secs = backoff, reason = %why, "mail delivery failed; will retry");
                    if let Err(e) = self
                        .store
                        .update_mail_failed(mail.id, now + backoff, &why)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot record mail failure");
                    }
                }
            }
        }
        delivered
    }

    async fn deliver(&self, transport: &Transport, mail: &MailRecord) -> Result<(), Failure> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|_| Failure::Permanent("invalid recipient address".into()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                mail.body_text.clone(),
                mail.body_html.clone(),
            ))
            .map_err(|e| Failure::Permanent(format!("cannot build message: {e}")))?;
        match transport {
            Transport::Outbox(dir) => {
                let dir = dir.clone();
                // Named by the time of delivery, so a listing sorts in delivery order, plus a
                // random part so two mails can never share a name.
                let sent = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let name = format!(
                    "{}-{:09}-{:08x}.eml",
                    sent.as_secs(),
                    sent.subsec_nanos(),
                    rand::random::<u32>()
                );
                let bytes = message.formatted();
                tokio::task::spawn_blocking(move || write_outbox(&dir, &name, &bytes))
                    .await
                    .map_err(|e| Failure::Retry(e.to_string()))?
                    .map_err(|e| Failure::Retry(format!("cannot write to the outbox: {e}")))
            }
            Transport::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    Failure::Permanent(e.to_string())
                } else {
                    Failure::Retry(e.to_string())
                }
            }),
        }
    }
}

enum Failure {
    Permanent(String),
    Retry(String),
}

fn write_outbox(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    crate::app::write_private(&tmp, bytes)?;
    // A hard link never replaces an existing file: a name clash is an error to retry, not
    // a lost mail.
    let linked = std::fs::hard_link(&tmp, dir.join(name));
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Where the worker delivers.
#[derive(Clone)]
pub enum Transport {
    /// `.eml` files in a directory.
    Outbox(PathBuf),
    /// An SMTP relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl Transport {
    /// Builds the transport the configuration names.
    pub fn from_config(config: &MailConfig) -> Result<Self, StartError> {
        match &config.transport {
            MailTransportConfig::Outbox { dir } => Ok(Self::Outbox(dir.clone())),
            MailTransportConfig::Smtp(smtp) => smtp_transport(smtp).map(Self::Smtp),
        }
    }
}

fn smtp_transport(c: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, StartError> {
    let bad = |e: lettre::transport::smtp::Error| {
        StartError::Config(format!("invalid configuration: `mail.smtp.host`: {e}"))
    };
    let builder = match c.security {
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host).map_err(bad)?,
        SmtpSecurity::Starttls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host).map_err(bad)?
        }
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
    };
    let mut builder = builder
        .port(c.port)
        .timeout(Some(Duration::from_secs(c.timeout_secs)));
    if let (Some(user), Some(pass)) = (&c.username, &c.password) {
        builder = builder.credentials(Credentials::new(user.clone(), pass.expose().to_string()));
    }
    Ok(builder.build())
}
