//! The outbound HTTP rules, in one place for the mirror and for any proxy built on this
//! crate (mirror-proxy forwards its upstream requests with them too): which headers are
//! hop-by-hop ([`hop`]), and how a request's path and query are joined onto a base URL
//! ([`BaseUrl`]).

pub mod hop;
pub(crate) mod request;
pub(crate) mod trace;
mod uri;

pub use request::{X_MIRRORED_FROM, is_reserved};
pub use trace::{TRACEPARENT, TRACESTATE, TraceContext};
pub use uri::{BaseUrl, InvalidUrl};
