//! Decoding of the Envoy messages meshcore reads, from their serialized bytes.
//!
//! Hand-written decoders over a wire walker (see `wire`), so that no field present in the
//! bytes is dropped unnoticed: each is decoded, knowingly passed through, or reported.

pub mod matcher;
pub mod rbac;
pub mod route;
pub mod wire;
