//! Data sources: the external systems (CRM, Moodle, the SQL connector...)
//! implementing `custodia.connector.v1.DataSource`, plus custodia's own
//! consent and audit-log records as built-in sources. A source stores a
//! reference to its credentials (`env:VAR` or `config:NAME`, resolved when a
//! call is made), never the secret itself.

use custodia_core::{
    ApiError,
    auth::CallContext,
    echo::echo,
    fields::{absorb, enum_value},
    idempotency::{MAX_REQUEST_ID, RequestKey},
    pagination,
    proto_time::timestamp_micros,
    storage::to_micros,
    subject::KNOWN_TYPES,
    validate::{MAX_ID, MAX_MASK_PATHS, MAX_TEXT, Validator},
};
use custodia_proto::{
    connector::v1::Capability,
    dsar::v1::{self as pb, DataSourceState},
};
use secrecy::SecretString;
use std::time::Duration;

use crate::connector::{Failure, Target};

use crate::{
    api::Api,
    model::{self, BUILTIN_AUDIT, BUILTIN_CONSENT, check_purpose},
    store::Done,
};

/// Fields UpdateDataSource may change.
pub const UPDATABLE: &[&str] = &[
    "display_name",
    "endpoint",
    "credentials_ref",
    "state",
    "capabilities",
    "identifier_types",
    "data_categories",
    "purposes",
    "recipients",
    "call_timeout",
];

/// Longest call timeout a source may set.
const MAX_CALL_TIMEOUT_SECS: i64 = 600;

/// custodia's own records, as sources every fan-out includes.
/// custodia's own sources: the audit log at `audit_endpoint`, consent records at
/// `consent_endpoint`.
pub fn builtins(audit_endpoint: &str, consent_endpoint: &str) -> Vec<pb::DataSource> {
    let types: Vec<String> = KNOWN_TYPES.iter().map(|s| s.to_string()).collect();
    vec![
        pb::DataSource {
            name: model::source_name(BUILTIN_AUDIT),
            display_name: "custodia access log (who saw the subject's data)".into(),
            endpoint: audit_endpoint.to_string(),
            state: DataSourceState::Enabled as i32,
            capabilities: vec![Capability::Export as i32, Capability::Erase as i32],
            identifier_types: types.clone(),
            data_categories: vec!["accesses".into()],
            builtin: true,
            ..Default::default()
        },
        pb::DataSource {
            name: model::source_name(BUILTIN_CONSENT),
            display_name: "custodia consent records".into(),
            endpoint: consent_endpoint.to_string(),
            state: DataSourceState::Enabled as i32,
            capabilities: vec![
                Capability::Export as i32,
                Capability::Erase as i32,
                Capability::Object as i32,
            ],
            identifier_types: types,
            data_categories: vec!["consents".into(), "consent_events".into()],
            builtin: true,
            ..Default::default()
        },
    ]
}

/// Whether `r` is a credentials reference (`env:VAR` or `config:NAME`).
pub fn valid_credentials_ref(r: &str) -> bool {
    let Some((kind, name)) = r.split_once(':') else {
        return false;
    };
    matches!(kind, "env" | "config")
        && !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The token a credentials reference points to; `None` for no reference.
pub fn resolve_credentials(
    config: &custodia_core::Config,
    reference: &str,
) -> anyhow::Result<Option<SecretString>> {
    if reference.is_empty() {
        return Ok(None);
    }
    match reference.split_once(':') {
        Some(("env", var)) => std::env::var(var)
            .map(|v| Some(v.into()))
            .map_err(|_| anyhow::anyhow!("environment variable {var} (credentials) is not set")),
        Some(("config", key)) => config
            .dsar
            .credentials
            .get(key)
            .cloned()
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("dsar.credentials.{key} is not configured")),
        _ => anyhow::bail!("unknown credentials reference"),
    }
}

/// Most entries of each list of a data source (capabilities, identifier types,
/// data categories, purposes, recipients).
const MAX_LIST: usize = 200;

fn validate_source(v: &mut Validator, f: &str, s: &pb::DataSource, paths: Option<&[String]>) {
    let checks = |p: &str| paths.is_none_or(|list| list.iter().any(|x| x == p));
    if checks("display_name") {
        v.max_len(&format!("{f}.display_name"), &s.display_name, MAX_ID);
    }
    if checks("endpoint") {
        let field = format!("{f}.endpoint");
        if s.endpoint.trim().is_empty() {
            v.add(field, "is required (the connector's gRPC URI)");
        } else if !(s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://"))
            || s.endpoint.len() > 512
            || tonic::transport::Endpoint::from_shared(s.endpoint.clone()).is_err()
        {
            v.add(field, "must be an http:// or https:// URI");
        }
    }
    if checks("credentials_ref")
        && !s.credentials_ref.is_empty()
        && !valid_credentials_ref(&s.credentials_ref)
    {
        v.add(
            format!("{f}.credentials_ref"),
            "must be a reference such as `env:CRM_TOKEN` or `config:crm` (never the secret itself)",
        );
    }
    if checks("state") && s.state != 0 {
        enum_value(
            v,
            &format!("{f}.state"),
            s.state,
            DataSourceState::Unspecified,
            "ENABLED, DISABLED",
        );
    }
    if checks("capabilities") {
        for (i, c) in s.capabilities.iter().enumerate().take(MAX_LIST) {
            enum_value(
                v,
                &format!("{f}.capabilities[{i}]"),
                *c,
                Capability::Unspecified,
                "EXPORT, ERASE, RESTRICT, RECTIFY, RETENTION",
            );
        }
    }
    if checks("identifier_types") {
        for (i, t) in s.identifier_types.iter().enumerate().take(MAX_LIST) {
            if t.is_empty()
                || t.len() > 64
                || !t.starts_with(|c: char| c.is_ascii_lowercase())
                || !t
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                v.add(
                    format!("{f}.identifier_types[{i}]"),
                    "must match [a-z][a-z0-9_]* (e.g. email)",
                );
            }
        }
    }
    if checks("data_categories") {
        for (i, c) in s.data_categories.iter().enumerate().take(MAX_LIST) {
            v.required(&format!("{f}.data_categories[{i}]"), c, 128);
        }
    }
    if checks("purposes") {
        for (i, p) in s.purposes.iter().enumerate().take(MAX_LIST) {
            check_purpose(v, &format!("{f}.purposes[{i}]"), p);
        }
    }
    if checks("recipients") {
        for (i, r) in s.recipients.iter().enumerate().take(MAX_LIST) {
            v.required(&format!("{f}.recipients[{i}]"), r, MAX_ID);
        }
    }
    if checks("call_timeout")
        && let Some(d) = &s.call_timeout
        && (d.seconds < 0
            || d.nanos < 0
            || d.seconds > MAX_CALL_TIMEOUT_SECS
            || (d.seconds == 0 && d.nanos == 0))
    {
        v.add(
            format!("{f}.call_timeout"),
            format!("must be between 1 ms and {MAX_CALL_TIMEOUT_SECS} s"),
        );
    }
    let lists = [
        ("capabilities", s.capabilities.len()),
        ("identifier_types", s.identifier_types.len()),
        ("data_categories", s.data_categories.len()),
        ("purposes", s.purposes.len()),
        ("recipients", s.recipients.len()),
    ];
    for (name, len) in lists {
        if len > MAX_LIST {
            v.add(format!("{f}.{name}"), "has more than 200 entries");
        }
    }
    if s.display_name.len() > MAX_TEXT {
        v.add(format!("{f}.display_name"), "is too long");
    }
}

fn copy_field(to: &mut pb::DataSource, from: &pb::DataSource, path: &str) {
    match path {
        "display_name" => to.display_name = from.display_name.clone(),
        "endpoint" => to.endpoint = from.endpoint.clone(),
        "credentials_ref" => to.credentials_ref = from.credentials_ref.clone(),
        "state" => {
            to.state = if from.state == 0 {
                DataSourceState::Enabled as i32
            } else {
                from.state
            }
        }
        "capabilities" => to.capabilities = from.capabilities.clone(),
        "identifier_types" => to.identifier_types = from.identifier_types.clone(),
        "data_categories" => to.data_categories = from.data_categories.clone(),
        "purposes" => to.purposes = from.purposes.clone(),
        "recipients" => to.recipients = from.recipients.clone(),
        "call_timeout" => to.call_timeout = from.call_timeout,
        _ => {}
    }
}

fn with_meta(
    mut s: pb::DataSource,
    version: i64,
    create_us: i64,
    update_us: i64,
) -> pb::DataSource {
    s.create_time = Some(timestamp_micros(create_us));
    s.update_time = Some(timestamp_micros(update_us));
    s.etag = format!("\"{version}\"");
    s.builtin = false;
    s
}

impl Api {
    /// Every source, built-in ones included, ordered by name.
    pub(crate) async fn all_sources(&self) -> Result<Vec<pb::DataSource>, ApiError> {
        let mut all = builtins(&self.audit_endpoint, &self.consent_endpoint);
        for (_, s, version, c, u) in self.store.list_sources().await? {
            all.push(with_meta(s, version, c, u));
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// One source, built-in or registered.
    pub(crate) async fn source(&self, id: &str) -> Result<pb::DataSource, ApiError> {
        if let Some(b) = builtins(&self.audit_endpoint, &self.consent_endpoint)
            .into_iter()
            .find(|b| b.name == model::source_name(id))
        {
            return Ok(b);
        }
        let (s, version, c, u) = self
            .store
            .get_source(id)
            .await?
            .ok_or_else(|| ApiError::not_found("data source", model::source_name(id)))?;
        Ok(with_meta(s, version, c, u))
    }

    pub(crate) async fn register_source(
        &self,
        call: &CallContext,
        r: pb::RegisterDataSourceRequest,
    ) -> Result<pb::DataSource, ApiError> {
        let key = RequestKey::of(call, "RegisterDataSource", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        if r.data_source_id.is_empty() {
            v.add("data_source_id", "is required");
        } else if !model::valid_source_id(&r.data_source_id) {
            v.add("data_source_id", "must be 1-63 characters of [a-z0-9-]");
        } else if r.data_source_id.starts_with("custodia-") {
            v.add(
                "data_source_id",
                "`custodia-*` is reserved for built-in sources",
            );
        }
        let Some(mut s) = r.data_source else {
            v.add("data_source", "is required");
            v.finish()?;
            unreachable!("finish fails with a violation");
        };
        validate_source(&mut v, "data_source", &s, None);
        v.finish()?;
        let id = r.data_source_id;
        s.name = model::source_name(&id);
        s.builtin = false;
        s.refresh_time = None;
        s.create_time = None;
        s.update_time = None;
        s.etag = String::new();
        if s.state == 0 {
            s.state = DataSourceState::Enabled as i32;
        }
        let event = self.event(call, "RegisterDataSource", s.name.clone(), None);
        let done = self
            .store
            .create_source(&id, &s, key.as_ref(), &event, to_micros(now))
            .await?;
        let id = match done {
            Done::Applied => id,
            Done::Replayed(earlier) => model::source_id_of(&earlier).to_string(),
        };
        self.source(&id).await
    }

    pub(crate) async fn get_source(
        &self,
        call: &CallContext,
        r: pb::GetDataSourceRequest,
    ) -> Result<pb::DataSource, ApiError> {
        let id = model::parse_source_name("name", &r.name)?;
        let s = self.source(&id).await?;
        self.record_read(self.event(call, "GetDataSource", s.name.clone(), None))
            .await?;
        Ok(s)
    }

    pub(crate) async fn list_sources(
        &self,
        call: &CallContext,
        r: pb::ListDataSourcesRequest,
    ) -> Result<pb::ListDataSourcesResponse, ApiError> {
        let size = pagination::page_size_or(r.page_size, 100)?;
        let after: Option<String> = pagination::decode(&r.page_token, "dataSources")?;
        let mut all: Vec<pb::DataSource> = self
            .all_sources()
            .await?
            .into_iter()
            .filter(|s| after.as_ref().is_none_or(|a| &s.name > a))
            .take(size + 1)
            .collect();
        let next = (all.len() > size)
            .then(|| pagination::encode(&all[size - 1].name.clone(), "dataSources"));
        all.truncate(size);
        self.record_read(self.event(call, "ListDataSources", String::new(), None))
            .await?;
        Ok(pb::ListDataSourcesResponse {
            data_sources: all,
            next_page_token: next.unwrap_or_default(),
        })
    }

    pub(crate) async fn update_source(
        &self,
        call: &CallContext,
        r: pb::UpdateDataSourceRequest,
    ) -> Result<pb::DataSource, ApiError> {
        let key = RequestKey::of(call, "UpdateDataSource", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(update) = r.data_source else {
            v.add("data_source", "is required");
            v.finish()?;
            unreachable!("finish fails with a violation");
        };
        let id = absorb(
            &mut v,
            model::parse_source_name("data_source.name", &update.name),
        );
        let paths: Vec<String> = match &r.update_mask {
            None => {
                v.add("update_mask", "is required");
                Vec::new()
            }
            Some(m) if m.paths.is_empty() => {
                v.add("update_mask.paths", "must name a field");
                Vec::new()
            }
            Some(m) if !v.max_items("update_mask.paths", m.paths.len(), MAX_MASK_PATHS) => {
                Vec::new()
            }
            Some(m) => {
                for (i, p) in m.paths.iter().enumerate() {
                    if !UPDATABLE.contains(&p.as_str()) {
                        v.add(
                            format!("update_mask.paths[{i}]"),
                            format!(
                                "`{}` cannot be updated; allowed: {}",
                                echo(p),
                                UPDATABLE.join(", ")
                            ),
                        );
                    }
                }
                m.paths.clone()
            }
        };
        validate_source(&mut v, "data_source", &update, Some(&paths));
        v.finish()?;
        let id = id.unwrap_or_default();
        if id.starts_with("custodia-") {
            self.source(&id).await?;
            return Err(ApiError::precondition(
                "BUILTIN_SOURCE",
                format!(
                    "data source `{}` is built into custodia and cannot be changed",
                    update.name
                ),
            ));
        }
        let event = self.event(call, "UpdateDataSource", update.name.clone(), None);
        self.store
            .change_source(&id, key.as_ref(), Some(&event), to_micros(now), |s, version| {
                let etag = format!("\"{version}\"");
                if !update.etag.is_empty() && update.etag != etag {
                    return Err(ApiError::precondition(
                        "ETAG_MISMATCH",
                        format!(
                            "data source `{}` changed since etag {} (now {etag}); read it again",
                            update.name,
                            echo(&update.etag)
                        ),
                    ));
                }
                for p in &paths {
                    copy_field(s, &update, p);
                }
                Ok(())
            })
            .await?;
        self.source(&id).await
    }

    /// How to reach source `source_id`, with its resolved credentials.
    pub(crate) async fn target(
        &self,
        source_id: &str,
    ) -> Result<(Target, pb::DataSource), Failure> {
        let source = self.source(source_id).await.map_err(|e| match e {
            ApiError::NotFound { .. } => Failure {
                code: tonic::Code::NotFound,
                message: "the data source is no longer registered".into(),
            },
            other => {
                tracing::error!(error = %other, "loading a data source");
                Failure {
                    code: tonic::Code::Internal,
                    message: "the data source could not be loaded".into(),
                }
            }
        })?;
        let timeout = source
            .call_timeout
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(self.config.dsar.connector_timeout_secs));
        let token = if source.builtin {
            self.custodia_token.clone()
        } else {
            resolve_credentials(&self.config, &source.credentials_ref).map_err(|e| Failure {
                code: tonic::Code::FailedPrecondition,
                message: e.to_string(),
            })?
        };
        Ok((
            Target {
                source_id: source_id.to_string(),
                endpoint: source.endpoint.clone(),
                token,
                timeout,
                outbound: self.outbound.clone(),
            },
            source,
        ))
    }
}
