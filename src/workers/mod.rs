//! Background workers: the purge pool, and the identity with which a
//! process claims jobs in the store so that others can tell whether it lives.

pub mod purge;

use std::time::Duration;

/// How long a claim holds without renewal.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a running job renews its claim and records progress.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the parenthesised command name.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19).map(str::to_string)
}

/// This process's owner identity: `host:pid:start-time`.
pub fn this_owner() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}",
        hostname(),
        start_time(pid).unwrap_or_else(|| "0".into())
    )
}

/// Whether the owner of a claim is known to be gone: it ran on this host
/// and its process no longer exists (or is another process with its pid).
/// Owners on other hosts are judged by their lease alone.
pub fn owner_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    start_time(pid).as_deref() != Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_gone_one_is_not() {
        let me = this_owner();
        assert!(!owner_dead(&me));
        let host = hostname();
        assert!(owner_dead(&format!("{host}:4194304:1")));
        assert!(owner_dead(&format!("{host}:{}:1", std::process::id())));
        assert!(!owner_dead("some-other-host:1:1"));
    }
}
