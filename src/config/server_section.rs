//! `[server]`: listeners, admin, trusted proxies, state directory and the
//! defaults the routes inherit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cx::Cx;
use super::file::FileServer;
use super::validate::resolve_relative;
use super::{AccessLogFormat, ServerConfig};

const DEFAULT_ADMIN: &str = "127.0.0.1:9180";
const DEFAULT_STATE_DIR: &str = "/var/lib/portcullis";

impl Cx<'_> {
    pub(super) fn server(&mut self, raw: FileServer) -> ServerConfig {
        let http = self.addr("server.http", raw.http);
        let https = self.addr("server.https", raw.https);
        let admin_span = raw.admin.as_ref().map(|a| a.span());
        let admin = match raw.admin {
            Some(a) if a.get_ref().is_empty() || a.get_ref() == "off" => None,
            Some(a) => self.addr("server.admin", Some(a)),
            None => DEFAULT_ADMIN.parse().ok(),
        };

        let mut admin_token = None;
        let mut admin_token_file = None;
        // A token file that is set but unreadable is its own error; don't
        // also claim the key is missing.
        let admin_token_key_given = raw.admin_token_file.is_some();
        if let Some(f) = raw.admin_token_file {
            let path = resolve_relative(&self.file, Path::new(f.get_ref()));
            match self.secret(&path) {
                Ok(secret) => {
                    admin_token = Some(secret);
                    admin_token_file = Some(path);
                }
                Err(message) => self.err(Some(f.span()), "server.admin_token_file", message),
            }
        }
        if let Some(a) = admin
            && !a.ip().is_loopback()
            && !admin_token_key_given
        {
            self.err(
                admin_span,
                "server.admin",
                format!(
                    "admin listener {a} is not on loopback; set `admin_token_file` so the admin API is not open to the network"
                ),
            );
        }

        let trusted_proxies = self.cidrs("server.trusted_proxies", raw.trusted_proxies);
        let access_log_format = match raw.access_log_format {
            None => AccessLogFormat::Default,
            Some(f) => match f.get_ref().as_str() {
                "default" => AccessLogFormat::Default,
                "combined" => AccessLogFormat::Combined,
                other => {
                    self.err(
                        Some(f.span()),
                        "server.access_log_format",
                        format!("unknown format {other:?} (use \"default\" or \"combined\")"),
                    );
                    AccessLogFormat::Default
                }
            },
        };
        if let Some(pp) = &raw.proxy_protocol
            && *pp.get_ref()
            && trusted_proxies.is_empty()
        {
            self.err(
                Some(pp.span()),
                "server.proxy_protocol",
                "PROXY headers are accepted only from `trusted_proxies`, and none is set; list the load balancers' addresses there".into(),
            );
        }

        let workers = match raw.workers {
            None => 0,
            Some(w) if (0..=1024).contains(w.get_ref()) => *w.get_ref() as usize,
            Some(w) => {
                self.err(
                    Some(w.span()),
                    "server.workers",
                    "must be between 0 (one per core) and 1024".into(),
                );
                0
            }
        };

        ServerConfig {
            http,
            https,
            admin,
            admin_token,
            admin_token_file,
            trusted_proxies,
            access_log_format,
            state_dir: raw
                .state_dir
                .map(|s| resolve_relative(&self.file, Path::new(s.get_ref())))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            grace_period: self.duration(
                "server.grace_period",
                raw.grace_period,
                Duration::from_secs(30),
            ),
            upstream_connect_timeout: self.duration(
                "server.upstream_connect_timeout",
                raw.upstream_connect_timeout,
                Duration::from_secs(5),
            ),
            upstream_timeout: self.duration(
                "server.upstream_timeout",
                raw.upstream_timeout,
                Duration::from_secs(60),
            ),
            upstream_idle_timeout: self.duration(
                "server.upstream_idle_timeout",
                raw.upstream_idle_timeout,
                Duration::from_secs(90),
            ),
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                raw.header_read_timeout,
                Duration::from_secs(30),
            ),
            workers,
            max_connections: self.int_in(
                "server.max_connections",
                raw.max_connections,
                1..=1_000_000,
                16_384,
            ) as usize,
            max_header_bytes: self
                .size("server.max_header_bytes", raw.max_header_bytes, 8192)
                .unwrap_or(64 * 1024) as usize,
            request_body_timeout: self.duration(
                "server.request_body_timeout",
                raw.request_body_timeout,
                Duration::from_secs(60),
            ),
            upstream_read_timeout: self.duration(
                "server.upstream_read_timeout",
                raw.upstream_read_timeout,
                Duration::from_secs(60),
            ),
            send_timeout: self.duration(
                "server.send_timeout",
                raw.send_timeout,
                Duration::from_secs(60),
            ),
            upstream_eject_after: self.int_in(
                "server.upstream_eject_after",
                raw.upstream_eject_after,
                0..=1000,
                3,
            ) as u32,
            upstream_eject_for: self.duration(
                "server.upstream_eject_for",
                raw.upstream_eject_for,
                Duration::from_secs(10),
            ),
            h2_max_concurrent_streams: self.int_in(
                "server.h2_max_concurrent_streams",
                raw.h2_max_concurrent_streams,
                1..=10_000,
                256,
            ) as u32,
            request_buffering: raw.request_buffering.is_none_or(|b| b.into_inner()),
            proxy_protocol: raw.proxy_protocol.is_some_and(|b| b.into_inner()),
            request_buffer: self
                .buffer_size("server.request_buffer", raw.request_buffer)
                .unwrap_or(super::limits_section::DEFAULT_REQUEST_BUFFER),
            tls_handshake_timeout: self.duration(
                "server.tls_handshake_timeout",
                raw.tls_handshake_timeout,
                Duration::from_secs(10),
            ),
            watch: raw.watch.is_some_and(|w| w.into_inner()),
            hsts: match raw.hsts {
                None => Some(super::tls_section::default_hsts()),
                Some(h) => self.hsts("server.hsts", h),
            },
            upstream_tls: match raw.upstream_tls {
                None => Default::default(),
                Some(t) => self.upstream_tls("server.upstream_tls", t, &Default::default(), false),
            },
            options: {
                let compress = self.compress("server.compress", raw.compress, None);
                let error_pages =
                    self.error_pages("server.error_pages", raw.error_pages, &Default::default());
                super::ServerOptions {
                    compress,
                    error_pages,
                    default_route: self.default_route(raw.default_route),
                }
            },
        }
    }
}
