//! The upstream wing: everything about talking to backends, and nothing
//! about the client's request beyond the bytes to send.
//!
//! - [`conn`]: the client on our HTTP/1 codec: one exchange (request head
//!   and body out, response head in, response body streamed) on one
//!   connection.
//! - [`connect`]: opening a connection: TCP, TLS for `https://` (name,
//!   ALPN, the reason a handshake failed, in plain words).
//! - [`h2`]: HTTP/2 to backends on hyper's client, one shared
//!   (multiplexed) connection per backend.
//! - [`pool`]: per-thread keep-alive connections per backend, and the
//!   retry of a request that met a connection the backend had closed.
//! - [`balance`]: which upstream of a route gets a request: round robin,
//!   passive ejection, health check results, panic mode.
//! - [`health`]: the active health check of one upstream, on hyper's
//!   client (few requests, off the request path).

pub(crate) mod balance;
pub(crate) mod conn;
pub(crate) mod connect;
pub(crate) mod h2;
pub(crate) mod health;
pub(crate) mod pool;
