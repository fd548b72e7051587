//! `custodia erasures replay`: the erasure ledger applied again to databases
//! restored from a backup (D-9; see `custodia_core::erasure_ledger`).

use custodia_core::{
    Config,
    erasure_ledger::{ErasedIn, ErasureLedger},
    storage::{self, to_micros},
};

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replay {
    /// Ledger entries applied.
    pub entries: usize,
    /// Lines that did not parse (a torn last line), skipped.
    pub skipped: usize,
    /// Consent events erased again (a subject the backup brought back).
    pub consent_events: i64,
    /// Receipts erased again.
    pub receipts: i64,
    /// Access-log index entries removed again (keys shredded again).
    pub audit_entries: u64,
}

impl std::fmt::Display for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} erasure(s) replayed ({} unreadable line(s) skipped): consent: {} event(s) and {} \
             receipt(s) erased again; audit-log: {} index entr(y/ies) removed again",
            self.entries, self.skipped, self.consent_events, self.receipts, self.audit_entries
        )
    }
}

/// Applies every ledger entry again to the consent and audit-log databases of
/// `config` (migrated first: a backup may predate the running release). Safe
/// to run more than once: a subject already gone is erased again, which finds
/// nothing.
pub async fn replay(config: &Config) -> anyhow::Result<Replay> {
    let ledger = ErasureLedger::new(config.erasure_ledger_path());
    let (entries, skipped) = ledger.read()?;
    let mut out = Replay {
        entries: entries.len(),
        skipped,
        ..Default::default()
    };
    let now_us = to_micros(chrono::Utc::now());
    let open = |def: custodia_core::server::ServiceDef| async move {
        let db = storage::open_service(config, def.name).await?;
        db.migrate(def.migrations).await?;
        anyhow::Ok(db)
    };
    let consent = open(custodia_consent::SERVICE).await?;
    let audit = open(custodia_audit_log::SERVICE).await?;
    let consent_store = custodia_consent::store::ConsentStore::new(consent.clone());
    let audit_store = custodia_audit_log::store::LogStore::new(audit.clone());
    for entry in &entries {
        match entry.service {
            ErasedIn::Consent => {
                let erased = consent_store.erase(&entry.subject_hashes, now_us).await?;
                out.consent_events += erased.events;
                out.receipts += erased.receipts;
            }
            ErasedIn::AuditLog => {
                for hash in &entry.subject_hashes {
                    out.audit_entries += audit_store.shred(hash, now_us).await?;
                }
            }
        }
    }
    for db in [consent, audit] {
        db.scrub_log().await;
        db.close().await;
    }
    Ok(out)
}
