//! The dashboard page: plain HTML rendered on the server, an inline SVG chart of per-rank step
//! times, and a few lines of inline JavaScript for auto-refresh. No build step, no external
//! assets (the collector may run where nothing else can be reached).

use std::fmt::Write as _;

use tg_watch::{Incident, RankPhase, RankView};

use crate::collector::RunSummary;

/// Most ranks drawn in the chart (those with the slowest single step first).
const MAX_SERIES: usize = 32;

pub(crate) struct Detail {
    pub(crate) run: String,
    pub(crate) incidents: Vec<Incident>,
    pub(crate) ranks: Vec<RankView>,
    pub(crate) series: Vec<(u32, Vec<f64>)>,
}

/// Escape text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ago(now: f64, t: f64) -> String {
    let s = (now - t).max(0.0);
    if s < 120.0 {
        format!("{s:.0} s ago")
    } else if s < 7200.0 {
        format!("{:.0} min ago", s / 60.0)
    } else {
        format!("{:.1} h ago", s / 3600.0)
    }
}

fn chart(out: &mut String, series: &[(u32, Vec<f64>)]) {
    let (w, h, pad) = (860.0, 260.0, 40.0);
    let mut drawn: Vec<&(u32, Vec<f64>)> = series.iter().filter(|(_, v)| !v.is_empty()).collect();
    drawn.sort_by(|a, b| {
        let ma = a.1.iter().copied().fold(0.0, f64::max);
        let mb = b.1.iter().copied().fold(0.0, f64::max);
        mb.total_cmp(&ma)
    });
    drawn.truncate(MAX_SERIES);
    if drawn.is_empty() {
        out.push_str("<p class=muted>No step times yet.</p>");
        return;
    }
    let ymax = drawn
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-6)
        * 1.05;
    let n = drawn.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(2);
    let _ = write!(
        out,
        "<svg id=chart viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=img \
         aria-label=\"step time per rank\">\
         <rect x=\"{pad}\" y=\"10\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>\
         <text x=\"2\" y=\"18\" font-size=\"11\">{ymax:.3}s</text>\
         <text x=\"2\" y=\"{}\" font-size=\"11\">0</text>",
        w - pad - 10.0,
        h - 40.0,
        h - 30.0
    );
    for (rank, values) in &drawn {
        let hue = (rank * 137) % 360;
        let offset = n - values.len();
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = pad + (w - pad - 10.0) * (offset + i) as f64 / (n - 1) as f64;
                let y = 10.0 + (h - 40.0) * (1.0 - v / ymax);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            "<polyline class=rank data-rank=\"{rank}\" fill=none stroke=\"hsl({hue},70%,45%)\" \
             stroke-width=\"1.2\" points=\"{}\"><title>rank {rank}</title></polyline>",
            points.join(" ")
        );
    }
    let _ = write!(
        out,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"11\">last {n} steps of {} ranks (slowest first); \
         hover a line for its rank</text></svg>",
        h - 12.0,
        drawn.len()
    );
}

pub(crate) fn render(runs: &[RunSummary], detail: Option<&Detail>, now: f64) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <title>trainguard watch</title>\
         <style>body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;\
         padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}\
         .muted{color:#777}.bad{color:#b00;font-weight:600}\
         polyline.rank:hover{stroke-width:3}</style></head><body>\
         <h1>trainguard watch</h1>",
    );
    out.push_str(
        "<h2>Runs</h2><table><tr><th>run</th><th>world size</th><th>ranks seen</th>\
                  <th>events</th><th>incidents</th><th>registered</th></tr>",
    );
    for r in runs {
        let cls = if r.info.incidents > 0 {
            " class=bad"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"/?run={0}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td>\
             <td{cls}>{4}</td><td>{5}</td></tr>",
            esc(&r.info.run),
            r.world_size,
            r.ranks,
            r.info.events,
            r.info.incidents,
            ago(now, r.info.created_unix_s)
        );
    }
    out.push_str("</table>");
    if runs.is_empty() {
        out.push_str("<p class=muted>No runs registered yet (POST /v1/runs).</p>");
    }
    if let Some(d) = detail {
        let _ = write!(
            out,
            "<h2>Run {}</h2><h3>Step time per rank</h3>",
            esc(&d.run)
        );
        chart(&mut out, &d.series);
        let _ = write!(out, "<h3>Incidents ({})</h3>", d.incidents.len());
        if d.incidents.is_empty() {
            out.push_str("<p class=muted>None.</p>");
        } else {
            out.push_str(
                "<table><tr><th>when</th><th>detector</th><th>rank</th><th>host</th>\
                          <th>step</th><th>summary</th></tr>",
            );
            for i in d.incidents.iter().rev().take(500) {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td class=bad>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td></tr>",
                    ago(now, i.time_unix_s),
                    i.detector,
                    i.rank.map_or_else(|| "-".into(), |r| r.to_string()),
                    esc(i.host.as_deref().unwrap_or("-")),
                    i.step.map_or_else(|| "-".into(), |s| s.to_string()),
                    esc(&i.summary)
                );
            }
            out.push_str("</table>");
        }
        out.push_str(
            "<h3>Ranks</h3><table><tr><th>rank</th><th>host</th><th>pid</th>\
                      <th>state</th><th>last step</th><th>step p50</th><th>step p99</th>\
                      <th>starts</th><th>last event</th></tr>",
        );
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.3} s"));
        for r in &d.ranks {
            let state = match r.phase {
                RankPhase::Running => "running",
                _ => "exited",
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{state}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                r.rank,
                esc(&r.host),
                r.pid,
                r.last_step.map_or_else(|| "-".into(), |s| s.to_string()),
                fmt(r.step_p50_s),
                fmt(r.step_p99_s),
                r.starts,
                ago(now, r.last_seen_unix_s)
            );
        }
        out.push_str("</table>");
    }
    out.push_str(
        "<p class=muted><label><input type=checkbox id=live checked> refresh every 5 s</label> \
         · <a href=\"/metrics\">/metrics</a> · <a href=\"/v1/runs\">/v1/runs</a></p>\
         <script>setInterval(function(){if(document.getElementById('live').checked)\
         location.reload()},5000)</script></body></html>",
    );
    out
}
