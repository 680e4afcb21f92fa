//! Fair sharing between devices on one replica, and the register of open streams by device.
//!
//! A device may hold at most `max_streams` streams at once, and its frames are paced to its frame and byte
//! rates, summed over all its streams. Pacing rather than refusal: a gateway catching up after an outage
//! sends as fast as it can, and slowing it down loses nothing, whereas refusing its frames would make it
//! resend them. A paced stream is simply not read until its frame's turn; HTTP/2 flow control then holds the
//! gateway back, and no other device waits for it.
//!
//! The rates are enforced with the generic cell rate algorithm (GCRA, as in ATM and in most API gateways):
//! each device keeps one "theoretical arrival time" per rate, the time by which everything it sent so far
//! would have been sent at exactly that rate. A frame may go on at that time minus the burst allowance.
//!
//! The register also keeps each open stream's token digest, so that a revoked token ends the streams it
//! opened (see [`Devices::end_streams_of`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::settings::DeviceSettings;

/// A token as the register keeps it: its SHA-256 digest, never the secret.
pub type TokenDigest = [u8; 32];

/// All devices with a stream open on this replica (and those that had one: a device's pace outlives its
/// streams, so reconnecting does not refill its burst). Only authenticated devices get an entry, so the
/// table is bounded by the devices registered.
#[derive(Debug)]
pub struct Devices {
    settings: DeviceSettings,
    table: Mutex<HashMap<String, Arc<Device>>>,
}

#[derive(Debug)]
struct Device {
    state: Mutex<DeviceState>,
}

#[derive(Debug)]
struct DeviceState {
    streams: Vec<OpenStream>,
    /// GCRA theoretical arrival time of the frame rate.
    frames_due: Instant,
    /// GCRA theoretical arrival time of the byte rate.
    bytes_due: Instant,
}

#[derive(Debug)]
struct OpenStream {
    id: u64,
    token: TokenDigest,
    end: CancellationToken,
}

/// A new stream was refused because its device holds as many as it may.
#[derive(Debug, thiserror::Error)]
#[error("device {device_id:?} already has {open} streams open on this replica (at most {max})")]
pub struct TooManyStreams {
    pub device_id: String,
    pub open: usize,
    pub max: u32,
}

/// One open stream's place in the register; dropping it closes the place.
#[derive(Debug)]
pub struct StreamSlot {
    device: Arc<Device>,
    id: u64,
    end: CancellationToken,
    frame_interval: Option<Duration>,
    bytes_per_second: Option<f64>,
    burst: Duration,
}

impl Devices {
    pub fn new(settings: DeviceSettings) -> Self {
        Self {
            settings,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a new stream of `device_id`, authenticated by `token`, or refuses it.
    pub fn open(
        &self,
        device_id: &str,
        stream_id: u64,
        token: TokenDigest,
    ) -> Result<StreamSlot, TooManyStreams> {
        let device = Arc::clone(
            lock(&self.table)
                .entry(device_id.to_owned())
                .or_insert_with(|| {
                    let now = Instant::now();
                    Arc::new(Device {
                        state: Mutex::new(DeviceState {
                            streams: Vec::new(),
                            frames_due: now,
                            bytes_due: now,
                        }),
                    })
                }),
        );
        let end = CancellationToken::new();
        {
            let mut state = lock(&device.state);
            if state.streams.len() >= self.settings.max_streams as usize {
                return Err(TooManyStreams {
                    device_id: device_id.to_owned(),
                    open: state.streams.len(),
                    max: self.settings.max_streams,
                });
            }
            state.streams.push(OpenStream {
                id: stream_id,
                token,
                end: end.clone(),
            });
        }
        let per_second = |rate: f64| (rate > 0.0).then_some(rate);
        Ok(StreamSlot {
            device,
            id: stream_id,
            end,
            frame_interval: per_second(f64::from(self.settings.max_frames_per_second))
                .map(|rate| Duration::from_secs_f64(1.0 / rate)),
            #[allow(clippy::cast_precision_loss)]
            bytes_per_second: per_second(self.settings.max_bytes_per_second as f64),
            burst: self.settings.burst,
        })
    }

    /// The distinct tokens of all open streams.
    pub fn open_tokens(&self) -> Vec<TokenDigest> {
        let mut tokens: Vec<TokenDigest> = lock(&self.table)
            .values()
            .flat_map(|device| {
                lock(&device.state)
                    .streams
                    .iter()
                    .map(|s| s.token)
                    .collect::<Vec<_>>()
            })
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
    }

    /// Ends every open stream opened with one of `tokens`; returns how many.
    pub fn end_streams_of(&self, tokens: &[TokenDigest]) -> usize {
        let mut ended = 0;
        for device in lock(&self.table).values() {
            for stream in &lock(&device.state).streams {
                if tokens.contains(&stream.token) && !stream.end.is_cancelled() {
                    stream.end.cancel();
                    ended += 1;
                }
            }
        }
        ended
    }
}

impl StreamSlot {
    /// Cancelled when the stream must end because its token was revoked.
    pub fn revoked(&self) -> &CancellationToken {
        &self.end
    }

    /// Takes a frame of `bytes` from the device's rates and returns when it may go on (`None`: now).
    /// The frame's turn is reserved either way: a frame that then waits is already counted.
    pub fn pace(&self, bytes: usize, now: Instant) -> Option<Instant> {
        if self.frame_interval.is_none() && self.bytes_per_second.is_none() {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let bytes_cost = self
            .bytes_per_second
            .map(|rate| Duration::from_secs_f64(bytes as f64 / rate));
        let mut state = lock(&self.device.state);
        let mut at = now;
        if self.frame_interval.is_some() {
            at = at.max(allowed_at(state.frames_due, self.burst, now));
        }
        if bytes_cost.is_some() {
            at = at.max(allowed_at(state.bytes_due, self.burst, now));
        }
        if let Some(interval) = self.frame_interval {
            state.frames_due = state.frames_due.max(at) + interval;
        }
        if let Some(cost) = bytes_cost {
            state.bytes_due = state.bytes_due.max(at) + cost;
        }
        (at > now).then_some(at)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        lock(&self.device.state)
            .streams
            .retain(|stream| stream.id != self.id);
    }
}

/// GCRA: a cell whose theoretical arrival time is `due` conforms from `due - burst` on.
fn allowed_at(due: Instant, burst: Duration, now: Instant) -> Instant {
    due.checked_sub(burst).map_or(now, |at| at.max(now))
}

/// The register's locks guard plain bookkeeping that a panic cannot leave half-done in a harmful way.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(frames: u32, bytes: u64) -> DeviceSettings {
        DeviceSettings {
            max_streams: 2,
            max_frames_per_second: frames,
            max_bytes_per_second: bytes,
            burst: Duration::from_secs(1),
        }
    }

    /// Sends `n` frames of `bytes` as fast as the pace allows, from `streams` streams in turn, and
    /// returns when the last one went on, measured from the first.
    fn send_paced(slots: &[StreamSlot], n: usize, bytes: usize, start: Instant) -> Duration {
        let mut now = start;
        for i in 0..n {
            if let Some(at) = slots[i % slots.len()].pace(bytes, now) {
                now = at;
            }
        }
        now - start
    }

    #[test]
    fn a_device_is_paced_to_its_frame_rate_after_its_burst_over_all_its_streams() {
        let devices = Devices::new(settings(100, 0));
        let slots = [
            devices.open("d", 1, [1; 32]).expect("first"),
            devices.open("d", 2, [1; 32]).expect("second"),
        ];
        // 1 s of burst = 100 frames (+1) at once, then 10 ms apart: 1,001 frames take 9 s.
        let took = send_paced(&slots, 1_001, 1_000, Instant::now());
        assert!(
            (took.as_secs_f64() - 9.0).abs() < 0.01,
            "1,001 frames at 100/s with a 1 s burst took {took:?}"
        );
    }

    #[test]
    fn the_byte_rate_paces_large_frames_below_the_frame_rate() {
        let devices = Devices::new(settings(1_000, 100_000));
        let slot = devices.open("d", 1, [1; 32]).expect("open");
        // 50 KB frames at 100 KB/s: two a second after the 1 s burst.
        let took = send_paced(std::slice::from_ref(&slot), 23, 50_000, Instant::now());
        assert!(
            (took.as_secs_f64() - 10.0).abs() < 0.01,
            "23 frames of 50 KB at 100 KB/s took {took:?}"
        );
    }

    #[test]
    fn another_device_is_not_paced_by_a_flooding_one() {
        let devices = Devices::new(settings(10, 0));
        let flooder = devices.open("flood", 1, [1; 32]).expect("open");
        let now = Instant::now();
        assert!(
            send_paced(std::slice::from_ref(&flooder), 1_000, 100, now) > Duration::from_secs(90)
        );
        let other = devices.open("calm", 2, [2; 32]).expect("open");
        assert_eq!(other.pace(100, now), None);
    }

    #[test]
    fn without_caps_nothing_waits() {
        let devices = Devices::new(settings(0, 0));
        let slot = devices.open("d", 1, [1; 32]).expect("open");
        let now = Instant::now();
        assert!((0..10_000).all(|_| slot.pace(1 << 20, now).is_none()));
    }

    #[test]
    fn streams_beyond_the_cap_are_refused_until_one_closes() {
        let devices = Devices::new(settings(0, 0));
        let first = devices.open("d", 1, [1; 32]).expect("first");
        let _second = devices.open("d", 2, [1; 32]).expect("second");
        let refused = devices.open("d", 3, [1; 32]).expect_err("third refused");
        assert_eq!((refused.open, refused.max), (2, 2));
        devices
            .open("e", 4, [2; 32])
            .expect("another device is not affected");
        drop(first);
        devices
            .open("d", 5, [1; 32])
            .expect("a closed stream frees its place");
    }

    #[test]
    fn a_revoked_token_ends_exactly_the_streams_it_opened() {
        let devices = Devices::new(settings(0, 0));
        let old = devices.open("d", 1, [1; 32]).expect("open");
        let new = devices.open("d", 2, [2; 32]).expect("open");
        assert_eq!(devices.open_tokens(), vec![[1; 32], [2; 32]]);
        assert_eq!(devices.end_streams_of(&[[1; 32]]), 1);
        assert!(old.revoked().is_cancelled());
        assert!(!new.revoked().is_cancelled());
        drop(old);
        assert_eq!(devices.open_tokens(), vec![[2; 32]]);
    }
}
