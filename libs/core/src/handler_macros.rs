//! The two shapes of a thin gRPC handler, shared by the services whose
//! `grpc.rs` only maps each RPC onto a use case `Api::method(&self, &call,
//! request) -> Result<Out, ApiError>` (dsar, breach). Exported at the crate
//! root: `custodia_core::unary_rpc!`, `custodia_core::listing_rpc!`.

/// Calls use case `$method` with the caller and the request, and answers
/// `$pb::$resp { $field: Some(out) }` (`$pb`: the service's protobuf module).
#[macro_export]
macro_rules! unary_rpc {
    ($api:ident, $self:ident, $request:ident, $method:ident, $pb:ident :: $resp:ident, $field:ident) => {{
        let call = $crate::auth::CallContext::of(&$request)?.clone();
        let out = $api::$method($self, &call, $request.into_inner()).await?;
        Ok(::tonic::Response::new($pb::$resp { $field: Some(out) }))
    }};
}

/// Calls use case `$method` with the caller and the request; its result is
/// the response (listings).
#[macro_export]
macro_rules! listing_rpc {
    ($api:ident, $self:ident, $request:ident, $method:ident) => {{
        let call = $crate::auth::CallContext::of(&$request)?.clone();
        Ok(::tonic::Response::new(
            $api::$method($self, &call, $request.into_inner()).await?,
        ))
    }};
}
