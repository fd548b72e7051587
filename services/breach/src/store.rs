//! The breach register on SQLite or PostgreSQL (portable SQL over `sqlx::Any`).
//!
//! A breach is one `breaches` row (its input fields as a protobuf `record`, and
//! the columns listings filter on) plus append-only `breach_items`
//! (assessments, authority notifications, subject communications, waivers,
//! timeline entries) and its `breach_team`. Every change runs in one
//! transaction that first claims the idempotency key, then locks the breach
//! row, checks the rules on the current state, applies its writes and enqueues
//! the access event ([`RecordedWrite`]): a refused or failed change leaves
//! nothing behind. Every method answers [`ApiError`]; a database failure is
//! INTERNAL. No statement differs by backend, so there is no per-backend module.

use custodia_core::{
    ApiError,
    idempotency::{self, RequestKey},
    outbox::{AccessEvent, SqlOutbox},
    proto_time::timestamp_micros,
    recorded_write::RecordedWrite,
    storage::{Db, Params},
};
use custodia_proto::breach::v1::{
    self as pb, AuthorityNotification, CommunicationWaiver, RiskAssessment, RiskLevel,
    SubjectCommunication, TeamMember, TimelineEntry,
};
use prost::Message;
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use crate::state::State;

/// A breach as stored, without its timeline.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The id in `breaches/{id}`.
    pub id: String,
    /// Lifecycle state.
    pub state: State,
    /// The input fields of the record.
    pub record: pb::Breach,
    /// Principal who reported it.
    pub reporter: String,
    /// When the institution became aware (µs).
    pub awareness_us: i64,
    /// The authority deadline (µs).
    pub deadline_us: i64,
    /// The level of the latest assessment.
    pub risk_level: RiskLevel,
    /// Send time of the initial authority notification (µs).
    pub first_notice_us: Option<i64>,
    /// Lessons learned, on closing.
    pub lessons_learned: String,
    /// Closing time (µs).
    pub close_us: Option<i64>,
    /// End of retention (µs).
    pub retain_until_us: Option<i64>,
    /// Version for the etag.
    pub version: i64,
    /// Reporting time (µs).
    pub create_us: i64,
    /// Last change (µs).
    pub update_us: i64,
    /// Assessments, oldest first.
    pub assessments: Vec<RiskAssessment>,
    /// Authority notifications, oldest first.
    pub notifications: Vec<AuthorityNotification>,
    /// Subject communications, oldest first.
    pub communications: Vec<SubjectCommunication>,
    /// The latest waiver.
    pub waiver: Option<CommunicationWaiver>,
    /// The response team.
    pub team: Vec<TeamMember>,
}

/// One write of a change, applied in order.
#[derive(Debug, Clone)]
pub enum Write {
    /// Replaces the record's input fields; `awareness_us` and the deadline follow.
    Record(Box<pb::Breach>, i64, i64),
    /// Appends an assessment and sets the breach's risk level.
    Assessment(Box<RiskAssessment>),
    /// Appends an authority notification (the first one sets `first_notice_us`).
    Notification(Box<AuthorityNotification>, i64),
    /// Appends a subject communication.
    Communication(Box<SubjectCommunication>),
    /// Appends a waiver.
    Waiver(Box<CommunicationWaiver>),
    /// Replaces the team.
    Team(Vec<TeamMember>),
    /// Appends a timeline entry; its name and create time are set here.
    Timeline(Box<TimelineEntry>),
    /// Closes the breach.
    Close {
        /// Lessons learned.
        lessons: String,
        /// Close time (µs).
        close_us: i64,
        /// Retention end (µs).
        retain_until_us: i64,
    },
    /// Deletes the breach and everything kept with it.
    Delete,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Applied; the names of the timeline entries it appended.
    Applied(Vec<String>),
    /// A retry of an earlier call with the same request_id: that call's resource.
    Replayed(String),
}

/// The breach register.
#[derive(Debug, Clone)]
pub struct BreachStore {
    db: Db,
    outbox: SqlOutbox,
}

/// A stored protobuf message; one that does not decode is INTERNAL.
fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ApiError> {
    M::decode(bytes).map_err(ApiError::internal)
}

fn stored_from_row(r: &AnyRow) -> Result<Stored, ApiError> {
    let record: Vec<u8> = r.try_get("record")?;
    let state: String = r.try_get("state")?;
    let risk: i64 = r.try_get("risk_level")?;
    Ok(Stored {
        id: r.try_get("id")?,
        state: State::parse(&state).map_err(ApiError::Internal)?,
        record: decode(&record)?,
        reporter: r.try_get("reporter")?,
        awareness_us: r.try_get("awareness_us")?,
        deadline_us: r.try_get("deadline_us")?,
        risk_level: RiskLevel::try_from(risk as i32).unwrap_or_default(),
        first_notice_us: r.try_get("first_notice_us")?,
        lessons_learned: r.try_get("lessons_learned")?,
        close_us: r.try_get("close_us")?,
        retain_until_us: r.try_get("retain_until_us")?,
        version: r.try_get("version")?,
        create_us: r.try_get("create_us")?,
        update_us: r.try_get("update_us")?,
        ..Default::default()
    })
}

const COLUMNS: &str = "id, state, record, reporter, awareness_us, deadline_us, risk_level, \
    first_notice_us, lessons_learned, close_us, retain_until_us, version, create_us, update_us";

/// Loads breach `id` with its kept items and team.
async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<Stored>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM breaches WHERE id = $1");
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let mut b = stored_from_row(&row)?;
    let items = sqlx::query(
        "SELECT kind, body FROM breach_items WHERE breach_id = $1 AND kind <> 'timeline' \
         ORDER BY kind, seq",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    for item in items {
        let kind: String = item.try_get(0)?;
        let body: Vec<u8> = item.try_get(1)?;
        match kind.as_str() {
            "assessment" => b.assessments.push(decode(&body)?),
            "notification" => b.notifications.push(decode(&body)?),
            "communication" => b.communications.push(decode(&body)?),
            "waiver" => b.waiver = Some(decode(&body)?),
            other => {
                return Err(ApiError::internal(anyhow::anyhow!(
                    "unknown breach item kind {other:?}"
                )));
            }
        }
    }
    let team = sqlx::query("SELECT body FROM breach_team WHERE breach_id = $1 ORDER BY position")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    for member in team {
        b.team.push(decode(&member.try_get::<Vec<u8>, _>(0)?)?);
    }
    Ok(Some(b))
}

async fn append_item(
    conn: &mut AnyConnection,
    id: &str,
    kind: &str,
    body: Vec<u8>,
    now_us: i64,
) -> Result<i64, ApiError> {
    let seq: i64 = sqlx::query(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM breach_items WHERE breach_id = $1 AND kind = $2",
    )
    .bind(id.to_string())
    .bind(kind.to_string())
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    sqlx::query(
        "INSERT INTO breach_items (breach_id, kind, seq, body, create_us) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.to_string())
    .bind(kind.to_string())
    .bind(seq)
    .bind(body)
    .bind(now_us)
    .execute(&mut *conn)
    .await?;
    Ok(seq)
}

/// The resource name of timeline entry `seq` of breach `id`.
pub fn entry_name(id: &str, seq: i64) -> String {
    format!("breaches/{id}/timelineEntries/{seq}")
}

async fn apply(
    conn: &mut AnyConnection,
    id: &str,
    write: Write,
    now_us: i64,
    entries: &mut Vec<String>,
) -> Result<(), ApiError> {
    match write {
        Write::Record(record, awareness_us, deadline_us) => {
            sqlx::query(
                "UPDATE breaches SET record = $2, awareness_us = $3, deadline_us = $4 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(record.encode_to_vec())
            .bind(awareness_us)
            .bind(deadline_us)
            .execute(&mut *conn)
            .await?;
        }
        Write::Assessment(a) => {
            sqlx::query("UPDATE breaches SET risk_level = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(i64::from(a.risk_level))
                .execute(&mut *conn)
                .await?;
            append_item(conn, id, "assessment", a.encode_to_vec(), now_us).await?;
        }
        Write::Notification(n, send_us) => {
            sqlx::query(
                "UPDATE breaches SET first_notice_us = COALESCE(first_notice_us, $2) WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(send_us)
            .execute(&mut *conn)
            .await?;
            append_item(conn, id, "notification", n.encode_to_vec(), now_us).await?;
        }
        Write::Communication(c) => {
            append_item(conn, id, "communication", c.encode_to_vec(), now_us).await?;
        }
        Write::Waiver(w) => {
            append_item(conn, id, "waiver", w.encode_to_vec(), now_us).await?;
        }
        Write::Team(members) => {
            sqlx::query("DELETE FROM breach_team WHERE breach_id = $1")
                .bind(id.to_string())
                .execute(&mut *conn)
                .await?;
            for (i, m) in members.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO breach_team (breach_id, position, body) VALUES ($1, $2, $3)",
                )
                .bind(id.to_string())
                .bind(i as i64)
                .bind(m.encode_to_vec())
                .execute(&mut *conn)
                .await?;
            }
        }
        Write::Timeline(mut entry) => {
            let seq: i64 = sqlx::query(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM breach_items \
                 WHERE breach_id = $1 AND kind = 'timeline'",
            )
            .bind(id.to_string())
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
            entry.name = entry_name(id, seq);
            entry.create_time = Some(timestamp_micros(now_us));
            sqlx::query(
                "INSERT INTO breach_items (breach_id, kind, seq, body, create_us) \
                 VALUES ($1, 'timeline', $2, $3, $4)",
            )
            .bind(id.to_string())
            .bind(seq)
            .bind(entry.encode_to_vec())
            .bind(now_us)
            .execute(&mut *conn)
            .await?;
            entries.push(entry.name.clone());
        }
        Write::Close {
            lessons,
            close_us,
            retain_until_us,
        } => {
            sqlx::query(
                "UPDATE breaches SET state = 'CLOSED', lessons_learned = $2, close_us = $3, \
                 retain_until_us = $4 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(lessons)
            .bind(close_us)
            .bind(retain_until_us)
            .execute(&mut *conn)
            .await?;
        }
        Write::Delete => {
            // The breach row goes first: the append-only triggers let its items go
            // only once it is gone.
            for sql in [
                "DELETE FROM breaches WHERE id = $1",
                "DELETE FROM breach_items WHERE breach_id = $1",
                "DELETE FROM breach_team WHERE breach_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(id.to_string())
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Filters of `ListBreaches`; all set filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BreachFilter {
    /// Only this state.
    pub state: Option<State>,
    /// Only deadlines strictly before this (µs).
    pub deadline_before_us: Option<i64>,
    /// Only breaches whose clock is OVERDUE at this time (µs).
    pub overdue_at_us: Option<i64>,
    /// Only this risk level.
    pub risk_level: Option<RiskLevel>,
}

impl BreachStore {
    /// The register in `db` (migrated), enqueuing access events in `outbox`.
    pub fn new(db: Db, outbox: SqlOutbox) -> Self {
        Self { db, outbox }
    }

    /// Records a new breach. Idempotent by `key`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        id: &str,
        record: &pb::Breach,
        reporter: &str,
        awareness_us: i64,
        deadline_us: i64,
        first_entry: TimelineEntry,
        key: Option<&RequestKey>,
        event: &AccessEvent,
        now_us: i64,
    ) -> Result<Done, ApiError> {
        let name = format!("breaches/{id}");
        let mut tx = match self.begin(key, &name, event, now_us).await? {
            Ok(w) => w,
            Err(done) => return Ok(done),
        };
        sqlx::query(
            "INSERT INTO breaches (id, state, record, reporter, awareness_us, deadline_us, \
             risk_level, version, create_us, update_us) VALUES ($1, 'OPEN', $2, $3, $4, $5, 0, 1, $6, $6)",
        )
        .bind(id.to_string())
        .bind(record.encode_to_vec())
        .bind(reporter.to_string())
        .bind(awareness_us)
        .bind(deadline_us)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        let mut entries = Vec::new();
        apply(
            &mut tx,
            id,
            Write::Timeline(Box::new(first_entry)),
            now_us,
            &mut entries,
        )
        .await?;
        tx.commit(&[event]).await?;
        Ok(Done::Applied(entries))
    }

    /// The write of a change of `resource` keyed by `key`, or, for a retry of
    /// an earlier call, that call's resource (the replay recorded with `event`).
    async fn begin(
        &self,
        key: Option<&RequestKey>,
        resource: &str,
        event: &AccessEvent,
        now_us: i64,
    ) -> Result<Result<RecordedWrite<'_>, Done>, ApiError> {
        let claimed = RecordedWrite::claim(&self.db, &self.outbox, key, resource, now_us).await?;
        // The replay names the breach the first call touched (`breaches/{id}`,
        // also when it wrote a timeline entry).
        let breach_of = |earlier: &str| earlier.split('/').take(2).collect::<Vec<_>>().join("/");
        Ok(claimed
            .write_or_replay(Some(event), breach_of)
            .await?
            .map_err(Done::Replayed))
    }

    /// Changes breach `id`: `decide` sees the current state and returns the
    /// writes, or refuses. Idempotent by `key` (see [`idempotency`]). `event` is
    /// enqueued in the same transaction.
    pub async fn change<F>(
        &self,
        id: &str,
        key: Option<&RequestKey>,
        event: &AccessEvent,
        now_us: i64,
        decide: F,
    ) -> Result<Done, ApiError>
    where
        F: FnOnce(&Stored) -> Result<Vec<Write>, ApiError>,
    {
        let name = format!("breaches/{id}");
        // The key binds the body, which names the breach: a replay is of this one.
        let mut tx = match self.begin(key, &name, event, now_us).await? {
            Ok(w) => w,
            Err(done) => return Ok(done),
        };
        // Lock the row first (a write), so concurrent changes serialise.
        let touched =
            sqlx::query("UPDATE breaches SET version = version + 1, update_us = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(now_us)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if touched == 0 {
            return Err(ApiError::not_found("breach", name));
        }
        let mut current = load(&mut tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found("breach", name.clone()))?;
        // The lock-taking UPDATE above already counted this change.
        current.version -= 1;
        let writes = decide(&current)?;
        let mut entries = Vec::new();
        for w in writes {
            apply(&mut tx, id, w, now_us, &mut entries).await?;
        }
        if key.is_some_and(|k| k.method() == "AddTimelineEntry")
            && let Some(entry) = entries.last()
        {
            idempotency::set_resource(&mut tx, key, entry).await?;
        }
        tx.commit(&[event]).await?;
        Ok(Done::Applied(entries))
    }

    /// Breach `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, ApiError> {
        let mut conn = self.db.pool().acquire().await?;
        load(&mut conn, id).await
    }

    /// Breaches matching `filter`, earliest deadline first, after `after`
    /// (deadline µs, id), at most `limit`.
    pub async fn list(
        &self,
        filter: &BreachFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Stored>, ApiError> {
        let mut p = Params::new();
        let mut clauses: Vec<String> = Vec::new();
        if let Some(state) = filter.state {
            clauses.push(format!("state = {}", p.text(state.as_str())));
        }
        if let Some(before) = filter.deadline_before_us {
            clauses.push(format!("deadline_us < {}", p.int(before)));
        }
        if let Some(now) = filter.overdue_at_us {
            let now = p.int(now);
            let no_risk = p.int(RiskLevel::NoRisk as i64);
            clauses.push(format!(
                "first_notice_us IS NULL AND deadline_us < {now} AND risk_level <> {no_risk}"
            ));
        }
        if let Some(level) = filter.risk_level {
            clauses.push(format!("risk_level = {}", p.int(level as i64)));
        }
        if let Some((deadline, id)) = after {
            let (d1, d2) = (p.int(deadline), p.int(deadline));
            let id = p.text(id);
            clauses.push(format!(
                "(deadline_us > {d1} OR (deadline_us = {d2} AND id > {id}))"
            ));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT id FROM breaches {where_clause} ORDER BY deadline_us, id LIMIT {}",
            p.int(limit as i64)
        );
        let q = p.bind(sqlx::query(AssertSqlSafe(sql)));
        let mut conn = self.db.pool().acquire().await?;
        let ids: Vec<String> = q
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(b) = load(&mut conn, &id).await? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Timeline entries of breach `id` with `seq > after`, oldest first.
    pub async fn timeline(
        &self,
        id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, TimelineEntry)>, ApiError> {
        let rows = sqlx::query(
            "SELECT seq, body FROM breach_items WHERE breach_id = $1 AND kind = 'timeline' \
             AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id.to_string())
        .bind(after)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, decode(&r.try_get::<Vec<u8>, _>(1)?)?)))
            .collect()
    }

    /// One timeline entry by its sequence number.
    pub async fn timeline_entry(
        &self,
        id: &str,
        seq: i64,
    ) -> Result<Option<TimelineEntry>, ApiError> {
        let row = sqlx::query(
            "SELECT body FROM breach_items WHERE breach_id = $1 AND kind = 'timeline' AND seq = $2",
        )
        .bind(id.to_string())
        .bind(seq)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| decode(&r.try_get::<Vec<u8>, _>(0)?))
            .transpose()
    }
}
