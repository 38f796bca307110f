//! Complaint reports arriving as mail (`[feedback] addresses`). Rules:
//! - A feedback address is accepted at RCPT from any client, authenticated or not, trusted or
//!   not (a listener with `auth = "required"` still wants AUTH before MAIL); it is never
//!   relayed. A transaction holds feedback recipients only, or none (`452 4.5.3` for the
//!   other kind, which the client sends again in a new transaction).
//! - One report per transaction counts against the client's `per_client_hourly` (an IPv6
//!   client's by its /64; `450 4.7.1` past it); a report over `max_size` gets `552 5.3.4`.
//! - The report is read, traced and dispatched before the reply: `250` once handled (also for
//!   mail that is not a report), `550 5.7.1` when its trace reference is forged, `451 4.3.0`
//!   when the state store failed or (in a farm) the reference's key is not known here yet.
//!   Nothing is spooled.

use super::address::{parse_path, split_command};
use super::envelope::Tx;
use super::session::{Flow, Session};
use crate::feedback::{Handled, Via};
use crate::reply::Reply;
use crate::spool::{Finished, MessageWriter, Recipient};

impl Session {
    /// RCPT TO a feedback address: the reply; `None` when `args` is not one (nor a second kind
    /// of recipient in a feedback transaction).
    pub(super) fn feedback_rcpt(&mut self, args: &str, smtputf8: bool) -> Option<Flow> {
        let settings = self.settings().feedback.as_ref()?;
        if settings.addresses.is_empty() {
            return None;
        }
        let address =
            split_command(args, "TO").and_then(|(path, _)| parse_path(path, smtputf8).ok())?;
        let is_feedback = settings.is_address(&address);
        let tx = self.tx.as_ref()?;
        let (in_feedback, others) = (tx.feedback, !tx.feedback && !tx.rcpts.is_empty());
        if !is_feedback {
            // A client that may not relay gets the usual refusal (`envelope::rcpt`).
            return (in_feedback && self.may_relay()).then(|| self.send(own_transaction()));
        }
        if others {
            return Some(self.send(own_transaction()));
        }
        if !in_feedback && !self.ctx.feedback.allow_client(self.peer) {
            return Some(self.refuse(
                "rcpt",
                Reply::new(
                    450,
                    "4.7.1",
                    "Too many complaint reports from your address, try again later",
                ),
            ));
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.feedback = true;
            if !tx.rcpts.iter().any(|r| r.address == address) {
                tx.rcpts.push(Recipient::new(address));
            }
        }
        Some(self.send(Reply::new(250, "2.1.5", "Ok")))
    }

    /// The size limit of the transaction in progress: `[feedback] max_size` for a report.
    pub(super) fn message_limit(&self) -> u64 {
        let max = self.settings().limits.message_size.0;
        match (&self.settings().feedback, &self.tx) {
            (Some(f), Some(tx)) if tx.feedback => max.min(f.max_size.0),
            _ => max,
        }
    }

    /// The trace headers for message `id` (`feedback::trace`), made once signing knows the
    /// `From:` domain and Message-ID.
    pub(super) fn stamp(
        &self,
        id: &str,
        tx: &Tx,
    ) -> impl Fn(&crate::signing::Signed) -> String + Send + Sync + 'static {
        let feedback = self.ctx.feedback.clone();
        let (queue_id, login, sender) = (id.to_string(), self.user.clone(), tx.sender.clone());
        let at = crate::spool::now_unix();
        move |signed| {
            if !feedback.stamps() {
                return String::new();
            }
            let mail_from = sender
                .rsplit_once('@')
                .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
            let pool = feedback
                .wants_pool()
                .then(|| feedback.pool_for(login.as_deref(), &sender))
                .flatten();
            feedback.stamp(&crate::feedback::trace::Stamp {
                queue_id: &queue_id,
                login: login.as_deref(),
                sender_domain: signed.from_domain.as_deref().or(mail_from.as_deref()),
                message_id: signed.message_id.as_deref(),
                pool: pool.as_deref(),
                at,
            })
        }
    }

    /// End of DATA/BDAT of a report: handled now, nothing spooled.
    pub(super) async fn feedback_report(
        &mut self,
        id: String,
        mut writer: MessageWriter,
        tx: Tx,
    ) -> Flow {
        let size = writer.len();
        let raw = match writer.finish().await {
            Ok(Finished::Memory(bytes)) => Ok(bytes.to_vec()),
            Ok(Finished::File(path)) => {
                let path = path.to_path_buf();
                tokio::fs::read(&path).await
            }
            Err(e) => Err(e),
        };
        // Dropping the writer removes what it wrote.
        drop(writer);
        let raw = match raw {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "feedback: cannot read the report back");
                return self.refuse_msg(&id, size, &tx, temporary());
            }
        };
        let feedback = self.ctx.feedback.clone();
        let client = self.peer.to_string();
        let handled =
            tokio::task::spawn_blocking(move || feedback.handle(&raw, Via::Smtp, &client)).await;
        match handled {
            Ok(Ok(Handled::Forged(why))) => self.refuse_msg(
                &id,
                size,
                &tx,
                Reply::new(
                    550,
                    "5.7.1",
                    format!("Report refused: {why}; it attributes nothing"),
                ),
            ),
            Ok(Ok(Handled::UnknownKey)) => self.refuse_msg(
                &id,
                size,
                &tx,
                Reply::new(
                    451,
                    "4.7.0",
                    "Trace reference sealed with a key this relay does not know yet, try again later",
                ),
            ),
            Ok(Ok(h)) => self.send(Reply::new(
                250,
                "2.0.0",
                format!("Report received ({})", h.result()),
            )),
            Ok(Err(e)) => {
                tracing::error!(queue_id = %id, error = %e, "feedback: report not handled");
                self.refuse_msg(&id, size, &tx, temporary())
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "feedback: report handling crashed");
                self.refuse_msg(&id, size, &tx, temporary())
            }
        }
    }
}

fn own_transaction() -> Reply {
    Reply::new(
        452,
        "4.5.3",
        "Complaint reports go in a transaction of their own; send this recipient again after it",
    )
}

fn temporary() -> Reply {
    Reply::new(451, "4.3.0", "Temporary local problem, try again later")
}
