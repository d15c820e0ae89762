//! Compiles `proto/` with the pure-Rust compiler protox (no system protoc), writes
//! the descriptor set that reflection and prost-reflect read, and generates the
//! prost messages and tonic services with a `ReflectMessage` derive on every message.
//! Compiles etcd's client protos (`vendor/etcd/`) the same way, client side only,
//! for the etcd engine.

use std::path::PathBuf;

use prost_reflect::DescriptorPool;

const PROTO_ROOT: &str = "proto";
const OUR_FILES: &[&str] = &[
    "cooperation/v1/common.proto",
    "cooperation/v1/party.proto",
    "cooperation/v1/agreement.proto",
    "cooperation/v1/partnership_domain.proto",
    "cooperation/v1/engagement.proto",
    "cooperation/v1/dataset.proto",
    "cooperation/v1/relationship.proto",
    "cooperation/v1/change.proto",
    "cooperation/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for entry in walk(PROTO_ROOT.as_ref())? {
        println!("cargo:rerun-if-changed={}", entry.display());
    }

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true);
    compiler.include_source_info(true);
    compiler.open_files(OUR_FILES)?;
    let descriptor_bytes = compiler.encode_file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("cooperation_descriptor.bin"), &descriptor_bytes)?;

    let pool = DescriptorPool::decode(descriptor_bytes.as_slice())?;
    let mut impls = String::new();
    for message in pool.all_messages() {
        let full_name = message.full_name();
        let generated = full_name.starts_with("cooperation.") || full_name.starts_with("google.type.");
        if generated && !message.is_map_entry() {
            impls.push_str(&reflect_impl(&message));
        }
    }
    std::fs::write(out_dir.join("reflect_impls.rs"), impls)?;

    let config = tonic_prost_build::configure()
        // Deterministic encoding of maps (labels): request fingerprints depend on it.
        .btree_map(".")
        .include_file("generated.rs")
        .build_client(true)
        .build_server(true);
    config.compile_fds(compiler.file_descriptor_set())?;
    compile_etcd(&out_dir)
}

const ETCD_ROOT: &str = "vendor/etcd/proto";

/// etcd's KV, Watch, Lease and Maintenance clients, into `OUT_DIR/etcd` (apart
/// from ours: both import google.api).
fn compile_etcd(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={ETCD_ROOT}");
    let mut compiler = protox::Compiler::new([ETCD_ROOT])?;
    compiler.include_imports(true);
    compiler.open_files(["etcd/api/etcdserverpb/rpc.proto"])?;
    let etcd_out = out_dir.join("etcd");
    std::fs::create_dir_all(&etcd_out)?;
    tonic_prost_build::configure()
        .out_dir(&etcd_out)
        .build_client(true)
        .build_server(false)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// `prost_reflect::ReflectMessage` for one generated message. Written out here rather
/// than derived with `message_attribute`, because prost applies an attribute to a
/// message's nested messages too and the derive needs each message's own name.
fn reflect_impl(message: &prost_reflect::MessageDescriptor) -> String {
    let mut rust_path = String::from("crate::pb");
    for segment in message.package_name().split('.') {
        rust_path.push_str("::");
        rust_path.push_str(&rust_module(segment));
    }
    let mut parent = message.parent_message();
    let mut enclosing = Vec::new();
    while let Some(p) = parent {
        enclosing.push(snake_case(p.name()));
        parent = p.parent_message();
    }
    for module in enclosing.iter().rev() {
        rust_path.push_str("::");
        rust_path.push_str(module);
    }
    format!(
        "impl ::prost_reflect::ReflectMessage for {rust_path}::{name} {{\n\
         \x20   fn descriptor(&self) -> ::prost_reflect::MessageDescriptor {{\n\
         \x20       crate::pb::DESCRIPTOR_POOL.get_message_by_name(\"{full}\").expect(\"message in pool\")\n\
         \x20   }}\n}}\n",
        name = message.name(),
        full = message.full_name(),
    )
}

fn rust_module(segment: &str) -> String {
    match segment {
        "type" => "r#type".to_string(),
        other => other.to_string(),
    }
}

/// prost's module name for a message's nested types: `PartnershipDomain` -> `partnership_domain`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn walk(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}
