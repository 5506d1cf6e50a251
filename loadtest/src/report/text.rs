//! The report on the terminal: the summary table printed at the end of a run, and the table
//! of the `step` scenario's steps.

use std::fmt::Write as _;

use super::Report;

impl Report {
    /// The summary table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let d = &self.deliveries;
        let c = &self.cost;
        let _ = writeln!(
            s,
            "\n=== fan-out summary ({:?}, {}) ===",
            p.scenario,
            self.target_urls()
        );
        let rows: Vec<(&str, String)> = vec![
            (
                "clients",
                format!(
                    "{} joined / {} attempted, {} failed, peak open {}",
                    self.connections.joined,
                    self.connections.attempted,
                    self.connections.failed,
                    self.connections.peak_open
                ),
            ),
            (
                "rooms / senders",
                format!(
                    "{} / {} x {} msg/s, {} B",
                    p.rooms, p.senders, p.msg_rate, p.message_size
                ),
            ),
            (
                "connect ms",
                format!(
                    "p50 {:.2}  p99 {:.2}  max {:.2}  ({:.1} s to connect all)",
                    self.connections.connect.p50_ms,
                    self.connections.connect.p99_ms,
                    self.connections.connect.max_ms,
                    self.connections.connect_phase_s
                ),
            ),
            (
                "messages sent",
                format!(
                    "{} ({:.1}/s over {:.1} s, {} late)",
                    self.sends.messages, self.sends.per_s, self.sends.window_s, self.sends.late
                ),
            ),
            (
                "deliveries",
                format!(
                    "{} received / {} expected ({:.1}/s)",
                    d.tally.received, d.tally.expected, d.per_s
                ),
            ),
            (
                "loss",
                format!(
                    "{} ({:.4}%), duplicates {}, out of order {}",
                    d.tally.lost,
                    d.loss_ratio * 100.0,
                    d.tally.duplicates,
                    d.tally.out_of_order
                ),
            ),
            (
                "fan-out latency ms",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                    self.latency.p50_ms,
                    self.latency.p90_ms,
                    self.latency.p99_ms,
                    self.latency.p999_ms,
                    self.latency.max_ms
                ),
            ),
            (
                "disconnects",
                if self.connections.disconnects.is_empty() {
                    "none".to_string()
                } else {
                    format!("{:?}", self.connections.disconnects)
                },
            ),
            (
                "CPU s",
                format!(
                    "generator {:.2}{}  server {}",
                    c.generator_cpu_s,
                    c.generator_us_per_delivery
                        .map(|u| format!(
                            " ({u:.2}{})",
                            us_sending(c.generator_us_per_delivery_sending)
                        ))
                        .unwrap_or_default(),
                    match (c.server_cpu_s, c.server_us_per_delivery) {
                        (Some(s), Some(u)) => format!(
                            "{s:.2} ({u:.2}{})",
                            us_sending(c.server_us_per_delivery_sending)
                        ),
                        (Some(s), None) => format!("{s:.2}"),
                        _ => "n/a".into(),
                    }
                ),
            ),
            (
                "memory",
                format!(
                    "generator peak {:.1} MiB{}{}",
                    c.generator_peak_rss as f64 / 1048576.0,
                    match (
                        c.generator_bytes_per_client,
                        c.generator_anon_bytes_per_client
                    ) {
                        (Some(b), Some(a)) => format!(
                            " ({:.1} KiB/client, {:.1} KiB anonymous)",
                            b / 1024.0,
                            a / 1024.0
                        ),
                        (Some(b), None) => format!(" ({:.1} KiB/client)", b / 1024.0),
                        _ => String::new(),
                    },
                    match (c.server_rss_peak, c.server_bytes_per_connection) {
                        (Some(pk), Some(b)) => format!(
                            ", server peak {:.1} MiB ({:.1} KiB/connection{})",
                            pk as f64 / 1048576.0,
                            b / 1024.0,
                            c.server_anon_bytes_per_connection
                                .map(|a| format!(", {:.1} KiB anonymous", a / 1024.0))
                                .unwrap_or_default()
                        ),
                        (Some(pk), None) =>
                            format!(", server peak {:.1} MiB", pk as f64 / 1048576.0),
                        _ => String::new(),
                    }
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "{k:>20}  {v}");
        }
        if let Some(best) = self.highest_sustained_deliveries_per_s {
            let _ = writeln!(s, "{:>20}  {best:.0} deliveries/s", "highest sustained");
        }
        if !self.steps.is_empty() {
            s.push_str(&self.step_table());
        }
        if let Some(why) = &self.step_stop_reason {
            let _ = writeln!(s, "{:>20}  {why}", "steps stopped");
        }
        if self.generator_bottleneck {
            let _ = writeln!(
                s,
                "INVALID: the load generator was the bottleneck: {}",
                self.generator_bottleneck_reasons.join("; ")
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING: {w}");
        }
        s
    }

    /// The per-step table of the `step` scenario.
    pub fn step_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n{:>4} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7}  verdict",
            "step",
            "msg/s/snd",
            "offered/s",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "loss %",
            "srv CPU",
            "gen CPU",
            "other"
        );
        for st in &self.steps {
            let mut verdict = if st.within_bounds { "ok" } else { "over bound" }.to_string();
            if st.generator_bottleneck {
                verdict.push_str(", generator bottleneck");
            }
            let _ = writeln!(
                s,
                "{:>4} {:>9.1} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.4} {:>6.0}% {:>6.0}% {:>6.0}%  {verdict}",
                st.step,
                st.msg_rate,
                st.offered_deliveries_per_s,
                st.deliveries_per_s,
                st.latency.p50_ms,
                st.latency.p99_ms,
                st.latency.max_ms,
                st.loss_ratio * 100.0,
                st.server_cpu.map(|c| c * 100.0).unwrap_or(f64::NAN),
                st.generator_cpu * 100.0,
                st.other_cpu.map(|c| c * 100.0).unwrap_or(f64::NAN),
            );
        }
        s
    }
}

/// " us/delivery" after a whole-run figure, with the figure while sending when known.
fn us_sending(sending: Option<f64>) -> String {
    match sending {
        Some(u) => format!(" us/delivery; {u:.2} while sending"),
        None => " us/delivery".into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::report::sample_report;

    #[test]
    fn summary_has_the_key_rows() {
        let r = sample_report();
        let s = r.summary();
        for row in [
            "=== fan-out summary (Step, ws://127.0.0.1:3000/ws) ===",
            "clients  50 joined / 50 attempted, 0 failed, peak open 50",
            "deliveries  146900 received / 147000 expected",
            "loss  100 (0.0680%)",
            "fan-out latency ms  p50 2.00  p90 6.00  p99 10.00  p99.9 23.00  max 36.00",
            "CPU s  generator 6.00 (40.80 us/delivery)  server 9.00 (61.30 us/delivery; 55.00 while sending)",
            "highest sustained  4900 deliveries/s",
            "steps stopped  step 3: p99 15.00 ms > 10 ms",
            "WARNING: <script>",
        ] {
            assert!(s.contains(row), "missing {row:?} in\n{s}");
        }
        assert!(s.contains(&r.step_table()));
        assert!(!s.contains("INVALID"));
    }

    #[test]
    fn step_table_has_a_row_per_step() {
        let r = sample_report();
        let t = r.step_table();
        let lines: Vec<&str> = t.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].contains("offered/s") && lines[0].contains("verdict"));
        assert!(lines[1].trim_start().starts_with('1') && lines[1].ends_with("ok"));
        assert!(
            lines[3].contains("7350") && lines[3].ends_with("over bound"),
            "{t}"
        );
    }

    #[test]
    fn invalid_run_is_said() {
        let mut r = sample_report();
        r.generator_bottleneck = true;
        r.generator_bottleneck_reasons = vec!["generator CPU 1.9 cores".into()];
        assert!(r
            .summary()
            .contains("INVALID: the load generator was the bottleneck: generator CPU 1.9 cores"));
    }
}
