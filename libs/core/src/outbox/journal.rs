//! The read-event journal: where an SQLite service puts the access events of reads
//! under `audit.read_event_sync = "relaxed"` before it answers.
//!
//! A group of events is one `write()` to an append-only file beside the database
//! (`<database>-read-events`), instead of an INSERT sent to SQLite's worker thread
//! and waited for: the promise is the same as a relaxed commit's (the events are
//! in the operating system's hands, so they survive a crash or `kill -9` of
//! custodia, not a power loss of the machine), at a fraction of the cost per check.
//! [`Journal::move_to_outbox`] moves the records into the outbox table, from the
//! forwarder's `peek` (so nothing enqueued is ever invisible to it) and from a
//! background task, then empties the file. The outbox's INSERT is idempotent by
//! event id, so a record moved twice (a crash between the INSERT and emptying the
//! file) is stored once. A file left by a crashed process is moved by the next one;
//! a record torn by the crash (the tail of the file) is cut off when it is opened.
//!
//! One process at a time uses a journal: it holds an advisory lock on the file. An
//! outbox that cannot take the lock writes its read events to the table directly.
//!
//! Memory and disk stay bounded when the table cannot take the records for a while
//! (the database is locked, the disk is full): a move reads at most
//! [`MOVE_CHUNK_BYTES`] at a time and keeps what it moved before a failure, opening
//! scans the file record by record, and once [`MAX_BACKLOG_BYTES`] wait to be
//! moved, [`Journal::append`] refuses ([`Backlog`]) so that the caller writes to the
//! table itself (and fails the call if that fails too) instead of growing the file
//! without limit.
//!
//! Record: `u32` length of the body (little endian), `u32` CRC-32 of the body, the
//! body: `<event id>\n<event count>\n<payload>` (an outbox row).

use std::{
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// An outbox row: first event id, payload, number of events.
pub(super) type Row = (String, String, i64);

/// The read-event journal of one database.
#[derive(Debug)]
pub(super) struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    /// One move at a time.
    moving: tokio::sync::Mutex<()>,
    /// Most bytes read (whole records) per insert of a move.
    chunk_bytes: u64,
    /// Most bytes waiting to be moved before appends are refused.
    max_backlog: AtomicU64,
}

/// Most bytes of records a move reads and inserts at a time (a single larger
/// record is read whole).
pub(super) const MOVE_CHUNK_BYTES: u64 = 4 << 20;

/// Most bytes waiting to be moved before [`Journal::append`] refuses more.
pub(super) const MAX_BACKLOG_BYTES: u64 = 256 << 20;

/// [`Journal::append`] refused: too many records wait to be moved into the table.
#[derive(Debug, thiserror::Error)]
#[error("the read-event journal holds {0} bytes not yet moved into the outbox table")]
pub(super) struct Backlog(pub u64);

#[derive(Debug)]
struct State {
    /// Opened for appending, with this process's lock on it.
    file: File,
    /// Bytes written.
    len: u64,
    /// Bytes already moved into the outbox table.
    moved: u64,
}

const HEADER: usize = 8;

impl Journal {
    /// Opens (creates) the journal of the SQLite database `database`, cutting off
    /// a torn last record; `None` when another outbox holds it.
    pub(super) fn open(database: &Path) -> anyhow::Result<Option<Self>> {
        let mut name = database.as_os_str().to_owned();
        name.push("-read-events");
        let path = PathBuf::from(name);
        let mut file = File::options()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        file.seek(SeekFrom::Start(0))?;
        let total = file.metadata()?.len();
        let valid = scan(&mut BufReader::new(&file))?;
        if valid < total {
            tracing::warn!(
                torn_bytes = total - valid,
                "read-event journal ends with a torn record (a crash while writing it); cut off"
            );
            file.set_len(valid)?;
        }
        Ok(Some(Self {
            path,
            state: Mutex::new(State {
                file,
                len: valid,
                moved: 0,
            }),
            moving: tokio::sync::Mutex::new(()),
            chunk_bytes: MOVE_CHUNK_BYTES,
            max_backlog: AtomicU64::new(MAX_BACKLOG_BYTES),
        }))
    }

    /// Sets how many bytes may wait to be moved before appends are refused.
    pub(super) fn set_max_backlog(&self, bytes: u64) {
        self.max_backlog.store(bytes, Ordering::Relaxed);
    }

    /// Sets the chunk and backlog limits (tests use small ones).
    #[cfg(test)]
    fn with_limits(mut self, chunk_bytes: u64, max_backlog: u64) -> Self {
        self.chunk_bytes = chunk_bytes;
        self.set_max_backlog(max_backlog);
        self
    }

    /// Appends `rows` in one write. On error nothing of them stays in the file; with
    /// [`Backlog`] when too much waits to be moved (nothing written).
    pub(super) fn append(&self, rows: &[Row]) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(rows.iter().map(|r| r.1.len() + 64).sum());
        for row in rows {
            encode(row, &mut buf);
        }
        let mut state = self.state.lock().expect("journal state");
        let waiting = state.len - state.moved;
        if waiting >= self.max_backlog.load(Ordering::Relaxed) {
            return Err(Backlog(waiting).into());
        }
        if let Err(e) = state.file.write_all(&buf) {
            // A partial record would hide every record after it.
            let len = state.len;
            state.file.set_len(len)?;
            return Err(e.into());
        }
        state.len += buf.len() as u64;
        Ok(())
    }

    /// Moves every record written so far into the outbox through `insert` (which
    /// must be idempotent by event id), at most [`MOVE_CHUNK_BYTES`] of records per
    /// call of `insert`, then empties the file when nothing was written meanwhile.
    /// When an insert fails, the chunks moved before it stay moved. Returns the
    /// number of rows moved.
    pub(super) async fn move_to_outbox<F, Fut>(&self, mut insert: F) -> anyhow::Result<usize>
    where
        F: FnMut(Vec<Row>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let _moving = self.moving.lock().await;
        let (from, to) = {
            let state = self.state.lock().expect("journal state");
            (state.moved, state.len)
        };
        if from == to {
            return Ok(0);
        }
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(from))?;
        let mut at = from;
        let mut count = 0;
        while at < to {
            let (rows, bytes) = read_records(&mut reader, to - at, self.chunk_bytes)?;
            anyhow::ensure!(
                bytes > 0,
                "read-event journal {} is damaged at byte {at}",
                self.path.display(),
            );
            count += rows.len();
            insert(rows).await?;
            at += bytes;
            self.state.lock().expect("journal state").moved = at;
        }
        let mut state = self.state.lock().expect("journal state");
        if state.len == to {
            state.file.set_len(0)?;
            state.len = 0;
            state.moved = 0;
        }
        Ok(count)
    }

    /// Whether records wait to be moved.
    pub(super) fn has_unmoved(&self) -> bool {
        let state = self.state.lock().expect("journal state");
        state.len > state.moved
    }
}

fn encode((id, payload, count): &Row, buf: &mut Vec<u8>) {
    let body_len = id.len() + 1 + 20 + 1 + payload.len();
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    buf.reserve(body_len);
    buf.extend_from_slice(id.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(count.to_string().as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(payload.as_bytes());
    let body = &buf[start + HEADER..];
    let len = u32::try_from(body.len()).expect("an outbox row under 4 GiB");
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One whole, intact record from `reader` (at most `limit` bytes of it): its body
/// and length, or `None` at the end or where the data is torn or altered.
fn next_record(reader: &mut impl Read, limit: u64) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    let mut header = [0; HEADER];
    if limit < HEADER as u64 || !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let size = HEADER as u64 + u64::from(len);
    if size > limit {
        return Ok(None);
    }
    let mut body = vec![0; len as usize];
    if !read_full(reader, &mut body)? || crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    Ok(Some((body, size)))
}

/// Fills `buf`; `false` when the data ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many bytes at the start of `reader` are whole, intact records.
fn scan(reader: &mut impl Read) -> std::io::Result<u64> {
    let mut valid = 0;
    while let Some((body, size)) = next_record(reader, u64::MAX)? {
        if decode(&body).is_none() {
            break;
        }
        valid += size;
    }
    Ok(valid)
}

/// Rows from `reader` until `chunk` bytes are read (at least one record, if any),
/// within the next `limit` bytes; with the bytes they took. Stops early at a record
/// that is torn or altered.
fn read_records(
    reader: &mut impl Read,
    limit: u64,
    chunk: u64,
) -> std::io::Result<(Vec<Row>, u64)> {
    let mut rows = Vec::new();
    let mut at = 0;
    while at < limit && (at == 0 || at < chunk) {
        let Some((body, size)) = next_record(reader, limit - at)? else {
            break;
        };
        let Some(row) = decode(&body) else {
            break;
        };
        rows.push(row);
        at += size;
    }
    Ok((rows, at))
}

/// The whole records at the start of `bytes`, and how many bytes they take.
#[cfg(test)]
fn parse(bytes: &[u8]) -> (Vec<Row>, usize) {
    let (rows, at) =
        read_records(&mut &bytes[..], bytes.len() as u64, u64::MAX).expect("reading a slice");
    (rows, at as usize)
}

fn decode(body: &[u8]) -> Option<Row> {
    let text = std::str::from_utf8(body).ok()?;
    let mut parts = text.splitn(3, '\n');
    let id = parts.next()?.to_string();
    let count = parts.next()?.parse().ok()?;
    let payload = parts.next()?.to_string();
    Some((id, payload, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u32) -> Row {
        (format!("id-{i}"), format!("{{\"n\":{i}}}\nx"), i64::from(i))
    }

    /// Moves everything through an insert that keeps the rows; returns them (and
    /// checks that the move counts them all).
    async fn move_all(journal: &Journal) -> Vec<Row> {
        let moved = std::sync::Mutex::new(Vec::new());
        let n = journal
            .move_to_outbox(|rows| {
                moved.lock().unwrap().extend(rows);
                async { Ok(()) }
            })
            .await
            .unwrap();
        let moved = moved.into_inner().unwrap();
        assert_eq!(n, moved.len(), "rows counted by the move");
        moved
    }

    #[test]
    fn records_round_trip_and_a_torn_or_altered_tail_is_not_read() {
        let mut buf = Vec::new();
        for i in 0..3 {
            encode(&row(i), &mut buf);
        }
        let whole = buf.len();
        assert_eq!(parse(&buf), ((0..3).map(row).collect(), whole));
        encode(&row(3), &mut buf);
        // Torn: the last record cut anywhere.
        for cut in whole..buf.len() {
            assert_eq!(parse(&buf[..cut]).1, whole, "cut at {cut}");
        }
        // Altered: a flipped byte in the last record's body.
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(parse(&buf), ((0..3).map(row).collect(), whole));
    }

    #[tokio::test]
    async fn a_second_opener_is_refused_and_a_torn_tail_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let journal = Journal::open(&db).unwrap().unwrap();
        assert!(Journal::open(&db).unwrap().is_none(), "locked by the first");
        journal.append(&[row(1), row(2)]).unwrap();
        drop(journal);
        // A crash in the middle of a write: half a record at the end.
        let mut torn = Vec::new();
        encode(&row(3), &mut torn);
        let mut file = File::options()
            .append(true)
            .open(dir.path().join("x.db-read-events"))
            .unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let journal = Journal::open(&db).unwrap().unwrap();
        journal.append(&[row(4)]).unwrap();
        let moved = move_all(&journal).await;
        assert_eq!(moved, vec![row(1), row(2), row(4)]);
        assert!(!journal.has_unmoved());
        assert_eq!(
            std::fs::metadata(dir.path().join("x.db-read-events"))
                .unwrap()
                .len(),
            0,
            "emptied once moved"
        );
    }

    #[tokio::test]
    async fn a_failed_move_keeps_the_records_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("x.db")).unwrap().unwrap();
        journal.append(&[row(1)]).unwrap();
        let err = journal
            .move_to_outbox(|_| async { anyhow::bail!("database is locked") })
            .await;
        assert!(err.is_err());
        journal.append(&[row(2)]).unwrap();
        let moved = move_all(&journal).await;
        assert_eq!(moved, vec![row(1), row(2)]);
    }

    #[tokio::test]
    async fn a_move_goes_in_bounded_chunks_and_keeps_what_it_moved_before_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let record = {
            let mut buf = Vec::new();
            encode(&row(0), &mut buf);
            buf.len() as u64
        };
        // Three records per chunk.
        let journal = Journal::open(&dir.path().join("x.db"))
            .unwrap()
            .unwrap()
            .with_limits(3 * record, u64::MAX);
        journal
            .append(&(0..10).map(row).collect::<Vec<_>>())
            .unwrap();
        // The second insert fails: the first chunk stays moved.
        let calls = std::sync::Mutex::new(Vec::new());
        let err = journal
            .move_to_outbox(|rows| {
                let mut calls = calls.lock().unwrap();
                calls.push(rows);
                let fail = calls.len() == 2;
                async move {
                    anyhow::ensure!(!fail, "database is locked");
                    Ok(())
                }
            })
            .await;
        assert!(err.is_err());
        assert_eq!(
            calls.lock().unwrap()[0],
            (0..3).map(row).collect::<Vec<_>>()
        );
        let moved = std::sync::Mutex::new(Vec::new());
        let n = journal
            .move_to_outbox(|rows| {
                let mut moved = moved.lock().unwrap();
                assert!(rows.len() <= 3, "a chunk of {} rows", rows.len());
                moved.extend(rows);
                async { Ok(()) }
            })
            .await
            .unwrap();
        assert_eq!(n, 7);
        assert_eq!(
            moved.into_inner().unwrap(),
            (3..10).map(row).collect::<Vec<_>>()
        );
        assert!(!journal.has_unmoved());
    }

    #[tokio::test]
    async fn appends_are_refused_past_the_backlog_until_a_move() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("x.db"))
            .unwrap()
            .unwrap()
            .with_limits(u64::MAX, 1);
        journal.append(&[row(1)]).unwrap();
        let err = journal.append(&[row(2)]).unwrap_err();
        assert!(err.is::<Backlog>(), "{err}");
        let moved = move_all(&journal).await;
        assert_eq!(moved, vec![row(1)], "the refused row was never written");
        journal.append(&[row(3)]).unwrap();
    }
}
