//! CPU work of a big batch spread over the machine's cores.
//!
//! A 10,000-subject BatchCheckConsent normalises, hashes and looks up every
//! subject and builds every result: tens of milliseconds of CPU that one call
//! would otherwise spend on a single core while the others wait.

use std::{num::NonZeroUsize, sync::OnceLock, thread};

/// Batches smaller than this stay on the calling thread: a thread costs more
/// than it saves.
const MIN_PARALLEL: usize = 2_000;

fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1)
            .min(8)
    })
}

/// `f(i, &items[i])` for every item, in order; big inputs are split into one
/// contiguous part per core, each mapped on a scoped thread (the caller's thread
/// takes the first part).
pub fn map<T, U, F>(items: &[T], f: F) -> Vec<U>
where
    T: Sync,
    U: Send,
    F: Fn(usize, &T) -> U + Sync,
{
    let parts = cores().min(items.len() / (MIN_PARALLEL / 2));
    if items.len() < MIN_PARALLEL || parts < 2 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let size = items.len().div_ceil(parts);
    let f = &f;
    let run = move |start: usize, part: &[T]| -> Vec<U> {
        part.iter()
            .enumerate()
            .map(|(i, t)| f(start + i, t))
            .collect()
    };
    thread::scope(|s| {
        let mut chunks = items.chunks(size).enumerate();
        let (_, first) = chunks.next().expect("at least one part");
        let others: Vec<_> = chunks
            .map(|(k, part)| s.spawn(move || run(k * size, part)))
            .collect();
        let mut out = run(0, first);
        out.reserve(items.len() - out.len());
        for h in others {
            out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::map;

    #[test]
    fn keeps_order_and_indexes_small_and_big() {
        for n in [0, 1, 1_999, 2_000, 10_001] {
            let items: Vec<usize> = (0..n).map(|i| i * 3).collect();
            let out = map(&items, |i, t| (i, *t));
            assert_eq!(out.len(), n);
            assert!(
                out.iter()
                    .enumerate()
                    .all(|(i, (j, t))| i == *j && *t == i * 3)
            );
        }
    }
}
