//! The RPCs the Connect side answers, read once from the descriptor set: each
//! method's input and output message descriptors, its kind, and whether it is
//! marked `idempotency_level = NO_SIDE_EFFECTS` (then also callable with GET).

use std::{collections::HashMap, sync::Arc};

use prost_reflect::{DescriptorPool, MessageDescriptor, MethodDescriptor};

/// One RPC as the Connect side sees it.
#[derive(Debug, Clone)]
pub struct Method {
    /// `/custodia.consent.v1.ConsentService/CheckConsent`.
    pub path: String,
    /// The service's full name.
    pub service: String,
    /// The method's name.
    pub name: String,
    /// Request message.
    pub input: MessageDescriptor,
    /// Response message.
    pub output: MessageDescriptor,
    /// The server answers with a stream.
    pub server_streaming: bool,
    /// The client sends a stream (none of custodia's RPCs; refused by Connect).
    pub client_streaming: bool,
    /// Marked NO_SIDE_EFFECTS: may be called with GET.
    pub no_side_effects: bool,
    /// The descriptor itself (comments, options).
    pub descriptor: MethodDescriptor,
}

/// Every method of the services a process serves, by path.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    by_path: HashMap<String, Arc<Method>>,
}

/// `idempotency_level` of `MethodOptions`: 1 is NO_SIDE_EFFECTS.
const NO_SIDE_EFFECTS: i32 = 1;

impl MethodTable {
    /// The methods of `services` (full names) found in `pool`.
    pub fn new(pool: &DescriptorPool, services: &[&str]) -> Self {
        let mut by_path = HashMap::new();
        for service in pool.services() {
            if !services.contains(&service.full_name()) {
                continue;
            }
            for m in service.methods() {
                let path = format!("/{}/{}", service.full_name(), m.name());
                let no_side_effects = m
                    .method_descriptor_proto()
                    .options
                    .as_ref()
                    .and_then(|o| o.idempotency_level)
                    == Some(NO_SIDE_EFFECTS);
                let method = Method {
                    path: path.clone(),
                    service: service.full_name().to_string(),
                    name: m.name().to_string(),
                    input: m.input(),
                    output: m.output(),
                    server_streaming: m.is_server_streaming(),
                    client_streaming: m.is_client_streaming(),
                    no_side_effects,
                    descriptor: m.clone(),
                };
                by_path.insert(path, Arc::new(method));
            }
        }
        Self { by_path }
    }

    /// The method at `path`, if served.
    pub fn get(&self, path: &str) -> Option<&Arc<Method>> {
        self.by_path.get(path)
    }

    /// Every method, sorted by path.
    pub fn all(&self) -> Vec<&Arc<Method>> {
        let mut all: Vec<_> = self.by_path.values().collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }
}

/// The descriptor pool of custodia's protos (and the google ones they use),
/// decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(custodia_proto::FILE_DESCRIPTOR_SET)
            .expect("the build's descriptor set decodes")
    })
}

/// Whether `path` has the shape of an RPC path (`/package.Service/Method`).
pub fn looks_like_rpc(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(service), Some(method), None)
            if service.contains('.') && !method.is_empty()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_served_services_with_their_kind() {
        let table = MethodTable::new(pool(), &["custodia.consent.v1.ConsentService"]);
        let check = table
            .get("/custodia.consent.v1.ConsentService/CheckConsent")
            .expect("CheckConsent");
        assert_eq!(
            check.input.full_name(),
            "custodia.consent.v1.CheckConsentRequest"
        );
        assert!(!check.server_streaming);
        let watch = table
            .get("/custodia.consent.v1.ConsentService/WatchConsentChanges")
            .unwrap();
        assert!(watch.server_streaming);
        assert!(
            table
                .get("/custodia.dsar.v1.DsarService/SubmitRequest")
                .is_none(),
            "only served services"
        );
        assert!(looks_like_rpc("/a.B/C"));
        assert!(!looks_like_rpc("/openapi.json"));
        assert!(!looks_like_rpc("/a.B/C/D"));
    }
}
