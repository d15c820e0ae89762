//! The wire types generated from `proto/`, and the descriptor pool that reflection
//! and generic field access read.

// A oneof of whole records (`Change.record`) is as large as its largest
// record; boxing it would change the generated types every caller builds.
#![allow(clippy::large_enum_variant)]

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// The encoded `FileDescriptorSet` of `proto/` with its imports and comments.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cooperation_descriptor.bin"));

/// All message descriptors of the contract, decoded once.
pub static DESCRIPTOR_POOL: LazyLock<DescriptorPool> =
    LazyLock::new(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the build wrote a valid descriptor set"));

include!(concat!(env!("OUT_DIR"), "/generated.rs"));
include!(concat!(env!("OUT_DIR"), "/reflect_impls.rs"));

/// etcd's client API (`vendor/etcd/`, Apache-2.0), for the etcd engine.
#[allow(clippy::all, clippy::pedantic)]
pub mod etcd {
    pub mod etcdserverpb {
        include!(concat!(env!("OUT_DIR"), "/etcd/etcdserverpb.rs"));
    }
    pub mod mvccpb {
        include!(concat!(env!("OUT_DIR"), "/etcd/mvccpb.rs"));
    }
    pub mod authpb {
        include!(concat!(env!("OUT_DIR"), "/etcd/authpb.rs"));
    }
}
