//! Progress of a long job shown by the CLI: an indicatif bar with totals,
//! percent, rate and ETA when stderr is a terminal; plain lines every few
//! seconds ([`INTERVAL_ENV`]) when it is not; and one final line with the
//! entries, bytes and time.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::human_bytes;
use crate::backing::copy::CopyStats;

/// Environment variable setting how often a plain progress line is printed
/// when stderr is not a terminal (a duration such as `500ms`; default 5 s).
pub const INTERVAL_ENV: &str = "VFOLDERFS_PROGRESS_INTERVAL";

/// What progress is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// Bytes copied (clone, relocation).
    Bytes,
    /// Entries handled (purge).
    Entries,
}

/// One job's progress display.
pub(super) struct Progress {
    what: String,
    unit: Unit,
    total: Option<CopyStats>,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    every: Duration,
    last: CopyStats,
}

fn interval() -> Duration {
    std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(5))
}

impl Progress {
    /// A display for `what` ("cloning \"a\" into \"b\""), measured in
    /// `unit` against `total` when it was counted.
    pub(super) fn new(what: String, unit: Unit, total: Option<CopyStats>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let len = total.map(|t| match unit {
                Unit::Bytes => t.bytes,
                Unit::Entries => t.entries,
            });
            let bar = match len {
                Some(l) => ProgressBar::with_draw_target(Some(l), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match (unit, len.is_some()) {
                (Unit::Bytes, true) => {
                    "{prefix} [{bar:30}] {percent:>3}% {binary_bytes}/{binary_total_bytes} \
                     {msg} {binary_bytes_per_sec} ETA {eta}"
                }
                (Unit::Bytes, false) => {
                    "{prefix} {spinner} {binary_bytes} {msg} {binary_bytes_per_sec}"
                }
                (Unit::Entries, true) => {
                    "{prefix} [{bar:30}] {percent:>3}% {human_pos}/{human_len} entries \
                     {per_sec} ETA {eta}"
                }
                (Unit::Entries, false) => "{prefix} {spinner} {human_pos} entries {per_sec}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(what.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what,
            unit,
            total,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
            every: interval(),
            last: CopyStats::default(),
        }
    }

    /// The totals, counted before the job began.
    pub(super) fn total(&self) -> Option<CopyStats> {
        self.total
    }

    /// The work done so far.
    pub(super) fn update(&mut self, s: &CopyStats) {
        self.last = *s;
        if let Some(bar) = &self.bar {
            match self.unit {
                Unit::Bytes => {
                    bar.set_position(s.bytes);
                    let of = self
                        .total
                        .map(|t| format!("/{}", t.entries))
                        .unwrap_or_default();
                    bar.set_message(format!("({}{of} entries)", s.entries));
                }
                Unit::Entries => bar.set_position(s.entries),
            }
        } else if self.last_line.elapsed() >= self.every {
            self.last_line = Instant::now();
            eprintln!("{}: {}", self.what, self.line(s));
        }
    }

    /// A plain progress line: done of total, percent, rate and ETA.
    fn line(&self, s: &CopyStats) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let (done, total) = match self.unit {
            Unit::Bytes => (s.bytes, self.total.map(|t| t.bytes)),
            Unit::Entries => (s.entries, self.total.map(|t| t.entries)),
        };
        let rate = done as f64 / secs;
        let mut out = match self.total {
            Some(t) if self.unit == Unit::Entries => format!("{}/{} entries", s.entries, t.entries),
            None if self.unit == Unit::Entries => format!("{} entries", s.entries),
            Some(t) => format!(
                "{}/{} entries, {}/{}",
                s.entries,
                t.entries,
                human_bytes(s.bytes),
                human_bytes(t.bytes)
            ),
            None => format!("{} entries, {}", s.entries, human_bytes(s.bytes)),
        };
        if let Some(total) = total.filter(|&t| t > 0) {
            out += &format!(" ({:.0}%)", (done as f64 * 100.0 / total as f64).min(100.0));
        }
        out += &match self.unit {
            Unit::Bytes => format!(", {}/s", human_bytes(rate as u64)),
            Unit::Entries => format!(", {rate:.0} entries/s"),
        };
        if let Some(total) = total
            && rate > 0.0
            && total > done
        {
            out += &format!(", ETA {:.0}s", (total - done) as f64 / rate);
        }
        out
    }

    /// The last progress seen.
    pub(super) fn last(&self) -> CopyStats {
        self.last
    }

    /// Ends the display with one line: `what: how: N entries, SIZE (B
    /// bytes) in T s`.
    pub(super) fn finish(&mut self, how: &str, s: &CopyStats) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}: {how}: {} entries, {} ({} bytes) in {:.1}s",
            self.what,
            s.entries,
            human_bytes(s.bytes),
            s.bytes,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Ends the display without a line (the caller reports the end).
    pub(super) fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
