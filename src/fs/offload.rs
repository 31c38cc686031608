//! A small pool for requests that may block for a long time (`fsync`,
//! `fallocate`, `copy_file_range`): they run here and reply from here, so the
//! request loops (as many as there are CPUs) stay free for everything else.
//! When the pool is saturated, the request runs in its request loop as before.

use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool. Dropping it lets queued jobs finish, then joins the threads.
pub struct Offload {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Offload {
    /// A pool of `threads` threads with room for as many queued jobs.
    pub fn new(threads: usize) -> Offload {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(threads);
        let handles = (0..threads)
            .filter_map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("vfs-blocking-{i}"))
                    .spawn(move || {
                        for job in rx {
                            job();
                        }
                    })
                    .map_err(|e| log::warn!("cannot start a blocking-call thread: {e}"))
                    .ok()
            })
            .collect();
        Offload {
            tx: Some(tx),
            threads: handles,
        }
    }

    /// Runs `job` on the pool, or right here when the pool is full or gone.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let Some(tx) = &self.tx else {
            return job();
        };
        if self.threads.is_empty() {
            return job();
        }
        // The job's errors count for the request that handed it over.
        let op = crate::metrics::counters::current();
        match tx.try_send(Box::new(move || {
            crate::metrics::counters::set_current(op);
            job()
        })) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job(),
        }
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_runs_once_even_when_the_pool_is_full() {
        let done = Arc::new(AtomicUsize::new(0));
        let pool = Offload::new(2);
        for _ in 0..200 {
            let done = done.clone();
            pool.run(move || {
                std::thread::sleep(std::time::Duration::from_micros(200));
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        drop(pool);
        assert_eq!(done.load(Ordering::SeqCst), 200);
    }

    #[test]
    fn a_blocked_job_does_not_hold_up_the_caller() {
        let pool = Arc::new(Offload::new(1));
        let (release, blocked) = crossbeam_channel::bounded::<()>(0);
        let (returned_tx, returned) = crossbeam_channel::bounded::<()>(1);
        let p = pool.clone();
        std::thread::spawn(move || {
            p.run(move || {
                let _ = blocked.recv();
            });
            let _ = returned_tx.send(());
        });
        // run() came back while its job still waits (a deadlock would not).
        let back = returned.recv_timeout(std::time::Duration::from_secs(30));
        release.send(()).unwrap();
        assert!(back.is_ok(), "run() waited for its job");
    }
}
