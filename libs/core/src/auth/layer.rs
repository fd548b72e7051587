use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use crate::error::ApiError;

use super::{
    AuthError, Authenticator, CallContext,
    scopes::{Requirement, ScopeTable},
};

/// A refused call, handed to a [`DenialRecorder`] before the refusal is sent.
#[derive(Debug, Clone, Copy)]
pub struct Denial<'a> {
    /// gRPC path called.
    pub path: &'a str,
    /// The principal, when the token was valid but lacked the scope.
    pub actor: Option<&'a str>,
    /// UNAUTHENTICATED or PERMISSION_DENIED.
    pub code: Code,
    /// Why, in words (no secrets).
    pub reason: &'a str,
    /// Trace id of the call.
    pub trace_id: &'a str,
}

/// Records refused calls as access events (A-1: denied attempts are accesses too).
pub trait DenialRecorder: Send + Sync + 'static {
    /// Records `denial`; must not fail the refusal itself.
    fn record<'a>(&'a self, denial: Denial<'a>) -> BoxFuture<'a, ()>;
}

/// Tower layer authenticating every call and enforcing the declared scope.
#[derive(Clone)]
pub struct AuthLayer {
    inner: Arc<Shared>,
}

struct Shared {
    authenticator: Arc<dyn Authenticator>,
    scopes: ScopeTable,
    denials: Option<Arc<dyn DenialRecorder>>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Whether a call to `path` with `headers` would pass this layer: a
    /// translation in front of it (Connect) asks before it reads a body, so an
    /// anonymous caller gets refused without the body being read, parsed or
    /// inflated. The refusal itself is still this layer's (and recorded).
    pub async fn admits(&self, path: &str, headers: &http::HeaderMap) -> bool {
        let scope = match self.inner.scopes.requirement(path) {
            Requirement::Public => return true,
            Requirement::Scope(scope) => scope,
            Requirement::Deny => return false,
        };
        match bearer(headers) {
            Ok(token) => self
                .inner
                .authenticator
                .authenticate(token)
                .await
                .is_ok_and(|p| p.has_scope(scope)),
            Err(_) => false,
        }
    }

    /// A layer using `authenticator` and the scopes in `scopes`.
    pub fn new(
        authenticator: Arc<dyn Authenticator>,
        scopes: ScopeTable,
        denials: Option<Arc<dyn DenialRecorder>>,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                authenticator,
                scopes,
                denials,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            shared: self.inner.clone(),
            inner,
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl<S> std::fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

/// Trace id from a W3C `traceparent` header, else a fresh random one.
pub fn trace_id_of(headers: &http::HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| {
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && *id != "0".repeat(32)
        })
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

fn bearer(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one we call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let scope = match shared.scopes.requirement(&path) {
                Requirement::Public => return inner.call(request).await,
                Requirement::Scope(scope) => Some(scope.to_string()),
                Requirement::Deny => None,
            };
            let trace_id = trace_id_of(request.headers());
            let principal = match bearer(request.headers()) {
                Ok(token) => shared.authenticator.authenticate(token).await,
                Err(e) => Err(e),
            };
            let refusal = match (&principal, &scope) {
                (Err(e), _) => Some((Code::Unauthenticated, e.to_string())),
                (Ok(_), None) => Some((
                    Code::PermissionDenied,
                    "this method declares no scope, so no one may call it".to_string(),
                )),
                (Ok(p), Some(scope)) if !p.has_scope(scope) => Some((
                    Code::PermissionDenied,
                    format!("principal `{}` lacks the scope `{scope}`", p.name()),
                )),
                _ => None,
            };
            if let Some((code, reason)) = refusal {
                if let Some(recorder) = &shared.denials {
                    recorder
                        .record(Denial {
                            path: &path,
                            actor: principal.as_ref().ok().map(|p| p.name()),
                            code,
                            reason: &reason,
                            trace_id: &trace_id,
                        })
                        .await;
                }
                // Through the one error table, so the refusal carries ErrorInfo.
                let error = match code {
                    Code::Unauthenticated => ApiError::Unauthenticated(reason),
                    _ => ApiError::PermissionDenied(reason),
                };
                return Ok(Status::from(error).into_http());
            }
            let principal = principal.expect("refusal handled above");
            request.extensions_mut().insert(CallContext {
                principal,
                trace_id,
            });
            inner.call(request).await
        })
    }
}
