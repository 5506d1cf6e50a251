//! The report as a self-contained HTML page: the summary, the steps and the plots, inline SVG
//! drawn with `plotters` (its SVG backend only: no scripts, no fonts, no external resource).
//!
//! Without plotters' `ttf`/`ab_glyph` features, text is not rasterised: the SVG backend writes
//! `<text font-family="sans-serif">` elements that the browser draws with its own fonts, and
//! plotters lays labels out from a rough estimate of their width. So the charts need no system
//! font to be rendered, and their titles and axis labels stay text (searchable, selectable).

use std::fmt::Write as _;

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
            esc(&self.target_urls())
        );
        if self.generator_bottleneck {
            let _ = write!(
                h,
                "<p class=\"warn\">Invalid: the load generator was the bottleneck: {}</p>",
                esc(&self.generator_bottleneck_reasons.join("; "))
            );
        }
        for w in &self.warnings {
            let _ = write!(h, "<p class=\"warn\">Warning: {}</p>", esc(w));
        }
        h.push_str("<pre>");
        h.push_str(&esc(&self.summary()));
        h.push_str("</pre>");

        let dist = by_percentile(&self.latency_distribution);
        h.push_str(&chart(
            "Fan-out latency by percentile",
            XAxis::Percentile,
            "percentile",
            "ms",
            &[line("fan-out latency", dist)],
        ));
        if !self.steps.is_empty() {
            h.push_str(&self.step_html());
        }

        let tl = |f: &dyn Fn(&TimePoint) -> Option<f64>| -> Vec<(f64, f64)> {
            self.timeline
                .iter()
                .filter_map(|p| Some((p.t_s, f(p)?)))
                .collect()
        };
        h.push_str(&chart(
            "Fan-out latency over time (each second)",
            XAxis::Linear,
            "seconds",
            "ms",
            &[
                line("p50", tl(&|p| Some(p.p50_ms))),
                line("p99", tl(&|p| Some(p.p99_ms))),
                line("max", tl(&|p| Some(p.max_ms))),
            ],
        ));
        h.push_str(&chart(
            "Deliveries per second",
            XAxis::Linear,
            "seconds",
            "deliveries/s",
            &[line("deliveries/s", tl(&|p| Some(p.deliveries_per_s)))],
        ));
        h.push_str(&chart(
            "Open connections",
            XAxis::Linear,
            "seconds",
            "connections",
            &[line("open", tl(&|p| Some(p.open as f64)))],
        ));
        h.push_str(&chart(
            "CPU (% of one core)",
            XAxis::Linear,
            "seconds",
            "% of one core",
            &[
                line("generator", tl(&|p| Some(p.generator_cpu * 100.0))),
                line("server", tl(&|p| Some(p.server_cpu? * 100.0))),
                line("other processes", tl(&|p| Some(p.other_cpu? * 100.0))),
            ],
        ));
        const MIB: f64 = 1048576.0;
        h.push_str(&chart(
            "Resident memory",
            XAxis::Linear,
            "seconds",
            "MiB",
            &[
                line("generator", tl(&|p| Some(p.generator_rss as f64 / MIB))),
                line("server", tl(&|p| Some(p.server_rss? as f64 / MIB))),
            ],
        ));
        h.push_str(&chart(
            "Connect time by percentile",
            XAxis::Percentile,
            "percentile",
            "ms",
            &[line(
                "connect",
                by_percentile(&self.connections.connect_distribution),
            )],
        ));

        h.push_str("<h2>Run parameters and environment (JSON)</h2><pre>");
        let meta = serde_json::json!({
            "params": self.params, "targets": self.targets, "environment": self.environment,
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
        if let Some(why) = &self.step_stop_reason {
            let _ = write!(h, "<p>Steps stopped: {}</p>", esc(why));
        }
        let pts = |f: &dyn Fn(&StepResult) -> f64| -> Vec<(f64, f64)> {
            self.steps.iter().map(|s| (s.step as f64, f(s))).collect()
        };
        h.push_str(&chart(
            "Deliveries per second by step: offered and achieved",
            XAxis::Steps,
            "step",
            "deliveries/s",
            &[
                dashed("offered", pts(&|s| s.offered_deliveries_per_s)),
                line("achieved", pts(&|s| s.deliveries_per_s)),
            ],
        ));
        h.push_str(&chart(
            "Fan-out latency by step",
            XAxis::Steps,
            "step",
            "ms",
            &[
                line("p50", pts(&|s| s.latency.p50_ms)),
                line("p99", pts(&|s| s.latency.p99_ms)),
                line("max", pts(&|s| s.latency.max_ms)),
            ],
        ));
        h
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:960px;color:#222}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}.warn{color:#a00;font-weight:bold}\
svg{display:block;margin:1.5em 0;max-width:100%;height:auto}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}";

/// Chart size in pixels (the SVG scales down with the page).
const WIDTH: u32 = 900;
const HEIGHT: u32 = 320;
const NO_DATA_HEIGHT: u32 = 90;

/// Series colours (matplotlib's first four).
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

const FONT: &str = "sans-serif";

/// How a chart's x axis is laid out.
#[derive(Clone, Copy, PartialEq)]
enum XAxis {
    /// Evenly spaced round numbers.
    Linear,
    /// `-log10(1 - q)`, ticks at 0%, 90%, 99%, 99.9%, ...
    Percentile,
    /// Step numbers: integer ticks, and a marker on every point.
    Steps,
}

/// (percentile, ms) pairs placed on the percentile axis.
fn by_percentile(dist: &[(f64, f64)]) -> Vec<(f64, f64)> {
    dist.iter()
        .filter(|(pct, ms)| pct.is_finite() && ms.is_finite())
        .map(|&(pct, ms)| (percentile_x(pct), ms))
        .collect()
}

/// x position of a percentile on the usual HDR axis: -log10(1 - q).
fn percentile_x(pct: f64) -> f64 {
    let rest = (1.0 - pct / 100.0).max(1e-6);
    -rest.log10()
}

/// The percentile at x on the percentile axis: 0%, 90%, 99%, 99.9%, ...
fn percentile_label(x: f64) -> String {
    if x.fract().abs() < 1e-9 && x >= 0.0 {
        match x as u32 {
            0 => "0%".into(),
            1 => "90%".into(),
            n => format!("99.{}%", "9".repeat(n as usize - 2)).replace("99.%", "99%"),
        }
    } else {
        format!("{:.4}%", 100.0 * (1.0 - 10f64.powf(-x)))
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One series of a chart.
struct Line<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

fn line(name: &str, points: Vec<(f64, f64)>) -> Line<'_> {
    Line {
        name,
        points,
        dashed: false,
    }
}

fn dashed(name: &str, points: Vec<(f64, f64)>) -> Line<'_> {
    Line {
        name,
        points,
        dashed: true,
    }
}

/// A line chart as inline SVG, with a legend when it is of several series (a series without
/// points is left out of both). A chart with no points at all says "no data".
fn chart(title: &str, x_axis: XAxis, xlabel: &str, ylabel: &str, series: &[Line<'_>]) -> String {
    let mut svg = String::new();
    let has_data = series
        .iter()
        .any(|l| l.points.iter().any(|(x, y)| x.is_finite() && y.is_finite()));
    // "no data" needs no plot area.
    let height = if has_data { HEIGHT } else { NO_DATA_HEIGHT };
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        draw_chart(&root, title, x_axis, xlabel, ylabel, series).and_then(|()| root.present())
    };
    if let Err(e) = drawn {
        return format!(
            "<p class=\"warn\">{}: the chart could not be drawn: {}</p>",
            esc(title),
            esc(&e.to_string())
        );
    }
    // plotters' root tag has no accessible name: give it the title.
    svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{}\" ", esc(title)),
        1,
    )
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw_chart(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_axis: XAxis,
    xlabel: &str,
    ylabel: &str,
    series: &[Line<'_>],
) -> DrawResult {
    root.fill(&WHITE)?;
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let points = || series.iter().flat_map(|l| l.points.iter().filter(finite));
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        let area = root.titled(title, (FONT, 20))?;
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            "no data",
            (w as i32 / 2, h as i32 / 2),
            TextStyle::from((FONT, 18).into_font())
                .color(&RGBColor(120, 120, 120))
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
        return Ok(());
    }
    let x_ticks = match x_axis {
        XAxis::Percentile => {
            x0 = 0.0;
            x1 = x1.ceil().max(1.0);
            (0..=x1 as u32).map(f64::from).collect()
        }
        XAxis::Steps => {
            if x1 - x0 < 1.0 {
                x0 -= 0.5;
                x1 += 0.5;
            }
            let mut t = nice_ticks(x0, x1, 10);
            t.retain(|x| x.fract() == 0.0);
            t
        }
        XAxis::Linear => {
            // Time from the start of the run.
            x0 = x0.min(0.0);
            if x1 - x0 < 1e-9 {
                x1 = x0 + 1.0;
            }
            nice_ticks(x0, x1, 8)
        }
    };
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    let y_ticks = nice_ticks(0.0, y1 * 1.02, 5);
    let y1 = y_ticks
        .last()
        .copied()
        .filter(|t| *t >= y1)
        .unwrap_or(y1 * 1.05);
    let x_step = x_ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .next()
        .unwrap_or(1.0);
    let y_step = y_ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .next()
        .unwrap_or(1.0);

    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 20))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(
            Axis {
                range: x0..x1,
                ticks: x_ticks,
            },
            Axis {
                range: 0.0..y1,
                ticks: y_ticks,
            },
        )?;
    let x_fmt = |x: &f64| match x_axis {
        XAxis::Percentile => percentile_label(*x),
        XAxis::Steps | XAxis::Linear => fmt_tick(*x, x_step),
    };
    let y_fmt = |y: &f64| fmt_tick(*y, y_step);
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .bold_line_style(RGBColor(225, 225, 225))
        .axis_style(RGBColor(120, 120, 120))
        .draw()?;

    // Colours by the series' place in the chart, whether the others have points or not;
    // dashed lines over the solid ones, which they may hide otherwise.
    let mut order: Vec<(usize, &Line<'_>)> = series
        .iter()
        .enumerate()
        .filter(|(_, l)| l.points.iter().any(|p| finite(&p)))
        .collect();
    order.sort_by_key(|(_, l)| l.dashed);
    for (i, l) in order {
        let color = COLORS[i % COLORS.len()];
        let style = color.stroke_width(2);
        let pts: Vec<(f64, f64)> = l.points.iter().filter(finite).copied().collect();
        let drawn = if l.dashed {
            chart.draw_series(DashedLineSeries::new(pts.iter().copied(), 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(pts.iter().copied(), style))?
        };
        let dashed = l.dashed;
        drawn.label(l.name).legend(move |(x, y)| {
            let seg = |a: i32, b: i32| PathElement::new([(a, 0), (b, 0)], style);
            let (first, second) = if dashed {
                (seg(0, 8), seg(12, 20))
            } else {
                (seg(0, 10), seg(10, 20))
            };
            EmptyElement::at((x, y)) + first + second
        });
        if x_axis == XAxis::Steps || pts.len() == 1 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    // A legend when the chart is of several series, even if only one of them has points.
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    Ok(())
}

/// A linear f64 axis with the ticks we chose (plotters' own `f64` axis picks its ticks itself,
/// and its `with_key_points` wrapper loses the label formatter).
struct Axis {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for Axis {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let f = if span > 0.0 {
            (v - self.range.start) / span
        } else {
            0.0
        };
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
}

/// Round-number ticks from `lo` to at least `hi`, about `target` of them.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let raw = (hi - lo) / target.max(1) as f64;
    if !(raw > 0.0 && raw.is_finite()) {
        return vec![lo];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let last = (hi / step - 1e-9).ceil();
    (first as i64..=last as i64)
        .map(|i| i as f64 * step)
        .collect()
}

/// A tick label with as many decimals as the tick spacing needs (and `k`/`M` for large ones).
fn fmt_tick(v: f64, step: f64) -> String {
    let (v, step, unit) = if v.abs() >= 1e6 {
        (v / 1e6, step / 1e6, "M")
    } else if v.abs() >= 1e4 {
        (v / 1e3, step / 1e3, "k")
    } else {
        (v, step, "")
    };
    let decimals = (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    format!("{v:.decimals$}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_report;

    const SVG_NS: &str = "http://www.w3.org/2000/svg";

    /// The SVG elements of a page, each from `<svg` to `</svg>`.
    fn svgs(page: &str) -> Vec<&str> {
        page.match_indices("<svg")
            .map(|(i, _)| {
                let end = page[i..].find("</svg>").expect("closed svg") + i + "</svg>".len();
                &page[i..end]
            })
            .collect()
    }

    const CHARTS: [&str; 7] = [
        "Fan-out latency by percentile",
        "Fan-out latency over time (each second)",
        "Deliveries per second",
        "Open connections",
        "CPU (% of one core)",
        "Resident memory",
        "Connect time by percentile",
    ];
    const STEP_CHARTS: [&str; 2] = [
        "Deliveries per second by step: offered and achieved",
        "Fan-out latency by step",
    ];

    #[test]
    fn a_chart_per_plot_with_title_axes_and_legend() {
        let page = sample_report().html();
        let svgs = svgs(&page);
        assert_eq!(svgs.len(), CHARTS.len() + STEP_CHARTS.len());
        for title in CHARTS.iter().chain(&STEP_CHARTS) {
            let svg = svgs
                .iter()
                .find(|s| s.contains(&format!("aria-label=\"{}\"", esc(title))))
                .unwrap_or_else(|| panic!("no chart {title:?}"));
            // The title is drawn as text, not only named.
            assert!(
                svg.contains(&format!(">\n{}\n</text>", esc(title))),
                "{title}"
            );
            assert!(svg.contains("<polyline"), "{title}: no line");
            assert!(!svg.contains("no data"), "{title}");
        }
        let find = |title: &str| {
            *svgs
                .iter()
                .find(|s| s.contains(&format!("aria-label=\"{}\"", esc(title))))
                .unwrap()
        };
        // Percentile axes: 0%, 90%, 99%, 99.9%, ... (the sample goes to 100%, drawn at 99.9999%).
        let pct = find("Fan-out latency by percentile");
        for tick in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"] {
            assert!(pct.contains(&format!(">\n{tick}\n</text>")), "tick {tick}");
        }
        assert!(pct.contains(">\npercentile\n</text>") && pct.contains(">\nms\n</text>"));
        // Legends on the charts with several series.
        let cpu = find("CPU (% of one core)");
        for name in ["generator", "server", "other processes"] {
            assert!(
                cpu.contains(&format!(">\n{name}\n</text>")),
                "legend {name}"
            );
        }
        let by_step = find(STEP_CHARTS[0]);
        assert!(
            by_step.contains(">\noffered\n</text>") && by_step.contains(">\nachieved\n</text>")
        );
        // Integer step ticks, markers on the points.
        assert!(by_step.contains(">\n2\n</text>") && !by_step.contains(">\n1.5\n</text>"));
        assert!(by_step.contains("<circle"));
        // Deliveries/s in thousands.
        assert!(find("Deliveries per second").contains("k\n</text>"));
    }

    #[test]
    fn self_contained_and_escaped() {
        let page = sample_report().html();
        let rest = page.replace(SVG_NS, "");
        assert!(!rest.contains("http://") && !rest.contains("https://"));
        assert!(!page.contains("<script"), "no script, and warnings escaped");
        assert!(page.contains("Warning: &lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(!page.contains("<link") && !page.contains("<img"));
        assert!(page.contains("<table>") && page.contains("Highest sustained: <b>4900"));
    }

    #[test]
    fn empty_series_say_no_data() {
        let mut r = sample_report();
        r.timeline.clear();
        r.steps.clear();
        r.latency_distribution.clear();
        r.connections.connect_distribution.clear();
        let page = r.html();
        let svgs = svgs(&page);
        assert_eq!(svgs.len(), CHARTS.len(), "no step charts without steps");
        for svg in &svgs {
            assert!(svg.contains(">\nno data\n</text>"));
            assert!(!svg.contains("<polyline"));
        }
        assert!(!page.contains("<table>"));
    }

    #[test]
    fn missing_series_are_left_out() {
        let mut r = sample_report();
        for p in &mut r.timeline {
            p.server_cpu = None;
            p.other_cpu = None;
        }
        let page = r.html();
        let cpu = svgs(&page)
            .into_iter()
            .find(|s| s.contains("aria-label=\"CPU"))
            .unwrap();
        assert!(cpu.contains(">\ngenerator\n</text>"));
        assert!(!cpu.contains(">\nserver\n</text>"));
        assert!(!cpu.contains(">\nother processes\n</text>"));
    }

    #[test]
    fn ticks_and_labels() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 9.1, 5).last(), Some(&10.0));
        assert_eq!(nice_ticks(0.0, 18.0, 8), [0.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(fmt_tick(0.5, 0.25), "0.50");
        assert_eq!(fmt_tick(0.4, 0.2), "0.4");
        assert_eq!(fmt_tick(20000.0, 5000.0), "20k");
        assert_eq!(fmt_tick(2_500_000.0, 500_000.0), "2.5M");
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
    }
}
