//! The report as a self-contained HTML page: the summary, the steps and the plots as inline SVG
//! (no scripts, no external resources).

use std::fmt::Write as _;

use super::{Report, StepResult, TimePoint};

impl Report {
    /// A self-contained HTML page with the figures and plots.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>fan-out report: {:?}</title><style>{CSS}</style></head><body>",
            self.params.scenario
        );
        let _ = write!(
            h,
            "<h1>Fan-out report: {:?} against {}</h1>",
            self.params.scenario,
            esc(&self.target.url)
        );
        for w in &self.warnings {
            let _ = write!(h, "<p class=\"warn\">Warning: {}</p>", esc(w));
        }
        h.push_str("<pre>");
        h.push_str(&esc(&self.summary()));
        h.push_str("</pre>");
        let dist: Vec<(f64, f64)> = self
            .latency_distribution
            .iter()
            .map(|&(pct, ms)| (percentile_x(pct), ms))
            .collect();
        h.push_str(&svg_chart(
            "Fan-out latency by percentile",
            "percentile",
            "ms",
            &[("latency", &dist)],
            Some(&[
                (0.0, "0%"),
                (1.0, "90%"),
                (2.0, "99%"),
                (3.0, "99.9%"),
                (4.0, "99.99%"),
                (5.0, "99.999%"),
            ]),
        ));
        if !self.steps.is_empty() {
            h.push_str(&self.step_html());
        }
        let tl = |f: &dyn Fn(&TimePoint) -> f64| -> Vec<(f64, f64)> {
            self.timeline.iter().map(|p| (p.t_s, f(p))).collect()
        };
        let p50 = tl(&|p| p.p50_ms);
        let p99 = tl(&|p| p.p99_ms);
        let max = tl(&|p| p.max_ms);
        h.push_str(&svg_chart(
            "Fan-out latency over time (per second)",
            "seconds",
            "ms",
            &[("p50", &p50), ("p99", &p99), ("max", &max)],
            None,
        ));
        let dps = tl(&|p| p.deliveries_per_s);
        h.push_str(&svg_chart(
            "Deliveries per second",
            "seconds",
            "deliveries/s",
            &[("deliveries/s", &dps)],
            None,
        ));
        let open = tl(&|p| p.open as f64);
        h.push_str(&svg_chart(
            "Open connections",
            "seconds",
            "connections",
            &[("open", &open)],
            None,
        ));
        let gen = tl(&|p| p.generator_cpu * 100.0);
        let srv: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .filter_map(|p| Some((p.t_s, p.server_cpu? * 100.0)))
            .collect();
        h.push_str(&svg_chart(
            "CPU (% of one core)",
            "seconds",
            "%",
            &[("generator", &gen), ("server", &srv)],
            None,
        ));
        if !self.connections.connect_distribution.is_empty() {
            let cd: Vec<(f64, f64)> = self
                .connections
                .connect_distribution
                .iter()
                .map(|&(pct, ms)| (percentile_x(pct), ms))
                .collect();
            h.push_str(&svg_chart(
                "Connect time by percentile",
                "percentile",
                "ms",
                &[("connect", &cd)],
                Some(&[
                    (0.0, "0%"),
                    (1.0, "90%"),
                    (2.0, "99%"),
                    (3.0, "99.9%"),
                    (4.0, "99.99%"),
                ]),
            ));
        }
        h.push_str("<h2>Run parameters and environment (JSON)</h2><pre>");
        let meta = serde_json::json!({
            "params": self.params, "target": self.target, "environment": self.environment,
            "cost": self.cost, "connections": {
                "failures": self.connections.failures,
                "disconnects": self.connections.disconnects,
                "error_frames": self.connections.error_frames,
            }
        });
        h.push_str(&esc(
            &serde_json::to_string_pretty(&meta).unwrap_or_default()
        ));
        h.push_str("</pre></body></html>\n");
        h
    }
}

impl Report {
    /// The steps of `step` as an HTML table and two charts.
    fn step_html(&self) -> String {
        let mut h = String::from(
            "<h2>Steps</h2><table><tr><th>step</th><th>msg/s per sender</th>\
             <th>offered deliveries/s</th><th>achieved deliveries/s</th><th>p50 ms</th>\
             <th>p99 ms</th><th>max ms</th><th>loss %</th><th>server CPU %</th>\
             <th>generator CPU %</th><th>other processes CPU %</th><th>verdict</th></tr>",
        );
        for st in &self.steps {
            let verdict = match (st.within_bounds, &st.generator_bottleneck_reason) {
                (_, Some(why)) => format!("generator bottleneck: {}", esc(why)),
                (true, None) => "ok".into(),
                (false, None) => "over bound".into(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td>\
                 <td>{:.2}</td><td>{:.2}</td><td>{:.4}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{verdict}</td></tr>",
                st.step,
                st.msg_rate,
                st.offered_deliveries_per_s,
                st.deliveries_per_s,
                st.latency.p50_ms,
                st.latency.p99_ms,
                st.latency.max_ms,
                st.loss_ratio * 100.0,
                st.server_cpu
                    .map(|c| format!("{:.0}", c * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                st.generator_cpu * 100.0,
                st.other_cpu
                    .map(|c| format!("{:.0}", c * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        h.push_str("</table>");
        if let Some(best) = self.highest_sustained_deliveries_per_s {
            let _ = write!(
                h,
                "<p>Highest sustained: <b>{best:.0} deliveries/s</b>{}</p>",
                if self.generator_bottleneck {
                    " (invalid: the generator was the bottleneck)"
                } else {
                    ""
                }
            );
        }
        let pts = |f: &dyn Fn(&StepResult) -> f64| -> Vec<(f64, f64)> {
            self.steps.iter().map(|s| (s.step as f64, f(s))).collect()
        };
        let offered = pts(&|s| s.offered_deliveries_per_s);
        let achieved = pts(&|s| s.deliveries_per_s);
        h.push_str(&svg_chart(
            "Deliveries per second by step",
            "step",
            "deliveries/s",
            &[("offered", &offered), ("achieved", &achieved)],
            None,
        ));
        let p50 = pts(&|s| s.latency.p50_ms);
        let p99 = pts(&|s| s.latency.p99_ms);
        let max = pts(&|s| s.latency.max_ms);
        h.push_str(&svg_chart(
            "Fan-out latency by step",
            "step",
            "ms",
            &[("p50", &p50), ("p99", &p99), ("max", &max)],
            None,
        ));
        h
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:960px;color:#222}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}.warn{color:#a00;font-weight:bold}\
svg{display:block;margin:1.5em 0}text{font-size:11px;fill:#333}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}";

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// x position of a percentile on the usual HDR axis: -log10(1 - q).
fn percentile_x(pct: f64) -> f64 {
    let rest = (1.0 - pct / 100.0).max(1e-6);
    -rest.log10()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as inline SVG.
fn svg_chart(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(&str, &Vec<(f64, f64)>)],
    xticks: Option<&[(f64, &str)]>,
) -> String {
    let (w, hgt, l, r, t, b) = (900.0, 300.0, 70.0, 20.0, 30.0, 40.0);
    let pts = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\" role=\"img\" aria-label=\"{title}\">\
         <text x=\"{l}\" y=\"18\" style=\"font-size:14px;font-weight:bold\">{title}</text>"
    );
    if x0 > x1 {
        let _ = write!(s, "<text x=\"{l}\" y=\"60\">no data</text></svg>");
        return s;
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    y1 *= 1.05;
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| hgt - b - y / y1 * (hgt - t - b);
    let _ = write!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#888\"/>",
        hgt - b,
        w - r,
        hgt - b,
        hgt - b
    );
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            l - 6.0,
            py(y) + 4.0,
            fmt_num(y),
        );
        let _ = write!(
            s,
            "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#eee\"/>",
            py(y),
            w - r,
            py(y)
        );
    }
    let ticks: Vec<(f64, String)> = match xticks {
        Some(t) => t
            .iter()
            .filter(|(x, _)| *x >= x0 && *x <= x1 + 1e-9)
            .map(|(x, n)| (*x, n.to_string()))
            .collect(),
        None => (0..=5)
            .map(|i| {
                let x = x0 + (x1 - x0) * i as f64 / 5.0;
                (x, fmt_num(x))
            })
            .collect(),
    };
    for (x, name) in ticks {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            px(x),
            hgt - b + 16.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel}</text>\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{ylabel}</text>",
        (l + w - r) / 2.0,
        hgt - 4.0,
        hgt / 2.0,
        hgt / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" style=\"fill:{color}\">{name}</text>",
            path.join(" "),
            w - r - 120.0,
            t + 14.0 * (i as f64 + 1.0)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
