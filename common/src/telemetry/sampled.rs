//! Log lines an anonymous peer can cause, at a bounded rate: the first few in each
//! window are written, the rest only counted, and the next line written says how many
//! were left out. The metric beside each such line counts every occurrence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines written per window.
const PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);

/// One kind of line's budget (a `static` beside the line).
pub struct Sampled {
    /// Start of the window, lines written in it, lines left out since the last written.
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl Default for Sampled {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampled {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(left_out)` when this line may be written (with how many were left out
    /// before it), `None` when it is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, written, left_out) = &mut *state;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= WINDOW) {
            *start = Some(now);
            *written = 0;
        }
        if *written >= PER_WINDOW {
            *left_out = left_out.saturating_add(1);
            return None;
        }
        *written += 1;
        Some(std::mem::take(left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_few_lines_per_window_and_says_how_many_it_left_out() {
        let s = Sampled::new();
        let t0 = Instant::now();
        let written = (0..10_000).filter(|_| s.admit_at(t0).is_some()).count();
        assert_eq!(written, PER_WINDOW as usize);
        assert_eq!(
            s.admit_at(t0 + WINDOW),
            Some(10_000 - u64::from(PER_WINDOW))
        );
        assert_eq!(s.admit_at(t0 + WINDOW), Some(0));
    }
}
