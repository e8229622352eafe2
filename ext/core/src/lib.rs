//! meshcore-core: the pure-Rust heart of meshcore.
//!
//! No Python here: the `meshcore-py` crate is the only place that knows about PyO3. Everything
//! that crosses into this crate is plain data (bytes, strings, numbers), and every error is a
//! [`CoreError`] carrying all the problems found, each with its field path.
#![forbid(unsafe_code)]

pub mod balance;
pub mod error;
pub mod fasthash;
pub mod lb;
pub mod matcher;
pub mod proto;
pub mod regex;
pub mod request;
pub mod route;
pub mod xds;
pub mod yaml;

pub use error::{CoreError, FieldError, FieldErrorKind};
pub use regex::Re2Regex;
pub use request::Request;
pub use route::{CompiledRouteTable, EscapedSlashes, HcmOptions};
pub mod rbac;
pub use rbac::{Attributes, CompiledRbac};
