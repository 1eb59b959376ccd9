//! The Prometheus text exposition of [`Metrics`] (`/metrics`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::*;

impl Metrics {
    /// The Prometheus text exposition.
    /// `certs` and `upstreams` are what the caller read at scrape time
    /// (the certificate store, the live snapshot's balancers).
    pub fn render(&self, certs: &[CertGauge], upstreams: &[UpstreamGauge]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut routes: Vec<(String, Arc<RouteMetrics>)> = self
            .routes
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let all: Vec<(&str, &RouteMetrics)> = routes
            .iter()
            .map(|(n, m)| (n.as_str(), &**m))
            .chain(std::iter::once(("", &*self.unrouted)))
            .collect();

        header(
            &mut out,
            "portcullis_build_info",
            "gauge",
            "Build information.",
        );
        let _ = writeln!(
            out,
            "portcullis_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        header(
            &mut out,
            "portcullis_requests_total",
            "counter",
            "Requests by route, method and status: the exact code, and its class (route=\"\" for requests no route matched).",
        );
        for (name, m) in &all {
            for (mi, code, v) in m.request_counts() {
                let class = CLASSES[usize::from((code / 100).clamp(1, 5)) - 1];
                let _ = writeln!(
                    out,
                    "portcullis_requests_total{{route=\"{}\",method=\"{}\",code=\"{code}\",status_class=\"{class}\"}} {v}",
                    escape(name),
                    METHODS[mi]
                );
            }
        }

        header(
            &mut out,
            "portcullis_request_duration_seconds",
            "histogram",
            "Time from request to response headers, by route.",
        );
        for (name, m) in &all {
            m.duration.render(
                &mut out,
                "portcullis_request_duration_seconds",
                &format!("route=\"{}\"", escape(name)),
            );
        }

        header(
            &mut out,
            "portcullis_upstream_errors_total",
            "counter",
            "Failed upstream requests by route and kind (refused, timeout, reset).",
        );
        for (name, m) in &all {
            for (ki, kind) in UPSTREAM_KINDS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "portcullis_upstream_errors_total{{route=\"{}\",kind=\"{kind}\"}} {}",
                    escape(name),
                    m.upstream_errors[ki].load(Relaxed)
                );
            }
        }

        header(
            &mut out,
            "portcullis_upstream_panic_total",
            "counter",
            "Requests sent to an upstream while every upstream of the route was ejected or failing its health check (panic mode), by route.",
        );
        for (name, m) in &all {
            let _ = writeln!(
                out,
                "portcullis_upstream_panic_total{{route=\"{}\"}} {}",
                escape(name),
                m.upstream_panic.load(Relaxed)
            );
        }

        header(
            &mut out,
            "portcullis_upstream_up",
            "gauge",
            "1 while the upstream is in rotation, 0 while it is ejected after consecutive failures or failing its health check, by route and upstream URL (routes of the running config).",
        );
        for g in upstreams {
            let _ = writeln!(
                out,
                "portcullis_upstream_up{{route=\"{}\",upstream=\"{}\"}} {}",
                escape(&g.route),
                escape(&g.upstream),
                u8::from(g.up)
            );
        }

        header(
            &mut out,
            "portcullis_upstream_ejections_total",
            "counter",
            "Times an upstream left the rotation, by route, upstream URL and reason (failures: upstream_eject_after consecutive failed requests; health_check: its health check started failing).",
        );
        for (name, m) in &all {
            for (upstream, reason, v) in m.ejection_counts() {
                let _ = writeln!(
                    out,
                    "portcullis_upstream_ejections_total{{route=\"{}\",upstream=\"{}\",reason=\"{reason}\"}} {v}",
                    escape(name),
                    escape(&upstream)
                );
            }
        }

        header(
            &mut out,
            "portcullis_rate_limited_total",
            "counter",
            "Requests refused with 429 by the route's rate_limit, by route.",
        );
        for (name, m) in &all {
            let _ = writeln!(
                out,
                "portcullis_rate_limited_total{{route=\"{}\"}} {}",
                escape(name),
                m.rate_limited.load(Relaxed)
            );
        }

        for (metric, kind, help, f) in [
            (
                "portcullis_requests_in_flight",
                "gauge",
                "Requests being served, by listener.",
                (|l: &ListenerMetrics| l.in_flight.load(Relaxed)) as fn(&ListenerMetrics) -> i64,
            ),
            (
                "portcullis_connections_open",
                "gauge",
                "Open client connections, by listener.",
                |l: &ListenerMetrics| l.open_connections.load(Relaxed),
            ),
            (
                "portcullis_connections_total",
                "counter",
                "Accepted client connections, by listener.",
                |l: &ListenerMetrics| l.connections.load(Relaxed) as i64,
            ),
        ] {
            header(&mut out, metric, kind, help);
            for (listener, l) in [("http", &self.http), ("https", &self.https)] {
                let _ = writeln!(out, "{metric}{{listener=\"{listener}\"}} {}", f(l));
            }
        }

        header(
            &mut out,
            "portcullis_tls_handshakes_total",
            "counter",
            "TLS handshakes by result (ok, failed, unknown_sni).",
        );
        for (result, v) in [
            ("ok", &self.tls_handshakes),
            ("failed", &self.tls_handshake_failures),
            ("unknown_sni", &self.tls_unknown_sni),
        ] {
            let _ = writeln!(
                out,
                "portcullis_tls_handshakes_total{{result=\"{result}\"}} {}",
                v.load(Relaxed)
            );
        }

        header(
            &mut out,
            "portcullis_certificate_not_after_seconds",
            "gauge",
            "Expiry of each served certificate (Unix seconds), by host and source.",
        );
        for c in certs {
            let _ = writeln!(
                out,
                "portcullis_certificate_not_after_seconds{{host=\"{}\",source=\"{}\"}} {}",
                escape(&c.host),
                c.source,
                c.not_after
            );
        }

        header(
            &mut out,
            "portcullis_acme_orders_total",
            "counter",
            "ACME certificate orders by result.",
        );
        let _ = writeln!(
            out,
            "portcullis_acme_orders_total{{result=\"success\"}} {}",
            self.acme_success.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "portcullis_acme_orders_total{{result=\"failure\"}} {}",
            self.acme_failure.load(Relaxed)
        );

        header(
            &mut out,
            "portcullis_auth_events_total",
            "counter",
            "Single sign-on outcomes by event.",
        );
        let a = &self.auth;
        for (event, v) in [
            ("login_ok", &a.login_ok),
            ("login_failed", &a.login_failed),
            ("denied", &a.denied),
            ("refresh_ok", &a.refresh_ok),
            ("refresh_failed", &a.refresh_failed),
            ("logout", &a.logout),
            ("bearer_ok", &a.bearer_ok),
            ("bearer_rejected", &a.bearer_rejected),
        ] {
            let _ = writeln!(
                out,
                "portcullis_auth_events_total{{event=\"{event}\"}} {}",
                v.load(Relaxed)
            );
        }
        header(
            &mut out,
            "portcullis_sessions_active",
            "gauge",
            "Single sign-on sessions in the hot cache (signed-in users seen since start or restored from the store).",
        );
        let _ = writeln!(
            out,
            "portcullis_sessions_active {}",
            a.sessions_active.load(Relaxed)
        );

        let c = &self.cluster;
        if c.configured.load(Relaxed) {
            header(
                &mut out,
                "portcullis_cluster_up",
                "gauge",
                "1 while the shared Redis answers, 0 while it does not ([cluster]).",
            );
            let instance = c.instance.get().map_or("", String::as_str);
            let _ = writeln!(
                out,
                "portcullis_cluster_up{{instance=\"{}\"}} {}",
                escape(instance),
                c.up.load(Relaxed)
            );
            header(
                &mut out,
                "portcullis_cluster_redis_errors_total",
                "counter",
                "Redis operations that failed or were refused while Redis was down.",
            );
            let _ = writeln!(
                out,
                "portcullis_cluster_redis_errors_total {}",
                c.errors.load(Relaxed)
            );
        }

        header(
            &mut out,
            "portcullis_config_reloads_total",
            "counter",
            "Config reloads by result.",
        );
        let _ = writeln!(
            out,
            "portcullis_config_reloads_total{{result=\"success\"}} {}",
            self.reload_success.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "portcullis_config_reloads_total{{result=\"failure\"}} {}",
            self.reload_failure.load(Relaxed)
        );
        header(
            &mut out,
            "portcullis_config_last_reload_success_timestamp_seconds",
            "gauge",
            "When the config was last loaded successfully (Unix seconds).",
        );
        let _ = writeln!(
            out,
            "portcullis_config_last_reload_success_timestamp_seconds {}",
            self.last_reload_success.load(Relaxed)
        );
        header(
            &mut out,
            "portcullis_routes_loaded",
            "gauge",
            "Routes in the running config.",
        );
        let _ = writeln!(
            out,
            "portcullis_routes_loaded {}",
            self.routes_loaded.load(Relaxed)
        );
        if self.docker_configured.load(Relaxed) {
            header(
                &mut out,
                "portcullis_docker_up",
                "gauge",
                "1 while the Docker engine answers, 0 while it is unreachable (the last known container routes stay).",
            );
            let _ = writeln!(out, "portcullis_docker_up {}", self.docker_up.load(Relaxed));
            header(
                &mut out,
                "portcullis_docker_label_errors",
                "gauge",
                "Bad container labels in the running route table (those containers are not routed).",
            );
            let _ = writeln!(
                out,
                "portcullis_docker_label_errors {}",
                self.docker_label_errors.load(Relaxed)
            );
        }
        if let Some(p) = process::ProcessStats::read() {
            p.render(&mut out);
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
