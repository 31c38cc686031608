//! How requests reach the filesystem. fuser's session loops read
//! /dev/fuse; [`uring`] adds FUSE over io_uring (`-o io_uring`), with one
//! ring per CPU queue, beside them: INIT, interrupts, forgets and
//! notifications stay on /dev/fuse.

pub mod uring;
