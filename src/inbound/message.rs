//! DATA and BDAT: the message itself, streamed to the spool, signed and committed; 250 only
//! after the commit.

use super::data::{DataReader, HeaderSection};
use super::envelope::Tx;
use super::received::{ReceivedInfo, header};
use super::session::{CHUNK, End, Flow, READ_SIZE, Session};
use crate::reply::Reply;
use crate::spool::{Envelope, Finished, MessageWriter, Spool, now_unix};

pub(super) struct Bdat {
    id: String,
    /// None after a write error (the reply at the end is 452).
    writer: Option<MessageWriter>,
    size: u64,
    bare: bool,
    nul: bool,
    prev_cr: bool,
    header: HeaderSection,
}

impl Bdat {
    /// Flags bare CR / bare LF (also across chunk boundaries) and NUL, and measures the header
    /// section.
    fn scan(&mut self, piece: &[u8]) {
        self.size += piece.len() as u64;
        self.header.feed(piece);
        if piece.contains(&0) {
            self.nul = true;
        }
        for &c in piece {
            if (self.prev_cr && c != b'\n') || (!self.prev_cr && c == b'\n') {
                self.bare = true;
            }
            self.prev_cr = c == b'\r';
        }
    }
}

/// A BDAT command's arguments (RFC 3030 `chunk-size [SP "LAST"]`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BdatArgs {
    Chunk {
        size: u64,
        last: bool,
    },
    /// Not `chunk-size [LAST]`: refused, the session goes on (as Postfix does).
    Syntax,
    /// A count too large for a u64: where its octets end is unknowable, so the session ends.
    /// (smtp-proto's parser wraps such a count to a small one.)
    OutOfRange,
}

pub(super) fn parse_bdat(args: &[u8]) -> BdatArgs {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let (Some(count), marker, None) = (words.next(), words.next(), words.next()) else {
        return BdatArgs::Syntax;
    };
    let last = match marker {
        None => false,
        Some(m) if m.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return BdatArgs::Syntax,
    };
    if !count.iter().all(u8::is_ascii_digit) {
        return BdatArgs::Syntax;
    }
    // All ASCII digits, so valid UTF-8; the only failure left is overflow.
    match std::str::from_utf8(count).ok().and_then(|c| c.parse().ok()) {
        Some(size) => BdatArgs::Chunk { size, last },
        None => BdatArgs::OutOfRange,
    }
}

impl Session {
    /// `452 4.3.1` unless the spool's filesystem has room for `size` bytes beyond
    /// `limits.spool_min_free`.
    pub(super) fn spool_has_room(&self, size: u64) -> Result<(), Reply> {
        let need = self.settings().limits.spool_min_free.0.saturating_add(size);
        match self.ctx.spool.free_space() {
            Ok(free) if free >= need => Ok(()),
            Ok(free) => {
                tracing::warn!(free, need, "spool: filesystem nearly full, refusing mail");
                Err(storage_reply())
            }
            Err(e) => {
                tracing::error!(error = %e, "spool: cannot read free space");
                Err(storage_reply())
            }
        }
    }

    /// Starts the spool writer for the current transaction and writes our Received header.
    async fn start_message(&mut self) -> Result<(String, MessageWriter), Reply> {
        let declared = self.tx.as_ref().map_or(0, |t| t.declared_size);
        self.spool_has_room(declared)?;
        let id = Spool::new_id();
        let mut writer = self.ctx.spool.writer(&id).await.map_err(|e| {
            tracing::error!(error = %e, "spool: cannot create message file");
            storage_reply()
        })?;
        let received = {
            let tx = self.tx.as_ref().expect("transaction present");
            header(&ReceivedInfo {
                helo: self.helo.as_deref().unwrap_or(""),
                ip: self.peer,
                hostname: &self.ctx.settings.hostname,
                esmtp: self.esmtp,
                smtputf8: tx.smtputf8,
                tls: self.tls.as_ref().map(|(v, c)| (v.as_str(), c.as_str())),
                authenticated: self.user.is_some(),
                show_user: self
                    .user
                    .as_deref()
                    .filter(|_| self.ctx.settings.access.received_auth_user),
                id: &id,
                rcpt: (tx.rcpts.len() == 1).then(|| tx.rcpts[0].address.as_str()),
                now: now_unix(),
            })
        };
        writer.write(received.as_bytes()).await.map_err(|e| {
            tracing::error!(queue_id = %id, error = %e, "spool: write failed");
            storage_reply()
        })?;
        Ok((id, writer))
    }

    /// The BDAT command line (after the verb).
    pub(super) async fn bdat_command(&mut self, args: &[u8]) -> Flow {
        match parse_bdat(args) {
            BdatArgs::Chunk { size, last } => self.bdat(size, last).await,
            BdatArgs::Syntax => {
                self.send(Reply::new(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
            }
            BdatArgs::OutOfRange => {
                tracing::info!(client = %self.peer, "BDAT chunk size out of range, closing");
                self.close_with(Reply::new(
                    501,
                    "5.5.4",
                    "BDAT chunk size out of range, closing connection",
                ))
            }
        }
    }

    /// BDAT (RFC 3030): exactly `size` octets follow the command, always read (even when the
    /// command is refused) so they are never taken as commands. The same rules as DATA apply:
    /// CRLF line endings only, size limit, 250 only after the commit of the LAST chunk.
    async fn bdat(&mut self, size: u64, last: bool) -> Flow {
        let mut problem = match &self.tx {
            None => Some(Reply::new(503, "5.5.1", "Need MAIL command")),
            Some(t) if t.rcpts.is_empty() => Some(Reply::new(554, "5.5.1", "No valid recipients")),
            Some(_) => None,
        };
        if problem.is_none() && self.tx.as_ref().is_some_and(|t| t.bdat.is_none()) {
            match self.start_message().await {
                Ok((id, writer)) => {
                    let max_header = self.settings().limits.header_size.0;
                    if let Some(t) = self.tx.as_mut() {
                        t.bdat = Some(Bdat {
                            id,
                            writer: Some(writer),
                            size: 0,
                            bare: false,
                            nul: false,
                            prev_cr: false,
                            header: HeaderSection::new(max_header),
                        });
                    }
                }
                Err(r) => {
                    self.tx = None;
                    problem = Some(r);
                }
            }
        }
        let max = self.message_limit();
        let mut st = self.tx.as_mut().and_then(|t| t.bdat.take());
        let timeout = self.settings().limits.data_timeout.0;
        let mut left = size;
        let mut pending = Vec::with_capacity(size.min(CHUNK as u64) as usize + READ_SIZE);
        while left > 0 {
            if self.rpos == self.rbuf.len() {
                if !self.fill(timeout).await? {
                    tracing::info!(client = %self.peer, "connection lost in BDAT");
                    return Err(End);
                }
                continue;
            }
            let n = (self.rbuf.len() - self.rpos).min(usize::try_from(left).unwrap_or(usize::MAX));
            if let Some(b) = st.as_mut() {
                let piece = &self.rbuf[self.rpos..self.rpos + n];
                b.scan(piece);
                if !b.bare && !b.nul && b.size <= max && !b.header.too_long() && b.writer.is_some()
                {
                    pending.extend_from_slice(piece);
                }
            }
            self.rpos += n;
            left -= n as u64;
            if pending.len() >= CHUNK || (left == 0 && !pending.is_empty()) {
                if let Some(b) = st.as_mut()
                    && let Some(w) = b.writer.as_mut()
                    && let Err(e) = w.write(&pending).await
                {
                    tracing::error!(queue_id = %b.id, error = %e, "spool: write failed");
                    b.writer = None;
                }
                pending.clear();
            }
        }
        if let Some(r) = problem {
            return self.refuse("bdat", r);
        }
        let Some(mut b) = st else {
            return Err(End);
        };
        if last && b.prev_cr {
            b.bare = true; // the message ends in a lone CR
        }
        let refusal = if b.bare {
            Some(Reply::new(550, "5.6.11", "Bare LF/CR not allowed"))
        } else if b.nul {
            Some(nul_reply())
        } else if b.size > max {
            Some(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ))
        } else if b.header.too_long() {
            Some(header_too_long())
        } else if b.writer.is_none() {
            Some(storage_reply())
        } else {
            None
        };
        if let Some(r) = refusal {
            // RFC 3030 §2: after a refused chunk the transaction is over.
            let tx = self.tx.take().expect("transaction present");
            return self.refuse_msg(&b.id, b.size, &tx, r);
        }
        if !last {
            if let Some(t) = self.tx.as_mut() {
                t.bdat = Some(b);
            }
            return self.send(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
        let tx = self.tx.take().expect("transaction present");
        let writer = b.writer.take().expect("checked above");
        self.queue(b.id, writer, tx).await
    }

    pub(super) async fn data(&mut self) -> Flow {
        match &self.tx {
            None => return self.send(Reply::new(503, "5.5.1", "Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => {
                return self.send(Reply::new(554, "5.5.1", "No valid recipients"));
            }
            Some(_) => {}
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.send(Reply::new(503, "5.5.1", "DATA not allowed after BDAT"));
        }
        let (id, writer) = match self.start_message().await {
            Ok(w) => w,
            Err(r) => {
                // The transaction cannot go on; the client starts again with MAIL.
                let res = self.refuse("data", r);
                self.tx = None;
                return res;
            }
        };
        self.send(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"))?;

        let mut reader =
            DataReader::new(self.message_limit(), self.settings().limits.header_size.0);
        let mut writer = Some(writer);
        let mut chunk = Vec::with_capacity(CHUNK + READ_SIZE);
        let timeout = self.settings().limits.data_timeout.0;
        loop {
            let done = match reader.feed(&self.rbuf[self.rpos..], &mut chunk) {
                Some(n) => {
                    self.rpos += n;
                    true
                }
                None => {
                    self.rpos = self.rbuf.len();
                    false
                }
            };
            if (done || chunk.len() >= CHUNK) && !chunk.is_empty() {
                if let Some(w) = writer.as_mut()
                    && let Err(e) = w.write(&chunk).await
                {
                    tracing::error!(queue_id = %id, error = %e, "spool: write failed");
                    writer = None;
                }
                chunk.clear();
            }
            if done {
                break;
            }
            if !self.fill(timeout).await? {
                tracing::info!(client = %self.peer, queue_id = %id, "connection lost in DATA");
                return Err(End);
            }
        }
        let tx = self.tx.take().expect("transaction present");
        if reader.bare {
            let r = Reply::new(550, "5.6.11", "Bare LF/CR not allowed");
            return self.refuse_msg(&id, reader.size, &tx, r);
        }
        if reader.nul {
            return self.refuse_msg(&id, reader.size, &tx, nul_reply());
        }
        if reader.too_big() {
            return self.refuse_msg(
                &id,
                reader.size,
                &tx,
                Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ),
            );
        }
        if reader.header.too_long() {
            return self.refuse_msg(&id, reader.size, &tx, header_too_long());
        }
        let Some(writer) = writer else {
            return self.refuse_msg(&id, reader.size, &tx, storage_reply());
        };
        self.queue(id, writer, tx).await
    }

    /// One log event per refused message, with the same fields as an accepted one.
    pub(super) fn refuse_msg(&mut self, id: &str, size: u64, tx: &Tx, r: Reply) -> Flow {
        crate::metrics::refused("data", r.code);
        tracing::info!(
            queue_id = %id,
            client = %self.peer,
            user = self.user.as_deref().unwrap_or(""),
            sender = %tx.sender,
            rcpts = tx.rcpts.len(),
            size,
            tls = %self.tls.as_ref().map(|t| t.0.as_str()).unwrap_or("no"),
            stage = "data",
            reply = %r,
            "message refused"
        );
        self.send(r)
    }

    /// Signs, reserves the daily-cap slot and commits; 250 only after the commit.
    async fn queue(&mut self, id: String, mut writer: MessageWriter, tx: Tx) -> Flow {
        if tx.feedback {
            return self.feedback_report(id, writer, tx).await;
        }
        let size = writer.len();
        let signer = self.ctx.signer.clone();
        // `From:` is checked against the login before a key is chosen (sender_login).
        let senders = self.senders();
        // The trace headers go in under the signatures (`feedback::trace`).
        let stamp = self.stamp(&id, &tx);
        let signed = match writer.finish().await {
            // In memory (most messages): signed right here, a few hundred microseconds at most
            // (RSA-2048), cheaper than a trip to the blocking pool.
            Ok(Finished::Memory(bytes)) => {
                signer.sign_stamped(bytes, &|a| senders.allows(a), Some(&stamp))
            }
            // DKIM reads a large message's file in chunks (memory stays bounded).
            Ok(Finished::File(path)) => {
                let path = path.to_path_buf();
                tokio::task::spawn_blocking(move || {
                    signer.sign_file_stamped(&path, &|a| senders.allows(a), Some(&stamp))
                })
                .await
                .unwrap_or_else(|_| Err(Reply::new(451, "4.3.0", "Temporary local problem")))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool: fsync failed");
                return self.refuse_msg(&id, size, &tx, storage_reply());
            }
        };
        let mut signed = match signed {
            Ok(s) => s,
            Err(r) => return self.refuse_msg(&id, size, &tx, r),
        };
        // MAIL FROM asked about its own domain; a `From:` domain of another account is asked now
        // (and holds a place in its hourly count until the message is queued or refused).
        let mail_from = crate::reputation::accounts::sender_domain(None, &tx.sender);
        let _from_slot = match signed.from_domain.as_deref() {
            Some(from)
                if mail_from.map(crate::reputation::accounts::Key::domain)
                    != Some(crate::reputation::accounts::Key::domain(from)) =>
            {
                match self.ctx.accounts.admit(None, Some(from)) {
                    Ok(slot) => Some(slot),
                    Err(gate) => match gate.reply() {
                        Some(r) => return self.refuse_msg(&id, size, &tx, r),
                        None => None,
                    },
                }
            }
            _ => None,
        };
        // The state store fsyncs its commits: keep that off the async workers.
        let reserved = match self.user.clone() {
            Some(user) => {
                let ctx = self.ctx.clone();
                match tokio::task::spawn_blocking(move || ctx.cap.reserve(&ctx.state, &user))
                    .await
                    .unwrap_or_else(|_| Err(Reply::new(451, "4.3.0", "Temporary local problem")))
                {
                    Ok(k) => k,
                    Err(r) => return self.refuse_msg(&id, size, &tx, r),
                }
            }
            None => None,
        };
        let envelope = Envelope {
            id: id.clone(),
            received_at: now_unix(),
            sender: tx.sender.clone(),
            recipients: tx.rcpts.clone(),
            client: self.peer.to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            user: self.user.clone(),
            size: 0,
            smtputf8: tx.smtputf8,
            body_8bit: tx.body_8bit,
            prepend: std::mem::take(&mut signed.headers),
            ret: tx.ret.clone(),
            envid: tx.envid.clone(),
            is_dsn: false,
            pool: None,
            delay_warned: false,
            tls_request: crate::delivery::policy::requiretls::request(
                tx.requiretls,
                signed.tls_required_no,
            ),
            from_domain: signed.from_domain.clone(),
        };
        match writer.commit(envelope).await {
            Ok(env) => {
                crate::metrics::accepted(self.tls.is_some(), !signed.signed_by.is_empty());
                let domain = crate::reputation::accounts::sender_domain(
                    env.from_domain.as_deref(),
                    &env.sender,
                );
                self.ctx.accounts.accepted(env.user.as_deref(), domain);
                // One event for the state change, DKIM outcome included.
                tracing::info!(
                    queue_id = %env.id,
                    client = %self.peer,
                    user = self.user.as_deref().unwrap_or(""),
                    sender = %env.sender,
                    rcpts = env.recipients.len(),
                    size = env.size,
                    tls = %self.tls.as_ref().map(|t| t.0.as_str()).unwrap_or("no"),
                    dkim = %signed.summary(),
                    tls_request = env.tls_request.as_str(),
                    "message accepted"
                );
                self.send(Reply::new(
                    250,
                    "2.0.0",
                    format!("Ok: queued as {}", env.id),
                ))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool: commit failed");
                if let Some(k) = reserved {
                    let ctx = self.ctx.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || ctx.cap.release(&ctx.state, &k)).await;
                }
                self.refuse_msg(&id, size, &tx, storage_reply())
            }
        }
    }
}

fn header_too_long() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "Message header section exceeds fixed maximum size",
    )
}

/// A NUL-dot line is an end-of-data look-alike for a next hop that strips NULs.
fn nul_reply() -> Reply {
    Reply::new(550, "5.6.0", "NUL characters not allowed")
}

fn storage_reply() -> Reply {
    Reply::new(452, "4.3.1", "Insufficient system storage")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdat_arguments() {
        let chunk = |size, last| BdatArgs::Chunk { size, last };
        assert_eq!(parse_bdat(b"0"), chunk(0, false));
        assert_eq!(parse_bdat(b"123 LAST"), chunk(123, true));
        assert_eq!(parse_bdat(b"123 last"), chunk(123, true));
        assert_eq!(parse_bdat(b"18446744073709551615"), chunk(u64::MAX, false));
        for bad in [
            &b""[..],
            b"LAST",
            b"12x",
            b"123LAST",
            b"1 2",
            b"1 LAST x",
            b"-1",
            b"+1",
        ] {
            assert_eq!(parse_bdat(bad), BdatArgs::Syntax, "{bad:?}");
        }
        assert_eq!(parse_bdat(b"18446744073709551616"), BdatArgs::OutOfRange);
        assert_eq!(
            parse_bdat(b"999999999999999999995 LAST"),
            BdatArgs::OutOfRange
        );
    }

    /// Why BDAT is not left to smtp-proto: it reads that count as 5.
    #[test]
    fn smtp_proto_misreads_huge_bdat_counts() {
        let line = b"BDAT 999999999999999999995 LAST\r\n";
        let parsed = smtp_proto::Request::parse(&mut line.iter()).map(|r| r.into_owned());
        assert!(matches!(
            parsed,
            Ok(smtp_proto::Request::Bdat { chunk_size: 5, .. })
        ));
    }
}
