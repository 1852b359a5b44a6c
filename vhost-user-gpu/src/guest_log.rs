//! The one rate limiter for log lines a guest can cause.
//!
//! A guest decides how often the device refuses its commands, how often a queue chain is
//! malformed, how often a display sink drops one of its frames, how many image requirements a
//! single `SUBMIT_3D` asks for. Logging each of those at the default level would let it fill
//! the host's log (one 1 MiB `SUBMIT_3D` once produced 43,000 lines). Every line a guest can
//! trigger therefore goes through [`GuestLog`] (with [`guest_warn!`] or [`guest_info!`]):
//! - at most [`BURST`] of them per [`WINDOW`] are logged at their own level;
//! - the rest of the window goes to `debug!` (shown with `-v`), and the first line logged in a
//!   later window is preceded by one warning that says how many were held back.
//!
//! So at the default level a guest causes at most `BURST + 1` lines per window, whatever it
//! sends and on however many queues, connections or display sinks (the limiter is one per
//! process). Lines of a level the logger does not show cost nothing from the burst. Host-side
//! failures that a guest cannot repeat at will (a lost display channel, a failed start-up
//! step) are logged directly.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::Level;

/// Length of one rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Guest-caused lines logged at their own level per [`WINDOW`].
pub const BURST: u32 = 50;

/// What [`GuestLog::admit`] decided for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it at its level; `held_back` lines of earlier windows were not (report them first).
    Log {
        /// Lines held back since the last report.
        held_back: u64,
    },
    /// The window's burst is used up: log it at debug level only.
    HoldBack,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    held_back: u64,
}

/// A window-based limiter of guest-caused log lines (see the module documentation).
#[derive(Debug)]
pub struct GuestLog {
    state: Mutex<State>,
}

impl Default for GuestLog {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestLog {
    /// A limiter whose first window starts with its first line.
    pub const fn new() -> Self {
        GuestLog {
            state: Mutex::new(State {
                window_start: None,
                logged: 0,
                held_back: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is three counters replaced in place: a panic elsewhere while the lock was
        // held cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether a line arriving at `now` may be logged at its own level.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut s = self.state();
        let expired = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            s.window_start = Some(now);
            s.logged = 0;
        }
        if s.logged < BURST {
            s.logged += 1;
            Admit::Log {
                held_back: std::mem::take(&mut s.held_back),
            }
        } else {
            s.held_back = s.held_back.saturating_add(1);
            Admit::HoldBack
        }
    }

    /// Logs one guest-caused line at `level` under `target` (the calling module), or at
    /// debug level when the window's burst is used up. Lines the logger would not show at
    /// `level` do not count.
    pub fn log(&self, target: &str, level: Level, args: fmt::Arguments<'_>) {
        if !log::log_enabled!(target: target, level) {
            log::log!(target: target, Level::Debug, "{args}");
            return;
        }
        match self.admit(Instant::now()) {
            Admit::Log { held_back } => {
                if held_back > 0 {
                    log::warn!(
                        target: target,
                        "{held_back} more guest-caused log lines were held back (logged at \
                         debug level, shown with -v): at most {BURST} per {}s",
                        WINDOW.as_secs()
                    );
                }
                log::log!(target: target, level, "{args}");
            }
            Admit::HoldBack => log::log!(target: target, Level::Debug, "{args}"),
        }
    }
}

/// The process's limiter: every guest-caused line goes through it.
pub static GUEST_LOG: GuestLog = GuestLog::new();

/// Logs a guest-caused warning through [`GUEST_LOG`] (same arguments as `log::warn!`).
macro_rules! guest_warn {
    ($($arg:tt)+) => {
        $crate::guest_log::GUEST_LOG.log(
            module_path!(),
            ::log::Level::Warn,
            format_args!($($arg)+),
        )
    };
}
pub(crate) use guest_warn;

/// Logs a guest-caused informational line through [`GUEST_LOG`].
macro_rules! guest_info {
    ($($arg:tt)+) => {
        $crate::guest_log::GUEST_LOG.log(
            module_path!(),
            ::log::Level::Info,
            format_args!($($arg)+),
        )
    };
}
pub(crate) use guest_info;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_the_burst_then_one_report_per_window() {
        let limiter = GuestLog::new();
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            if matches!(limiter.admit(now), Admit::Log { .. }) {
                logged += 1;
            }
        }
        assert_eq!(logged, BURST);
        // The next window: the first line carries the count of what was held back.
        assert_eq!(
            limiter.admit(t0 + WINDOW + Duration::from_millis(1)),
            Admit::Log {
                held_back: 10_000 - u64::from(BURST)
            }
        );
        assert_eq!(
            limiter.admit(t0 + WINDOW + Duration::from_millis(2)),
            Admit::Log { held_back: 0 }
        );
    }

    #[test]
    fn lines_per_window_never_exceed_the_burst() {
        // A steady guest, one line every millisecond for a minute: each 10 s window logs
        // BURST lines, whatever the rate.
        let limiter = GuestLog::new();
        let t0 = Instant::now();
        let mut per_window = [0u32; 6];
        for ms in 0..60_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if matches!(limiter.admit(now), Admit::Log { .. }) {
                per_window[(ms / 10_000) as usize] += 1;
            }
        }
        assert_eq!(per_window, [BURST; 6]);
    }
}
