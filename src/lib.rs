pub mod error;
pub mod pb;
pub mod registry;
pub mod store;
