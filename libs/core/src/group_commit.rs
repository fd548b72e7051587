//! Group commit: concurrent callers that each need a small durable write share one
//! transaction.
//!
//! One writer task at a time takes every batch queued (up to a limit) and writes
//! them together, so the transaction's fixed costs (the lock, the fsync, the round
//! trips) are paid once per group instead of once per call. Each caller still gets
//! its own results, and gets them only once they are durable. If the group's
//! transaction fails, each batch is retried in a transaction of its own, so one bad
//! batch fails alone.
//!
//! The writer is a task of its own, so a caller that is cancelled (a client hanging
//! up) never abandons the batches of the others. When a group is written it takes
//! the next one at once, and stops when the queue is empty; the next caller starts
//! it again. Callers only wait for their own results: no caller has to take a lock
//! in turn to learn that its group was written, which put one task wake-up per
//! caller of the last group between two groups.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// Writes `items` in one transaction and returns one result per item, in order.
pub type WriteFn<T, R> =
    Arc<dyn Fn(Vec<T>) -> BoxFuture<'static, anyhow::Result<Vec<R>>> + Send + Sync>;

type Done<R> = oneshot::Sender<anyhow::Result<Vec<R>>>;

/// A group-commit queue in front of one write function.
pub struct GroupCommit<T, R> {
    inner: Arc<Inner<T, R>>,
}

struct Inner<T, R> {
    queue: Mutex<Queue<T, R>>,
    /// Held by the writer task while it writes a group (tests hold it to let a
    /// queue form).
    writer: Arc<tokio::sync::Mutex<()>>,
    write: WriteFn<T, R>,
    max_items: usize,
}

struct Queue<T, R> {
    batches: VecDeque<(Vec<T>, Done<R>)>,
    /// Whether a writer task is running; it clears this itself, under the queue's
    /// lock, when it finds the queue empty.
    writing: bool,
}

impl<T, R> std::fmt::Debug for GroupCommit<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("max_items", &self.inner.max_items)
            .finish_non_exhaustive()
    }
}

impl<T, R> GroupCommit<T, R>
where
    T: Clone + Send + 'static,
    R: Send + 'static,
{
    /// A queue writing through `write`, at most `max_items` items per group (a single
    /// larger batch is written alone, never split).
    pub fn new<F, Fut>(max_items: usize, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<R>>> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue {
                    batches: VecDeque::new(),
                    writing: false,
                }),
                writer: Arc::new(tokio::sync::Mutex::new(())),
                write: Arc::new(move |items| Box::pin(write(items))),
                max_items: max_items.max(1),
            }),
        }
    }

    /// Writes `items`, together with whatever other callers submit meanwhile; returns
    /// one result per item once they are committed.
    pub async fn submit(&self, items: Vec<T>) -> anyhow::Result<Vec<R>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (done, result) = oneshot::channel();
        let start = {
            let mut queue = self.inner.queue.lock().expect("group commit queue");
            queue.batches.push_back((items, done));
            !std::mem::replace(&mut queue.writing, true)
        };
        if start {
            tokio::spawn(run_writer(self.inner.clone()));
        }
        match result.await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the write was abandoned by its writer"),
        }
    }
}

/// The writer task: writes groups until the queue is empty.
async fn run_writer<T, R>(inner: Arc<Inner<T, R>>)
where
    T: Clone + Send + 'static,
    R: Send + 'static,
{
    // Should a write panic (or the task be dropped), the batches queued behind it
    // still get a writer.
    let mut exit = AbnormalExit(Some(inner.clone()));
    loop {
        let _writer = inner.writer.lock().await;
        let group = {
            let mut queue = inner.queue.lock().expect("group commit queue");
            let group = take_group(&mut queue.batches, inner.max_items);
            if group.is_empty() {
                queue.writing = false;
                exit.0 = None;
                return;
            }
            group
        };
        write_group(inner.write.clone(), group).await;
    }
}

/// Armed while the writer task runs: if the task ends other than by finding the
/// queue empty (a write panicked, or the task was dropped with its runtime), the
/// flag is cleared and, with batches still queued, a new writer started. The
/// callers of the group being written get an error (their senders drop).
struct AbnormalExit<T: Clone + Send + 'static, R: Send + 'static>(Option<Arc<Inner<T, R>>>);

impl<T: Clone + Send + 'static, R: Send + 'static> Drop for AbnormalExit<T, R> {
    fn drop(&mut self) {
        let Some(inner) = self.0.take() else {
            return;
        };
        let mut queue = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.writing = false;
        if !queue.batches.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            queue.writing = true;
            runtime.spawn(run_writer(inner.clone()));
        }
    }
}

/// The next group: queued batches up to `max_items` items (at least one batch),
/// skipping those whose caller gave up.
fn take_group<T, R>(
    queue: &mut VecDeque<(Vec<T>, Done<R>)>,
    max_items: usize,
) -> Vec<(Vec<T>, Done<R>)> {
    let mut group = Vec::new();
    let mut items = 0;
    while let Some((next, done)) = queue.front() {
        if done.is_closed() {
            queue.pop_front();
            continue;
        }
        if !group.is_empty() && items + next.len() > max_items {
            break;
        }
        items += next.len();
        group.extend(queue.pop_front());
    }
    group
}

async fn write_group<T: Clone, R>(write: WriteFn<T, R>, group: Vec<(Vec<T>, Done<R>)>) {
    if group.len() > 1 {
        let all: Vec<T> = group.iter().flat_map(|(items, _)| items.clone()).collect();
        let expected = all.len();
        match write(all).await {
            Ok(mut results) if results.len() == expected => {
                for (items, done) in group.into_iter().rev() {
                    let mine = results.split_off(results.len() - items.len());
                    let _ = done.send(Ok(mine));
                }
                return;
            }
            Ok(_) => tracing::error!("group write returned the wrong number of results"),
            Err(e) => tracing::debug!(error = %e, "group write failed; writing batches alone"),
        }
    }
    for (items, done) in group {
        let _ = done.send(write(items).await);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn queued<T, R>(gc: &GroupCommit<T, R>) -> usize {
        gc.inner.queue.lock().unwrap().batches.len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_share_writes_and_get_their_own_results() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let gc = Arc::new(GroupCommit::new(1000, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                Ok(items.iter().map(|i| i * 2).collect())
            }
        }));
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let gc = gc.clone();
                tokio::spawn(async move { (i, gc.submit(vec![i, i + 100]).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, r) = t.await.unwrap();
            assert_eq!(r, vec![i * 2, (i + 100) * 2]);
        }
        assert!(calls.load(Ordering::SeqCst) <= 64);
    }

    #[tokio::test]
    async fn an_abandoned_batch_is_not_written() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let log = written.clone();
        let gc = Arc::new(GroupCommit::new(1000, move |items: Vec<i32>| {
            log.lock().unwrap().extend(items.iter().copied());
            async move { Ok(items) }
        }));
        let guard = gc.inner.writer.clone().lock_owned().await;
        let a = gc.clone();
        let abandoned = tokio::spawn(async move { a.submit(vec![1]).await });
        while queued(&gc) == 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        drop(guard);
        assert_eq!(gc.submit(vec![2]).await.unwrap(), vec![2]);
        assert_eq!(*written.lock().unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn a_failing_batch_fails_alone() {
        let gc = Arc::new(GroupCommit::new(1000, |items: Vec<i32>| async move {
            anyhow::ensure!(items.iter().all(|i| *i >= 0), "negative");
            Ok(items)
        }));
        // Queue both before either writes, so they form one group.
        let guard = gc.inner.writer.clone().lock_owned().await;
        let (a, b) = (gc.clone(), gc.clone());
        let good = tokio::spawn(async move { a.submit(vec![1, 2]).await });
        let bad = tokio::spawn(async move { b.submit(vec![-1]).await });
        while queued(&gc) < 2 {
            tokio::task::yield_now().await;
        }
        drop(guard);
        assert_eq!(good.await.unwrap().unwrap(), vec![1, 2]);
        assert!(bad.await.unwrap().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_write_fails_its_group_and_the_batches_behind_it_get_a_writer() {
        let started = Arc::new(tokio::sync::Notify::new());
        let go = Arc::new(tokio::sync::Notify::new());
        let (s, g) = (started.clone(), go.clone());
        let gc = Arc::new(GroupCommit::new(1000, move |items: Vec<i32>| {
            let (started, go) = (s.clone(), g.clone());
            async move {
                if items.contains(&13) {
                    started.notify_one();
                    go.notified().await;
                    panic!("a bug in a write function");
                }
                Ok(items)
            }
        }));
        let a = gc.clone();
        let panicking = tokio::spawn(async move { a.submit(vec![13]).await });
        started.notified().await;
        // Queued while the panicking group is being written.
        let b = gc.clone();
        let behind = tokio::spawn(async move { b.submit(vec![1]).await });
        while queued(&gc) < 1 {
            tokio::task::yield_now().await;
        }
        go.notify_one();
        let err = panicking.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert_eq!(behind.await.unwrap().unwrap(), vec![1]);
        assert_eq!(gc.submit(vec![2]).await.unwrap(), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_stops_when_the_queue_is_empty_and_the_next_caller_starts_one() {
        let gc = GroupCommit::new(10, |items: Vec<u32>| async move { Ok(items) });
        for round in 0..20u32 {
            assert_eq!(gc.submit(vec![round]).await.unwrap(), vec![round]);
            // The writer finds the queue empty and stops (it may still be on its way).
            let mut spins = 0;
            while gc.inner.queue.lock().unwrap().writing {
                spins += 1;
                assert!(spins < 1_000_000, "the writer never stopped");
                tokio::task::yield_now().await;
            }
        }
    }
}
