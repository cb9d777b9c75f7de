//! Server reflection (`grpc.reflection.v1` and the older `v1alpha` that some tools
//! still ask for) on the hub port, describing the admin API: `grpcurl -cacert ca.pem
//! -H 'authorization: Bearer …' hub-1:7400 list` and `describe` work without the
//! `.proto` files. What it tells is what the repository's `.proto` files say, so it is
//! open to anyone, like those files; calling the API still takes a credential.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use tonic_reflection::server::{v1, v1alpha};
use vigo_common::net::{Admit, Call, Guarded, Limits};

struct ReflectionTable;

impl Admit for ReflectionTable {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        match call.method {
            // Open to anyone, so bounded in all: a stream ends after 30 s (a tool's
            // `list` or `describe` takes milliseconds).
            "ServerReflectionInfo" => {
                Ok(Limits::new(64 << 10, Duration::from_secs(30)).living(Duration::from_secs(30)))
            }
            other => Err(Status::unimplemented(format!("no method {other}"))),
        }
    }
}

/// The v1 reflection service, then the v1alpha one, behind their admission table.
pub fn services() -> (
    Guarded<v1::ServerReflectionServer<impl v1::ServerReflection>>,
    Guarded<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>>,
) {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigo_proto::FILE_DESCRIPTOR_SET)
        .with_service_name(vigo_proto::admin::v1::hub_admin_server::SERVICE_NAME)
        .build_v1()
        .expect("the compiled descriptor set is valid");
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigo_proto::FILE_DESCRIPTOR_SET)
        .with_service_name(vigo_proto::admin::v1::hub_admin_server::SERVICE_NAME)
        .build_v1alpha()
        .expect("the compiled descriptor set is valid");
    (
        Guarded::new(v1, Arc::new(ReflectionTable)),
        Guarded::new(v1alpha, Arc::new(ReflectionTable)),
    )
}
