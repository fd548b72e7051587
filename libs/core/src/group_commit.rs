//! Group commit: concurrent callers that each need a small durable write share one
//! transaction.
//!
//! One caller at a time is the writer; it takes every batch queued behind it (up to a
//! limit) and writes them together, so the transaction's fixed costs (the lock, the
//! fsync, the round trips) are paid once per group instead of once per call. Each
//! caller still gets its own results, and gets them only once they are durable. If
//! the group's transaction fails, each batch is retried in a transaction of its own,
//! so one bad batch fails alone.
//!
//! The write runs on a task of its own, holding the writer lock, so a caller that is
//! cancelled (a client hanging up) never abandons the batches of the others.

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
    queue: Mutex<VecDeque<(Vec<T>, Done<R>)>>,
    writer: Arc<tokio::sync::Mutex<()>>,
    write: WriteFn<T, R>,
    max_items: usize,
}

impl<T, R> std::fmt::Debug for GroupCommit<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("max_items", &self.max_items)
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
            queue: Mutex::new(VecDeque::new()),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            write: Arc::new(move |items| Box::pin(write(items))),
            max_items: max_items.max(1),
        }
    }

    /// Writes `items`, together with whatever other callers submit meanwhile; returns
    /// one result per item once they are committed.
    pub async fn submit(&self, items: Vec<T>) -> anyhow::Result<Vec<R>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (done, mut result) = oneshot::channel();
        self.queue
            .lock()
            .expect("group commit queue")
            .push_back((items, done));
        loop {
            let guard = self.writer.clone().lock_owned().await;
            // The previous writer may have taken this batch into its group.
            if let Some(r) = ready(&mut result)? {
                return r;
            }
            let group = self.take_group();
            let write = self.write.clone();
            tokio::spawn(async move {
                let _writer = guard;
                write_group(write, group).await;
            })
            .await?;
            if let Some(r) = ready(&mut result)? {
                return r;
            }
            // A full group was taken before this batch; write the next one.
        }
    }

    /// The oldest queued batches, up to `max_items` items (at least one batch when
    /// any caller still waits); batches whose caller is gone are dropped.
    fn take_group(&self) -> Vec<(Vec<T>, Done<R>)> {
        let mut queue = self.queue.lock().expect("group commit queue");
        let mut group = Vec::new();
        let mut items = 0;
        while let Some((next, done)) = queue.front() {
            if done.is_closed() {
                // Its caller gave up (a client hanging up, a deadline) before it was
                // written: writing it later would apply a change nobody is waiting
                // for, possibly after others that followed it (an erasure).
                queue.pop_front();
                continue;
            }
            if !group.is_empty() && items + next.len() > self.max_items {
                break;
            }
            items += next.len();
            group.extend(queue.pop_front());
        }
        group
    }
}

type Ready<R> = anyhow::Result<Option<anyhow::Result<Vec<R>>>>;

fn ready<R>(result: &mut oneshot::Receiver<anyhow::Result<Vec<R>>>) -> Ready<R> {
    match result.try_recv() {
        Ok(r) => Ok(Some(r)),
        Err(oneshot::error::TryRecvError::Empty) => Ok(None),
        Err(oneshot::error::TryRecvError::Closed) => {
            anyhow::bail!("the write was abandoned by its writer")
        }
    }
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
        let guard = gc.writer.clone().lock_owned().await;
        let a = gc.clone();
        let abandoned = tokio::spawn(async move { a.submit(vec![1]).await });
        while gc.queue.lock().unwrap().is_empty() {
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
        let guard = gc.writer.clone().lock_owned().await;
        let (a, b) = (gc.clone(), gc.clone());
        let good = tokio::spawn(async move { a.submit(vec![1, 2]).await });
        let bad = tokio::spawn(async move { b.submit(vec![-1]).await });
        while gc.queue.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        drop(guard);
        assert_eq!(good.await.unwrap().unwrap(), vec![1, 2]);
        assert!(bad.await.unwrap().is_err());
    }
}
