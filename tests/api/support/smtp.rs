//! A real SMTP server inside the test process: `mailin` speaks the protocol, a few lines
//! of Tokio carry the bytes. It can refuse recipients for good (550 5.1.1 naming the
//! address), everything for now (451), or the sender for its own fault (554 5.7.1 to
//! `MAIL FROM`, a set number of times), and stop and start again on the same port.
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mailin::{Action, Handler, Response, SessionBuilder, response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
    /// When the server accepted the message (answered 250 to its data).
    pub accepted_at: chrono::DateTime<chrono::Utc>,
}

/// Shared by every incarnation of the server.
#[derive(Clone, Default)]
pub struct SmtpState {
    pub received: Arc<Mutex<Vec<ReceivedMail>>>,
    /// Answer 451 to `MAIL FROM` while set.
    pub fail_transient: Arc<AtomicBool>,
    /// Recipients refused with 550.
    pub reject_rcpt: Arc<Mutex<Vec<String>>>,
    /// `MAIL FROM` commands seen, accepted or not.
    pub attempts: Arc<AtomicUsize>,
    /// So many `MAIL FROM` commands more are refused with `554 5.7.1 relaying disabled`
    /// (a server's own fault, as when its relay settings are wrong), then accepted.
    pub refuse_mail_from: Arc<AtomicUsize>,
    /// `MAIL FROM` commands refused with that 554.
    pub refused_mail_from: Arc<AtomicUsize>,
    /// Milliseconds to wait before answering the end of a message (which is already
    /// recorded as received): a slow server, so a test can act while a client waits.
    pub answer_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl SmtpState {
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

struct Session {
    state: SmtpState,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Session {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        self.state.attempts.fetch_add(1, Ordering::SeqCst);
        if self.state.fail_transient.load(Ordering::SeqCst) {
            return response::INTERNAL_ERROR;
        }
        if self
            .state
            .refuse_mail_from
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.state.refused_mail_from.fetch_add(1, Ordering::SeqCst);
            return Response::custom(554, "5.7.1 relaying disabled".to_owned());
        }
        self.from = from.to_owned();
        self.to.clear();
        self.data.clear();
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        if self
            .state
            .reject_rcpt
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == to)
        {
            // As Postfix words it: a refusal naming the address, with 5.1.1.
            return Response::custom(
                550,
                format!("5.1.1 <{to}>: Recipient address rejected: User unknown"),
            );
        }
        self.to.push(to.to_owned());
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail = ReceivedMail {
            from: self.from.clone(),
            to: self.to.clone(),
            data: std::mem::take(&mut self.data),
            accepted_at: chrono::Utc::now(),
        };
        self.state.received.lock().unwrap().push(mail);
        response::OK
    }
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Port 0 picks a free port; a stopped server's port starts it again there.
    pub async fn start(state: SmtpState, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop, so stopping also cuts pooled connections.
            let mut sessions = JoinSet::new();
            while let Ok((socket, peer)) = listener.accept().await {
                let state = state.clone();
                sessions.spawn(async move {
                    let handler = Session {
                        state: state.clone(),
                        from: String::new(),
                        to: vec![],
                        data: vec![],
                    };
                    let mut session = SessionBuilder::new("test-smtp").build(peer.ip(), handler);
                    let mut stream = BufReader::new(socket);
                    stream.write_all(&session.greeting().buffer()?).await?;
                    let mut line = Vec::with_capacity(128);
                    loop {
                        line.clear();
                        if stream.read_until(b'\n', &mut line).await? == 0 {
                            break;
                        }
                        let reply = session.process(&line);
                        let delay = state.answer_delay_ms.load(Ordering::SeqCst);
                        if line == b".\r\n" && delay > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                        match reply.action {
                            Action::NoReply => {}
                            Action::Reply => stream.write_all(&reply.buffer()?).await?,
                            Action::Close | Action::UpgradeTls => {
                                stream.write_all(&reply.buffer()?).await?;
                                break;
                            }
                        }
                    }
                    Ok::<(), io::Error>(())
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.addr.port())
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
