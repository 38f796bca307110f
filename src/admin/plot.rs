//! Hand-built SVG plots for the pool page (no JS, no fonts to fetch): scaled by the browser
//! (`viewBox`, width 100%), so they read on a phone as on a laptop.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::reputation::history::HistoryView;

const W: f64 = 600.0;
const H: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;
const DAY: u64 = 86_400;
const HOUR: u64 = 3600;
/// Colours per provider (cycled).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Frame {
    t0: u64,
    t1: u64,
    ymax: f64,
}

impl Frame {
    fn x(&self, t: u64) -> f64 {
        let span = (self.t1 - self.t0).max(1) as f64;
        LEFT + (t.saturating_sub(self.t0) as f64 / span).min(1.0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (v / self.ymax).clamp(0.0, 1.0) * (H - TOP - BOTTOM)
    }

    /// Axes, a y label at the top and 0, and the time span under the x axis.
    fn axes(&self, out: &mut String, top: &str, left: &str, right: &str) {
        let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
        let _ = write!(
            out,
            "<line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/>\
             <line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <text x=\"{}\" y=\"{y0}\" text-anchor=\"end\">0</text>\
             <text x=\"{x0}\" y=\"{}\">{}</text>\
             <text x=\"{x1}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            x0 - 4.0,
            y1 + 8.0,
            esc(top),
            x0 - 4.0,
            H - 6.0,
            esc(left),
            H - 6.0,
            esc(right),
        );
    }
}

fn open(out: &mut String, class: &str, title: &str) {
    let _ = write!(
        out,
        "<svg class=\"plot {class}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">\
         <title>{}</title>",
        esc(title),
        esc(title)
    );
}

fn polyline(out: &mut String, class: &str, colour: &str, pts: &[(f64, f64)], dash: bool) {
    if pts.is_empty() {
        return;
    }
    let p: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let dash = if dash {
        " stroke-dasharray=\"5 3\""
    } else {
        ""
    };
    let _ = write!(
        out,
        "<polyline class=\"{class}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
        p.join(" ")
    );
}

fn point(out: &mut String, class: &str, colour: &str, x: f64, y: f64, title: &str) {
    let _ = write!(
        out,
        "<circle class=\"point {class}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"><title>{}</title></circle>",
        esc(title)
    );
}

fn legend(out: &mut String, items: &[(String, &str, bool)]) {
    let mut x = LEFT + 6.0;
    for (label, colour, dash) in items {
        let dash = if *dash {
            " stroke-dasharray=\"5 3\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<line x1=\"{x}\" y1=\"{TOP}\" x2=\"{}\" y2=\"{TOP}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            x + 14.0,
            x + 17.0,
            TOP + 4.0,
            esc(label)
        );
        x += 22.0 + 6.5 * label.len() as f64;
    }
}

/// Warm-up: per day and provider, messages sent (solid, points) and the day's cap (dashed).
pub fn warmup(h: &HistoryView, now: u64, days: u64) -> String {
    let t0 = (now / DAY).saturating_sub(days - 1) * DAY;
    // provider → day → (sent, cap)
    let mut per: BTreeMap<&str, BTreeMap<u64, (u64, Option<u64>)>> = BTreeMap::new();
    for b in h.hours.iter().filter(|b| b.hour >= t0) {
        let d = per
            .entry(&b.provider)
            .or_default()
            .entry(b.hour / DAY * DAY)
            .or_default();
        d.0 += b.bucket.sent;
        if b.bucket.cap.is_some() {
            d.1 = d.1.max(b.bucket.cap);
        }
    }
    let ymax = per
        .values()
        .flat_map(|d| d.values())
        .map(|(s, c)| (*s).max(c.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(10) as f64;
    let f = Frame {
        t0,
        t1: now / DAY * DAY,
        ymax: ymax * 1.1,
    };
    let mut out = String::new();
    open(&mut out, "warmup", "Warm-up: messages sent vs cap per day");
    f.axes(
        &mut out,
        &format!("{}", ymax.round()),
        &format!("{days} days ago"),
        "today",
    );
    let mut items = Vec::new();
    for (i, (provider, days)) in per.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let sent: Vec<(f64, f64)> = days
            .iter()
            .map(|(d, v)| (f.x(*d), f.y(v.0 as f64)))
            .collect();
        let cap: Vec<(f64, f64)> = days
            .iter()
            .filter_map(|(d, v)| v.1.map(|c| (f.x(*d), f.y(c as f64))))
            .collect();
        polyline(&mut out, "sent", colour, &sent, false);
        polyline(&mut out, "cap", colour, &cap, true);
        for (d, (s, c)) in days {
            // A tick per day, so a cap of a single day shows too.
            if let Some(c) = c {
                let (x, y) = (f.x(*d), f.y(*c as f64));
                let _ = write!(
                    out,
                    "<line class=\"cap-tick\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                    x - 6.0,
                    x + 6.0
                );
            }
            let cap = c.map(|c| format!(" of cap {c}")).unwrap_or_default();
            let title = format!("{provider}, day {}: {s} sent{cap}", d / DAY);
            point(&mut out, "sent", colour, f.x(*d), f.y(*s as f64), &title);
        }
        items.push((format!("{provider} sent"), colour, false));
        if !cap.is_empty() {
            items.push((format!("{provider} cap"), colour, true));
        }
    }
    let colours: Vec<&str> = per.keys().copied().collect();
    ramp_markers(&mut out, h, &f, &colours);
    if per.is_empty() {
        let _ = write!(
            out,
            "<text class=\"empty\" x=\"{}\" y=\"{}\">no traffic yet</text>",
            W / 2.0 - 40.0,
            H / 2.0
        );
    }
    legend(&mut out, &items);
    out.push_str("</svg>");
    out
}

/// A marker on the x axis per warm-up ramp decision (history event `warmup`), in its
/// provider's colour, with the decision's text as its title.
fn ramp_markers(out: &mut String, h: &HistoryView, f: &Frame, providers: &[&str]) {
    for e in h
        .events
        .iter()
        .filter(|e| e.event == "warmup" && e.at >= f.t0)
    {
        let colour = providers
            .iter()
            .position(|p| *p == e.scope)
            .map_or("#777", |i| COLOURS[i % COLOURS.len()]);
        let (x, y) = (f.x(e.at), H - BOTTOM);
        let _ = write!(
            out,
            "<path class=\"ramp-decision {}\" d=\"M{x:.1},{:.1} l-5,-9 h10 z\" fill=\"{colour}\" data-provider=\"{}\"><title>{}: {}</title></path>",
            esc(&e.cause),
            y - 1.0,
            esc(&e.scope),
            esc(&e.scope),
            esc(&e.reason)
        );
    }
}

/// Rates: per hour (every provider together), bounce and deferral rate, the quarantine
/// thresholds as dashed lines, quarantine periods shaded.
pub fn rates(h: &HistoryView, now: u64, hours: u64, max_bounce: f64, max_deferral: f64) -> String {
    let t0 = (now / HOUR).saturating_sub(hours - 1) * HOUR;
    let mut per: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for b in h.hours.iter().filter(|b| b.hour >= t0) {
        let e = per.entry(b.hour).or_default();
        let all = b.bucket.sent
            + b.bucket.deferred
            + b.bucket.hard_bounces
            + b.bucket.recipient_bounces
            + b.bucket.blocks;
        e.0 += all;
        e.1 += b.bucket.hard_bounces;
        e.2 += b.bucket.deferred + b.bucket.blocks;
    }
    let f = Frame {
        t0,
        t1: now / HOUR * HOUR + HOUR,
        ymax: (max_deferral.max(max_bounce) * 1.5).clamp(0.1, 1.0),
    };
    let mut out = String::new();
    open(&mut out, "rates", "Bounce and deferral rate per hour");
    // Quarantine periods first, under the lines.
    for (from, to) in quarantines(h, now) {
        let (x0, x1) = (f.x(from.max(t0)), f.x(to.min(f.t1)));
        if to <= t0 {
            continue;
        }
        // At least a few pixels: a quarantine of minutes is still seen.
        let x0 = x0.min(x1 - 3.0);
        let _ = write!(
            out,
            "<rect class=\"quarantine\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"#d62728\" fill-opacity=\"0.15\"/>",
            x1 - x0,
            H - TOP - BOTTOM
        );
    }
    f.axes(
        &mut out,
        &format!("{:.0}%", f.ymax * 100.0),
        &format!("{hours} h ago"),
        "now",
    );
    for (rate, class, colour) in [
        (max_bounce, "threshold bounce", "#d62728"),
        (max_deferral, "threshold deferral", "#ff7f0e"),
    ] {
        let y = f.y(rate);
        let _ = write!(
            out,
            "<line class=\"{class}\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"{colour}\" stroke-dasharray=\"5 3\"/>",
            W - RIGHT
        );
    }
    for (idx, class, colour, what) in [
        (1, "bounce", "#d62728", "bounced"),
        (2, "deferral", "#ff7f0e", "deferred"),
    ] {
        let pts: Vec<(u64, f64)> = per
            .iter()
            .filter(|(_, v)| v.0 > 0)
            .map(|(t, v)| {
                let n = if idx == 1 { v.1 } else { v.2 };
                (*t, n as f64 / v.0 as f64)
            })
            .collect();
        let line: Vec<(f64, f64)> = pts
            .iter()
            .map(|(t, r)| (f.x(*t + HOUR / 2), f.y(*r)))
            .collect();
        polyline(&mut out, class, colour, &line, false);
        for ((t, r), (x, y)) in pts.iter().zip(&line) {
            let title = format!("hour {}: {:.1}% {what}", t / HOUR, r * 100.0);
            point(&mut out, class, colour, *x, *y, &title);
        }
    }
    legend(
        &mut out,
        &[
            ("bounce rate".to_string(), "#d62728", false),
            ("deferral rate".to_string(), "#ff7f0e", false),
            ("thresholds".to_string(), "#888", true),
        ],
    );
    out.push_str("</svg>");
    out
}

/// (start, end) of every quarantine in the events: until its `until`, an earlier reinstatement
/// or probation of the same scope, or now.
fn quarantines(h: &HistoryView, now: u64) -> Vec<(u64, u64)> {
    let mut open: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for e in &h.events {
        match e.event.as_str() {
            "quarantined" | "extended" => {
                let end = e.until.unwrap_or(now);
                let entry = open.entry(&e.scope).or_insert((e.at, end));
                entry.1 = entry.1.max(end);
            }
            "reinstated" | "probation" => {
                if let Some((from, until)) = open.remove(e.scope.as_str()) {
                    out.push((from, until.min(e.at)));
                }
            }
            _ => {}
        }
    }
    out.extend(
        open.into_values()
            .map(|(from, until)| (from, until.min(now))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::history::Event;

    #[test]
    fn ramp_decisions_are_markers_with_their_text() {
        let now = 100 * DAY + 5000;
        let event = |at, event: &str, cause: &str, reason: &str| Event {
            at,
            event: event.into(),
            scope: "gmail".into(),
            cause: cause.into(),
            reason: reason.into(),
            evidence: String::new(),
            until: None,
        };
        let h = HistoryView {
            ip: "127.0.0.10".into(),
            since: 0,
            hours: Vec::new(),
            events: vec![
                event(now - 100, "warmup", "held", "held at day 5: 12 % throttled"),
                event(now - 50, "quarantined", "block-reply", "block reply"),
                event(now - 40 * DAY, "warmup", "advanced", "too old"),
            ],
        };
        let svg = warmup(&h, now, 14);
        assert_eq!(svg.matches("class=\"ramp-decision").count(), 1, "{svg}");
        assert!(
            svg.contains("<title>gmail: held at day 5: 12 % throttled</title>"),
            "{svg}"
        );
    }
}
