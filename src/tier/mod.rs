//! Tiering: vfolders move between fast and capacity volumes by how they
//! are used. Volumes carry a tier and watermarks ([`crate::store::VolumeTier`]);
//! every mount adds what it counted per vfolder to the store in batches
//! ([`usage`]); a [`policy`] says when a vfolder is idle, hot, or the
//! coldest on a fast volume above its high watermark; [`plan`] decides,
//! from one read of the store, which vfolders move where and why; and
//! [`run`] starts those moves as ordinary relocation jobs (bounded
//! concurrency, each recorded in history with its cause), from the CLI or
//! from a mount every interval. Moving itself is the relocation job's
//! ([`crate::workers::relocate`]): nothing here copies data.

pub mod plan;
pub mod policy;
pub mod run;
pub mod usage;

use std::fmt;
use std::str::FromStr;

use crate::store::Millis;

/// A volume's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Small and fast (NVMe, a flash pool): where hot vfolders live.
    Fast,
    /// Large and slow (HDD, an object-backed filesystem): where idle ones go.
    Capacity,
}

impl Tier {
    /// Its stored and printed form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Capacity => "capacity",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Tier, String> {
        match s {
            "fast" => Ok(Tier::Fast),
            "capacity" => Ok(Tier::Capacity),
            _ => Err(format!("unknown tier {s:?} (fast or capacity)")),
        }
    }
}

/// A day, in milliseconds.
pub const DAY_MS: Millis = 86_400_000;

/// The UTC day (days since the Unix epoch) of a time.
pub fn day_of(at: Millis) -> i64 {
    at.div_euclid(DAY_MS)
}

/// The environment variable that sets "now" for tiering (planning and the
/// day usage is counted on). **For tests only**: milliseconds since the
/// Unix epoch or an RFC 3339 time. Nothing else reads it.
pub const TEST_NOW_ENV: &str = "VFOLDERFS_TEST_NOW";

/// Now, for tiering: the wall clock, unless [`TEST_NOW_ENV`] sets it.
pub fn now() -> Millis {
    if let Ok(v) = std::env::var(TEST_NOW_ENV) {
        if let Ok(ms) = v.trim().parse::<Millis>() {
            return ms;
        }
        if let Ok(t) = humantime::parse_rfc3339_weak(v.trim())
            && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
        {
            return d.as_millis() as Millis;
        }
        log::warn!("{TEST_NOW_ENV}={v:?} is neither milliseconds nor an RFC 3339 time; ignored");
    }
    crate::store::sqlite::now_millis()
}

/// Store setting: the policy automatic passes use (TOML, as `--policy`).
pub const SETTING_POLICY: &str = "tier_policy";
/// Store setting: seconds between automatic passes (absent: off).
pub const SETTING_EVERY: &str = "tier_every_secs";
/// Store setting: when the last automatic pass began (ms); the
/// compare-and-set on it elects the one mount that makes a pass.
pub const SETTING_LAST_PASS: &str = "tier_last_pass";
