//! The custodia gRPC contract, generated from `proto/` at build time.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Encoded `FileDescriptorSet` of every custodia proto (and the google protos they
/// import); used by server reflection and by the auth layer's scope table.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/custodia_descriptor.bin"));

/// Generated code, one module per proto package.
pub mod custodia {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("custodia.common.v1");
        }
    }
    pub mod consent {
        pub mod v1 {
            tonic::include_proto!("custodia.consent.v1");
        }
    }
    pub mod dsar {
        pub mod v1 {
            tonic::include_proto!("custodia.dsar.v1");
        }
    }
    pub mod breach {
        pub mod v1 {
            tonic::include_proto!("custodia.breach.v1");
        }
    }
    pub mod audit {
        pub mod v1 {
            tonic::include_proto!("custodia.audit.v1");
        }
    }
    pub mod connector {
        pub mod v1 {
            tonic::include_proto!("custodia.connector.v1");
        }
    }
}

/// google.rpc types referenced by custodia messages.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use custodia::{audit, breach, common, connector, consent, dsar};
