//! GetExport: an access or portability request's READY package, streamed in
//! chunks after its description. Each download is an action of the request
//! and an access event, written before the first byte leaves.

use std::pin::Pin;

use custodia_core::{ApiError, auth::CallContext, echo::echo, storage::to_micros};
use custodia_proto::dsar::v1::{self as pb, ActionResult, ExportState};
use futures::Stream;
use tokio::io::AsyncReadExt;
use tonic::Status;

use crate::{
    api::Api,
    model::{self, action},
    state::refuse,
    store::{Changes, ExportRow, Loaded},
};

/// Size of one GetExport chunk.
const CHUNK: usize = 1024 * 1024;

/// The stream of a GetExport answer.
pub type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::GetExportResponse, Status>> + Send>>;

/// The request id of an export name `requests/{id}/export`.
pub(crate) fn parse_export_name(name: &str) -> Result<String, ApiError> {
    let Some(base) = name.strip_suffix("/export") else {
        return Err(ApiError::invalid(
            "name",
            if name.is_empty() {
                "is required".to_string()
            } else {
                format!(
                    "`{}` is not an export name (`requests/{{request}}/export`)",
                    echo(name)
                )
            },
        ));
    };
    model::parse_request_name("name", base)
}

/// The package of request `l`, if it is READY; else why not.
fn ready_export(l: &Loaded) -> Result<ExportRow, ApiError> {
    let Some(e) = l.export.clone() else {
        return Err(refuse(
            l,
            "EXPORT_NOT_READY",
            "it has no export package (only access and portability requests do, \
             once processing started)",
        ));
    };
    if e.package.state() != ExportState::Ready {
        return Err(refuse(
            l,
            "EXPORT_NOT_READY",
            format!(
                "its export package is {}",
                e.package
                    .state()
                    .as_str_name()
                    .trim_start_matches("EXPORT_STATE_")
            ),
        ));
    }
    Ok(e)
}

impl Api {
    /// Records the download of request `r.name`'s package; returns the
    /// package and the path of its file.
    pub(crate) async fn open_export(
        &self,
        call: &CallContext,
        r: pb::GetExportRequest,
    ) -> Result<(pb::ExportPackage, String), ApiError> {
        let now = self.clock.now();
        let id = parse_export_name(&r.name)?;
        let principal = call.principal.name().to_string();
        let l = self.load(&id).await?;
        let event = self.event(
            call,
            "GetExport",
            r.name.clone(),
            l.record.subject_identifiers.first(),
        );
        let mut found = None;
        self.store
            .change(&id, None, Some(&event), to_micros(now), |l| {
                let e = ready_export(l)?;
                let text = format!("Export package {} downloaded", e.package.filename);
                found = Some(e);
                Ok(Changes {
                    actions: vec![action(
                        now,
                        &principal,
                        "export_downloaded",
                        ActionResult::Succeeded,
                        text,
                        "",
                    )],
                    ..Default::default()
                })
            })
            .await?;
        let e = found.ok_or_else(|| ApiError::internal(anyhow::anyhow!("export vanished")))?;
        Ok((e.package, e.path))
    }
}

/// Streams the zip at `path`, the package description first.
pub(crate) fn stream_file(package: pb::ExportPackage, path: String) -> ExportStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(ApiError::internal(e).into())).await;
                return;
            }
        };
        let mut first = Some(package);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::internal(e).into())).await;
                        return;
                    }
                }
            }
            buf.truncate(filled);
            if filled == 0 && first.is_none() {
                return;
            }
            let msg = pb::GetExportResponse {
                package: first.take(),
                chunk: buf,
            };
            if tx.send(Ok(msg)).await.is_err() || filled < CHUNK {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_end_in_export() {
        assert_eq!(parse_export_name("requests/abc/export").unwrap(), "abc");
        for bad in ["", "requests/abc", "requests//export"] {
            assert!(
                matches!(parse_export_name(bad), Err(ApiError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
