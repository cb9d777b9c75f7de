//! Shedding load with a retry hint, the gRPC way: a busy server answers
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` metadata, and a client that sees
//! it waits about that long (jittered, so a shed herd does not come back as one) and
//! tries again. `RESOURCE_EXHAUSTED` without the hint means "too large": retrying the
//! same request cannot succeed.
//!
//! A [`Shedder`] decides in the admission table, before the request body is read and
//! before the service runs: a shed request costs the server its headers and a
//! trailers-only answer — no body, no signature check. It sheds when
//!
//! 1. more requests of its kind are in progress than its limit: at most `max_in_flight`,
//!    cut by a tenth when an admitted request took longer than `max_queue_wait` to be
//!    answered (at most once per 100 ms, never below [`MIN_LIMIT`]) and raised by one
//!    after as many answered in time as the limit (TCP's additive increase,
//!    multiplicative decrease): so the requests let in are as many as the server answers
//!    promptly, however much CPU it has, or
//! 2. the server is behind: its scheduler runs a task that is due more than
//!    `max_queue_wait` late (a probe task measures this every 10 ms while requests
//!    arrive or the scheduler runs late, and every 250 ms while the server is quiet, so
//!    an idle spoke is not woken a hundred times a second for nothing; the lag is the
//!    wait a request spends between arriving on its socket and being read), or the
//!    request itself waited that long between being read and being admitted.
//!
//! With TLS and HTTP/2 around it, a shed request still costs about half of an answered
//! check-in (measured: ~55 µs against ~130 µs, BENCHMARKS.md), so under a lasting
//! overload the hint grows with the share shed: when a fraction `p` of the last second's
//! requests was shed, the hint is `retry_after / (1 - p)` (at most `max_retry_after`),
//! which spreads the shed clients over the time the server needs to answer them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// The metadata key of the retry hint, in milliseconds (gRPC's server pushback).
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// The in-flight limit never falls below this.
pub const MIN_LIMIT: usize = 16;

/// How often the probe task measures the scheduler's lag while the server is busy.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How often while it is quiet: fewer than [`BUSY_FROM`] requests since the last probe
/// and the probe on time. A probe that wakes a sleeping server costs a context switch;
/// at a spoke's real rate (~83 check-ins a second) probing every 10 ms doubled the
/// wake-ups per check-in.
const PROBE_QUIET: Duration = Duration::from_millis(250);
/// Requests per [`PROBE_EVERY`] from which the server counts as busy (2,000 a second).
const BUSY_FROM: u64 = 20;
/// A probe later than this keeps probing at the busy pace.
const LATE: Duration = Duration::from_millis(1);

/// When a request reached the server: the connection stamps it before the service
/// runs, so a service can tell how long the request waited for a worker.
#[derive(Clone, Copy, Debug)]
pub struct Received(pub Instant);

/// When a server sheds requests of one kind, and what it tells the shed clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SheddingLimits {
    pub max_in_flight: usize,
    pub max_queue_wait: Duration,
    /// The hint when few requests are shed.
    pub retry_after: Duration,
    /// The hint when nearly all are.
    pub max_retry_after: Duration,
}

/// Counts requests in progress and sheds beyond the limits.
pub struct Shedder {
    window: Arc<Window>,
    limits: SheddingLimits,
    lag: Arc<Lag>,
    share: Share,
    shed: metrics::Counter,
}

/// One admitted request in progress; it leaves the count when dropped (answered), and
/// how long it took adjusts the limit.
pub struct Ticket {
    window: Arc<Window>,
    admitted: Instant,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("admitted", &self.admitted)
            .finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.window.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.window.answered(self.admitted.elapsed());
    }
}

/// Requests in progress and the limit in force.
struct Window {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// Answered in time since the limit last grew.
    on_time: AtomicUsize,
    /// When the limit was last cut, in milliseconds since `base`.
    last_cut_ms: AtomicU64,
    base: Instant,
    max: usize,
    slow: Duration,
    gauge: metrics::Gauge,
}

impl Window {
    fn new(limits: &SheddingLimits, what: &'static str) -> Self {
        let gauge = metrics::gauge!("vigo_requests_in_flight_limit", "requests" => what);
        gauge.set(limits.max_in_flight as f64);
        Self {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limits.max_in_flight),
            on_time: AtomicUsize::new(0),
            last_cut_ms: AtomicU64::new(0),
            base: Instant::now(),
            max: limits.max_in_flight,
            slow: limits.max_queue_wait,
            gauge,
        }
    }

    fn answered(&self, took: Duration) {
        let limit = self.limit.load(Ordering::Relaxed);
        if took > self.slow {
            let now_ms = self.base.elapsed().as_millis() as u64;
            let last = self.last_cut_ms.load(Ordering::Relaxed);
            if now_ms >= last + 100
                && self
                    .last_cut_ms
                    .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let cut = (limit - limit / 10).max(MIN_LIMIT.min(self.max));
                self.limit.store(cut, Ordering::Relaxed);
                self.on_time.store(0, Ordering::Relaxed);
                self.gauge.set(cut as f64);
            }
        } else if limit < self.max && self.on_time.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
            self.on_time.store(0, Ordering::Relaxed);
            let _ =
                self.limit
                    .compare_exchange(limit, limit + 1, Ordering::AcqRel, Ordering::Relaxed);
            self.gauge.set((limit + 1) as f64);
        }
    }
}

impl Shedder {
    /// `what` names the requests in the `vigo_requests_shed_total` metric. Called within
    /// a Tokio runtime, it starts the lag probe on it (the probe ends with the shedder).
    pub fn new(limits: SheddingLimits, what: &'static str) -> Self {
        metrics::describe_counter!(
            "vigo_requests_shed_total",
            "Requests a saturated server refused with a retry hint before reading their body, by kind"
        );
        metrics::describe_gauge!(
            "vigo_requests_in_flight_limit",
            "Requests of a kind the server lets be in progress now: shrinks when answers come late, grows back when they are prompt, by kind"
        );
        metrics::describe_gauge!(
            "vigo_scheduler_lag_seconds",
            "How late the server's scheduler last ran a task that was due: the wait of a request between arriving and being read"
        );
        Self {
            window: Arc::new(Window::new(&limits, what)),
            limits,
            lag: Lag::start(),
            share: Share::default(),
            shed: metrics::counter!("vigo_requests_shed_total", "requests" => what),
        }
    }

    /// Admits a request that reached the server at `received`, or refuses it with the
    /// retry hint.
    pub fn admit(&self, received: Option<Instant>) -> Result<Ticket, Status> {
        let w = &self.window;
        let busy = w.in_flight.fetch_add(1, Ordering::Relaxed) >= w.limit.load(Ordering::Relaxed);
        let waited = received.map_or(Duration::ZERO, |r| r.elapsed());
        self.lag.admitted.fetch_add(1, Ordering::Relaxed);
        let behind = waited.max(self.lag.now()) > self.limits.max_queue_wait;
        let shed = busy || behind;
        let share = self.share.note(shed);
        if shed {
            w.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.shed.increment(1);
            return Err(busy_status(self.hint(share)));
        }
        Ok(Ticket {
            window: w.clone(),
            admitted: Instant::now(),
        })
    }

    /// The retry hint when `shed` of the requests were shed: `retry_after / (1 - shed)`.
    fn hint(&self, shed: f64) -> Duration {
        let l = &self.limits;
        let stretched = l.retry_after.as_secs_f64() / (1.0 - shed).max(1e-3);
        Duration::from_secs_f64(stretched.min(l.max_retry_after.as_secs_f64())).max(l.retry_after)
    }

    /// Requests in progress now.
    pub fn in_flight(&self) -> usize {
        self.window.in_flight.load(Ordering::Relaxed)
    }

    /// The in-flight limit in force now.
    pub fn limit(&self) -> usize {
        self.window.limit.load(Ordering::Relaxed)
    }
}

/// The scheduler's lag, measured by a task that asks to be woken every [`PROBE_EVERY`]
/// while the server is busy, every [`PROBE_QUIET`] while it is not.
struct Lag {
    base: Instant,
    /// Microseconds after `base` when the probe is next due.
    due_us: AtomicU64,
    /// How late the probe ran last time, in microseconds.
    last_us: AtomicU64,
    /// Requests admitted since the probe last ran.
    admitted: AtomicU64,
}

impl Lag {
    fn start() -> Arc<Self> {
        let lag = Arc::new(Self {
            base: Instant::now(),
            due_us: AtomicU64::new(u64::MAX),
            last_us: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe(Arc::downgrade(&lag)));
        }
        lag
    }

    /// The lag now: the probe's last, or how overdue it is if it has not run yet.
    fn now(&self) -> Duration {
        let elapsed = self.base.elapsed().as_micros() as u64;
        let overdue = elapsed.saturating_sub(self.due_us.load(Ordering::Relaxed));
        Duration::from_micros(overdue.max(self.last_us.load(Ordering::Relaxed)))
    }
}

async fn probe(lag: std::sync::Weak<Lag>) {
    let gauge = metrics::gauge!("vigo_scheduler_lag_seconds");
    let mut period = PROBE_EVERY;
    loop {
        let Some(l) = lag.upgrade() else { return };
        let due = Instant::now() + period;
        l.due_us
            .store((due - l.base).as_micros() as u64, Ordering::Relaxed);
        drop(l);
        tokio::time::sleep_until(due.into()).await;
        let late = due.elapsed();
        let Some(l) = lag.upgrade() else { return };
        l.last_us.store(late.as_micros() as u64, Ordering::Relaxed);
        gauge.set(late.as_secs_f64());
        period = next_period(l.admitted.swap(0, Ordering::Relaxed), period, late);
    }
}

/// The probe's next period, after `admitted` requests in the last `period` and a probe
/// `late` by this much: busy (a high rate, or the scheduler running late) probes often.
fn next_period(admitted: u64, period: Duration, late: Duration) -> Duration {
    let busy_rate = u128::from(admitted) * PROBE_EVERY.as_micros()
        >= u128::from(BUSY_FROM) * period.as_micros();
    if busy_rate || late > LATE {
        PROBE_EVERY
    } else {
        PROBE_QUIET
    }
}

/// The share of requests shed over the last second (the previous whole second, once
/// one has passed).
#[derive(Default)]
struct Share {
    /// The second the counts are for (since an arbitrary start).
    second: AtomicU64,
    admitted: AtomicU64,
    shed: AtomicU64,
    /// The last whole second's share, in millionths.
    last_ppm: AtomicU64,
}

/// Requests within a second before their share shed counts.
const SAMPLE: u64 = 100;

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

impl Share {
    /// Counts one request; returns the share shed to quote in hints.
    fn note(&self, shed: bool) -> f64 {
        let second = EPOCH.elapsed().as_secs();
        let current = self.second.load(Ordering::Relaxed);
        if second != current
            && self
                .second
                .compare_exchange(current, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let a = self.admitted.swap(0, Ordering::Relaxed);
            let s = self.shed.swap(0, Ordering::Relaxed);
            // Counts of a second long past say nothing about now.
            let ppm = if second == current + 1 && a + s > 0 {
                s * 1_000_000 / (a + s)
            } else {
                0
            };
            self.last_ppm.store(ppm, Ordering::Relaxed);
        }
        let counter = if shed { &self.shed } else { &self.admitted };
        let mine = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_ppm.load(Ordering::Relaxed) as f64 / 1e6;
        let admitted = self.admitted.load(Ordering::Relaxed);
        if shed && mine + admitted >= SAMPLE {
            // Within the second, the share so far counts too (once there are enough
            // requests to tell): a sudden herd is spread from its first second on.
            last.max(mine as f64 / (mine + admitted) as f64)
        } else {
            last
        }
    }
}

fn busy_status(retry_after: Duration) -> Status {
    busy(
        format!("the server is saturated; retry in about {retry_after:?}"),
        retry_after,
    )
}

/// A refusal that asks the client to come back after `retry_after`.
pub fn busy(message: impl Into<String>, retry_after: Duration) -> Status {
    let mut status = Status::resource_exhausted(message);
    status.metadata_mut().insert(
        PUSHBACK_HEADER,
        tonic::metadata::MetadataValue::from(retry_after.as_millis() as u64),
    );
    status
}

/// The retry hint of a shed request; `None` for every other status.
pub fn retry_after(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let ms: u64 = status
        .metadata()
        .get(PUSHBACK_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    // A hint beyond an hour is not one a client should obey blindly.
    Some(Duration::from_millis(ms.min(3_600_000)))
}

/// `hint` spread over half to one and a half of itself.
pub fn jittered(hint: Duration) -> Duration {
    hint.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_in_flight: usize, max_queue_wait_ms: u64) -> SheddingLimits {
        SheddingLimits {
            max_in_flight,
            max_queue_wait: Duration::from_millis(max_queue_wait_ms),
            retry_after: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_shedder_counts_in_flight_and_sheds_beyond_its_limits() {
        let shedder = Shedder::new(limits(2, 100), "test");
        let now = Some(Instant::now());
        let a = shedder.admit(now).unwrap();
        let _b = shedder.admit(now).unwrap();
        let shed = shedder.admit(now).expect_err("a third is shed");
        let hint = retry_after(&shed).unwrap();
        assert!(hint >= Duration::from_secs(2), "{hint:?}");
        drop(a);
        assert_eq!(shedder.in_flight(), 1);
        let c = shedder.admit(now).unwrap();
        let old = Some(Instant::now() - Duration::from_secs(1));
        drop(c);
        assert!(shedder.admit(old).is_err(), "waited too long: shed");
        assert_eq!(shedder.in_flight(), 1, "a shed request leaves the count");
    }

    #[test]
    fn late_answers_cut_the_limit_and_prompt_ones_raise_it() {
        let shedder = Shedder::new(limits(100, 100), "test");
        let late = |shedder: &Shedder| {
            let mut t = shedder.admit(None).unwrap();
            t.admitted -= Duration::from_millis(150);
            let cut_before = shedder.window.last_cut_ms.load(Ordering::Relaxed);
            // Cuts come at most every 100 ms: pretend the last was long ago.
            shedder
                .window
                .last_cut_ms
                .store(cut_before.saturating_sub(1000), Ordering::Relaxed);
            drop(t);
        };
        late(&shedder);
        assert_eq!(
            shedder.limit(),
            100,
            "the first cut waits for 100 ms of run time"
        );
        std::thread::sleep(Duration::from_millis(110));
        late(&shedder);
        assert_eq!(shedder.limit(), 90);
        for _ in 0..60 {
            shedder.window.last_cut_ms.store(0, Ordering::Relaxed);
            late(&shedder);
        }
        assert_eq!(shedder.limit(), MIN_LIMIT, "never below the floor");
        let held: Vec<Ticket> = (0..MIN_LIMIT)
            .map(|_| shedder.admit(None).unwrap())
            .collect();
        assert!(shedder.admit(None).is_err(), "the limit in force sheds");
        drop(held);
        for _ in 0..MIN_LIMIT {
            drop(shedder.admit(None).unwrap());
        }
        assert_eq!(
            shedder.limit(),
            MIN_LIMIT + 1,
            "prompt answers raise it by one"
        );
    }

    #[test]
    fn the_hint_grows_with_the_share_shed() {
        let shedder = Shedder::new(limits(1, 100), "test");
        assert_eq!(shedder.hint(0.0), Duration::from_secs(2));
        assert_eq!(shedder.hint(0.5), Duration::from_secs(4));
        assert_eq!(shedder.hint(0.9), Duration::from_secs_f64(20.0));
        assert_eq!(
            shedder.hint(1.0),
            Duration::from_secs(60),
            "at most max_retry_after"
        );
        // One admitted, then a herd that is all shed: the hint spreads it.
        let _held = shedder.admit(None).unwrap();
        let hints: Vec<Duration> = (0..100)
            .map(|_| retry_after(&shedder.admit(None).unwrap_err()).unwrap())
            .collect();
        assert_eq!(
            hints[0],
            Duration::from_secs(2),
            "one shed request is no herd"
        );
        assert!(hints[99] >= Duration::from_secs(40), "{:?}", hints[99]);
    }

    #[test]
    fn the_probe_wakes_a_quiet_server_rarely() {
        let ms = Duration::from_millis;
        // A spoke's real rate, 83 check-ins a second: 20 in a quiet period, 0 or 1 in a
        // busy one; both stay quiet.
        assert_eq!(next_period(20, PROBE_QUIET, Duration::ZERO), PROBE_QUIET);
        assert_eq!(next_period(1, PROBE_EVERY, Duration::ZERO), PROBE_QUIET);
        // 4,000 a second is busy, from either pace.
        assert_eq!(next_period(1_000, PROBE_QUIET, Duration::ZERO), PROBE_EVERY);
        assert_eq!(next_period(40, PROBE_EVERY, Duration::ZERO), PROBE_EVERY);
        // A late probe watches closely, however few requests came.
        assert_eq!(next_period(0, PROBE_QUIET, ms(30)), PROBE_EVERY);
        assert_eq!(next_period(0, PROBE_EVERY, ms(0)), PROBE_QUIET);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_server_behind_its_work_sheds_what_it_has_just_read() {
        let shedder = Shedder::new(limits(1000, 200), "test");
        // Let the probe run once on the runtime's only thread.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            shedder.admit(Some(Instant::now())).is_ok(),
            "not behind yet"
        );
        // The thread is busy: tasks that are due (the probe) wait, as requests do.
        std::thread::sleep(Duration::from_millis(600));
        let shed = shedder.admit(Some(Instant::now()));
        assert!(shed.is_err(), "the scheduler is 600 ms behind");
        assert_eq!(shed.unwrap_err().code(), Code::ResourceExhausted);
        // Once the probe has run on time again, requests are admitted again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(shedder.admit(Some(Instant::now())).is_ok(), "caught up");
    }

    #[test]
    fn the_hint_travels_with_resource_exhausted_only() {
        let shed = busy("busy", Duration::from_millis(1500));
        assert_eq!(retry_after(&shed), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&Status::resource_exhausted("too large")), None);
        let mut other = Status::unavailable("down");
        other
            .metadata_mut()
            .insert(PUSHBACK_HEADER, "10".parse().unwrap());
        assert_eq!(retry_after(&other), None);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(3));
        }
    }
}
