#![warn(missing_docs)]
//! vfolderfs: a FUSE filesystem that serves a store of vfolders — users'
//! storage folders with a lifecycle status — as one mount.
//!
//! Layout of the crate:
//! - [`status`]: the status model (statuses, transition table, access sets);
//! - [`name`]: vfolder name rules;
//! - [`store`]: the narrow store interface and its SQLite and PostgreSQL backends;
//! - [`layout`] and [`catalog`]: where a store lives, and lifecycle operations
//!   touching both the database and the data directory;
//! - [`backing`]: fd-based operations on backing directories;
//! - [`fs`]: the FUSE layer; [`daemon`]: running a mount; [`watch_shared`]:
//!   keeping a mount in step with a database shared by many nodes;
//! - [`workers`]: background jobs (the purge pool);
//! - [`sessions`]: attaching vfolders into session containers;
//! - [`fsck`]: checking a store against its volumes;
//! - [`volumes`]: which directories may be data volumes, and volume errors;
//! - [`privacy`]: the modes that keep a store private to its user;
//! - [`metrics`]: Prometheus metrics of a running mount;
//! - [`service`]: the kernel mount, systemd notification and the log file;
//! - [`cli`]: the command line.

pub mod backing;
pub mod catalog;
pub mod cli;
pub mod daemon;
pub mod enforce;
pub mod fs;
pub mod fsck;
pub mod layout;
pub mod metrics;
pub mod mountinfo;
pub mod name;
pub mod privacy;
pub mod service;
pub mod sessions;
pub mod status;
pub mod store;
pub mod tier;
pub mod transport;
pub mod volumes;
pub mod watch_shared;
pub mod workers;
