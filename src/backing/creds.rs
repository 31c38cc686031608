//! Acting as the calling user: per-thread filesystem uid/gid for operations
//! that create inodes, so new files belong to the caller and quota is charged
//! to them, never to the daemon.
//!
//! The kernel has already checked the caller's permissions with its full
//! credentials (`default_permissions`), so after switching the fsuid the
//! thread keeps `CAP_DAC_OVERRIDE`/`CAP_DAC_READ_SEARCH`: a directory writable
//! through one of the caller's supplementary groups must not fail here.

use std::io;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

fn raise_dac_caps() -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data slots as capget(2) requires.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let want = (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH);
    data[0].effective |= want & data[0].permitted;
    // SAFETY: as above; only this thread's effective set changes.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_fs_ids(uid: u32, gid: u32) {
    // SAFETY: setfsuid/setfsgid only change this thread's fs ids; they
    // cannot fail in a way that leaves memory unsafe.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
}

/// While alive, the current thread creates files as another user.
pub struct AsCaller {
    switched: bool,
}

impl AsCaller {
    /// Switches this thread's fsuid/fsgid to the caller's (a no-op for root,
    /// or when the daemon itself is not root).
    pub fn enter(uid: u32, gid: u32) -> io::Result<AsCaller> {
        static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // SAFETY: geteuid has no preconditions.
        let root = *ROOT.get_or_init(|| unsafe { libc::geteuid() } == 0);
        if !root || (uid == 0 && gid == 0) {
            return Ok(AsCaller { switched: false });
        }
        set_fs_ids(uid, gid);
        let guard = AsCaller { switched: true };
        raise_dac_caps()?;
        Ok(guard)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        if self.switched {
            // Going back to fsuid 0 restores the filesystem capabilities.
            set_fs_ids(0, 0);
        }
    }
}
