//! Request ids: the `X-Request-Id` a client sent when it is sane, else a
//! new one, the same id going to the backend, back to the client and into
//! the access log.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The request id header name.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Keeps a sane client-sent `X-Request-Id` (1-128 of `[A-Za-z0-9._:-]`),
/// otherwise makes a new one.
pub fn request_id(headers: &HeaderMap, ids: &RequestIds) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
    }
    ids.next()
}

/// Request id generator: unique per process, unpredictable across restarts,
/// no syscall or lock per id.
#[derive(Debug)]
pub struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // Falls back to the clock if the OS RNG fails; ids only need to be unique.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            seed = (now.as_nanos() as u64).to_le_bytes();
        }
        RequestIds {
            seed: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let a = splitmix64(self.seed ^ n);
        let b = splitmix64(a ^ n.rotate_left(32));
        let mut buf = [0u8; 32];
        hex(a, &mut buf[..16]);
        hex(b, &mut buf[16..]);
        // Owned by a shared allocation from the start: the id is cloned
        // into the upstream request and the response, and cloning a
        // value copied from a slice would allocate again to share it.
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
            .expect("hex is a valid header value")
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let mut sane = HeaderMap::new();
        sane.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&sane, &ids), "abc-123");
        let mut insane = HeaderMap::new();
        insane.insert(REQUEST_ID, HeaderValue::from_static("<script>"));
        assert_ne!(request_id(&insane, &ids), "<script>");
    }
}
