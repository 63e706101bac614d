//! Password hashing on a fixed pool of hashing threads, off the async runtime.
//!
//! Each Argon2id hash holds `m` KiB of memory for its whole run, so the number of threads
//! (`passwords.max_concurrent_hashes`) bounds memory at `m × threads` and keeps a login flood
//! from starving the runtime: requests queue for a thread instead of running all at once.
//!
//! The queue is bounded too. Past `passwords.max_queued_hashes` waiting jobs, or when a job
//! has waited [`MAX_QUEUE_WAIT`] before a thread is free, the caller gets
//! [`ServiceError::Busy`] (503 with `Retry-After`) at once: a login flood costs a fixed amount
//! of memory and the logins that do get in are answered quickly, instead of every login
//! waiting longer and longer.
//!
//! The threads run at a lower scheduling priority than the rest of the server (nice
//! `passwords.hashing_nice`, 10 by default, on Linux): when logins fill every core with Argon2, forward-auth
//! checks and pages, which take microseconds, still get the CPU first; the hashes use what is
//! left, which under a flood is nearly all of it.
//!
//! The threads live as long as the pool and keep their Argon2 memory between hashes: a fresh
//! 19 MiB block per hash costs page faults and a memset on every login. A thread takes the
//! next queued job as soon as it finishes one, without waiting for the async task that
//! submitted the last job to be scheduled again.

use super::ServiceError;
use bulwark_core::password::hash::{HashMemory, PasswordHash, PasswordHasher, Verification};
use bulwark_core::password::Password;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The longest a job waits for a hashing thread before it is given up (answered `Busy`).
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// Lowers the calling thread's priority to `nice` (0 is the default, 19 the lowest); logged if
/// refused.
fn lower_priority(nice: i32) {
    // On Linux the nice value belongs to the thread: `None` is the calling thread.
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        // A server started at a lower priority still keeps its threads' order.
        let current = getpriority_process(None).unwrap_or(0);
        if current < nice {
            if let Err(e) = setpriority_process(None, nice) {
                tracing::warn!(error = %e, "cannot lower the priority of a hashing thread");
            }
        }
    }
}

/// What a caller turned away is told to wait, in seconds.
pub const BUSY_RETRY_AFTER: i64 = 2;

type Job = Box<dyn FnOnce(&PasswordHasher, &mut HashMemory) + Send>;

/// Hashes passwords on `max_concurrent` dedicated threads.
#[derive(Clone, Debug)]
pub struct HashPool {
    hasher: Arc<PasswordHasher>,
    /// Jobs for the threads; they stop when the last clone of the pool is dropped.
    jobs: mpsc::Sender<Job>,
    /// Where the time of each job (queueing included) is recorded.
    metrics: Arc<crate::metrics::Metrics>,
    /// Jobs submitted and not yet started.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    max_wait: Duration,
}

impl HashPool {
    /// A pool of `max_concurrent` hashing threads. Fails only if the OS refuses a thread.
    pub fn new(
        hasher: PasswordHasher,
        max_concurrent: usize,
        max_queued: usize,
        nice: i32,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Self> {
        let hasher = Arc::new(hasher);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..max_concurrent.max(1) {
            let queue = queue.clone();
            let hasher = hasher.clone();
            std::thread::Builder::new()
                .name(format!("bulwark-hash-{i}"))
                .spawn(move || {
                    lower_priority(nice);
                    let mut memory = HashMemory::default();
                    loop {
                        // The lock is held only while waiting for a job, not while hashing.
                        // A poisoned lock means another thread panicked while waiting, which
                        // leaves the queue itself intact.
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match next {
                            Ok(job) => job(&hasher, &mut memory),
                            Err(mpsc::RecvError) => break,
                        }
                    }
                })?;
        }
        Ok(Self {
            hasher,
            jobs,
            metrics,
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued,
            max_wait: MAX_QUEUE_WAIT,
        })
    }

    /// Jobs waiting for a thread right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn busy(&self) -> ServiceError {
        self.metrics.hash_rejected.fetch_add(1, Ordering::Relaxed);
        ServiceError::Busy {
            retry_after: BUSY_RETRY_AFTER,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&PasswordHasher, &mut HashMemory) -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        // Count first, then check: concurrent callers cannot all slip under the bound.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(self.busy());
        }
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        let queued = self.queued.clone();
        let max_wait = self.max_wait;
        let sent = self.jobs.send(Box::new(move |hasher, memory| {
            queued.fetch_sub(1, Ordering::AcqRel);
            // Waited too long: the thread is free for jobs that can still be answered in
            // time, and this one is answered `Busy` (its requester may also have gone).
            let result = (started.elapsed() <= max_wait).then(|| job(hasher, memory));
            let _ = tx.send(result);
        }));
        if sent.is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(ServiceError::Internal("hashing threads stopped".into()));
        }
        let result = rx
            .await
            .map_err(|_| ServiceError::Internal("a hashing thread failed".into()))?;
        self.metrics.password_hashing.observe(started.elapsed());
        result.ok_or_else(|| self.busy())
    }

    /// Hashes a new password with the configured scheme.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, ServiceError> {
        self.run(move |h, m| h.hash_in(m, &password))
            .await?
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// Checks a password against a stored hash.
    pub async fn verify(
        &self,
        password: Password,
        stored: PasswordHash,
    ) -> Result<Verification, ServiceError> {
        self.run(move |h, m| h.verify_in(m, &password, &stored))
            .await
    }

    /// Spends the time of one verification, for logins of unknown users.
    pub async fn dummy_verify(&self, password: Password) -> Result<(), ServiceError> {
        self.run(move |h, m| h.dummy_verify_in(m, &password)).await
    }

    /// Whether the password matches any of the hashes (password history).
    pub async fn matches_any(
        &self,
        password: Password,
        hashes: Vec<PasswordHash>,
    ) -> Result<bool, ServiceError> {
        self.run(move |h, m| {
            hashes
                .iter()
                .any(|stored| h.verify_in(m, &password, stored).is_valid())
        })
        .await
    }

    /// Raw hashes per second is measured against this in the benchmark.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_core::password::hash::{Argon2Params, Scheme};

    /// A pool of one thread, with room for `max_queued` waiting jobs that may wait `max_wait`.
    fn small_pool(max_queued: usize, max_wait: Duration) -> HashPool {
        let mut p = pool(1);
        p.max_queued = max_queued;
        p.max_wait = max_wait;
        p
    }

    /// Holds the pool's only thread for `ms` milliseconds.
    async fn hold(pool: &HashPool, ms: u64) -> Result<(), ServiceError> {
        pool.run(move |_, _| std::thread::sleep(Duration::from_millis(ms)))
            .await
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_below_the_servers_priority() {
        let pool = pool(2);
        let server = rustix::process::getpriority_process(None).unwrap();
        for _ in 0..4 {
            let nice = pool
                .run(|_, _| rustix::process::getpriority_process(None).unwrap())
                .await
                .unwrap();
            assert_eq!(nice, 10.max(server), "server thread at {server}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once_and_recovers() {
        let pool = small_pool(2, Duration::from_secs(10));
        let holder = tokio::spawn({
            let pool = pool.clone();
            async move { hold(&pool, 400).await }
        });
        // The thread takes the first job at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.queued(), 0);
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { hold(&pool, 1).await })
            })
            .collect();
        while pool.queued() < 2 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let refused = hold(&pool, 1).await;
        assert!(
            matches!(
                refused,
                Err(ServiceError::Busy {
                    retry_after: BUSY_RETRY_AFTER
                })
            ),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "refused without waiting"
        );
        assert_eq!(pool.metrics.hash_rejected.load(Ordering::Relaxed), 1);
        holder.await.unwrap().unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(pool.queued(), 0);
        hold(&pool, 1).await.unwrap();
    }

    #[tokio::test]
    async fn a_job_that_waited_too_long_is_answered_busy_without_running() {
        let pool = small_pool(8, Duration::from_millis(100));
        let holder = tokio::spawn({
            let pool = pool.clone();
            async move { hold(&pool, 400).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let late = {
            let ran = ran.clone();
            pool.run(move |_, _| ran.fetch_add(1, Ordering::Relaxed))
                .await
        };
        assert!(matches!(late, Err(ServiceError::Busy { .. })), "{late:?}");
        assert_eq!(ran.load(Ordering::Relaxed), 0, "never hashed");
        holder.await.unwrap().unwrap();
        assert_eq!(pool.queued(), 0);
    }

    fn pool(threads: usize) -> HashPool {
        let params = Argon2Params {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        HashPool::new(
            PasswordHasher::new(params, Scheme::Argon2id, 600_000).unwrap(),
            threads,
            64,
            10,
            Arc::default(),
        )
        .unwrap()
    }

    fn pw(s: &str) -> Password {
        Password::parse(s.to_owned()).unwrap()
    }

    #[tokio::test]
    async fn many_concurrent_jobs_on_few_threads_all_answer_correctly() {
        let pool = pool(2);
        let stored = pool.hash(pw("correct horse battery staple")).await.unwrap();
        let mut checks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let pool = pool.clone();
            let stored = stored.clone();
            checks.spawn(async move {
                let candidate = if i % 2 == 0 {
                    "correct horse battery staple"
                } else {
                    "wrong horse battery staple"
                };
                (i, pool.verify(pw(candidate), stored).await.unwrap())
            });
        }
        let mut answered = 0;
        while let Some(joined) = checks.join_next().await {
            let (i, v) = joined.unwrap();
            assert_eq!(v.is_valid(), i % 2 == 0, "job {i}");
            answered += 1;
        }
        assert_eq!(answered, 16);
    }

    #[tokio::test]
    async fn a_dropped_request_does_not_stop_the_pool() {
        let pool = pool(1);
        let stored = pool.hash(pw("correct horse battery staple")).await.unwrap();
        // Requests whose clients went away before their hash ran.
        for _ in 0..4 {
            let pool = pool.clone();
            let stored = stored.clone();
            tokio::spawn(async move { pool.verify(pw("abandoned-password"), stored).await })
                .abort();
        }
        assert!(pool
            .verify(pw("correct horse battery staple"), stored)
            .await
            .unwrap()
            .is_valid());
    }
}
