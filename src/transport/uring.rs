//! FUSE over io_uring (kernel 6.14+, protocol 7.42), opt-in with
//! `-o io_uring`.
//!
//! The mount asks for `FUSE_OVER_IO_URING` at INIT ([`Negotiation`]); the
//! kernel grants it only when `/sys/module/fuse/parameters/enable_uring` is
//! on, and otherwise the mount serves on /dev/fuse as before, saying so in
//! one log line. When granted, [`serve`] runs beside fuser's /dev/fuse
//! loops (which keep INIT, INTERRUPT, FORGET and whatever arrives before the
//! ring is ready): one queue per possible CPU, as the kernel expects (it uses
//! the rings only once every queue has registered an entry), each of
//! [`QUEUE_DEPTH`] entries served by a thread of its own pinned to that CPU,
//! so that a request is answered on the CPU that made it without a
//! cross-CPU wake-up, and a request stuck in a backing call holds only its
//! own entry (see [`Slot`]).
//!
//! Each ring entry is a pair of buffers the kernel fills with a request:
//! `struct fuse_uring_req_header` (the `fuse_in_header`, the operation's
//! struct, the commit id and payload size) and the payload (names, write
//! data). The request is put back together as /dev/fuse would have given it
//! and dispatched through fuser's [`Dispatcher`]; the reply goes back into
//! the same entry (`fuse_out_header` in the header, the arguments in the
//! payload) with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also waits for
//! the entry's next request. A reply made on another thread (the blocking
//! pool) is written into the entry there and committed by the entry's own
//! thread: only that thread ever submits its entry's commands.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use fuser::{Dispatcher, Filesystem, InitFlags, KernelConfig, ReplySink};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use log::{error, info, warn};
use parking_lot::Mutex;

/// `FUSE_IO_URING_CMD_REGISTER`: give the kernel an entry's buffers.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: reply, and wait for the next request.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;

/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, then
/// `struct fuse_uring_ent_in_out` (flags, commit_id, payload_sz, padding,
/// reserved).
const IN_OUT: usize = 0;
const OP_IN: usize = 128;
const OP_IN_SIZE: usize = 128;
const COMMIT_ID: usize = 256 + 8;
const PAYLOAD_SZ: usize = 256 + 16;
const HEADER_SIZE: usize = 256 + 32;
/// `sizeof(struct fuse_in_header)` and `sizeof(struct fuse_out_header)`.
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

/// Entries per queue, each served by a thread of its own (see [`Slot`]):
/// requests of one CPU that may be served at once, including requests
/// stuck in a backing call (a frozen volume) or handed to the blocking pool.
pub const QUEUE_DEPTH: usize = 8;
/// An entry's payload buffer, at least. The kernel refuses one smaller than
/// `max(max_write, max_pages * PAGE_SIZE)`: the mount's `max_write` is 1 MiB
/// (`fs::dispatch`, `init`) and `max_pages` at most the fuse module's
/// `max_pages_limit` (256 pages by default); see [`payload_size`].
pub const PAYLOAD: usize = 1 << 20;

/// The payload buffer each entry gets: [`PAYLOAD`], or more when the fuse
/// module's `max_pages_limit` was raised (the mapping is only touched as far
/// as requests fill it).
pub fn payload_size() -> usize {
    let pages: usize = std::fs::read_to_string("/sys/module/fuse/parameters/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    PAYLOAD.max(pages.min(1 << 16) * page)
}

/// The transport a mount asked for and what INIT granted.
#[derive(Default)]
pub struct Negotiation {
    granted: AtomicBool,
    /// The rings, made before INIT is answered: once the kernel granted
    /// io_uring it holds every new request until all queues registered, so
    /// a ring that cannot be made must be known before asking for it.
    slots: Mutex<Vec<Arc<Slot>>>,
}

impl std::fmt::Debug for Negotiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Negotiation {{ granted: {} }}", self.granted())
    }
}

impl Negotiation {
    /// Makes the rings and asks for `FUSE_OVER_IO_URING` in the INIT reply;
    /// or says in one log line why the mount stays on /dev/fuse (the kernel
    /// does not offer it, or the rings cannot be made here).
    pub fn negotiate(&self, config: &mut KernelConfig) {
        let slots = match (0..queue_count())
            .flat_map(|q| (0..QUEUE_DEPTH).map(move |_| Slot::new(q as u16).map(Arc::new)))
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(q) => q,
            Err(e) => {
                warn!("io_uring: cannot set up the rings ({e}); serving on /dev/fuse");
                return;
            }
        };
        match config.add_capabilities(InitFlags::FUSE_OVER_IO_URING) {
            Ok(()) => {
                *self.slots.lock() = slots;
                self.granted.store(true, Ordering::Release);
            }
            Err(_) => warn!(
                "io_uring: the kernel does not offer FUSE over io_uring \
                 (/sys/module/fuse/parameters/enable_uring is off); serving on /dev/fuse"
            ),
        }
    }

    /// Whether INIT granted io_uring.
    pub fn granted(&self) -> bool {
        self.granted.load(Ordering::Acquire)
    }
}

/// The number of queues the kernel makes: one per possible CPU.
pub fn queue_count() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
                .max()
        })
        .map(|m| m + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Serves requests on the rings [`Negotiation::negotiate`] made, one per
/// CPU, until the connection ends. Runs on the thread fuser gives
/// [`fuser::Session::run_with`]'s closure; `dev` is a duplicate of the
/// session's /dev/fuse descriptor.
pub fn serve<FS: Filesystem>(
    d: Dispatcher<FS>,
    dev: OwnedFd,
    negotiated: &Negotiation,
) -> io::Result<()> {
    let slots = std::mem::take(&mut *negotiated.slots.lock());
    let dev = Arc::new(dev);
    let d = Arc::new(d);
    let started = Arc::new(AtomicU32::new(0));
    let mut threads = Vec::with_capacity(slots.len());
    for (i, slot) in slots.into_iter().enumerate() {
        let _ = slot.dev.set(dev.clone());
        let (d, started) = (d.clone(), started.clone());
        let t = std::thread::Builder::new()
            .name(format!("vfs-uring-{}.{}", slot.qid, i % QUEUE_DEPTH))
            .spawn(move || slot.run(&d, &started))?;
        threads.push(t);
    }
    for t in threads {
        let _ = t.join();
    }
    crate::metrics::counters::uring_queues(0);
    Ok(())
}

/// A page-aligned anonymous mapping the kernel reads and writes.
struct Buf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who touches it when is ruled by the
// entry's ownership (the kernel between a fetch and its completion, the
// request's reply afterwards).
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

impl Buf {
    fn new(len: usize) -> io::Result<Buf> {
        // SAFETY: a fresh private anonymous mapping, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Buf {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The bytes at `off..off + len`.
    ///
    /// # Safety
    /// The caller owns the entry (the kernel is not writing it).
    unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len);
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    /// Writes `data` at `off`.
    ///
    /// # Safety
    /// The caller owns the entry.
    unsafe fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One ring entry: its header and payload buffers, and the iovecs that
/// describe them at registration.
struct Ent {
    header: Buf,
    payload: Buf,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the iovecs point into the entry's own buffers and are only read.
unsafe impl Send for Ent {}
unsafe impl Sync for Ent {}

/// One ring entry served by a thread of its own, with a ring of its own.
///
/// The kernel hands an entry's next request over in the context of the
/// thread that last submitted that entry's command (io_uring task work), and
/// gives new requests to the entry committed last. So each entry has its
/// own thread, and only that thread ever submits its commands: a thread
/// stuck in a backing call (a frozen volume, a hung NFS server) holds only
/// its own entry, which is busy and gets no new request, while the queue's
/// other entries on that CPU go on serving. A reply made on another thread
/// (the blocking pool) is written into the entry there and committed by the
/// entry's thread.
struct Slot {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// The /dev/fuse descriptor the commands go to (set when serving starts).
    dev: OnceLock<Arc<OwnedFd>>,
    ent: Ent,
    /// Set when the reply to the entry's request is in its buffers; the
    /// slot's thread then commits it.
    replied: parking_lot::Mutex<bool>,
    replied_cv: parking_lot::Condvar,
}

impl Slot {
    fn new(qid: u16) -> io::Result<Slot> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(4)
            .build(2)?;
        let header = Buf::new(4096)?;
        let payload = Buf::new(payload_size())?;
        let iov = Box::new([
            libc::iovec {
                iov_base: header.ptr.cast(),
                iov_len: HEADER_SIZE,
            },
            libc::iovec {
                iov_base: payload.ptr.cast(),
                iov_len: payload.len,
            },
        ]);
        Ok(Slot {
            qid,
            ring,
            dev: OnceLock::new(),
            ent: Ent {
                header,
                payload,
                iov,
            },
            replied: parking_lot::Mutex::new(false),
            replied_cv: parking_lot::Condvar::new(),
        })
    }

    /// The SQE of a command for the entry.
    fn sqe(&self, cmd_op: u32, commit_id: u64) -> squeue::Entry128 {
        // struct fuse_uring_cmd_req { flags, commit_id, qid, padding[6] }.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let fd = self.dev.get().map_or(-1, |d| d.as_raw_fd());
        let mut b = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            b = b.addr(Some(self.ent.iov.as_ptr() as u64));
        }
        let sqe = b.build().user_data(0);
        if cmd_op != CMD_REGISTER {
            return sqe;
        }
        // The kernel wants the iovec count in `sqe->len`, which the
        // builder does not set: patch the 32-bit field at offset 24 of the
        // 128-byte SQE (`struct io_uring_sqe`: opcode, flags, ioprio, fd,
        // off, addr, len).
        const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
        // SAFETY: Entry128 is repr(C), 128 bytes of plain data.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: as above; every bit pattern is a valid SQE to the type.
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    }

    /// Submits `cmd` for the entry (if any) and, with `wait`, waits for the
    /// entry's completion (its next request, or an error) and returns its
    /// result. Only the slot's own thread calls it.
    fn enter(&self, cmd: Option<(u32, u64)>, wait: bool) -> io::Result<Option<i32>> {
        let mut to_submit = 0;
        if let Some((op, id)) = cmd {
            let sqe = self.sqe(op, id);
            // SAFETY: only this slot's thread touches its ring; the entry's
            // buffers and iovecs live as long as the slot, which outlives
            // the ring's use.
            if unsafe { self.ring.submission_shared().push(&sqe) }.is_err() {
                return Err(io::Error::other("no free SQE"));
            }
            to_submit = 1;
        }
        loop {
            let (min, flags) = if wait { (1, ENTER_GETEVENTS) } else { (0, 0) };
            // SAFETY: plain io_uring_enter on our ring, no argument.
            let r = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(to_submit, min, flags, None)
            };
            match r {
                Ok(n) => to_submit = to_submit.saturating_sub(n as u32),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
            // SAFETY: only this thread reads the completion queue.
            if let Some(c) = unsafe { self.ring.completion_shared() }.next() {
                return Ok(Some(c.result()));
            }
            if !wait && to_submit == 0 {
                return Ok(None);
            }
        }
    }

    /// The slot's thread: registers the entry, then serves its requests.
    fn run<FS: Filesystem>(self: Arc<Slot>, d: &Dispatcher<FS>, started: &AtomicU32) {
        pin_to_cpu(self.qid as usize);
        // Submitted without waiting: a refused registration comes back as
        // an error completion below, a good one only with a request.
        let mut last = (CMD_REGISTER, 0);
        let mut res = match self.enter(Some(last), false) {
            Ok(r) => r,
            Err(e) => {
                error!(
                    "io_uring: queue {}: registering: {e}; serving on /dev/fuse",
                    self.qid
                );
                return;
            }
        };
        if res.is_none() {
            registered(started);
        }
        let mut buf: Vec<u8> = Vec::with_capacity(IN_HEADER + OP_IN_SIZE + 64 * 1024);
        let mut next = None;
        loop {
            let r = match res.take() {
                Some(r) => r,
                None => match self.enter(next.take(), true) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        error!("io_uring: queue {}: {e}", self.qid);
                        return;
                    }
                },
            };
            match -r {
                0 => {
                    last = (CMD_COMMIT_AND_FETCH, self.handle(d, &mut buf));
                    next = Some(last);
                }
                // Asked to repeat the command.
                libc::EINTR | libc::EAGAIN => next = Some(last),
                // The connection ended (unmount or abort).
                libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV => return,
                e => {
                    // A refused registration leaves the kernel holding new
                    // requests for a ring that will never be ready.
                    error!(
                        "io_uring: queue {}: {}{}",
                        self.qid,
                        io::Error::from_raw_os_error(e),
                        if last.0 == CMD_REGISTER {
                            " while registering: the kernel holds requests until every \
                             queue registered; unmount (umount -l) and mount without io_uring"
                        } else {
                            ""
                        }
                    );
                    return;
                }
            }
        }
    }

    /// Puts the entry's request back together, dispatches it and waits for
    /// its reply to be in the entry (made here or on the blocking pool);
    /// returns the commit id to commit it with.
    fn handle<FS: Filesystem>(self: &Arc<Slot>, d: &Dispatcher<FS>, buf: &mut Vec<u8>) -> u64 {
        let ent = &self.ent;
        // SAFETY: the fetch completed: the entry is ours until we commit.
        let h = unsafe { ent.header.slice(0, HEADER_SIZE) };
        let u64_at = |o: usize| u64::from_ne_bytes(h[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().unwrap());
        let commit_id = u64_at(COMMIT_ID);
        let unique = u64_at(IN_OUT + 8);
        let payload = (u32_at(PAYLOAD_SZ) as usize).min(ent.payload.len);
        *self.replied.lock() = false;
        let sink = Arc::new(EntSink {
            slot: self.clone(),
            unique,
            sent: AtomicBool::new(false),
        });
        crate::metrics::counters::uring_request();
        // The in-header's length counts the operation's struct (in op_in)
        // and the payload.
        let len = u32_at(IN_OUT) as usize;
        match len
            .checked_sub(IN_HEADER + payload)
            .filter(|n| *n <= OP_IN_SIZE)
        {
            Some(op) => {
                buf.clear();
                buf.extend_from_slice(&h[IN_OUT..IN_OUT + IN_HEADER]);
                buf.extend_from_slice(&h[OP_IN..OP_IN + op]);
                // SAFETY: as above.
                buf.extend_from_slice(unsafe { ent.payload.slice(0, payload) });
                if !d.dispatch(buf, sink) {
                    error!("io_uring: request {unique} could not be parsed; answered EIO");
                }
            }
            None => {
                error!(
                    "io_uring: request {unique} (opcode {}) of length {len} with {payload} \
                     bytes of payload does not fit the ring header; answered EIO",
                    u32_at(IN_OUT + 4)
                );
                drop(sink); // answers EIO
            }
        }
        let mut replied = self.replied.lock();
        while !*replied {
            self.replied_cv.wait(&mut replied);
        }
        commit_id
    }
}

/// Counts a slot registered; says so once every slot of every queue is.
fn registered(started: &AtomicU32) {
    let n = started.fetch_add(1, Ordering::AcqRel) + 1;
    let queues = queue_count();
    if n as usize == queues * QUEUE_DEPTH {
        info!(
            "io_uring: FUSE over io_uring negotiated, {queues} queues of {QUEUE_DEPTH} \
             entries registered, one thread per entry"
        );
        crate::metrics::counters::uring_queues(queues as u64);
    }
}

/// Where the reply to one ring request goes.
struct EntSink {
    slot: Arc<Slot>,
    unique: u64,
    sent: AtomicBool,
}

impl EntSink {
    /// Writes the reply into the entry and hands it to the slot's thread
    /// to commit.
    fn fill(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let ent = &self.slot.ent;
        let total: usize = data.iter().map(|s| s.len()).sum();
        let mut out = [0u8; OUT_HEADER];
        let (mut filled, mut off) = (0usize, 0usize);
        let fits = total >= OUT_HEADER && total - OUT_HEADER <= ent.payload.len;
        if fits {
            for s in data {
                let mut s: &[u8] = s;
                if filled < OUT_HEADER {
                    let k = (OUT_HEADER - filled).min(s.len());
                    out[filled..filled + k].copy_from_slice(&s[..k]);
                    filled += k;
                    s = &s[k..];
                }
                // SAFETY: the entry is ours until its thread commits it,
                // which waits for `replied` below.
                unsafe { ent.payload.write(off, s) };
                off += s.len();
            }
        } else {
            error!(
                "io_uring: a reply of {total} bytes does not fit an entry; answering EIO instead"
            );
            out[0..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
            out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            out[8..16].copy_from_slice(&self.unique.to_ne_bytes());
        }
        // SAFETY: as above.
        unsafe {
            ent.header.write(IN_OUT, &out);
            ent.header.write(PAYLOAD_SZ, &(off as u32).to_ne_bytes());
        }
        *self.slot.replied.lock() = true;
        self.slot.replied_cv.notify_one();
        if fits {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }
}

impl ReplySink for EntSink {
    fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        if self.sent.swap(true, Ordering::AcqRel) {
            warn!(
                "io_uring: a second reply to request {} dropped",
                self.unique
            );
            return Ok(());
        }
        self.fill(data)
    }
}

impl Drop for EntSink {
    fn drop(&mut self) {
        // A request nobody answered would hold its entry for ever.
        if !self.sent.swap(true, Ordering::AcqRel) {
            let mut out = [0u8; OUT_HEADER];
            out[0..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
            out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            out[8..16].copy_from_slice(&self.unique.to_ne_bytes());
            let _ = self.fill(&[IoSlice::new(&out)]);
        }
    }
}

/// Pins this thread to `cpu`: the kernel gives a queue the requests made on
/// its CPU, so the reply needs no cross-CPU wake-up.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays in bounds
    // (checked against the set's size).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return;
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(
                "io_uring: cannot pin queue {cpu} to its CPU: {}",
                io::Error::last_os_error()
            );
        }
    }
}
