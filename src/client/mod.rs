//! The client interface between TestApp and peer: access points and the request/reply API.

pub mod access_point;
pub mod api;
pub mod server;

pub use access_point::AccessPoint;
pub use api::{ErrorKind, Reply, Request};
