//! FUSE over io_uring (kernel 6.14+, protocol 7.42), opt-in with
//! `-o io_uring`.
//!
//! The mount asks for `FUSE_OVER_IO_URING` at INIT ([`Negotiation`]); the
//! kernel grants it only when `/sys/module/fuse/parameters/enable_uring` is
//! on, and otherwise the mount serves on /dev/fuse as before, saying so in
//! one log line. When granted, [`serve`] runs beside fuser's /dev/fuse
//! loops (which keep INIT, INTERRUPT, FORGET and whatever arrives before the
//! ring is ready): one ring per possible CPU, as the kernel expects (it uses
//! the rings only once every queue has registered an entry), its thread
//! pinned to that CPU, so that a request is answered on the CPU that made
//! it without a cross-CPU wake-up.
//!
//! Each ring entry is a pair of buffers the kernel fills with a request:
//! `struct fuse_uring_req_header` (the `fuse_in_header`, the operation's
//! struct, the commit id and payload size) and the payload (names, write
//! data). The request is put back together as /dev/fuse would have given it
//! and dispatched through fuser's [`Dispatcher`]; the reply goes back into
//! the same entry (`fuse_out_header` in the header, the arguments in the
//! payload) with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also waits for
//! the entry's next request. A reply made on another thread (the blocking
//! pool) is committed from there, under the queue's submission lock.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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

/// Entries per queue: requests of one CPU that may wait for a reply at once
/// (a request handed to the blocking pool keeps its entry until it replies).
pub const QUEUE_DEPTH: usize = 16;
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
    queues: Mutex<Vec<Arc<Queue>>>,
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
        let queues = match (0..queue_count())
            .map(|q| Queue::new(q as u16).map(Arc::new))
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
                *self.queues.lock() = queues;
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
    let queues = std::mem::take(&mut *negotiated.queues.lock());
    let dev = Arc::new(dev);
    let d = Arc::new(d);
    let started = Arc::new(AtomicU32::new(0));
    let mut threads = Vec::with_capacity(queues.len());
    for queue in queues {
        let _ = queue.dev.set(dev.clone());
        let (d, started) = (d.clone(), started.clone());
        let t = std::thread::Builder::new()
            .name(format!("vfs-uring-{}", queue.qid))
            .spawn(move || queue.run(&d, &started))?;
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
    /// The commit id of the request it holds (0: not yet registered), to
    /// resubmit a command the kernel asked to repeat.
    commit_id: AtomicU64,
}

// SAFETY: the iovecs point into the entry's own buffers and are only read.
unsafe impl Send for Ent {}
unsafe impl Sync for Ent {}

thread_local! {
    /// The queue this thread serves (its address), so that a reply made
    /// during dispatch waits for the loop's next `io_uring_enter`.
    static ON_QUEUE: Cell<usize> = const { Cell::new(0) };
}

/// The ring of one CPU.
struct Queue {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// The /dev/fuse descriptor the commands go to (set when serving starts).
    dev: OnceLock<Arc<OwnedFd>>,
    /// Serialises pushes to the submission queue.
    sq: Mutex<()>,
    /// Commits pushed by the queue's own thread, not yet submitted.
    pending: AtomicU32,
    ents: Vec<Ent>,
}

impl Queue {
    fn new(qid: u16) -> io::Result<Queue> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(2 * QUEUE_DEPTH as u32)
            .build(QUEUE_DEPTH as u32)?;
        let page = 4096;
        let payload_len = payload_size();
        let ents = (0..QUEUE_DEPTH)
            .map(|_| {
                let header = Buf::new(page)?;
                let payload = Buf::new(payload_len)?;
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.ptr.cast(),
                        iov_len: HEADER_SIZE,
                    },
                    libc::iovec {
                        iov_base: payload.ptr.cast(),
                        iov_len: payload_len,
                    },
                ]);
                Ok(Ent {
                    header,
                    payload,
                    iov,
                    commit_id: AtomicU64::new(0),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Queue {
            qid,
            ring,
            dev: OnceLock::new(),
            sq: Mutex::new(()),
            pending: AtomicU32::new(0),
            ents,
        })
    }

    /// The SQE of a command for entry `idx`.
    fn sqe(&self, idx: usize, cmd_op: u32, commit_id: u64) -> squeue::Entry128 {
        // struct fuse_uring_cmd_req { flags, commit_id, qid, padding[6] }.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let fd = self.dev.get().map_or(-1, |d| d.as_raw_fd());
        let mut b = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            b = b.addr(Some(self.ents[idx].iov.as_ptr() as u64));
        }
        let sqe = b.build().user_data(idx as u64);
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

    /// Queues a command for entry `idx`; submits it now unless the queue's
    /// own thread made it (its loop submits before it waits).
    fn push(&self, idx: usize, cmd_op: u32, commit_id: u64) {
        let sqe = self.sqe(idx, cmd_op, commit_id);
        let own = ON_QUEUE.with(|c| c.get()) == self as *const Queue as usize;
        let _g = self.sq.lock();
        // SAFETY: pushes are serialised by `sq`; the entry's buffers and
        // iovecs live as long as the queue, which outlives the ring's use.
        let pushed = unsafe { self.ring.submission_shared().push(&sqe) };
        if pushed.is_err() {
            // One command per entry at most, and the ring has room for all.
            error!("io_uring: queue {} has no free SQE", self.qid);
            return;
        }
        if own {
            self.pending.fetch_add(1, Ordering::Relaxed);
        } else if let Err(e) = self.ring.submit() {
            error!("io_uring: queue {}: submitting a reply: {e}", self.qid);
        }
    }

    /// The queue's thread: registers every entry, then serves requests.
    fn run<FS: Filesystem>(self: Arc<Queue>, d: &Dispatcher<FS>, started: &AtomicU32) {
        ON_QUEUE.with(|c| c.set(Arc::as_ptr(&self) as usize));
        pin_to_cpu(self.qid as usize);
        for idx in 0..self.ents.len() {
            self.push(idx, CMD_REGISTER, 0);
        }
        // Submitted without waiting: a refused registration comes back as
        // an error completion below, a good one only with a request.
        let n = self.pending.swap(0, Ordering::Relaxed);
        // SAFETY: plain io_uring_enter on our ring, no argument.
        if let Err(e) = unsafe { self.ring.submitter().enter::<libc::sigset_t>(n, 0, 0, None) } {
            error!(
                "io_uring: queue {}: registering: {e}; serving on /dev/fuse",
                self.qid
            );
            return;
        }
        let n = started.fetch_add(1, Ordering::AcqRel) + 1;
        if n as usize == queue_count() {
            info!(
                "io_uring: FUSE over io_uring negotiated, {n} queues of {QUEUE_DEPTH} \
                 entries registered, one thread per CPU"
            );
            crate::metrics::counters::uring_queues(n as u64);
        }
        let mut live = self.ents.len();
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(2 * QUEUE_DEPTH);
        let mut buf: Vec<u8> = Vec::with_capacity(IN_HEADER + OP_IN_SIZE + 64 * 1024);
        while live > 0 {
            let n = self.pending.swap(0, Ordering::Relaxed);
            // SAFETY: plain io_uring_enter on our ring, no argument.
            let r = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(n, 1, ENTER_GETEVENTS, None)
            };
            if let Err(e) = r {
                // Nothing was submitted; try again (a count too high only
                // lets the kernel take what is there).
                self.pending.fetch_add(n, Ordering::Relaxed);
                match e.raw_os_error() {
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => continue,
                    _ => {
                        error!("io_uring: queue {}: {e}", self.qid);
                        return;
                    }
                }
            }
            done.clear();
            // SAFETY: only this thread reads the completion queue.
            done.extend(
                unsafe { self.ring.completion_shared() }.map(|c| (c.user_data(), c.result())),
            );
            for &(idx, res) in &done {
                let idx = idx as usize;
                if idx >= self.ents.len() {
                    continue;
                }
                match -res {
                    0 => self.handle(idx, d, &mut buf),
                    libc::EINTR | libc::EAGAIN => {
                        let id = self.ents[idx].commit_id.load(Ordering::Relaxed);
                        let op = if id == 0 {
                            CMD_REGISTER
                        } else {
                            CMD_COMMIT_AND_FETCH
                        };
                        self.push(idx, op, id);
                    }
                    // The connection ended (unmount or abort).
                    libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV => live -= 1,
                    e => {
                        // A refused registration leaves the kernel holding
                        // new requests for a ring that will never be ready.
                        let registering = self.ents[idx].commit_id.load(Ordering::Relaxed) == 0;
                        error!(
                            "io_uring: queue {} entry {idx}: {}{}",
                            self.qid,
                            io::Error::from_raw_os_error(e),
                            if registering {
                                " while registering: the kernel holds requests until every \
                                 queue registered; unmount (umount -l) and mount without io_uring"
                            } else {
                                ""
                            }
                        );
                        live -= 1;
                    }
                }
            }
        }
    }

    /// Puts the request of entry `idx` back together and dispatches it.
    fn handle<FS: Filesystem>(
        self: &Arc<Queue>,
        idx: usize,
        d: &Dispatcher<FS>,
        buf: &mut Vec<u8>,
    ) {
        let ent = &self.ents[idx];
        // SAFETY: the fetch completed: the entry is ours until we commit.
        let h = unsafe { ent.header.slice(0, HEADER_SIZE) };
        let u64_at = |o: usize| u64::from_ne_bytes(h[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().unwrap());
        let commit_id = u64_at(COMMIT_ID);
        ent.commit_id.store(commit_id, Ordering::Relaxed);
        let unique = u64_at(IN_OUT + 8);
        let payload = (u32_at(PAYLOAD_SZ) as usize).min(ent.payload.len);
        let sink = Arc::new(EntSink {
            queue: self.clone(),
            idx,
            commit_id,
            unique,
            sent: AtomicBool::new(false),
        });
        crate::metrics::counters::uring_request();
        // The in-header's length counts the operation's struct (in op_in)
        // and the payload.
        let len = u32_at(IN_OUT) as usize;
        let Some(op) = len
            .checked_sub(IN_HEADER + payload)
            .filter(|n| *n <= OP_IN_SIZE)
        else {
            error!(
                "io_uring: request {unique} (opcode {}) of length {len} with {payload} bytes \
                 of payload does not fit the ring header; answered EIO",
                u32_at(IN_OUT + 4)
            );
            return; // the sink answers EIO when dropped
        };
        buf.clear();
        buf.extend_from_slice(&h[IN_OUT..IN_OUT + IN_HEADER]);
        buf.extend_from_slice(&h[OP_IN..OP_IN + op]);
        // SAFETY: as above.
        buf.extend_from_slice(unsafe { ent.payload.slice(0, payload) });
        if !d.dispatch(buf, sink) {
            error!("io_uring: request {unique} could not be parsed; answered EIO");
        }
    }
}

/// Where the reply to one ring request goes.
struct EntSink {
    queue: Arc<Queue>,
    idx: usize,
    commit_id: u64,
    unique: u64,
    sent: AtomicBool,
}

impl EntSink {
    /// Writes the reply into the entry and commits it.
    fn commit(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let ent = &self.queue.ents[self.idx];
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
                // SAFETY: the entry is ours until the commit below.
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
        self.queue
            .push(self.idx, CMD_COMMIT_AND_FETCH, self.commit_id);
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
        self.commit(data)
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
            let _ = self.commit(&[IoSlice::new(&out)]);
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
