//! Active health checks: for every route with `health_check`, a task GETs
//! the check path on each upstream every `interval` and takes failing ones
//! out of rotation (2xx and 3xx are healthy). The tasks belong to one
//! snapshot and end when a reload replaces it.

use std::sync::Arc;

use http::{Request, header};

use crate::http::body::Body;
use crate::state::{Shared, Snapshot};

/// Starts the checks of `snap`'s routes.
pub fn spawn_checks(shared: &Arc<Shared>, snap: &Arc<Snapshot>) {
    for (idx, route) in snap.table.routes().iter().enumerate() {
        let Some(check) = route.config.limits.health_check.clone() else {
            continue;
        };
        if route.config.upstreams().is_empty() {
            continue;
        }
        let shared = shared.clone();
        let weak = Arc::downgrade(snap);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(check.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Stop once this snapshot is no longer the live one.
                let Some(snap) = weak.upgrade() else { return };
                if !Arc::ptr_eq(&snap, &shared.current()) {
                    return;
                }
                let route = &snap.table.routes()[idx];
                for (i, target) in route.config.upstreams().iter().enumerate() {
                    let uri = format!(
                        "{}://{}{}{}",
                        target.scheme, target.authority, target.base_path, check.path
                    );
                    let Ok(mut req) = Request::get(uri).body(Body::Empty) else {
                        continue;
                    };
                    if let Ok(v) = http::HeaderValue::from_str(target.authority.as_str()) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                    req.headers_mut().insert(
                        header::USER_AGENT,
                        http::HeaderValue::from_static("portcullis-health-check"),
                    );
                    let healthy = match shared.client.send(req, check.timeout).await {
                        Ok(resp) => {
                            let s = resp.status();
                            s.is_success() || s.is_redirection()
                        }
                        Err(_) => false,
                    };
                    route.set_down(i, !healthy);
                }
            }
        });
    }
}
