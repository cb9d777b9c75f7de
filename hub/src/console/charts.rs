//! Charts drawn on the server as SVG (no script, no library): the fleet by status as
//! horizontal bars, and the converged share over a window as a line. Colours come from
//! the stylesheet by class; every bar carries its word and count as text.

use maud::{Markup, html};
use vigo_proto::admin::v1 as api;

use super::layout::status_symbol;

/// The statuses in the order the console shows them (the order filters list them).
pub use vigo_common::fleet_query::STATUSES;

/// The count of each status in [`STATUSES`] order (absent ones as 0).
pub fn ordered(counts: &api::StatusCounts) -> Vec<(&'static str, u64)> {
    STATUSES
        .iter()
        .map(|s| (*s, counts.by_status.get(*s).copied().unwrap_or(0)))
        .collect()
}

/// Envoys by status as labelled horizontal bars, each a link to those envoys.
pub fn status_bars(counts: &api::StatusCounts) -> Markup {
    const ROW: u64 = 26;
    const LABEL: u64 = 120;
    const WIDTH: u64 = 280;
    let rows = ordered(counts);
    let max = rows.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = ROW * rows.len() as u64;
    html! {
        svg.chart role="img" viewBox={ "0 0 " (LABEL + WIDTH + 70) " " (height) }
            aria-labelledby="bars-title" {
            title #bars-title { "Envoys by status: "
                @for (s, n) in &rows { (s) " " (n) "; " } }
            @for (i, (status, n)) in rows.iter().enumerate() {
                @let y = i as u64 * ROW;
                @let w = if *n == 0 { 0 } else { (n * WIDTH / max).max(2) };
                a href={ "/console/envoys?status=" (status) } {
                    text.label x="0" y=(y + 17) { (status_symbol(status)) " " (status) }
                    rect class={ "bar s-" (status) } x=(LABEL) y=(y + 4) width=(w) height=(ROW - 8) rx="3" {}
                    text.count x=(LABEL + w + 6) y=(y + 17) { (n) }
                }
            }
        }
    }
}

/// The converged share of answering envoys per sample over `window_ms` up to `now`.
pub fn convergence_line(samples: &[api::ComplianceSample], window_ms: u64, now: u64) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const PAD: f64 = 36.0;
    // The axis starts at the window's start, or at the oldest sample when the hub has
    // kept less than the window (a new cluster): its label says which.
    let oldest = samples.first().map_or(now, |s| s.at_ms);
    let from = now
        .saturating_sub(window_ms)
        .max(oldest.min(now.saturating_sub(60_000)));
    let window_ms = now - from;
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at_ms >= from)
        .filter_map(|s| {
            let c = s.counts.as_ref()?;
            let live = c.total - c.by_status.get("revoked").copied().unwrap_or(0);
            let share = if live == 0 {
                return None;
            } else {
                c.by_status.get("converged").copied().unwrap_or(0) as f64 / live as f64
            };
            let x = PAD + (s.at_ms - from) as f64 / window_ms.max(1) as f64 * (W - PAD);
            Some((x, H - 20.0 - share * (H - 30.0)))
        })
        .collect();
    if points.len() < 2 {
        return html! { p.muted { "Not enough history yet: the hub keeps a sample of the roll-up every few minutes." } };
    }
    let path: String = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ");
    let last = samples.last().and_then(|s| s.counts.as_ref());
    let share = last.map_or(0.0, |c| {
        let live = c.total - c.by_status.get("revoked").copied().unwrap_or(0);
        c.by_status.get("converged").copied().unwrap_or(0) as f64 * 100.0 / live.max(1) as f64
    });
    html! {
        svg.chart.line role="img" viewBox={ "0 0 " (W) " " (H) } aria-labelledby="line-title" {
            title #line-title { "Converged share over the window; now " (format!("{share:.1}")) " %" }
            line.axis x1=(PAD) y1=(H - 20.0) x2=(W) y2=(H - 20.0) {}
            line.grid x1=(PAD) y1="10" x2=(W) y2="10" {}
            text.tick x="0" y="14" { "100 %" }
            text.tick x="0" y=(H - 16.0) { "0 %" }
            text.tick x=(PAD) y=(H - 2.0) { (super::layout::ago(from, now)) }
            text.tick x=(W - 30.0) y=(H - 2.0) { "now" }
            polyline.converged points=(path) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(converged: u64, failed: u64) -> api::StatusCounts {
        api::StatusCounts {
            by_status: [
                ("converged".to_string(), converged),
                ("failed".to_string(), failed),
            ]
            .into(),
            total: converged + failed,
        }
    }

    #[test]
    fn bars_name_every_status_with_its_count_and_link() {
        let svg = status_bars(&counts(7, 3)).into_string();
        for status in STATUSES {
            assert!(
                svg.contains(&format!("/console/envoys?status={status}")),
                "{status}"
            );
        }
        assert!(
            svg.contains(">7</text>") && svg.contains(">3</text>"),
            "{svg}"
        );
        assert!(svg.contains("converged 7; ") && svg.contains("failed 3; "));
    }

    #[test]
    fn the_line_plots_the_converged_share_inside_the_window() {
        let now = 30 * 3_600_000;
        let samples: Vec<_> = [
            (now - 20 * 3_600_000, 0, 1),
            (now - 3_600_000, 1, 1),
            (now, 1, 0),
        ]
        .iter()
        .map(|(at, c, f)| api::ComplianceSample {
            at_ms: *at,
            counts: Some(counts(*c, *f)),
            missing_spokes: vec![],
        })
        .collect();
        let svg = convergence_line(&samples, 4 * 3_600_000, now).into_string();
        // The sample before the window is left out: two points, 50 % then 100 %.
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 2, "{points}");
        assert!(svg.contains("now 100.0 %"), "{svg}");
        let one = convergence_line(&samples[2..], 4 * 3_600_000, now).into_string();
        assert!(one.contains("Not enough history"));
    }
}
