//! Server reflection (v1 and v1alpha) that lists what the process serves: its
//! custodia services, health and reflection itself. The descriptor set also
//! describes services other processes serve (`custodia.connector.v1.DataSource`,
//! which connectors implement); listing those invited calls that only fail.

use tonic_reflection::server::{Builder, Error};

/// Health and the two reflection services, served by every custodia server.
const ALWAYS_SERVED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn builder(served: &[&str]) -> Builder<'static> {
    let mut builder = Builder::configure()
        .register_encoded_file_descriptor_set(custodia_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for name in served.iter().copied().chain(ALWAYS_SERVED) {
        builder = builder.with_service_name(name);
    }
    builder
}

/// grpc.reflection.v1 listing `served` (full gRPC names) plus health and reflection.
pub fn v1(
    served: &[&str],
) -> Result<
    tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
    >,
    Error,
> {
    builder(served).build_v1()
}

/// grpc.reflection.v1alpha, the same (older clients, e.g. some grpcurl versions).
pub fn v1alpha(
    served: &[&str],
) -> Result<
    tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflection,
    >,
    Error,
> {
    builder(served).build_v1alpha()
}
