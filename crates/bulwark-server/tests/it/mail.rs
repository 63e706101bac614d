//! Mail delivery through a real SMTP conversation on loopback, and retry when the relay is down.

use crate::support::*;
use axum::http::StatusCode;
use bulwark_server::clock::Clock;
use bulwark_server::mail::Transport;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A minimal SMTP server that accepts every message and keeps its DATA.
struct SmtpSink {
    messages: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    async fn start(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let store = messages.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 sink.test ESMTP\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" => b"250-sink.test\r\n250 8BITMIME\r\n",
                            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
                            "DATA" => {
                                write.write_all(b"354 go ahead\r\n").await.unwrap();
                                let mut data = String::new();
                                while let Ok(Some(l)) = lines.next_line().await {
                                    if l == "." {
                                        break;
                                    }
                                    data.push_str(&l);
                                    data.push('\n');
                                }
                                store.lock().unwrap().push(data);
                                b"250 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"502 not implemented\r\n",
                        };
                        write.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        Self { messages, task }
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn smtp_config(addr: SocketAddr) -> String {
    format!("[mail]\ntransport = \"smtp\"\nfrom = \"Security <security@example.com>\"\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout_secs = 5\n", addr.port())
}

#[tokio::test]
async fn smtp_transport_delivers_text_and_html_parts() {
    let addr = free_port();
    let sink = SmtpSink::start(addr).await;
    let t = TestApp::with_config(&smtp_config(addr)).await;
    t.add_user("erin", "Correct-Horse-Battery-Staple-42", &["internal"])
        .await;
    t.browser()
        .post("/password/forgot", &[("login_or_email", "erin")])
        .await;
    t.wait_for_queued_mail(1).await;
    let transport = Transport::from_config(&t.app.config.mail).unwrap();
    assert_eq!(t.app.mailer.deliver_due(&transport, t.clock.now()).await, 1);
    let messages = sink.messages.lock().unwrap().clone();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(m.contains("To: erin@example.com"), "{m}");
    assert!(m.contains("From: Security <security@example.com>"), "{m}");
    assert!(m.contains("Subject: Reset your password"));
    assert!(
        m.contains("text/plain") && m.contains("text/html"),
        "both parts: {m}"
    );
    assert!(
        t.store
            .list_due_mail(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty(),
        "delivered mail leaves the queue"
    );
}

#[tokio::test]
async fn failed_send_is_retried_later_and_never_blocks_the_request() {
    let addr = free_port();
    let t = TestApp::with_config(&smtp_config(addr)).await;
    t.add_user("erin", "Correct-Horse-Battery-Staple-42", &["internal"])
        .await;
    let b = t.browser();
    b.login("erin", "Correct-Horse-Battery-Staple-42").await;
    // The relay is down: changing the password (which mails a notification) still works.
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", "Correct-Horse-Battery-Staple-42"),
                ("new_password", "Quiet-Violet-Lantern-Harbor-77"),
                ("confirm_password", "Quiet-Violet-Lantern-Harbor-77"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let transport = Transport::from_config(&t.app.config.mail).unwrap();
    assert_eq!(t.app.mailer.deliver_due(&transport, t.clock.now()).await, 0);
    let queued = t.store.list_due_mail(i64::MAX, 10).await.unwrap();
    assert_eq!(queued.len(), 1, "kept for a retry");
    assert_eq!(queued[0].attempts, 1);
    assert_eq!(
        queued[0].next_attempt_at,
        t.clock.now() + 30,
        "first retry after 30 s"
    );
    // The relay comes back; the retry is not due before its time, then it goes out.
    let sink = SmtpSink::start(addr).await;
    assert_eq!(t.app.mailer.deliver_due(&transport, t.clock.now()).await, 0);
    t.clock.advance(30);
    assert_eq!(t.app.mailer.deliver_due(&transport, t.clock.now()).await, 1);
    let messages = sink.messages.lock().unwrap().clone();
    assert!(messages[0].contains("Subject: Your password was changed"));
}
