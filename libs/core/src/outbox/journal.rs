//! The read-event journal: where a service puts the access events of reads under
//! `audit.read_event_sync = "relaxed"` before it answers: on SQLite always, in a
//! file beside the database (`<database>-read-events`); on PostgreSQL when
//! `audit.read_event_journal_dir` names a directory (`<dir>/<service>-read-events`).
//!
//! A group of events is one `write()` to an append-only file, instead of an INSERT
//! sent to the database and waited for: the promise is the same as a relaxed
//! commit's (the events are in the operating system's hands, so they survive a
//! crash or `kill -9` of custodia, not a power loss of the machine), at a fraction
//! of the cost per check. On PostgreSQL the file must also outlive what runs
//! custodia (the pod): a graceful stop moves it into the table before the pools
//! close; what a lost machine loses is what was not moved yet (normally the last
//! ~200 ms of reads; more while the database was unreachable).
//! [`Journal::move_to_outbox`] moves the records into the outbox table, from the
//! forwarder's `peek` (so nothing enqueued is ever invisible to it) and from a
//! background task. A move first seals the file appended to (renames it to
//! `<journal>.<n>`; appends go on in a new file), then moves each sealed segment
//! and removes it: the files hold only what waits to be moved, however busy the
//! service (a single file emptied "when nothing was appended during the move"
//! was, under steady load, never emptied). The outbox's INSERT is idempotent by
//! event id, so a record moved twice (a crash between the INSERT and removing its
//! segment) is stored once, unless the forwarder delivered and deleted it in
//! between: then it is delivered again, and audit-log, idempotent by event id,
//! keeps one. Files left by a crashed process are moved by the next
//! one; a record torn by the crash (the tail of a file) is cut off when it is opened.
//!
//! One process at a time uses a journal: it holds an advisory lock on
//! `<journal>.lock`. An outbox that cannot take the lock writes its read events to
//! the table directly.
//!
//! Memory and disk stay bounded when the table cannot take the records for a while
//! (the database is locked, the disk is full): a move reads at most
//! [`MOVE_CHUNK_BYTES`] at a time and keeps what it moved before a failure, opening
//! scans the files record by record, a failed move seals nothing new until the
//! sealed segments are moved, and once [`MAX_BACKLOG_BYTES`] wait to be moved,
//! [`Journal::append`] refuses ([`Backlog`]) so that the caller writes to the
//! table itself (and fails the call if that fails too) instead of growing the files
//! without limit.
//!
//! Record: `u32` length of the body (little endian), `u32` CRC-32 of the body, the
//! body: `<event id>\n<event count>\n<payload>` (an outbox row).

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::private_files;

/// An outbox row: first event id, payload, number of events.
pub(super) type Row = (String, String, i64);

/// The read-event journal of one database.
#[derive(Debug)]
pub(super) struct Journal {
    /// The segment appended to; sealed segments are `<path>.<n>`.
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
#[error(
    "the read-event journal's files hold {0} bytes not yet moved into the outbox table and removed"
)]
pub(super) struct Backlog(pub u64);

#[derive(Debug)]
struct State {
    /// `<path>.lock`, locked while this journal is open.
    _lock: File,
    /// `<path>`, opened for appending.
    active: File,
    /// Bytes in `active`.
    active_len: u64,
    /// Sealed segments not yet moved (wholly), oldest first.
    sealed: VecDeque<Sealed>,
    /// Bytes of `sealed` on disk (counted until a segment is removed, moved or not).
    sealed_waiting: u64,
    /// Number of the next sealed segment.
    next_number: u64,
}

/// A segment no longer appended to, waiting to be moved and removed.
#[derive(Debug)]
struct Sealed {
    path: PathBuf,
    len: u64,
    /// Bytes already moved: where a move that failed part-way resumes.
    moved: u64,
    /// Whether its rows may be merged (see [`Journal::move_to_outbox`]): sealed by
    /// this version from a file it wrote, `<path>.<n>`; not for `<path>.<n>.single`.
    merge: bool,
}

const HEADER: usize = 8;

impl Journal {
    /// The journal file of the SQLite database `database`: beside it, so that the
    /// two share a disk and a fate.
    pub(super) fn beside(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push("-read-events");
        PathBuf::from(name)
    }

    /// Opens (creates, with its directory) the journal `path`: the records left in
    /// it and in sealed segments beside it by an earlier process wait to be moved,
    /// each file's torn last record cut off. `None` when another outbox holds it.
    pub(super) fn open(path: &Path) -> anyhow::Result<Option<Self>> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            private_files::create_dir_all(dir)?;
        }
        let path = path.to_path_buf();
        let lock = private_files::file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(suffixed(&path, "lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let mut sealed = VecDeque::new();
        let found = sealed_segments(&path)?;
        for (segment, merge) in found
            .iter()
            .map(|(n, merge)| (segment_path(&path, *n, *merge), *merge))
        {
            let file = File::options().read(true).write(true).open(&segment)?;
            let len = cut_torn_tail(&segment, &file)?;
            if len == 0 {
                std::fs::remove_file(&segment)?;
            } else {
                sealed.push_back(Sealed {
                    path: segment,
                    len,
                    moved: 0,
                    merge,
                });
            }
        }
        let active = private_files::file_options()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let active_len = cut_torn_tail(&path, &active)?;
        let journal = Self {
            path,
            state: Mutex::new(State {
                _lock: lock,
                active,
                active_len,
                sealed_waiting: sealed.iter().map(|s| s.len).sum(),
                sealed,
                next_number: found.last().map_or(0, |(n, _)| n + 1),
            }),
            moving: tokio::sync::Mutex::new(()),
            chunk_bytes: MOVE_CHUNK_BYTES,
            max_backlog: AtomicU64::new(MAX_BACKLOG_BYTES),
        };
        // Records left in the active file: never moved by this version, but an
        // older one moved such a file in part, row by row, so they are sealed apart
        // and moved without merging (a merged row known by an id already stored
        // would be skipped whole).
        {
            let mut state = journal.state.lock().expect("journal state");
            if state.active_len > 0 {
                journal.seal(&mut state, false)?;
            }
        }
        Ok(Some(journal))
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
        let waiting = state.sealed_waiting + state.active_len;
        if waiting >= self.max_backlog.load(Ordering::Relaxed) {
            return Err(Backlog(waiting).into());
        }
        if let Err(e) = state.active.write_all(&buf) {
            // A partial record would hide every record after it.
            let len = state.active_len;
            state.active.set_len(len)?;
            return Err(e.into());
        }
        state.active_len += buf.len() as u64;
        Ok(())
    }

    /// Moves the records written so far into the outbox through `insert` (which
    /// must be idempotent by event id), at most [`MOVE_CHUNK_BYTES`] of records per
    /// call of `insert`. The segment appended to is sealed first (renamed to
    /// `<path>.<n>`, appends going on in a new `<path>`), and each sealed segment
    /// is removed once moved, so the files hold only what waits to be moved however
    /// busy the service is. When an insert fails, the chunks moved before it stay
    /// moved. A segment damaged on disk has what precedes the damage moved and is
    /// then set aside (see [`damaged_path`]). Returns the number of rows moved.
    ///
    /// The rows an insert gets depend on the segment alone: chunks are cut from
    /// the segment's start, and a move that failed part-way resumes at a chunk's
    /// end. So a segment moved again (a crash before its removal) hands `insert`
    /// the same chunks, and `insert` may merge a chunk's rows into fewer rows
    /// (known by their first row's id) and stay idempotent: `insert`'s second
    /// argument says so. It is false for records found in the active file at open
    /// (sealed as `<path>.<n>.single`): an older version moved such a file in part,
    /// row by row.
    pub(super) async fn move_to_outbox<F, Fut>(&self, mut insert: F) -> anyhow::Result<usize>
    where
        F: FnMut(Vec<Row>, bool) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let _moving = self.moving.lock().await;
        let mut count = 0;
        // Records appended during this move wait for the next one: a move is bounded.
        let mut sealed_here = false;
        loop {
            let (segment, from, to, merge) = {
                let mut state = self.state.lock().expect("journal state");
                if state.sealed.is_empty() {
                    if sealed_here || state.active_len == 0 {
                        return Ok(count);
                    }
                    self.seal(&mut state, true)?;
                    sealed_here = true;
                }
                let oldest = state.sealed.front().expect("a sealed segment");
                (oldest.path.clone(), oldest.moved, oldest.len, oldest.merge)
            };
            let mut reader = BufReader::new(File::open(&segment)?);
            reader.seek(SeekFrom::Start(from))?;
            let mut at = from;
            let mut damaged = false;
            while at < to {
                let (rows, bytes) = read_records(&mut reader, to - at, self.chunk_bytes)?;
                if bytes == 0 {
                    damaged = true;
                    break;
                }
                count += rows.len();
                insert(rows, merge).await?;
                at += bytes;
                let mut state = self.state.lock().expect("journal state");
                state.sealed.front_mut().expect("a sealed segment").moved = at;
            }
            if damaged {
                // Appends never leave a partial record (see `append`), so this is the
                // disk's doing: what follows cannot be read. The segment is set aside
                // as it is, for whoever investigates, and never read again (an opener
                // does not take damaged files for segments), so the segments after it
                // keep moving instead of all waiting behind it.
                let aside = damaged_path(&segment);
                std::fs::rename(&segment, &aside)?;
                tracing::error!(
                    segment = %aside.display(),
                    at,
                    "read-event journal damaged: the access events after this byte cannot be read; set aside"
                );
            } else {
                std::fs::remove_file(&segment)?;
            }
            let mut state = self.state.lock().expect("journal state");
            if let Some(removed) = state.sealed.pop_front() {
                state.sealed_waiting -= removed.len;
            }
        }
    }

    /// Renames the active segment to the next sealed one (whose rows may be
    /// merged, or not) and opens a new active segment.
    fn seal(&self, state: &mut State, merge: bool) -> anyhow::Result<()> {
        let segment = segment_path(&self.path, state.next_number, merge);
        std::fs::rename(&self.path, &segment)?;
        let active = match private_files::file_options()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
        {
            Ok(active) => active,
            Err(e) => {
                // Appends must not go on into a segment being moved and removed:
                // the file takes its name back (if even that fails, appends go on in
                // the renamed file, which the next start moves).
                let _ = std::fs::rename(&segment, &self.path);
                return Err(e.into());
            }
        };
        state.next_number += 1;
        let len = std::mem::take(&mut state.active_len);
        state.sealed.push_back(Sealed {
            path: segment,
            len,
            moved: 0,
            merge,
        });
        state.sealed_waiting += len;
        state.active = active;
        Ok(())
    }

    /// Whether records wait to be moved.
    pub(super) fn has_unmoved(&self) -> bool {
        let state = self.state.lock().expect("journal state");
        state.active_len > 0 || !state.sealed.is_empty()
    }
}

/// `<path>.<suffix>`.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Sealed segment `n` of the journal `path`: `<path>.<n>`, or `<path>.<n>.single`
/// when its rows must not be merged.
fn segment_path(path: &Path, n: u64, merge: bool) -> PathBuf {
    if merge {
        suffixed(path, &n.to_string())
    } else {
        suffixed(path, &format!("{n}.single"))
    }
}

/// The sealed segments of `path` there are, in order: their numbers and whether
/// their rows may be merged (see [`segment_path`]).
fn sealed_segments(path: &Path) -> std::io::Result<Vec<(u64, bool)>> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(rest) = entry
            .file_name()
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .map(str::to_string)
        else {
            continue;
        };
        let (digits, merge) = match rest.strip_suffix(".single") {
            Some(digits) => (digits, false),
            None => (rest.as_str(), true),
        };
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = digits.parse::<u64>()
        {
            numbers.push((n, merge));
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Cuts `file` (at `path`) after its last whole, intact record; returns the length
/// kept. What follows is a record torn by a crash while it was written (shorter
/// than its header says), cut off; or else damage (a whole record that fails its
/// checksum: the disk's doing), and then the file as it was is first copied aside
/// (see [`damaged_path`]) for whoever investigates.
fn cut_torn_tail(path: &Path, mut file: &File) -> anyhow::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let total = file.metadata()?.len();
    let valid = scan(&mut BufReader::new(file))?;
    if valid < total {
        let mut header = [0; HEADER];
        file.seek(SeekFrom::Start(valid))?;
        let torn = total - valid < HEADER as u64 || {
            file.read_exact(&mut header)?;
            record_size(&header) > total - valid
        };
        if torn {
            tracing::warn!(
                torn_bytes = total - valid,
                "read-event journal ends with a torn record (a crash while writing it); cut off"
            );
        } else {
            let aside = damaged_path(path);
            std::fs::copy(path, &aside)?;
            tracing::error!(
                file = %aside.display(),
                at = valid,
                "read-event journal damaged: the access events after this byte cannot be read; copied aside"
            );
        }
        file.set_len(valid)?;
    }
    Ok(valid)
}

/// Where a damaged journal file is kept: `<file>.damaged-<ns since 1970>`, a name
/// never taken for a segment and never reused.
fn damaged_path(file: &Path) -> PathBuf {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    suffixed(file, &format!("damaged-{ns}"))
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
    let size = record_size(&header);
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if size > limit {
        return Ok(None);
    }
    let mut body = vec![0; (size - HEADER as u64) as usize];
    if !read_full(reader, &mut body)? || crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    Ok(Some((body, size)))
}

/// The size (header included) that a record's `header` declares.
fn record_size(header: &[u8; HEADER]) -> u64 {
    HEADER as u64 + u64::from(u32::from_le_bytes(header[..4].try_into().expect("4 bytes")))
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
            .move_to_outbox(|rows, _| {
                moved.lock().unwrap().extend(rows);
                async { Ok(()) }
            })
            .await
            .unwrap();
        let moved = moved.into_inner().unwrap();
        assert_eq!(n, moved.len(), "rows counted by the move");
        moved
    }

    /// A journal of `x.db` in a new directory whose rows 1 and 2 were sealed by a
    /// move that failed.
    async fn sealed_by_a_failed_move() -> (tempfile::TempDir, PathBuf, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::beside(&dir.path().join("x.db"));
        let journal = Journal::open(&path).unwrap().unwrap();
        journal.append(&[row(1), row(2)]).unwrap();
        let err = journal
            .move_to_outbox(|_, _| async { anyhow::bail!("database is locked") })
            .await;
        assert!(err.is_err());
        (dir, path, journal)
    }

    /// Bytes in the journal files of `x.db` in `dir` (the lock file aside), and how
    /// many files there are.
    fn on_disk(dir: &Path) -> (u64, usize) {
        let (mut bytes, mut files) = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if name.starts_with("x.db-read-events") && !name.ends_with(".lock") {
                bytes += entry.metadata().unwrap().len();
                files += 1;
            }
        }
        (bytes, files)
    }

    /// Bytes `rows` take in the journal.
    fn encoded_len(rows: &[Row]) -> u64 {
        let mut buf = Vec::new();
        for row in rows {
            encode(row, &mut buf);
        }
        buf.len() as u64
    }

    /// Appends keep coming while every move runs (a busy service): each move still
    /// frees what it moved, so the files hold only what waits.
    #[tokio::test]
    async fn a_busy_journal_holds_only_what_waits_to_be_moved() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&Journal::beside(&dir.path().join("x.db")))
            .unwrap()
            .unwrap();
        let mut next = 0;
        for round in 0..5 {
            let before: Vec<Row> = (next..next + 10).map(row).collect();
            next += 10;
            journal.append(&before).unwrap();
            let during: Vec<Row> = (next..next + 3).map(row).collect();
            next += 3;
            let moved = std::sync::Mutex::new(Vec::new());
            journal
                .move_to_outbox(|rows, _| {
                    moved.lock().unwrap().extend(rows);
                    // Each check answered meanwhile appends its event.
                    journal.append(&during).unwrap();
                    async { Ok(()) }
                })
                .await
                .unwrap();
            let mut want = if round == 0 {
                Vec::new()
            } else {
                // What the previous round appended during its move.
                (next - 16..next - 13).map(row).collect()
            };
            want.extend(before);
            assert_eq!(moved.into_inner().unwrap(), want, "round {round}");
            assert_eq!(
                on_disk(dir.path()),
                (encoded_len(&during), 1),
                "round {round}: only the records appended during the move"
            );
        }
        move_all(&journal).await;
        assert_eq!(on_disk(dir.path()), (0, 1));
        assert!(!journal.has_unmoved());
    }

    /// A segment damaged on disk (a flipped byte): what precedes the damage moves,
    /// the segment is kept aside, and what was appended after it moves too.
    #[tokio::test]
    async fn a_damaged_segment_is_set_aside_and_the_records_after_it_move_on() {
        // Rows 1 and 2 sealed; then a byte of row 2 flips on disk.
        let (_dir, path, journal) = sealed_by_a_failed_move().await;
        let segment = segment_path(&path, 0, true);
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[encoded_len(&[row(1)]) as usize + 10] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();
        journal.append(&[row(3)]).unwrap();

        assert_eq!(move_all(&journal).await, vec![row(1), row(3)]);
        let aside = the_damaged_file(&segment);
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            bytes,
            "kept as it was, for investigation"
        );
        assert!(!segment.exists());
        assert!(move_all(&journal).await.is_empty(), "not read again");
        drop(journal);
        let journal = Journal::open(&path).unwrap().unwrap();
        assert!(
            move_all(&journal).await.is_empty(),
            "nor by the next opener"
        );
        assert!(aside.exists());
    }

    /// The one damaged copy of `file` beside it.
    fn the_damaged_file(file: &Path) -> PathBuf {
        let prefix = format!("{}.damaged-", file.file_name().unwrap().to_str().unwrap());
        let found: Vec<PathBuf> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&prefix)
            })
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    }

    /// Damage found when a process opens the journal (a flipped byte in a record
    /// followed by others) is not taken for a torn tail: the file as it was is
    /// copied aside before what follows the damage is cut off.
    #[tokio::test]
    async fn damage_found_at_open_is_copied_aside_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::beside(&dir.path().join("x.db"));
        let journal = Journal::open(&path).unwrap().unwrap();
        journal.append(&[row(1), row(2), row(3)]).unwrap();
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[encoded_len(&[row(1)]) as usize + 10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();

        let journal = Journal::open(&path).unwrap().unwrap();
        assert_eq!(move_all(&journal).await, vec![row(1)]);
        assert_eq!(std::fs::read(the_damaged_file(&path)).unwrap(), bytes);
    }

    /// A process that stopped with sealed segments not yet moved (its move failed,
    /// then it crashed): the next one moves them first, then what was appended.
    #[tokio::test]
    async fn sealed_segments_left_behind_are_moved_in_order_by_the_next_opener() {
        let (dir, path, journal) = sealed_by_a_failed_move().await;
        journal.append(&[row(3)]).unwrap();
        assert_eq!(
            on_disk(dir.path()).1,
            2,
            "one sealed segment and the active"
        );
        drop(journal);

        let journal = Journal::open(&path).unwrap().unwrap();
        assert!(journal.has_unmoved());
        journal.append(&[row(4)]).unwrap();
        // The sealed segment may be merged; what the active file held (an older
        // version may have moved part of it row by row) may not; new appends may.
        let moved = std::sync::Mutex::new(Vec::new());
        journal
            .move_to_outbox(|rows, merge| {
                moved.lock().unwrap().push((rows, merge));
                async { Ok(()) }
            })
            .await
            .unwrap();
        assert_eq!(
            moved.into_inner().unwrap(),
            vec![
                (vec![row(1), row(2)], true),
                (vec![row(3)], false),
                (vec![row(4)], true)
            ]
        );
        assert_eq!(on_disk(dir.path()), (0, 1));
        // Numbering goes on after the segments found.
        journal.append(&[row(5)]).unwrap();
        assert_eq!(move_all(&journal).await, vec![row(5)]);
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
        let journal = Journal::open(&Journal::beside(&db)).unwrap().unwrap();
        assert!(
            Journal::open(&Journal::beside(&db)).unwrap().is_none(),
            "locked by the first"
        );
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

        let journal = Journal::open(&Journal::beside(&db)).unwrap().unwrap();
        journal.append(&[row(4)]).unwrap();
        let moved = move_all(&journal).await;
        assert_eq!(moved, vec![row(1), row(2), row(4)]);
        assert!(!journal.has_unmoved());
        assert_eq!(on_disk(dir.path()), (0, 1), "emptied once moved");
    }

    #[tokio::test]
    async fn a_failed_move_keeps_the_records_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&Journal::beside(&dir.path().join("x.db")))
            .unwrap()
            .unwrap();
        journal.append(&[row(1)]).unwrap();
        let err = journal
            .move_to_outbox(|_, _| async { anyhow::bail!("database is locked") })
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
        let journal = Journal::open(&Journal::beside(&dir.path().join("x.db")))
            .unwrap()
            .unwrap()
            .with_limits(3 * record, u64::MAX);
        journal
            .append(&(0..10).map(row).collect::<Vec<_>>())
            .unwrap();
        // The second insert fails: the first chunk stays moved.
        let calls = std::sync::Mutex::new(Vec::new());
        let err = journal
            .move_to_outbox(|rows, _| {
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
            .move_to_outbox(|rows, _| {
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
        let journal = Journal::open(&Journal::beside(&dir.path().join("x.db")))
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
