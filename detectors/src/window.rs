//! Event-time tumbling windows and watermarks.
//!
//! A window is identified by its `window_start`, the event time (ms since the
//! epoch) rounded down to a multiple of the window size, so every consumer
//! instance assigns an event to the same window without coordination.
//!
//! The [`EventTimeClock`] tracks the largest event time seen. Its watermark is
//! that time minus the allowed lateness: a window `[start, start + size)` is
//! *closed* once the watermark reaches `start + size`, and an event for a
//! closed window is *late*. Late events are not added to any window; the
//! caller counts them (`tidewatch_events_dropped_total{reason="late"}`).
//! Only events move a clock: nothing else (a pause, an idle close) can make
//! a later event late.

use crate::Error;

/// A validated window size (strictly positive milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowSize {
    millis: i64,
}

impl WindowSize {
    /// Validates a size in milliseconds.
    pub fn from_millis(millis: i64) -> Result<Self, Error> {
        if millis <= 0 {
            return Err(Error::InvalidWindowSize(millis));
        }
        Ok(Self { millis })
    }

    /// The size in milliseconds.
    pub fn millis(self) -> i64 {
        self.millis
    }

    /// The start of the window holding `timestamp_ms` (works for times before
    /// the epoch too).
    pub fn window_start(self, timestamp_ms: i64) -> i64 {
        timestamp_ms.div_euclid(self.millis) * self.millis
    }

    /// The exclusive end of the window starting at `window_start`.
    pub fn window_end(self, window_start: i64) -> i64 {
        window_start.saturating_add(self.millis)
    }
}

/// What the clock says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The event's window is still open.
    OnTime {
        /// Start of the event's window.
        window_start: i64,
    },
    /// The event's window had already closed when it arrived.
    Late {
        /// Start of the (closed) window it belonged to.
        window_start: i64,
    },
}

/// Tracks event time for one stream (one Kafka partition, or one replayed
/// file) and decides which windows are closed.
#[derive(Debug, Clone)]
pub struct EventTimeClock {
    window_size: WindowSize,
    allowed_lateness_ms: i64,
    /// Largest event time seen so far; `None` before the first event.
    max_event_time: Option<i64>,
}

impl EventTimeClock {
    /// A clock with no events seen yet.
    pub fn new(window_size: WindowSize, allowed_lateness_ms: i64) -> Self {
        Self {
            window_size,
            allowed_lateness_ms: allowed_lateness_ms.max(0),
            max_event_time: None,
        }
    }

    /// The window size this clock assigns with.
    pub fn window_size(&self) -> WindowSize {
        self.window_size
    }

    /// Event time minus allowed lateness; `None` before the first event.
    pub fn watermark(&self) -> Option<i64> {
        self.max_event_time
            .map(|time| time.saturating_sub(self.allowed_lateness_ms))
    }

    /// True when the window starting at `window_start` can no longer receive events.
    pub fn is_closed(&self, window_start: i64) -> bool {
        match self.watermark() {
            Some(watermark) => watermark >= self.window_size.window_end(window_start),
            None => false,
        }
    }

    /// Classifies an event and advances the clock.
    pub fn observe(&mut self, timestamp_ms: i64) -> Arrival {
        let window_start = self.window_size.window_start(timestamp_ms);
        if self.is_closed(window_start) {
            return Arrival::Late { window_start };
        }
        self.max_event_time = Some(match self.max_event_time {
            Some(current) => current.max(timestamp_ms),
            None => timestamp_ms,
        });
        Arrival::OnTime { window_start }
    }

    /// Largest event time seen; `None` before the first event.
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_start_is_aligned_and_handles_negative_times() {
        let size = WindowSize::from_millis(60_000).unwrap();
        assert_eq!(size.window_start(0), 0);
        assert_eq!(size.window_start(59_999), 0);
        assert_eq!(size.window_start(60_000), 60_000);
        assert_eq!(size.window_start(-1), -60_000);
        assert_eq!(size.window_end(60_000), 120_000);
        assert!(WindowSize::from_millis(0).is_err());
        assert!(WindowSize::from_millis(-5).is_err());
    }

    #[test]
    fn events_are_late_only_after_the_watermark_passes_their_window() {
        let size = WindowSize::from_millis(1_000).unwrap();
        let mut clock = EventTimeClock::new(size, 500);
        assert_eq!(clock.watermark(), None);
        assert_eq!(
            clock.observe(1_200),
            Arrival::OnTime {
                window_start: 1_000
            }
        );
        // Watermark 700: window [0, 1000) still open.
        assert_eq!(clock.observe(100), Arrival::OnTime { window_start: 0 });
        assert_eq!(
            clock.observe(2_400),
            Arrival::OnTime {
                window_start: 2_000
            }
        );
        // Watermark 1900: window [0, 1000) closed, [1000, 2000) open.
        assert!(clock.is_closed(0));
        assert!(!clock.is_closed(1_000));
        assert_eq!(clock.observe(999), Arrival::Late { window_start: 0 });
        assert_eq!(
            clock.observe(1_999),
            Arrival::OnTime {
                window_start: 1_000
            }
        );
        // A late event does not move the clock backwards or forwards.
        assert_eq!(clock.watermark(), Some(1_900));
    }
}
