//! The controller's builder thread: where snapshots are built, configs parsed and edited, L7
//! services checked, and where the snapshots a swap replaces are freed.
//!
//! Why one dedicated thread rather than tokio's blocking pool: memory. The allocator
//! (mimalloc) returns a page to the kernel when the thread that owns the page collects. A
//! build on one pool thread whose snapshot is later freed on another left those pages
//! resident until the first thread happened to allocate again: with 1,000 DNS names x 10
//! backends, 22.9 MiB resident against 12.6 MiB with immediate purging
//! (`MIMALLOC_PURGE_DELAY=0`). Here every build and every freed snapshot is on one thread,
//! which collects once its jobs pause ([`RELEASE_WHEN_IDLE`] without one), so what the jobs
//! freed leaves RSS then. See docs/benchmarks.md, "DNS load balancing", for the figures.
//!
//! A job that never ends (a configured file that does not answer) must not hold up the builds
//! after it: the controller waits at most [`BUILD_TIMEOUT`], then starts a new thread for
//! the jobs that follow and leaves the stuck one to end on its own.
//!
//! The thread runs at idle priority (`SCHED_IDLE`, [`crate::sched`]): a connection whose
//! packet arrives while a table builds takes the CPU at once, instead of after the build's
//! time slice (docs/benchmarks.md, "Admin API: one change at 10,000 backends", the stall).
//! A job that has waited [`RAISE_AFTER`] (no CPU to spare) is raised to the normal policy
//! [`NICER`] nice levels below the control thread, so builds still finish on a saturated
//! machine.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long the controller waits for a job off its thread before giving up on it.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a job may wait at idle priority before its thread is raised to the normal policy
/// (at [`NICER`]): a change at 10,000 backends takes about 3 ms of CPU, so a job still
/// running after this has been kept off the CPUs by other work.
pub const RAISE_AFTER: Duration = Duration::from_millis(20);

type Job = Box<dyn FnOnce() + Send>;

/// The handle of the builder thread; the thread ends when the handle is dropped and its
/// queued jobs are done.
#[derive(Debug)]
pub struct Builder {
    jobs: mpsc::Sender<Job>,
    /// The thread's id and whether it has been raised, shared with the thread.
    thread: Arc<ThreadPriority>,
    /// How long [`Builder::run`] waits ([`BUILD_TIMEOUT`]).
    wait: Duration,
}

impl Builder {
    /// Starts the thread.
    ///
    /// # Errors
    /// The system refused a new thread.
    pub fn start() -> std::io::Result<Self> {
        Self::waiting(BUILD_TIMEOUT)
    }

    fn waiting(wait: Duration) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = Arc::new(ThreadPriority {
            tid: AtomicI32::new(0),
        });
        let own = Arc::clone(&thread);
        std::thread::Builder::new()
            .name("fulcrum-build".into())
            .spawn(move || {
                own.tid.store(crate::sched::own_tid(), Ordering::Release);
                lower_priority();
                serve(&queue);
            })?;
        Ok(Self { jobs, thread, wait })
    }

    /// Runs `f` on the builder thread and waits for its result at most [`BUILD_TIMEOUT`]:
    /// table builds, config parsing and the L7 state (which reads files) never hold up the
    /// control thread, which serves the admin API, signals and, with `--workers 1`, the data
    /// path. Jobs run one at a time, in the order given.
    ///
    /// # Errors
    /// `f` panicked, or did not end in time (the jobs after it then run on a new thread).
    pub async fn run<T: Send + 'static>(
        &mut self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        if self.jobs.send(job).is_err() {
            // The thread is gone (it cannot panic: jobs are caught); start another.
            self.restart();
            return Err("building the new state failed: the builder thread had ended".into());
        }
        let first = tokio::time::timeout(RAISE_AFTER.min(self.wait), &mut rx).await;
        let answer = if let Ok(answer) = first {
            Ok(answer)
        } else {
            // Kept off the CPUs at idle priority: finish at the normal policy.
            self.thread.raise();
            tokio::time::timeout(self.wait.saturating_sub(RAISE_AFTER), rx).await
        };
        match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err("building the new state failed: the build panicked".into()),
            Err(_) => {
                self.restart();
                Err(format!(
                    "building the new state took over {:?} (a configured file that does not answer?)",
                    self.wait
                ))
            }
        }
    }

    /// Frees `v` on the builder thread (a replaced snapshot: a large pool's table and
    /// backend lists), so that its pages go back to the kernel with the thread's next
    /// collect, and the control thread does not spend the time.
    pub fn free<T: Send + 'static>(&self, v: T) {
        if let Err(mpsc::SendError(job)) = self.jobs.send(Box::new(move || drop(v))) {
            job();
        }
    }

    /// A new thread for the jobs to come; the old one ends after the job it is in.
    fn restart(&mut self) {
        match Self::waiting(self.wait) {
            Ok(new) => *self = new,
            Err(e) => {
                tracing::error!("cannot start a new builder thread: {e}; keeping the old one");
            }
        }
    }
}

/// How long the thread waits without a job before it gives what its jobs freed back to the
/// kernel ([`crate::memory::release_now`]).
///
/// Not after every job: a run of admin API changes of a 10,000-backend pool is an edit, a
/// build and a free per change, a few milliseconds apart, and collecting after each job gave
/// the pages of the freed table, backend lists and config copy back only for the next job
/// to fault them in again: a quarter of the builder's time (`perf record` during
/// `bench/api_adds.py`, docs/benchmarks.md, "Admin API", fifth round). Once the jobs stop
/// for this long, the release runs as before, so the memory at rest is the same.
pub const RELEASE_WHEN_IDLE: Duration = Duration::from_millis(100);

/// How many nice levels the builder thread runs below the thread that started it once
/// raised from idle priority ([`RAISE_AFTER`]). Not nice 19: on a machine busy with other
/// work at nice 19 (a compiler, a batch job) a raised build would then share the CPU with
/// all of it; 10 levels is a tenth of the data path's weight (the kernel's weights go by
/// about 1.25x a level), and still ten times a nice-19 task's.
pub const NICER: i32 = 10;

/// The builder thread's id, for the controller to raise it.
#[derive(Debug)]
struct ThreadPriority {
    /// 0 until the thread has started.
    tid: AtomicI32,
}

impl ThreadPriority {
    /// Raises the thread from idle priority to the normal policy (at its nice value) until it
    /// has no job waiting; then it goes back to idle priority. A refusal is logged once per
    /// process: the build goes on at idle priority.
    fn raise(&self) {
        let tid = self.tid.load(Ordering::Acquire);
        if tid == 0 {
            return;
        }
        if let Err(e) = crate::sched::raise(tid) {
            static LOGGED: AtomicBool = AtomicBool::new(false);
            if LOGGED.swap(true, Ordering::Relaxed) {
                return;
            }
            tracing::warn!(
                error = %e,
                "cannot raise the builder thread from idle priority (it needs CAP_SYS_NICE or \
                 an RLIMIT_NICE that allows nice {NICER} below the control thread, e.g. \
                 systemd's LimitNICE={NICER}); builds on a busy machine wait for idle CPU"
            );
        }
    }
}

/// Puts the calling thread at idle priority, with a nice value [`NICER`] levels below its
/// present one for when it is raised. On Linux both are a thread's, not the process's, so
/// the control thread and the workers keep theirs. A failure is logged and changes nothing
/// else: the builds then run at the data path's priority.
fn lower_priority() {
    if let Err(e) = crate::sched::idle(NICER) {
        tracing::warn!(error = %e, "cannot lower the builder thread's CPU priority");
    }
}

/// The builder thread back to idle priority if it was raised (one `sched_getattr` when
/// not: the thread reads its own state rather than a flag the controller sets, so a raise
/// that comes as a job ends is undone all the same).
fn lower_back() {
    if let Err(e) = crate::sched::back_to_idle() {
        tracing::warn!(error = %e, "cannot put the builder thread back at idle priority");
    }
}

fn serve(queue: &mpsc::Receiver<Job>) {
    while let Ok(mut job) = queue.recv() {
        loop {
            // A panic is the job's failure, reported to its caller (its answer is never
            // sent), not the end of the thread.
            let _ = catch_unwind(AssertUnwindSafe(job));
            // Jobs queued meanwhile (a change's frees, the next change) run at the priority
            // the thread has now: a raise holds until the thread has caught up.
            match queue.try_recv() {
                Ok(next) => {
                    job = next;
                    continue;
                }
                Err(mpsc::TryRecvError::Empty) => lower_back(),
                Err(mpsc::TryRecvError::Disconnected) => {}
            }
            match queue.recv_timeout(RELEASE_WHEN_IDLE) {
                Ok(next) => job = next,
                Err(e) => {
                    // What the jobs freed (their temporaries, replaced snapshots) was
                    // allocated on this thread: collecting here gives it back to the kernel.
                    crate::memory::release_now();
                    if e == mpsc::RecvTimeoutError::Disconnected {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports the name of the thread it is dropped on.
    struct Probe(std::sync::mpsc::Sender<Option<String>>);

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self
                .0
                .send(std::thread::current().name().map(str::to_owned));
        }
    }

    #[tokio::test]
    async fn runs_in_order_survives_a_panic_and_frees_off_the_caller() {
        let mut b = Builder::start().unwrap();
        assert_eq!(b.run(|| 1 + 1).await, Ok(2));
        let err = b
            .run(|| -> u32 { panic!("a bad build") })
            .await
            .unwrap_err();
        assert!(err.contains("panicked"), "{err}");
        let name = b
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(name, Ok(Some("fulcrum-build".to_owned())));
        // A value freed through the builder is dropped on its thread.
        let (tx, rx) = std::sync::mpsc::channel();
        b.free(Probe(tx));
        let dropped_on = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .unwrap();
        assert_eq!(dropped_on, Ok(Some("fulcrum-build".to_owned())));
    }

    thread_local! {
        /// Releases on this thread (each test's builder has its own thread).
        static RELEASES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    fn count_release() {
        RELEASES.set(RELEASES.get() + 1);
    }

    /// Jobs that follow each other closely run without a release between them; the release
    /// comes once the thread has been idle for [`RELEASE_WHEN_IDLE`].
    #[tokio::test]
    async fn releases_once_idle_not_between_jobs() {
        crate::memory::set_release_free_memory(count_release);
        let mut b = Builder::start().unwrap();
        // Three jobs queued while the first waits: they run back to back.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (seen_tx, seen) = std::sync::mpsc::channel::<u32>();
        let first = seen_tx.clone();
        b.jobs
            .send(Box::new(move || {
                let _ = wait.recv();
                let _ = first.send(RELEASES.get());
            }))
            .unwrap();
        for _ in 0..2 {
            let tx = seen_tx.clone();
            b.jobs
                .send(Box::new(move || {
                    let _ = tx.send(RELEASES.get());
                }))
                .unwrap();
        }
        drop(go);
        let during: Vec<u32> = (0..3).map(|_| seen.recv().unwrap()).collect();
        assert_eq!(
            during,
            vec![0; 3],
            "no release before or between queued jobs"
        );
        // Idle for longer than RELEASE_WHEN_IDLE: the thread released once.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut after = 0;
        while after == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(RELEASE_WHEN_IDLE * 3).await;
            after = b.run(|| RELEASES.get()).await.unwrap();
        }
        assert!(after >= 1, "a release once idle");
    }

    /// The calling thread's nice value (`/proc/thread-self/stat`, field 19).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The fields after the command name (which may hold spaces) start at field 3.
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn builds_run_at_idle_priority_below_the_caller() {
        let mut b = Builder::start().unwrap();
        let caller = own_nice();
        let (idle, builder) = b.run(|| crate::sched::state(0).unwrap()).await.unwrap();
        assert!(idle, "a build starts at idle priority");
        assert_eq!(builder, (caller + NICER).min(19), "caller at nice {caller}");
        assert_eq!(own_nice(), caller, "the caller's own priority is unchanged");
        let (caller_idle, _) = crate::sched::state(0).unwrap();
        assert!(!caller_idle, "the caller's policy is unchanged");
    }

    /// A job still running after `RAISE_AFTER` is raised to the normal policy (the tests run
    /// as root), at the builder's nice value; once the thread has no job waiting it goes
    /// back to idle priority.
    #[tokio::test]
    async fn a_job_that_waits_is_raised_and_the_next_starts_idle() {
        let mut b = Builder::start().unwrap();
        let raised = b
            .run(|| {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let (idle, nice) = crate::sched::state(0).unwrap();
                    if !idle || std::time::Instant::now() > deadline {
                        return (idle, nice);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
            .await
            .unwrap();
        assert_eq!(
            raised,
            (false, (own_nice() + NICER).min(19)),
            "raised, nice kept"
        );
        let (idle, _) = b.run(|| crate::sched::state(0).unwrap()).await.unwrap();
        assert!(idle, "the next job starts at idle priority");
    }

    #[tokio::test]
    async fn a_stuck_job_does_not_hold_up_the_next() {
        let mut b = Builder::waiting(Duration::from_millis(300)).unwrap();
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let err = b.run(move || stuck.recv().is_ok()).await.unwrap_err();
        assert!(err.contains("took over"), "{err}");
        // The next job runs on a new thread while the old one is still stuck.
        assert_eq!(b.run(|| 7).await, Ok(7));
        drop(release);
    }
}
