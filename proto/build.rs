//! Compiles `proto/vigo/v1/*.proto` with the vendored protoc: no system protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let protos = [
        "proto/vigo/v1/envoy.proto",
        "proto/vigo/v1/policy.proto",
        "proto/vigo/v1/spoke_admin.proto",
        "proto/vigo/v1/hub.proto",
        "proto/vigo/admin/v1/admin.proto",
    ];
    tonic_prost_build::configure()
        // Bytes fields decode as slices of the received buffer: no copy on the hot path.
        .bytes(".")
        // Ordered maps encode deterministically, which keeps bundle fingerprints stable.
        .btree_map(".")
        // The admin API speaks the same messages as JSON (REST) and documents them
        // (OpenAPI): absent fields take their proto3 defaults, unknown ones are refused.
        .type_attribute(
            ".vigo.admin.v1",
            "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)] \
             #[serde(default, deny_unknown_fields)]",
        )
        // For server reflection (grpcurl) on the hub's admin service.
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("vigo_descriptor.bin"),
        )
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
