//! The tiering policy: a small TOML document (`--policy FILE`, or the one
//! stored for automatic passes), every key optional:
//!
//! ```toml
//! demote_after = "30d"          # not opened this long on a fast volume: to capacity ("off": never)
//! promote_opens_per_day = 100   # opened more than this on one day (today or yesterday,
//!                               # UTC) on a capacity volume: to fast (0: never)
//! high_watermark = 90           # percent used of a fast volume's filesystem above which
//! low_watermark = 75            # the coldest vfolders leave it, down to this (a volume's
//!                               # own `volume set --high-watermark` wins)
//! max_concurrent = 2            # relocations running at once (the pass starts no more)
//! ```
//!
//! Unknown keys, wrong types and inconsistent values are refused with a
//! message naming the key; nothing is changed then.

use std::time::Duration;

use serde::Deserialize;

/// The policy as written (every key optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// A duration (`30d`, `12h`) or `off`.
    pub demote_after: Option<String>,
    /// Opens on one day above which a vfolder is promoted; 0: never.
    pub promote_opens_per_day: Option<u64>,
    /// Percent of a fast volume's filesystem.
    pub high_watermark: Option<u8>,
    /// Percent of a fast volume's filesystem.
    pub low_watermark: Option<u8>,
    /// Relocations running at once.
    pub max_concurrent: Option<usize>,
}

/// The policy in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Idle this long on a fast volume: demoted (`None`: never).
    pub demote_after: Option<Duration>,
    /// Opened more than this on one day on a capacity volume: promoted (0: never).
    pub promote_opens_per_day: u64,
    /// High watermark (percent) of fast volumes that set none.
    pub high_watermark: u8,
    /// Low watermark (percent) of fast volumes that set none.
    pub low_watermark: u8,
    /// Relocations running at once, at most.
    pub max_concurrent: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            demote_after: Some(Duration::from_secs(30 * 86400)),
            promote_opens_per_day: 100,
            high_watermark: 90,
            low_watermark: 75,
            max_concurrent: 2,
        }
    }
}

/// Parses `demote_after`: a duration of at least a minute, or `off`.
pub fn parse_demote_after(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "off" | "never" => Ok(None),
        t => match humantime::parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(60) => Ok(Some(d)),
            Ok(_) => Err(format!("demote_after {s:?} is shorter than a minute")),
            Err(e) => Err(format!(
                "bad demote_after {s:?}: {e} (a duration like 30d, or off)"
            )),
        },
    }
}

impl Policy {
    /// The policy `f` states over `self` (keys it leaves out keep their
    /// value here), checked as a whole.
    pub fn with(&self, f: &PolicyFile) -> Result<Policy, String> {
        let mut p = self.clone();
        if let Some(d) = &f.demote_after {
            p.demote_after = parse_demote_after(d)?;
        }
        if let Some(k) = f.promote_opens_per_day {
            p.promote_opens_per_day = k;
        }
        if let Some(h) = f.high_watermark {
            p.high_watermark = h;
        }
        if let Some(l) = f.low_watermark {
            p.low_watermark = l;
        }
        if let Some(m) = f.max_concurrent {
            p.max_concurrent = m;
        }
        p.check()?;
        Ok(p)
    }

    /// Refuses inconsistent values.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.high_watermark) {
            return Err(format!(
                "high_watermark {} is not a percentage from 1 to 100",
                self.high_watermark
            ));
        }
        if self.low_watermark >= self.high_watermark {
            return Err(format!(
                "low_watermark {} must be below high_watermark {}",
                self.low_watermark, self.high_watermark
            ));
        }
        if !(1..=64).contains(&self.max_concurrent) {
            return Err(format!(
                "max_concurrent {} is not from 1 to 64",
                self.max_concurrent
            ));
        }
        Ok(())
    }

    /// Parses a policy document over the defaults.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let f: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Policy::default().with(&f)
    }

    /// The policy as a TOML document that [`Policy::parse`] reads back the same.
    pub fn to_toml(&self) -> String {
        format!(
            "demote_after = {:?}\npromote_opens_per_day = {}\nhigh_watermark = {}\n\
             low_watermark = {}\nmax_concurrent = {}\n",
            self.demote_after.map_or_else(
                || "off".to_string(),
                |d| humantime::format_duration(d).to_string()
            ),
            self.promote_opens_per_day,
            self.high_watermark,
            self.low_watermark,
            self.max_concurrent
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let p = Policy::parse("demote_after = \"7d\"\npromote_opens_per_day = 5\n").unwrap();
        assert_eq!(p.demote_after, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(p.promote_opens_per_day, 5);
        assert_eq!(p.high_watermark, 90);
        assert_eq!(Policy::parse(&p.to_toml()).unwrap(), p);
        let off = Policy::parse("demote_after = \"off\"").unwrap();
        assert_eq!(Policy::parse(&off.to_toml()).unwrap(), off);
    }

    #[test]
    fn refuses_bad_input() {
        for (text, says) in [
            ("demote_afterr = \"7d\"", "demote_afterr"),
            ("demote_after = 7", "demote_after"),
            ("demote_after = \"soon\"", "demote_after"),
            ("high_watermark = 101", "high_watermark"),
            ("high_watermark = 300", "high_watermark"),
            ("low_watermark = 95", "low_watermark"),
            ("max_concurrent = 0", "max_concurrent"),
            ("promote_opens_per_day = -1", "promote_opens_per_day"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
