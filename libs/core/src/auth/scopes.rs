use std::collections::{BTreeSet, HashMap};

use prost_reflect::{DescriptorPool, Value};

/// Full name of the method option that declares an RPC's scope.
pub const SCOPE_OPTION: &str = "custodia.common.v1.scope";

/// Services anyone may call without a token: health (probes cannot send tokens)
/// and reflection (it describes the API, never data).
const PUBLIC_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What the auth layer must do for a gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// No token needed.
    Public,
    /// A token with this scope.
    Scope(&'a str),
    /// A method without a declared scope, or an unknown path: always denied.
    Deny,
}

/// The scope of every RPC, read from the encoded descriptor set.
#[derive(Debug, Clone, Default)]
pub struct ScopeTable {
    by_path: HashMap<String, Option<String>>,
}

impl ScopeTable {
    /// Reads the `scope` option of every method in `descriptor_set`.
    pub fn from_descriptor_set(descriptor_set: &[u8]) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let option = pool
            .get_extension_by_name(SCOPE_OPTION)
            .ok_or_else(|| anyhow::anyhow!("descriptor set lacks the {SCOPE_OPTION} option"))?;
        let mut by_path = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                let scope = match options
                    .has_extension(&option)
                    .then(|| options.get_extension(&option))
                {
                    Some(value) => match value.as_ref() {
                        Value::String(s) if !s.is_empty() => Some(s.clone()),
                        _ => None,
                    },
                    None => None,
                };
                by_path.insert(format!("/{}/{}", service.full_name(), method.name()), scope);
            }
        }
        Ok(Self { by_path })
    }

    /// The requirement for a request path like `/pkg.Service/Method`.
    pub fn requirement(&self, path: &str) -> Requirement<'_> {
        let service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        if PUBLIC_SERVICES.contains(&service) {
            return Requirement::Public;
        }
        match self.by_path.get(path) {
            Some(Some(scope)) => Requirement::Scope(scope),
            _ => Requirement::Deny,
        }
    }

    /// Every declared scope, for access reviews and the admin principal.
    pub fn all_scopes(&self) -> BTreeSet<&str> {
        self.by_path
            .values()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// Every method path with its scope (or `None` when undeclared), sorted.
    pub fn methods(&self) -> Vec<(&str, Option<&str>)> {
        let mut v: Vec<_> = self
            .by_path
            .iter()
            .map(|(p, s)| (p.as_str(), s.as_deref()))
            .collect();
        v.sort();
        v
    }
}
