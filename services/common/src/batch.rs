//! Natural batching: concurrent calls that arrive while earlier batches are
//! running are handed to the next run together, so N requests cost one
//! statement (one round trip, one commit) instead of N. Nothing waits for a
//! batch to fill: with a free slot a call runs at once, alone if it is alone,
//! so latency at low load is unchanged and batches grow only under load.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// The batch task is gone (the runtime is shutting down) or a run panicked.
#[derive(Debug, thiserror::Error)]
#[error("batch runner stopped")]
pub struct Stopped;

struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<O>,
}

type RunFn<I, O> = dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Vec<O>> + Send>> + Send + Sync;

/// Hands calls to `run` in batches of at most `max` inputs, with at most
/// `parallel` runs at a time. `run` answers each input, in order.
pub struct Batcher<I, O> {
    jobs: mpsc::UnboundedSender<Job<I, O>>,
    slots: Arc<Semaphore>,
    run: Arc<RunFn<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self { jobs: self.jobs.clone(), slots: self.slots.clone(), run: self.run.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batch task on the current Tokio runtime.
    pub fn spawn<F, Fut>(max: usize, parallel: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job<I, O>>();
        let slots = Arc::new(Semaphore::new(parallel.max(1)));
        let run: Arc<RunFn<I, O>> = Arc::new(move |inputs| Box::pin(run(inputs)));
        let max = max.max(1);
        let (task_slots, task_run) = (slots.clone(), run.clone());
        tokio::spawn(async move {
            // Calls queue up only while every slot is taken; when one frees, they go together.
            while let Some(first) = queue.recv().await {
                let Ok(slot) = task_slots.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < max {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
                    batch.into_iter().map(|j| (j.input, j.reply)).unzip();
                let done = task_run(inputs);
                tokio::spawn(async move {
                    let outputs = done.await;
                    debug_assert_eq!(outputs.len(), replies.len(), "a batch must answer every input");
                    for (reply, out) in replies.into_iter().zip(outputs) {
                        // The caller may have gone (client disconnected); the work is done anyway.
                        let _ = reply.send(out);
                    }
                    drop(slot);
                });
            }
        });
        Self { jobs, slots, run }
    }

    /// Runs `input` and returns its answer: at once on the caller's task when
    /// a slot is free (no hand-over to pay at low load), else in the next batch.
    pub async fn call(&self, input: I) -> Result<O, Stopped> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            let mut out = (self.run)(vec![input]).await;
            drop(slot);
            return out.pop().ok_or(Stopped);
        }
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { input, reply }).map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_lone_call_runs_at_once_and_concurrent_calls_share_runs() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let b = Batcher::spawn(8, 1, move |xs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                xs.into_iter().map(|x| x * 2).collect::<Vec<_>>()
            }
        });
        assert_eq!(b.call(1).await.ok(), Some(2));
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        let calls: Vec<_> = (0..20u32)
            .map(|i| {
                let b = b.clone();
                async move { b.call(i).await }
            })
            .collect();
        let answers: Vec<_> = futures::future::join_all(calls).await.into_iter().map(Result::ok).collect();
        assert_eq!(answers, (0..20).map(|i| Some(i * 2)).collect::<Vec<_>>());
        // 20 calls, at most 8 per run: at least 3 runs, far fewer than 20.
        let total = runs.load(Ordering::SeqCst) - 1;
        assert!((3..20).contains(&total), "{total} runs for 20 concurrent calls");
    }

    #[tokio::test]
    async fn a_panicking_run_fails_its_calls_and_frees_its_slot() {
        let b = Batcher::spawn(4, 1, |xs: Vec<u32>| async move {
            assert!(!xs.contains(&13), "unlucky");
            xs
        });
        let lone = b.clone();
        assert!(tokio::spawn(async move { lone.call(13).await }).await.is_err(), "the caller's task fails");
        assert_eq!(b.call(7).await.ok(), Some(7));
    }
}
