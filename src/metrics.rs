//! Prometheus metrics (`GET /metrics` on the admin listener).
//!
//! Events are counted where they happen, one call each, into one process-wide set of counters
//! (like a global recorder: the hot paths need no handle threaded through them). Levels (queue,
//! spool, and the stages' gauges: pool states, warm-up, DNSBL listings) are read when scraped,
//! from a `Levels` snapshot the admin side takes, so they are never stale and cost nothing
//! between scrapes. This module sits below the stages: it knows none of their types.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tls {
    tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refused {
    stage: &'static str,
    /// The SMTP reply code: a small fixed set.
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    ip: String,
    provider: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RampDecision {
    ip: String,
    provider: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Provider {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Dkim {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpProvider {
    ip: String,
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsDelivery {
    policy: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsReportSent {
    scheme: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedbackResult {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedFetch {
    feed: &'static str,
    result: &'static str,
}

/// Delivery outcome classes (label `class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Sent,
    Deferred,
    Bounced,
    /// A block reply (the classifier's `Signal::Block`): the IP was refused, not the recipient.
    Block,
    /// A throttling reply (`Signal::Throttle`): a deferral that slows the IP × provider.
    Throttle,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Class::Sent => "sent",
            Class::Deferred => "deferred",
            Class::Bounced => "bounced",
            Class::Block => "block",
            Class::Throttle => "throttle",
        }
    }
}

struct Events {
    registry: Registry,
    accepted: Family<Tls, Counter>,
    refused: Family<Refused, Counter>,
    outcomes: Family<Outcome, Counter>,
    outbound: Family<Tls, Counter>,
    tls_deliveries: Family<TlsDelivery, Counter>,
    tls_reports: Family<TlsReportSent, Counter>,
    dkim: Family<Dkim, Counter>,
    sessions: Gauge,
    warmup_decisions: Family<RampDecision, Counter>,
    feed_fetches: Family<FeedFetch, Counter>,
    complaints: Family<Provider, Counter>,
    complaint_rate: Family<IpProvider, Gauge<f64, AtomicU64>>,
    feedback_reports: Family<FeedbackResult, Counter>,
}

fn events() -> &'static Events {
    static EVENTS: OnceLock<Events> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let mut registry = Registry::with_prefix("poolrelay");
        let e = Events {
            registry: Registry::default(),
            accepted: Family::default(),
            refused: Family::default(),
            outcomes: Family::default(),
            outbound: Family::default(),
            tls_deliveries: Family::default(),
            tls_reports: Family::default(),
            dkim: Family::default(),
            sessions: Gauge::default(),
            warmup_decisions: Family::default(),
            feed_fetches: Family::default(),
            complaints: Family::default(),
            complaint_rate: Family::default(),
            feedback_reports: Family::default(),
        };
        registry.register(
            "messages_accepted",
            "Messages accepted (250 after the spool commit), by whether the session used TLS",
            e.accepted.clone(),
        );
        registry.register(
            "messages_refused",
            "Commands and messages refused, by SMTP stage and reply code",
            e.refused.clone(),
        );
        registry.register(
            "delivery_outcomes",
            "Remote replies per recipient, by source IP, provider and class (sent, deferred, bounced, block)",
            e.outcomes.clone(),
        );
        registry.register(
            "outbound_transactions",
            "Outbound delivery results per recipient, by whether the session used TLS",
            e.outbound.clone(),
        );
        registry.register(
            "tls_deliveries",
            "Outbound delivery attempts per recipient by TLS policy (route, dane, mta-sts, opportunistic) and result (tls, plaintext, or the RFC 8460 failure type)",
            e.tls_deliveries.clone(),
        );
        registry.register(
            "tls_reports_sent",
            "TLS reports (RFC 8460) handed to a report URI, by scheme (mailto: queued, https: POSTed) and result (ok, failed)",
            e.tls_reports.clone(),
        );
        registry.register(
            "dkim_messages",
            "Accepted messages by DKIM result (signed or unsigned)",
            e.dkim.clone(),
        );
        registry.register(
            "inbound_sessions",
            "SMTP sessions open now",
            e.sessions.clone(),
        );
        registry.register(
            "warmup_decisions",
            "Warm-up ramp decisions per source IP and provider (advanced, held, stepped-back, rewarmed)",
            e.warmup_decisions.clone(),
        );
        registry.register(
            "feed_fetches",
            "Provider feed polls (snds, postmaster) by result (ok, error)",
            e.feed_fetches.clone(),
        );
        registry.register(
            "complaints",
            "Traced feedback-loop complaints, by provider (\"unknown\" when not traced to one)",
            e.complaints.clone(),
        );
        registry.register(
            "complaint_rate",
            "Complaints / messages delivered per source IP and provider within complaint_window, as last computed",
            e.complaint_rate.clone(),
        );
        registry.register(
            "feedback_reports",
            "Complaint reports received, by result (complaint, duplicate, not-a-complaint, untraced, not-a-report, forged, deferred)",
            e.feedback_reports.clone(),
        );
        Events { registry, ..e }
    })
}

/// A message was accepted; `tls`: the session is encrypted.
pub fn accepted(tls: bool, dkim_signed: bool) {
    let e = events();
    e.accepted.get_or_create(&Tls { tls: yes(tls) }).inc();
    let result = if dkim_signed { "signed" } else { "unsigned" };
    e.dkim.get_or_create(&Dkim { result }).inc();
}

/// A command or message was refused at `stage` with reply `code`.
pub fn refused(stage: &'static str, code: u16) {
    let code = code.to_string();
    events()
        .refused
        .get_or_create(&Refused { stage, code })
        .inc();
}

/// One recipient's remote reply, as the reputation tracker classified it.
pub fn outcome(ip: &str, provider: &str, class: Class) {
    events()
        .outcomes
        .get_or_create(&Outcome {
            ip: ip.to_string(),
            provider: provider.to_string(),
            class: class.as_str(),
        })
        .inc();
}

/// A provider feed's poll (`reputation::feeds`): `ok` false when a request failed or its
/// answer could not be read.
pub fn feed_fetch(feed: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    events()
        .feed_fetches
        .get_or_create(&FeedFetch { feed, result })
        .inc();
}

/// A warm-up ramp decision (`pool::ramp`) for `ip` × `provider`.
pub fn warmup_decision(ip: &str, provider: &str, decision: &'static str) {
    events()
        .warmup_decisions
        .get_or_create(&RampDecision {
            ip: ip.to_string(),
            provider: provider.to_string(),
            decision,
        })
        .inc();
}

/// One recipient's delivery attempt under TLS `policy`, with `result` (`tls`, `plaintext`, or
/// an RFC 8460 failure type).
pub fn tls_delivery(policy: &'static str, result: &'static str) {
    events()
        .tls_deliveries
        .get_or_create(&TlsDelivery { policy, result })
        .inc();
}

/// One TLS report to one URI: `scheme` mailto or https.
pub fn tls_report_sent(scheme: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    events()
        .tls_reports
        .get_or_create(&TlsReportSent { scheme, result })
        .inc();
}

/// A traced complaint about mail sent to `provider`.
pub fn complaint(provider: &str) {
    let provider = provider.to_string();
    events()
        .complaints
        .get_or_create(&Provider { provider })
        .inc();
}

/// The complaint rate of `ip` × `provider` (a share: 0.003 is 0.3 %).
pub fn complaint_rate(ip: &str, provider: &str, rate: f64) {
    let labels = IpProvider {
        ip: ip.to_string(),
        provider: provider.to_string(),
    };
    events().complaint_rate.get_or_create(&labels).set(rate);
}

/// One complaint report handled (`feedback::Handled::result`).
pub fn feedback_report(result: &'static str) {
    events()
        .feedback_reports
        .get_or_create(&FeedbackResult { result })
        .inc();
}

/// One recipient's delivery result over a session with (or without) TLS.
pub fn outbound(tls: bool) {
    events()
        .outbound
        .get_or_create(&Tls { tls: yes(tls) })
        .inc();
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Counts an inbound session while alive.
pub struct SessionGuard(());

impl Drop for SessionGuard {
    fn drop(&mut self) {
        events().sessions.dec();
    }
}

pub fn session() -> SessionGuard {
    events().sessions.inc();
    SessionGuard(())
}

/// What is read at scrape time.
#[derive(Debug, Default)]
pub struct Levels {
    pub queue_messages: u64,
    /// Unix seconds of the oldest queued message's arrival.
    pub queue_oldest: Option<u64>,
    pub spool_bytes: u64,
    pub spool_free_bytes: Option<u64>,
    pub now: u64,
    /// The stages' gauges (doctor, accounts, pools), registered by the admin side into a
    /// `stage_registry()`; encoded after the queue and spool levels.
    pub stages: Registry,
}

/// A registry for the stages' gauges, named like every other series (`poolrelay_…`).
pub fn stage_registry() -> Registry {
    Registry::with_prefix("poolrelay")
}

/// The text exposition: the event counters, then the levels.
pub fn render(levels: &Levels) -> String {
    let mut out = String::new();
    let _ = encode_registry(&mut out, &events().registry);
    let _ = encode_registry(&mut out, &levels_registry(levels));
    let _ = encode_registry(&mut out, &levels.stages);
    let _ = encode_eof(&mut out);
    out
}

/// The Prometheus text format 0.0.4 of `render`'s OpenMetrics, for scrapers that ask for it:
/// a counter's HELP and TYPE name its samples (`_total`, as 0.0.4 wants), no `# UNIT`, no
/// `# EOF`. Only counters and gauges are registered, so that is all there is to convert.
pub fn render_text_004(levels: &Levels) -> String {
    openmetrics_to_004(&render(levels))
}

fn openmetrics_to_004(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, String)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            // OpenMetrics escapes `"` in HELP; 0.0.4 escapes only `\` and newlines.
            help = Some((name, text.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (kind, full) = match kind {
                "counter" => ("counter", format!("{name}_total")),
                "gauge" => ("gauge", name.to_string()),
                _ => ("untyped", name.to_string()),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!("# HELP {full} {text}\n"));
            }
            out.push_str(&format!("# TYPE {full} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT` and `# EOF` have no 0.0.4 form.
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn gauge(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, g),
        None => registry.register(name, help, g),
    }
}

fn levels_registry(l: &Levels) -> Registry {
    let mut r = Registry::with_prefix("poolrelay");
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(
        &mut r,
        "queue_messages",
        "Messages in the queue",
        None,
        n(l.queue_messages),
    );
    let age = l.queue_oldest.map(|t| l.now.saturating_sub(t)).unwrap_or(0);
    let help = "Age of the oldest queued message (0 when the queue is empty)";
    gauge(
        &mut r,
        "queue_oldest_age",
        help,
        Some(Unit::Seconds),
        n(age),
    );
    let help = "Bytes of queued messages";
    gauge(&mut r, "spool", help, Some(Unit::Bytes), n(l.spool_bytes));
    if let Some(free) = l.spool_free_bytes {
        let help = "Bytes free on the spool's filesystem";
        gauge(&mut r, "spool_free", help, Some(Unit::Bytes), n(free));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_levels_render_as_text_exposition() {
        accepted(true, false);
        refused("rcpt", 554);
        outcome("192.0.2.1", "gmail", Class::Block);
        warmup_decision("192.0.2.1", "gmail", "held");
        outcome("192.0.2.1", "gmail", Class::Throttle);
        complaint("gmail");
        complaint_rate("192.0.2.1", "gmail", 0.004);
        let _s = session();
        let text = render(&Levels {
            queue_messages: 3,
            queue_oldest: Some(100),
            now: 160,
            ..Levels::default()
        });
        for want in [
            "poolrelay_messages_accepted_total{tls=\"yes\"}",
            "poolrelay_messages_refused_total{stage=\"rcpt\",code=\"554\"}",
            "poolrelay_delivery_outcomes_total{ip=\"192.0.2.1\",provider=\"gmail\",class=\"block\"}",
            "poolrelay_delivery_outcomes_total{ip=\"192.0.2.1\",provider=\"gmail\",class=\"throttle\"}",
            "poolrelay_dkim_messages_total{result=\"unsigned\"}",
            "poolrelay_warmup_decisions_total{ip=\"192.0.2.1\",provider=\"gmail\",decision=\"held\"} 1",
            "poolrelay_complaints_total{provider=\"gmail\"} 1",
            "poolrelay_complaint_rate{ip=\"192.0.2.1\",provider=\"gmail\"} 0.004",
            "poolrelay_queue_messages 3",
            "poolrelay_queue_oldest_age_seconds 60",
            "poolrelay_inbound_sessions ",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn text_004_names_counters_by_their_samples_and_keeps_every_help() {
        accepted(false, true);
        let text = render_text_004(&Levels {
            spool_bytes: 7,
            ..Levels::default()
        });
        for want in [
            "# HELP poolrelay_messages_accepted_total Messages accepted",
            "# TYPE poolrelay_messages_accepted_total counter\n",
            "# HELP poolrelay_spool_bytes Bytes of queued messages.\n",
            "# TYPE poolrelay_spool_bytes gauge\npoolrelay_spool_bytes 7\n",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every family has its HELP just before its TYPE.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    i > 0 && lines[i - 1].starts_with(&format!("# HELP {name} ")),
                    "{name} without HELP in\n{text}"
                );
            }
        }
    }
}
