//! Authentication and scope enforcement.
//!
//! Every call carries `authorization: Bearer <token>`. An [`Authenticator`] turns
//! the token into a [`Principal`] (static tokens from config today; a JWT/OIDC
//! validator implements the same trait). The [`layer::AuthLayer`] then enforces
//! the scope each RPC declares in the proto (`option (custodia.common.v1.scope)`),
//! read from the descriptor set by [`scopes::ScopeTable`] so the table cannot
//! drift from the API. Handlers find the caller in the request extensions as a
//! [`CallContext`].

pub mod layer;
pub mod scopes;
mod static_tokens;

use std::{collections::BTreeSet, sync::Arc};

use futures::future::BoxFuture;

pub use static_tokens::StaticTokens;

/// Name of the built-in principal holding every scope.
pub const ADMIN_PRINCIPAL: &str = "admin";

/// An authenticated caller: one calling system (crm, moodle, web-banner, dpo, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    name: String,
    scopes: BTreeSet<String>,
}

impl Principal {
    /// A principal with `scopes`; the scope `*` grants every scope.
    pub fn new(
        name: impl Into<String>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
        }
    }

    /// The principal's name, as recorded in access events.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Scopes granted.
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.scopes
    }

    /// Whether the principal may call a method requiring `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains("*") || self.scopes.contains(scope)
    }
}

/// Why a token was not accepted (never says which part of a secret was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error("missing bearer token (send `authorization: Bearer <token>`)")]
    Missing,
    /// The token is not known or not valid.
    #[error("invalid bearer token")]
    Invalid,
}

/// Turns a bearer token into a principal. Static tokens today; a JWT/OIDC
/// validator (issuer, audience, JWKS) plugs in here with the same signature.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `token` (without the `Bearer ` prefix).
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Arc<Principal>, AuthError>>;
}

/// What handlers learn about the call: who made it and under which trace.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The authenticated caller.
    pub principal: Arc<Principal>,
    /// W3C trace id (from `traceparent`, else generated).
    pub trace_id: String,
}

impl CallContext {
    /// The context the auth layer attached to `request`.
    ///
    /// Absent only if the service was mounted without the layer; answering
    /// UNAUTHENTICATED then is the safe default.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&CallContext, tonic::Status> {
        request
            .extensions()
            .get::<CallContext>()
            .ok_or_else(|| tonic::Status::unauthenticated("no authenticated caller"))
    }
}
