//! Hand-built SVG plots for the pool page (no JS, no fonts to fetch): scaled by the browser
//! (`viewBox`, width 100%), so they read on a phone as on a laptop.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::reputation::history::HistoryView;

const W: f64 = 400.0;
const H: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;
/// Axis text in plot units: the plot is drawn at least ~370 px wide (a 390 px phone), where
/// 13 units are still 12 px; the page checks 11 px at both widths in Chromium.
const FONT: f64 = 13.0;
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

/// `2026-12-07` (UTC) of unix seconds `t`.
fn date(t: u64) -> String {
    crate::text::utc(t)[..10].to_string()
}

/// `2026-12-07 14:00 UTC` (the hour starting at `t`).
fn date_hour(t: u64) -> String {
    date_minute(t / HOUR * HOUR)
}

/// `2026-12-07 14:03 UTC`.
fn date_minute(t: u64) -> String {
    format!("{} UTC", &crate::text::utc(t)[..16])
}

/// Round ticks from 0 covering `max`: steps of 1, 2 or 5 × 10^k, about four of them. The
/// last tick is the axis's top, so the top label is the real top.
fn ticks(max: f64) -> Vec<f64> {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let n = (max / step - 1e-9).ceil().max(1.0) as usize;
    (0..=n).map(|i| i as f64 * step).collect()
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

    /// Axes, a grid line and label per tick (`label` formats a tick value), and the time span
    /// under the x axis.
    fn axes(
        &self,
        out: &mut String,
        ticks: &[f64],
        label: impl Fn(f64) -> String,
        span: (&str, &str),
    ) {
        let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
        for &t in ticks.iter().skip(1) {
            let y = self.y(t);
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>"
            );
        }
        let _ = write!(
            out,
            "<line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/>\
             <line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/>"
        );
        for &t in ticks {
            // Baselines a third of a line below the tick: the label is centred on its line.
            let _ = write!(
                out,
                "<text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"{FONT}\">{}</text>",
                x0 - 4.0,
                self.y(t) + FONT / 3.0,
                esc(&label(t)),
            );
        }
        let _ = write!(
            out,
            "<text x=\"{x0}\" y=\"{}\" font-size=\"{FONT}\">{}</text>\
             <text x=\"{x1}\" y=\"{}\" text-anchor=\"end\" font-size=\"{FONT}\">{}</text>",
            H - 5.0,
            esc(span.0),
            H - 5.0,
            esc(span.1),
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
        "<circle class=\"point {class}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{colour}\"><title>{}</title></circle>",
        esc(title)
    );
}

/// The legend as HTML under the plot: it wraps on a narrow screen instead of running off the
/// plot's edge, and its text keeps the page's size.
fn legend(out: &mut String, items: &[(String, &str, bool)]) {
    out.push_str("<ul class=\"legend\">");
    for (label, colour, dash) in items {
        let style = if *dash { "dashed" } else { "solid" };
        let _ = write!(
            out,
            "<li><span class=\"swatch\" style=\"border-top:3px {style} {colour}\"></span>{}</li>",
            esc(label)
        );
    }
    out.push_str("</ul>");
}

/// provider → day → (sent, cap) from `t0` on.
type Daily<'a> = BTreeMap<&'a str, BTreeMap<u64, (u64, Option<u64>)>>;

fn daily(h: &HistoryView, t0: u64) -> Daily<'_> {
    let mut per = Daily::new();
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
    per
}

/// Warm-up: per day and provider, a bar of messages sent and the day's cap (dashed, with a
/// tick across the day), one slot per day so a single day is a visible bar.
pub fn warmup(h: &HistoryView, now: u64, days: u64) -> String {
    let t0 = (now / DAY).saturating_sub(days - 1) * DAY;
    let per = daily(h, t0);
    let max = per
        .values()
        .flat_map(|d| d.values())
        .map(|(s, c)| (*s).max(c.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(10) as f64;
    let ys = ticks(max);
    let f = Frame {
        t0,
        t1: now / DAY * DAY + DAY,
        ymax: *ys.last().unwrap_or(&max),
    };
    let mut out = String::new();
    open(&mut out, "warmup", "Warm-up: messages sent vs cap per day");
    f.axes(&mut out, &ys, |v| format!("{v:.0}"), (&date(t0), "today"));
    let slot = f.x(t0 + DAY) - f.x(t0);
    let n = per.len().max(1) as f64;
    let bar = (slot * 0.8 / n).max(3.0);
    let mut items = Vec::new();
    for (i, (provider, days)) in per.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let cap: Vec<(f64, f64)> = days
            .iter()
            .filter_map(|(d, v)| v.1.map(|c| (f.x(*d) + slot / 2.0, f.y(c as f64))))
            .collect();
        for (d, (s, c)) in days {
            let x = f.x(*d) + slot * 0.1 + bar * i as f64;
            let (y, base) = (f.y(*s as f64), f.y(0.0));
            let cap_text = c.map(|c| format!(" of cap {c}")).unwrap_or_default();
            let title = format!("{provider}, {}: {s} sent{cap_text}", date(*d));
            // A day with nothing sent still shows a sliver at the axis.
            let _ = write!(
                out,
                "<rect class=\"bar sent\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.8\"><title>{}</title></rect>",
                y.min(base - 2.0),
                (base - y).max(2.0),
                esc(&title)
            );
            // A tick across the day, so a cap of a single day shows too.
            if let Some(c) = c {
                let (x, y) = (f.x(*d), f.y(*c as f64));
                let _ = write!(
                    out,
                    "<line class=\"cap-tick\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\" stroke-width=\"2\"><title>{}</title></line>",
                    x + 1.0,
                    x + slot - 1.0,
                    esc(&format!("{provider}, {}: cap {c}", date(*d)))
                );
            }
        }
        polyline(&mut out, "cap", colour, &cap, true);
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
            "<text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{FONT}\">no traffic yet</text>",
            (W + LEFT) / 2.0,
            H / 2.0
        );
    }
    out.push_str("</svg>");
    legend(&mut out, &items);
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
            "<path class=\"ramp-decision {}\" d=\"M{x:.1},{:.1} l-5,-9 h10 z\" fill=\"{colour}\" data-provider=\"{}\"><title>{}, {}: {}</title></path>",
            esc(&e.cause),
            y - 1.0,
            esc(&e.scope),
            esc(&e.scope),
            date_minute(e.at),
            esc(&e.reason)
        );
    }
}

/// Rates: per hour (every provider together), bounce and deferral rate as a step per hour
/// with a point in its middle, the quarantine thresholds as dashed lines, quarantine periods
/// shaded.
pub fn rates(h: &HistoryView, now: u64, hours: u64, max_bounce: f64, max_deferral: f64) -> String {
    let t0 = (now / HOUR).saturating_sub(hours - 1) * HOUR;
    let (bounce, deferral) = hourly_rates(h, t0);
    // The thresholds with room above, and every rate seen (percent).
    let seen = bounce
        .iter()
        .chain(&deferral)
        .map(|(_, r)| *r)
        .fold(max_deferral.max(max_bounce) * 1.25, f64::max);
    let ys: Vec<f64> = ticks((seen * 100.0).clamp(1.0, 100.0))
        .into_iter()
        .map(|p| p / 100.0)
        .collect();
    let f = Frame {
        t0,
        t1: now / HOUR * HOUR + HOUR,
        ymax: *ys.last().unwrap_or(&1.0),
    };
    let mut out = String::new();
    open(&mut out, "rates", "Bounce and deferral rate per hour");
    // Quarantine periods first, under the lines.
    shade_quarantines(&mut out, h, &f, now);
    let step = ys.get(1).copied().unwrap_or(1.0);
    let decimals = if step < 0.01 { 1 } else { 0 };
    f.axes(
        &mut out,
        &ys,
        |v| format!("{:.*}%", decimals, v * 100.0),
        (&format!("{hours} h ago"), "now"),
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
    for (pts, class, colour, what) in [
        (&bounce, "bounce", "#d62728", "bounced"),
        (&deferral, "deferral", "#ff7f0e", "deferred"),
    ] {
        // A step across each hour: one hour of history is a segment, not a lone dot.
        let line: Vec<(f64, f64)> = pts
            .iter()
            .flat_map(|(t, r)| [(f.x(*t), f.y(*r)), (f.x(*t + HOUR), f.y(*r))])
            .collect();
        polyline(&mut out, class, colour, &line, false);
        for (t, r) in pts {
            let title = format!("{}: {:.1}% {what}", date_hour(*t), r * 100.0);
            point(&mut out, class, colour, f.x(*t + HOUR / 2), f.y(*r), &title);
        }
    }
    out.push_str("</svg>");
    legend(
        &mut out,
        &[
            ("bounce rate".to_string(), "#d62728", false),
            ("deferral rate".to_string(), "#ff7f0e", false),
            ("thresholds".to_string(), "#888", true),
        ],
    );
    out
}

/// (bounce rate, deferral rate) per hour with traffic from `t0` on, every provider together.
type Rates = Vec<(u64, f64)>;

fn hourly_rates(h: &HistoryView, t0: u64) -> (Rates, Rates) {
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
    let with_traffic = || per.iter().filter(|(_, v)| v.0 > 0);
    (
        with_traffic()
            .map(|(t, v)| (*t, v.1 as f64 / v.0 as f64))
            .collect(),
        with_traffic()
            .map(|(t, v)| (*t, v.2 as f64 / v.0 as f64))
            .collect(),
    )
}

/// Quarantine periods as shaded bands.
fn shade_quarantines(out: &mut String, h: &HistoryView, f: &Frame, now: u64) {
    for (from, to) in quarantines(h, now) {
        if to <= f.t0 {
            continue;
        }
        let (x0, x1) = (f.x(from.max(f.t0)), f.x(to.min(f.t1)));
        // At least a few pixels: a quarantine of minutes is still seen.
        let x0 = x0.min(x1 - 3.0);
        let _ = write!(
            out,
            "<rect class=\"quarantine\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"#d62728\" fill-opacity=\"0.15\"/>",
            x1 - x0,
            H - TOP - BOTTOM
        );
    }
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
    fn ticks_are_round_and_the_last_is_the_top() {
        assert_eq!(ticks(50.0), vec![0.0, 20.0, 40.0, 60.0]);
        assert_eq!(ticks(10.0), vec![0.0, 5.0, 10.0]);
        assert_eq!(ticks(100.0), vec![0.0, 50.0, 100.0]);
        assert_eq!(ticks(6.25), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
    }

    fn one_day(now: u64) -> HistoryView {
        use crate::reputation::history::{Bucket, HourView};
        let hour = now / HOUR * HOUR;
        HistoryView {
            ip: "127.0.0.10".into(),
            since: 0,
            hours: vec![HourView {
                hour,
                provider: "gmail".into(),
                bucket: Bucket {
                    sent: 40,
                    deferred: 10,
                    cap: Some(50),
                    ..Bucket::default()
                },
            }],
            events: Vec::new(),
        }
    }

    #[test]
    fn one_day_is_a_bar_with_dates_in_its_hover_text() {
        let now = 1_796_652_192; // 2026-12-07 14:03:12 UTC
        let h = one_day(now);
        let svg = warmup(&h, now, 14);
        let bar = &svg[svg.find("<rect class=\"bar sent\"").expect(&svg)..];
        let width: f64 = bar
            .split("width=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let height: f64 = bar
            .split("height=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(width >= 10.0 && height >= 50.0, "{bar}");
        assert!(
            svg.contains("<title>gmail, 2026-12-07: 40 sent of cap 50</title>"),
            "{svg}"
        );
        // Ticks 0, 20, 40, 60: the top label is the axis's top.
        assert!(
            svg.contains(">60</text>") && !svg.contains(">66</text>"),
            "{svg}"
        );
        assert!(svg.contains("<ul class=\"legend\"><li>"), "{svg}");
        let r = rates(&h, now, 48, 0.05, 0.3);
        assert!(
            r.contains("<title>2026-12-07 14:00 UTC: 20.0% deferred</title>"),
            "{r}"
        );
        // 0.3 × 1.25 = 37.5 %: ticks of 10 % up to 40 %.
        assert!(
            r.contains(">40%</text>") && !r.contains(">45%</text>"),
            "{r}"
        );
        assert!(!r.contains("day 2") && !r.contains("hour 4"), "{r}");
    }

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
            svg.contains(
                "<title>gmail, 1970-04-11 01:21 UTC: held at day 5: 12 % throttled</title>"
            ),
            "{svg}"
        );
    }
}
