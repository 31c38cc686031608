//! Metrics of a running mount in the Prometheus text format: counters kept
//! on the request path ([`counters`]: relaxed atomics in static arrays, no
//! lock and no allocation per request), the text ([`render`]) and its two
//! ways out ([`export`]: a file rewritten atomically, an HTTP listener on
//! localhost or a unix socket).

pub mod counters;
pub mod export;
pub mod render;
