//! A stand-in for an external system: a real `custodia.connector.v1.DataSource`
//! gRPC server on port 0 that can be told to answer, hang, fail or answer
//! garbage, and that counts erasures by request_id as a real connector must.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use custodia_proto::{
    common::v1::{RetainedData, RetentionGround, RetentionPolicy, SpecialCategory},
    connector::v1::{
        ApplyRetentionRequest, ApplyRetentionResponse, Capability, CategoryCount, CorrectionResult,
        DataCategory, EraseSubjectRequest, EraseSubjectResponse, ExportSubjectRequest,
        ExportSubjectResponse, ExportedRecord, GetCapabilitiesRequest, GetCapabilitiesResponse,
        RectifySubjectRequest, RectifySubjectResponse, RestrictSubjectRequest,
        RestrictSubjectResponse,
        data_source_server::{DataSource, DataSourceServer},
    },
};
use futures::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Every capability of the connector protocol, as a data source declares them.
pub fn every_capability() -> Vec<i32> {
    [
        Capability::Export,
        Capability::Erase,
        Capability::Restrict,
        Capability::Rectify,
        Capability::Retention,
    ]
    .iter()
    .map(|c| *c as i32)
    .collect()
}

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers properly.
    Normal,
    /// Never answers.
    Hang,
    /// Fails with UNAVAILABLE.
    Error,
    /// Answers with malformed content.
    Garbage,
    /// Carries out an erasure, then never answers (the caller dies meanwhile).
    EraseThenHang,
}

/// What the stand-in holds and has seen.
#[derive(Debug)]
pub struct State {
    /// Current behaviour.
    pub mode: Mutex<Mode>,
    /// Number of records it exports per category.
    pub records: Vec<(String, usize)>,
    /// Data it keeps on erasure.
    pub retained: Vec<RetainedData>,
    /// Erasures by request_id (a repeat answers the first result).
    pub erasures: Mutex<HashMap<String, EraseSubjectResponse>>,
    /// Every call: method and request_id.
    pub calls: Mutex<Vec<(String, String)>>,
    /// Retention calls: rule id and dry run.
    pub retention: Mutex<Vec<(String, bool, String)>>,
    /// Email the stand-in knows its subject by.
    pub email: String,
}

/// A running stand-in.
#[derive(Debug)]
pub struct FakeSource {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Its state.
    pub state: Arc<State>,
}

impl FakeSource {
    /// Starts a stand-in exporting `records` (category, count) for `email`.
    pub async fn start(
        email: &str,
        records: &[(&str, usize)],
        retained: Vec<RetainedData>,
    ) -> Self {
        let state = Self::state(email, records, retained);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let svc = Svc(state.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DataSourceServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self { endpoint, state }
    }

    /// Like [`Self::start`], serving TLS with `identity` (a certificate for
    /// `localhost`): the endpoint is `https://localhost:<port>`.
    pub async fn start_tls(email: &str, identity: tonic::transport::Identity) -> Self {
        let plain = Self::state(email, &[("contacts", 2)], vec![]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let svc = Svc(plain.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("TLS configuration")
                .add_service(DataSourceServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            endpoint,
            state: plain,
        }
    }

    fn state(email: &str, records: &[(&str, usize)], retained: Vec<RetainedData>) -> Arc<State> {
        Arc::new(State {
            mode: Mutex::new(Mode::Normal),
            records: records.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            retained,
            erasures: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            retention: Mutex::new(Vec::new()),
            email: email.to_string(),
        })
    }

    /// Changes the behaviour.
    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Calls of `method` seen so far.
    pub fn calls(&self, method: &str) -> Vec<String> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// A retained-data entry: invoices kept 10 years.
pub fn invoices_kept(until: prost_types::Timestamp) -> RetainedData {
    RetainedData {
        category: "invoices".into(),
        description: "3 invoices 2023-2025".into(),
        record_count: 3,
        ground: RetentionGround::LegalObligation as i32,
        legal_reference: "Code de commerce, art. L123-22".into(),
        reason: "Invoices are kept 10 years under commercial law".into(),
        retain_until_time: Some(until),
    }
}

#[derive(Debug, Clone)]
struct Svc(Arc<State>);

type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Svc {
    fn mode(&self, method: &str, request_id: &str) -> Mode {
        self.0
            .calls
            .lock()
            .unwrap()
            .push((method.to_string(), request_id.to_string()));
        *self.0.mode.lock().unwrap()
    }

    async fn misbehave(&self, mode: Mode) -> Result<(), Status> {
        match mode {
            Mode::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
            Mode::Error => Err(Status::unavailable("the CRM database is down")),
            _ => Ok(()),
        }
    }

    fn knows(&self, ids: &[custodia_proto::common::v1::SubjectRef]) -> bool {
        ids.iter()
            .any(|s| s.r#type == "email" && s.value == self.0.email)
    }
}

fn field(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    }
}

#[tonic::async_trait]
impl DataSource for Svc {
    type ExportSubjectStream = BoxStream<ExportSubjectResponse>;

    async fn get_capabilities(
        &self,
        _r: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        Ok(Response::new(GetCapabilitiesResponse {
            display_name: "Stand-in system".into(),
            version: "fake/1".into(),
            capabilities: every_capability(),
            identifier_types: vec!["email".into()],
            categories: self
                .0
                .records
                .iter()
                .map(|(c, _)| DataCategory {
                    category: c.clone(),
                    description: format!("The {c} held about you"),
                    purposes: vec!["purposes/enrolment".into()],
                    recipients: vec!["Ministry of Education".into()],
                    retention: Some(RetentionPolicy {
                        period: "P3Y".into(),
                        anchor: "last_activity".into(),
                        ..Default::default()
                    }),
                    origin: String::new(),
                    // The stand-in's convention: `medical_*` holds health data.
                    special_category: if c.starts_with("medical_") {
                        SpecialCategory::Health as i32
                    } else {
                        0
                    },
                })
                .collect(),
        }))
    }

    async fn export_subject(
        &self,
        r: Request<ExportSubjectRequest>,
    ) -> Result<Response<BoxStream<ExportSubjectResponse>>, Status> {
        let mode = self.mode("ExportSubject", "");
        self.misbehave(mode).await?;
        let r = r.into_inner();
        let mut records = Vec::new();
        if self.knows(&r.subject_identifiers) {
            for (category, n) in &self.0.records {
                for i in 0..*n {
                    records.push(ExportedRecord {
                        category: if mode == Mode::Garbage {
                            String::new()
                        } else {
                            category.clone()
                        },
                        record_id: format!("{category}-{i}"),
                        fields: Some(prost_types::Struct {
                            fields: [
                                ("email".to_string(), field(&self.0.email)),
                                ("note".to_string(), field("a, \"quoted\" value")),
                            ]
                            .into_iter()
                            .collect(),
                        }),
                        create_time: Some(prost_types::Timestamp {
                            seconds: 1_700_000_000,
                            nanos: 0,
                        }),
                        update_time: None,
                    });
                }
            }
        }
        let batches: Vec<Result<ExportSubjectResponse, Status>> = records
            .chunks(7)
            .map(|c| {
                Ok(ExportSubjectResponse {
                    records: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn erase_subject(
        &self,
        r: Request<EraseSubjectRequest>,
    ) -> Result<Response<EraseSubjectResponse>, Status> {
        let r = r.into_inner();
        let mode = self.mode("EraseSubject", &r.request_id);
        self.misbehave(mode).await?;
        if mode == Mode::Garbage {
            return Ok(Response::new(EraseSubjectResponse {
                erased: vec![CategoryCount {
                    category: "contacts".into(),
                    count: -5,
                }],
                retained: Vec::new(),
            }));
        }
        let answer = {
            let mut done = self.0.erasures.lock().unwrap();
            done.entry(r.request_id.clone())
                .or_insert_with(|| EraseSubjectResponse {
                    erased: self
                        .0
                        .records
                        .iter()
                        .map(|(c, n)| CategoryCount {
                            category: c.clone(),
                            count: *n as i64,
                        })
                        .collect(),
                    retained: self.0.retained.clone(),
                })
                .clone()
        };
        if mode == Mode::EraseThenHang {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(answer))
    }

    async fn restrict_subject(
        &self,
        r: Request<RestrictSubjectRequest>,
    ) -> Result<Response<RestrictSubjectResponse>, Status> {
        let r = r.into_inner();
        let mode = self.mode("RestrictSubject", &r.request_id);
        self.misbehave(mode).await?;
        Ok(Response::new(RestrictSubjectResponse {
            affected: self
                .0
                .records
                .iter()
                .map(|(c, n)| CategoryCount {
                    category: c.clone(),
                    count: *n as i64,
                })
                .collect(),
        }))
    }

    async fn rectify_subject(
        &self,
        r: Request<RectifySubjectRequest>,
    ) -> Result<Response<RectifySubjectResponse>, Status> {
        let r = r.into_inner();
        let mode = self.mode("RectifySubject", &r.request_id);
        self.misbehave(mode).await?;
        Ok(Response::new(RectifySubjectResponse {
            results: r
                .corrections
                .iter()
                .enumerate()
                .map(|(i, _)| CorrectionResult {
                    index: i as i32,
                    applied: true,
                    record_count: 1,
                    message: String::new(),
                })
                .collect(),
        }))
    }

    async fn apply_retention(
        &self,
        r: Request<ApplyRetentionRequest>,
    ) -> Result<Response<ApplyRetentionResponse>, Status> {
        let r = r.into_inner();
        let mode = self.mode("ApplyRetention", &r.request_id);
        self.misbehave(mode).await?;
        let rule = r.rule.unwrap_or_default();
        let cutoff = rule
            .cutoff_time
            .map(|t| t.seconds.to_string())
            .unwrap_or_default();
        self.0
            .retention
            .lock()
            .unwrap()
            .push((rule.rule_id.clone(), r.dry_run, cutoff));
        let matched = vec![CategoryCount {
            category: "contacts".into(),
            count: 4,
        }];
        Ok(Response::new(ApplyRetentionResponse {
            matched: matched.clone(),
            deleted: if r.dry_run { Vec::new() } else { matched },
            anonymised: Vec::new(),
            retained: Vec::new(),
        }))
    }
}
