//! The erasure ledger (D-9): erasures that stay done after a backup is restored.
//!
//! A database backup taken before an erasure still holds the erased person; a
//! restore (after a disk loss, a bad migration) would bring them back without
//! anyone noticing. So every erasure of consent records and every shredding of
//! the access log is also appended here, as one JSON line naming the keyed hashes
//! of the subjects (never an identifier), the service and the data-subject
//! request; `custodia erasures replay` applies the ledger again to restored
//! databases. The ledger lives outside the databases (`[erasure] ledger_file`) so
//! that restoring them does not roll it back.
//!
//! Each line is written with one `write` in append mode and flushed to disk
//! before the erasure answers: an erasure the caller was told about is in the
//! ledger. A torn last line (a crash mid-write) is skipped when read.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The service whose data an entry erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErasedIn {
    /// consent: the subject's consent records (`EraseSubject`).
    Consent,
    /// audit-log: the subject's keys and index entries (`ShredSubject`).
    AuditLog,
}

/// One erasure as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When it was done (RFC 3339, UTC).
    pub time: chrono::DateTime<chrono::Utc>,
    /// Where.
    pub service: ErasedIn,
    /// Keyed hashes of the subject's identifiers.
    pub subject_hashes: Vec<String>,
    /// The data-subject request it served (`requests/{request}`), if named.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dsar_request: String,
}

/// The ledger file, appended to by every erasure of this process.
#[derive(Debug, Clone)]
pub struct ErasureLedger {
    path: Arc<PathBuf>,
    /// One append at a time within the process (lines from several processes
    /// are kept whole by `O_APPEND` and one `write` each).
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl ErasureLedger {
    /// The ledger at `path` (created, owner-only, on the first erasure).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path: Arc::new(path),
            lock: Arc::default(),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and flushes it to disk.
    pub async fn append(&self, entry: &LedgerEntry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let _one = self.lock.lock().await;
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                crate::private_files::create_dir_all(dir)?;
            }
            let mut file = crate::private_files::file_options()
                .create(true)
                .append(true)
                .open(path.as_path())
                .with_context(|| format!("opening the erasure ledger {}", path.display()))?;
            file.write_all(&line)?;
            file.sync_data()?;
            Ok(())
        })
        .await?
    }

    /// Every entry, oldest first (none when the file does not exist yet). A
    /// line that does not parse (a torn last line) is skipped and counted.
    pub fn read(&self) -> anyhow::Result<(Vec<LedgerEntry>, usize)> {
        let file = match std::fs::File::open(self.path.as_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading the erasure ledger {}", self.path.display())
                });
            }
        };
        let mut entries = Vec::new();
        let mut skipped = 0;
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(e) => entries.push(e),
                Err(_) => skipped += 1,
            }
        }
        Ok((entries, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: ErasedIn, hash: &str) -> LedgerEntry {
        LedgerEntry {
            time: "2026-12-05T10:00:00Z".parse().unwrap(),
            service,
            subject_hashes: vec![hash.into()],
            dsar_request: "requests/r-1".into(),
        }
    }

    #[tokio::test]
    async fn entries_come_back_in_order_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ErasureLedger::new(dir.path().join("sub/ledger.jsonl"));
        assert_eq!(ledger.read().unwrap(), (vec![], 0), "no file yet");
        let a = entry(ErasedIn::Consent, "aa");
        let b = entry(ErasedIn::AuditLog, "bb");
        ledger.append(&a).await.unwrap();
        ledger.append(&b).await.unwrap();
        // A crash in the middle of a third line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(ledger.path())
            .unwrap();
        f.write_all(b"{\"time\":\"2026-12-").unwrap();
        assert_eq!(ledger.read().unwrap(), (vec![a.clone(), b], 1));
        let text = std::fs::read_to_string(ledger.path()).unwrap();
        assert!(text.starts_with(
            "{\"time\":\"2026-12-05T10:00:00Z\",\"service\":\"consent\",\"subject_hashes\":[\"aa\"]"
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ledger.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "owner-only");
        }
    }
}
