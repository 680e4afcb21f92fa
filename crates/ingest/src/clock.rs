//! A gateway's clock, as its frames show it. Each frame may carry `sent_at`, the gateway's time when its
//! transport took the frame; against ingest's own clock on arrival that is the gateway's clock offset,
//! minus the one-way delay (network, and HTTP/2 flow control while ingest is not reading), so a clock that
//! seems behind by less than the tolerance may be a slow link; one ahead never is. `captured_at` cannot show it: a frame buffered through an outage is old,
//! not skewed. A skewed clock misplaces every frame on the operators' time axis, so it is flagged — counted,
//! and logged with the device and the offset — but never rejects a frame: deduplication and ordering use
//! sequence numbers, not clocks.

use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use crate::metrics as m;

/// How often one stream may repeat its warning.
const WARN_EVERY: Duration = Duration::from_secs(600);

/// One stream's view of its gateway's clock.
#[derive(Debug)]
pub struct ClockWatch {
    /// Offsets up to this (either way) are network delay and ordinary drift.
    tolerance: Duration,
    last_warning: Option<Instant>,
}

impl ClockWatch {
    pub fn new(tolerance: Duration) -> Self {
        Self {
            tolerance,
            last_warning: None,
        }
    }

    /// Records one frame's `sent_at` against `now`; returns the offset in seconds (positive: the gateway
    /// is ahead) when it is beyond the tolerance.
    pub fn observe(&mut self, device: &str, sent_at: SystemTime, now: SystemTime) -> Option<f64> {
        let offset = match sent_at.duration_since(now) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        };
        metrics::histogram!(m::CLOCK_OFFSET_SECONDS).record(offset.abs());
        if offset.abs() <= self.tolerance.as_secs_f64() {
            return None;
        }
        metrics::counter!(m::CLOCK_SKEWED_FRAMES_TOTAL).increment(1);
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            self.last_warning = Some(Instant::now());
            warn!(
                device,
                offset_s = offset,
                "the gateway's clock is {:.1} s {} ingest's (tolerance {:?}): its frames' capture times are \
                 off by as much; fix its time synchronisation (NTP)",
                offset.abs(),
                if offset > 0.0 { "ahead of" } else { "behind" },
                self.tolerance
            );
        }
        Some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_offsets_beyond_the_tolerance_either_way() {
        let mut watch = ClockWatch::new(Duration::from_secs(5));
        let now = SystemTime::now();
        assert_eq!(watch.observe("d", now - Duration::from_secs(1), now), None);
        assert_eq!(watch.observe("d", now + Duration::from_secs(4), now), None);
        let ahead = watch.observe("d", now + Duration::from_secs(120), now);
        assert!(ahead.is_some_and(|s| (s - 120.0).abs() < 1e-6), "{ahead:?}");
        let behind = watch.observe("d", now - Duration::from_secs(90), now);
        assert!(
            behind.is_some_and(|s| (s + 90.0).abs() < 1e-6),
            "{behind:?}"
        );
    }
}
