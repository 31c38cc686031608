//! How the daemon fits the system around it: the kernel mount with its
//! `fuse.vfolderfs` type ([`kmount`]), readiness notification to systemd
//! ([`notify`]) and the log destination ([`log`]).

pub mod kmount;
pub mod log;
pub mod notify;
