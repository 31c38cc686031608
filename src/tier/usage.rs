//! A mount's usage flush: the request path only adds to per-vfolder atomic
//! counters ([`crate::fs::vfolders::VfState`]); every few seconds the
//! mount's janitor sends what was added since the last successful flush to
//! the store in one batch ([`crate::store::Store::record_usage`]), where it
//! is added to the day's totals. What a failed flush did not send is sent
//! with the next one.

use std::collections::HashMap;

use crate::store::{Millis, Result, Store, UsageDelta};

/// One vfolder's counters as read from the mount (totals since it started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The vfolder.
    pub id: String,
    /// Files opened.
    pub opens: u64,
    /// Bytes read through the daemon.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

/// What one mount has sent so far, per vfolder.
#[derive(Debug, Default)]
pub struct Flusher {
    sent: HashMap<String, (u64, u64, u64)>,
}

impl Flusher {
    /// A flusher that has sent nothing.
    pub fn new() -> Flusher {
        Flusher::default()
    }

    /// The deltas of `counted` against what was sent, stamped `now`
    /// (counters that went backwards, a vfolder's state made anew, count
    /// from zero).
    pub fn deltas(&self, counted: &[Counted], now: Millis) -> Vec<UsageDelta> {
        let day = super::day_of(now);
        counted
            .iter()
            .filter_map(|c| {
                let (o, r, w) = self.sent.get(&c.id).copied().unwrap_or_default();
                let d = |cur: u64, prev: u64| if cur >= prev { cur - prev } else { cur };
                let delta = UsageDelta {
                    vfolder_id: c.id.clone(),
                    day,
                    opens: d(c.opens, o),
                    bytes_read: d(c.bytes_read, r),
                    bytes_written: d(c.bytes_written, w),
                    at: now,
                };
                (delta.opens > 0 || delta.bytes_read > 0 || delta.bytes_written > 0)
                    .then_some(delta)
            })
            .collect()
    }

    /// Sends what was counted since the last successful flush, in one
    /// batch; returns how many vfolders it covered. Nothing is marked sent
    /// unless the store took it.
    pub fn flush(&mut self, store: &dyn Store, counted: &[Counted], now: Millis) -> Result<usize> {
        let batch = self.deltas(counted, now);
        if !batch.is_empty() {
            store.record_usage(&batch)?;
        }
        self.sent = counted
            .iter()
            .map(|c| (c.id.clone(), (c.opens, c.bytes_read, c.bytes_written)))
            .collect();
        Ok(batch.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, o: u64, r: u64, w: u64) -> Counted {
        Counted {
            id: id.into(),
            opens: o,
            bytes_read: r,
            bytes_written: w,
        }
    }

    #[test]
    fn deltas_since_last_flush() {
        let mut f = Flusher::new();
        let now = 10 * super::super::DAY_MS + 5;
        let d = f.deltas(&[c("a", 3, 10, 0)], now);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].day, d[0].opens, d[0].bytes_read), (10, 3, 10));
        f.sent.insert("a".into(), (3, 10, 0));
        assert!(f.deltas(&[c("a", 3, 10, 0)], now).is_empty());
        let d = f.deltas(&[c("a", 5, 10, 7)], now);
        assert_eq!((d[0].opens, d[0].bytes_read, d[0].bytes_written), (2, 0, 7));
        // A counter made anew counts from zero.
        let d = f.deltas(&[c("a", 1, 0, 0)], now);
        assert_eq!(d[0].opens, 1);
    }
}
