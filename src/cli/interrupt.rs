//! Ctrl-C (`SIGINT`) and `SIGTERM` on a job run in the foreground: the same
//! as `vfolderfs cancel`. The first signal is recorded as the job's
//! cancellation request in the store, then the job is told to stop; it ends
//! through its fenced final steps (a clone or relocation rolls back, a
//! purge stops and stays resumable). A second signal ends the process at
//! once, leaving the job to be resumed or rolled back later (`vfolderfs
//! jobs --resume`, a mount's pool).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::Store;

static SIGNALLED: AtomicI32 = AtomicI32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
    // SAFETY: signal(2) is async-signal-safe; a second one kills.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// The flag a foreground job is given as its `cancel`: set only after the
/// cancellation request is in the store, so that the job, when it sees it,
/// finds the request there and ends the cancelled way.
pub(super) fn stop_flag() -> &'static AtomicBool {
    &STOP
}

/// Watches for `SIGINT`/`SIGTERM` while it lives.
pub(super) struct Guard {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Installs the handlers; on a signal, records a cancellation of the job
/// on vfolder `job_id` (naming `what` and the signal) and sets
/// [`stop_flag`].
pub(super) fn guard(store: Arc<dyn Store>, job_id: String, what: String) -> Guard {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores an atomic and calls signal(2).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let thread = std::thread::Builder::new()
        .name("vfolderfs-interrupt".into())
        .spawn(move || {
            while !d.load(Ordering::Acquire) {
                let sig = SIGNALLED.load(Ordering::SeqCst);
                if sig != 0 {
                    let name = if sig == libc::SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    let by = format!(
                        "{name} to `{what}` ({})",
                        crate::workers::this_owner()
                    );
                    eprintln!("{name}: cancelling; the job rolls back or stops cleanly (again to kill now)");
                    if let Err(e) = store.set_job_cancel(&job_id, Some(&by)) {
                        log::warn!("recording the cancellation: {e}");
                    }
                    STOP.store(true, Ordering::Release);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .ok();
    Guard { done, thread }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restoring the default disposition.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}
