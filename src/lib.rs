pub mod api;
pub mod cli;
pub mod error;
pub mod pb;
pub mod registry;
pub mod server;
pub mod store;
