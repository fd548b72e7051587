//! Calls custodia makes to other servers (audit-log when it runs apart, dsar to
//! consent, audit-log and every connector): one place that turns an endpoint
//! into a channel. `https://` endpoints are verified against the system's
//! roots (and Mozilla's, for images without a store) and the CA configured in
//! `[outbound.tls] ca_file`, for connectors behind an institution's own CA; a
//! client certificate (`cert_file`, `key_file`) is presented where configured.
//! `http://` endpoints stay plain.

use std::sync::Arc;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::OutboundTlsConfig;

/// How outbound channels are made (cheap to clone).
#[derive(Clone, Default)]
pub struct Outbound {
    tls: Option<Arc<ClientTlsConfig>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Outbound {
    /// Reads the configured CA and client certificate (refusing unreadable or
    /// invalid files by name).
    pub fn from_config(config: &OutboundTlsConfig) -> anyhow::Result<Self> {
        let mut tls = ClientTlsConfig::new();
        if config.system_roots {
            tls = tls.with_native_roots().with_webpki_roots();
        }
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("outbound.tls.ca_file: cannot read {}", path.display()))?;
            anyhow::ensure!(
                String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----"),
                "outbound.tls.ca_file: {} holds no PEM certificate",
                path.display()
            );
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path, key: &str| {
                    std::fs::read(p)
                        .with_context(|| format!("outbound.tls.{key}: cannot read {}", p.display()))
                };
                tls = tls.identity(Identity::from_pem(
                    read(cert, "cert_file")?,
                    read(key, "key_file")?,
                ));
            }
            (None, None) => {}
            _ => anyhow::bail!("outbound.tls: set both cert_file and key_file, or neither"),
        }
        Ok(Self {
            tls: Some(Arc::new(tls)),
        })
    }

    /// An endpoint for `uri`: TLS as configured when it is `https://`.
    pub fn endpoint(&self, uri: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(uri.to_string())?;
        match (&self.tls, uri.starts_with("https://")) {
            (Some(tls), true) => endpoint.tls_config(tls.as_ref().clone()),
            (None, true) => endpoint.tls_config(ClientTlsConfig::new().with_native_roots()),
            (_, false) => Ok(endpoint),
        }
    }
}
