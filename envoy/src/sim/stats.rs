//! What the simulator counts, and the summary it prints.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

pub struct Stats {
    pub sent: AtomicU64,
    pub no_change: AtomicU64,
    pub bundles: AtomicU64,
    pub reports: AtomicU64,
    pub failed_reports: AtomicU64,
    pub connected: AtomicU64,
    /// Check-ins a busy spoke shed with a retry hint (not failures: they are retried).
    pub shed: AtomicU64,
    /// Check-ins answered after one or more of their attempts were shed.
    pub recovered: AtomicU64,
    /// Check-in attempts that failed for a passing reason (spoke restarting, connection
    /// reset, deadline) and were tried again before the envoy's next check-in was due.
    pub retried: AtomicU64,
    failed: Mutex<BTreeMap<String, u64>>,
    /// What happened since the last timeline line (`--timeline`).
    period: Mutex<Period>,
    /// Latency of check-ins answered inside the measurement window, in microseconds.
    latency: Mutex<Histogram<u64>>,
    /// Check-ins answered inside the measurement window.
    pub window_ok: AtomicU64,
    pub measuring: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            no_change: AtomicU64::new(0),
            bundles: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            failed_reports: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failed: Mutex::new(BTreeMap::new()),
            period: Mutex::new(Period::default()),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
            ),
            window_ok: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
        }
    }
}

impl Stats {
    pub fn answered(&self, latency: Duration, bundle: bool) {
        if bundle {
            self.bundles.fetch_add(1, Ordering::Relaxed);
        } else {
            self.no_change.fetch_add(1, Ordering::Relaxed);
        }
        self.period().answered(latency, bundle);
        if self.measuring.load(Ordering::Relaxed) {
            self.window_ok.fetch_add(1, Ordering::Relaxed);
            let us = (latency.as_micros() as u64).clamp(1, 120_000_000);
            let _ = self
                .latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(us);
        }
    }

    /// A check-in attempt that will be tried again.
    pub fn retried(&self, what: &str) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        *self.period().retried.entry(what.to_string()).or_default() += 1;
    }

    /// A run report delivered.
    pub fn reported(&self) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        self.period().reports += 1;
    }

    /// A check-in the spoke shed with a retry hint.
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.period().shed += 1;
    }

    fn period(&self) -> std::sync::MutexGuard<'_, Period> {
        self.period.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What happened since the last call, stamped with the wall clock now.
    pub fn take_period(&self) -> Period {
        let mut p = std::mem::take(&mut *self.period());
        p.at_ms = vigo_common::time::now_ms();
        p
    }

    pub fn failed(&self, what: &str) {
        *self.period().failed.entry(what.to_string()).or_default() += 1;
        *self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(what.to_string())
            .or_default() += 1;
    }

    pub fn failed_total(&self) -> u64 {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// (p50, p99, p99.9) in microseconds of the measurement window so far.
    pub fn percentiles(&self) -> (u64, u64, u64) {
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        (
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
        )
    }

    pub fn ok(&self) -> u64 {
        self.no_change.load(Ordering::Relaxed) + self.bundles.load(Ordering::Relaxed)
    }
}

/// One line of the timeline: what the envoys saw in a period ending at `at_ms` (Unix
/// milliseconds). Latencies are counted in buckets 5 % wide (bucket `b` holds latencies
/// from 1.05^b µs), so the lines of several simulators add up and any stretch of them
/// yields percentiles.
#[derive(Debug, Default, Serialize)]
pub struct Period {
    pub at_ms: u64,
    pub ok: u64,
    pub bundles: u64,
    pub reports: u64,
    pub shed: u64,
    pub retried: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    pub latency_buckets: BTreeMap<u16, u64>,
}

/// The ratio between latency buckets of the timeline.
pub const BUCKET_RATIO: f64 = 1.05;

impl Period {
    fn answered(&mut self, latency: Duration, bundle: bool) {
        self.ok += 1;
        if bundle {
            self.bundles += 1;
        }
        let us = latency.as_micros().max(1) as f64;
        let bucket = (us.ln() / BUCKET_RATIO.ln()).floor() as u16;
        *self.latency_buckets.entry(bucket).or_default() += 1;
    }
}

/// The end-of-run summary (`--json` prints it as one JSON object).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub envoys: usize,
    pub connections: usize,
    pub interval_s: f64,
    pub enrolled_now: usize,
    pub enroll_seconds: f64,
    pub checkins_sent: u64,
    pub checkins_ok: u64,
    pub no_change: u64,
    pub bundles: u64,
    pub reports: u64,
    pub failed_reports: u64,
    pub failed: BTreeMap<String, u64>,
    /// Attempts a busy spoke shed with a retry hint, and check-ins answered after
    /// being shed (each retried after the hint, jittered).
    pub shed: u64,
    pub recovered_after_shed: u64,
    /// Check-in attempts that failed for a passing reason and were tried again.
    pub retried: u64,
    /// The steady-state window (after the ramp) the figures below cover.
    pub window_seconds: f64,
    pub window_checkins: u64,
    pub checkins_per_second: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    /// Spoke CPU (user + system) per check-in answered in the window.
    pub spoke_cpu_us_per_checkin: Option<f64>,
    pub spoke_cpu_percent: Option<f64>,
    pub spoke_rss_kib: Option<u64>,
    pub spoke_rss_per_envoy_bytes: Option<f64>,
    pub sim_cpu_us_per_checkin: Option<f64>,
    /// The simulator's own resident memory at the end of the window, per envoy.
    pub sim_rss_per_envoy_bytes: Option<f64>,
    /// Streams opened when a check-in answer said work waits; tasks taken on them
    /// (each once), results the spokes took, and results given up on.
    pub streams_opened: u64,
    pub tasks_received: u64,
    pub task_results_sent: u64,
    pub task_results_failed: u64,
}

impl Summary {
    pub fn print(&self) {
        println!("vigo-sim summary");
        if self.tasks_received > 0 {
            println!(
                "  tasks: streams opened {}, tasks taken {}, results sent {} (given up {})",
                self.streams_opened,
                self.tasks_received,
                self.task_results_sent,
                self.task_results_failed
            );
        }
        println!(
            "  envoys {} on {} connection(s), interval {:.1}s; enrolled now {} in {:.1}s",
            self.envoys, self.connections, self.interval_s, self.enrolled_now, self.enroll_seconds
        );
        println!(
            "  check-ins sent {}  ok {} (no-change {}, bundle {})  reports {} (failed {})",
            self.checkins_sent,
            self.checkins_ok,
            self.no_change,
            self.bundles,
            self.reports,
            self.failed_reports
        );
        if self.shed > 0 {
            println!(
                "  shed by the spoke {} attempt(s); {} check-in(s) answered on retry",
                self.shed, self.recovered_after_shed
            );
        }
        if self.retried > 0 {
            println!(
                "  retried {} check-in attempt(s) that failed for a passing reason",
                self.retried
            );
        }
        if self.failed.is_empty() {
            println!("  failed: none");
        } else {
            let list: Vec<String> = self
                .failed
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!("  failed: {}", list.join(", "));
        }
        println!(
            "  steady state {:.1}s: {} check-ins, {:.1}/s, latency p50 {} µs, p99 {} µs, p99.9 {} µs",
            self.window_seconds,
            self.window_checkins,
            self.checkins_per_second,
            self.latency_p50_us,
            self.latency_p99_us,
            self.latency_p999_us
        );
        if let Some(cpu) = self.spoke_cpu_us_per_checkin {
            println!(
                "  spoke CPU {:.1} µs per check-in ({:.1}% of one core); RSS {} KiB ({:.0} B per envoy)",
                cpu,
                self.spoke_cpu_percent.unwrap_or(0.0),
                self.spoke_rss_kib.unwrap_or(0),
                self.spoke_rss_per_envoy_bytes.unwrap_or(0.0)
            );
        }
        if let Some(cpu) = self.sim_cpu_us_per_checkin {
            println!("  simulator CPU {cpu:.1} µs per check-in");
        }
        if let Some(rss) = self.sim_rss_per_envoy_bytes {
            println!("  simulator RSS {rss:.0} B per envoy");
        }
    }
}
