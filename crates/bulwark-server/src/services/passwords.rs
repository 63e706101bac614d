//! Password hashing on a fixed pool of hashing threads, off the async runtime.
//!
//! Each Argon2id hash holds `m` KiB of memory for its whole run, so the number of threads
//! (`passwords.max_concurrent_hashes`) bounds memory at `m × threads` and keeps a login flood
//! from starving the runtime: requests queue for a thread instead of running all at once.
//!
//! The threads live as long as the pool and keep their Argon2 memory between hashes: a fresh
//! 19 MiB block per hash costs page faults and a memset on every login. A thread takes the
//! next queued job as soon as it finishes one, without waiting for the async task that
//! submitted the last job to be scheduled again.

use super::ServiceError;
use bulwark_core::password::hash::{HashMemory, PasswordHash, PasswordHasher, Verification};
use bulwark_core::password::Password;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&PasswordHasher, &mut HashMemory) + Send>;

/// Hashes passwords on `max_concurrent` dedicated threads.
#[derive(Clone, Debug)]
pub struct HashPool {
    hasher: Arc<PasswordHasher>,
    /// Jobs for the threads; they stop when the last clone of the pool is dropped.
    jobs: mpsc::Sender<Job>,
    /// Where the time of each job (queueing included) is recorded.
    metrics: Arc<crate::metrics::Metrics>,
}

impl HashPool {
    /// A pool of `max_concurrent` hashing threads. Fails only if the OS refuses a thread.
    pub fn new(
        hasher: PasswordHasher,
        max_concurrent: usize,
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
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&PasswordHasher, &mut HashMemory) -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        let started = std::time::Instant::now();
        self.jobs
            .send(Box::new(move |hasher, memory| {
                // The requester may have gone (client disconnected): the result is dropped.
                let _ = tx.send(job(hasher, memory));
            }))
            .map_err(|_| ServiceError::Internal("hashing threads stopped".into()))?;
        let result = rx
            .await
            .map_err(|_| ServiceError::Internal("a hashing thread failed".into()));
        self.metrics.password_hashing.observe(started.elapsed());
        result
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

    fn pool(threads: usize) -> HashPool {
        let params = Argon2Params {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        HashPool::new(
            PasswordHasher::new(params, Scheme::Argon2id, 600_000).unwrap(),
            threads,
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
