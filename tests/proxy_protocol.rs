//! PROXY protocol behind a real HAProxy (`send-proxy` and `send-proxy-v2`):
//! the backend sees the client's address, not the balancer's; a PROXY
//! header from a peer outside `trusted_proxies` closes the connection.
//!
//! Loopback has many addresses: the client connects from 127.0.0.2 (to
//! HAProxy) or 127.0.0.3 (directly); HAProxy reaches us from 127.0.0.1,
//! the one trusted proxy.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use support::backend::Backend;
use support::client::{RawResponse, exchange};
use support::gateway::Gateway;
use support::haproxy::Haproxy;
use support::idp::free_port;

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

async fn get_from(src: &str, to: SocketAddr, prefix: &[u8]) -> RawResponse {
    let mut c = connect_from(src, to).await;
    let mut req = prefix.to_vec();
    req.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
    exchange(&mut c, &req).await
}

fn forwarded_for(r: &RawResponse) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-forwarded-for")
        .map(|h| h[1].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn haproxy_in_front_keeps_the_client_address() {
    let backend = Backend::echo().await;
    let gw = Gateway::start(&format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"
trusted_proxies = ["127.0.0.1/32"]
proxy_protocol = true

[[route]]
host = "app.test"
upstream = "{}"
allow_ips = ["127.0.0.2/32", "127.0.0.3/32", "127.0.0.1/32"]
"#,
        backend.url()
    ))
    .await;
    let (v1, v2) = (free_port(), free_port());
    let _ha = Haproxy::start(&[
        (v1, gw.http_addr(), "send-proxy"),
        (v2, gw.http_addr(), "send-proxy-v2"),
    ]);
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));

    // Through HAProxy, v2 and v1: the client's own address.
    assert_eq!(
        forwarded_for(&get_from("127.0.0.2", at(v2), b"").await),
        "127.0.0.2"
    );
    assert_eq!(
        forwarded_for(&get_from("127.0.0.2", at(v1), b"").await),
        "127.0.0.2"
    );

    // Direct, without a header: served as itself.
    assert_eq!(
        forwarded_for(&get_from("127.0.0.3", gw.http_addr(), b"").await),
        "127.0.0.3"
    );

    // Direct, claiming another address: refused (closed, no response).
    let mut c = connect_from("127.0.0.3", gw.http_addr()).await;
    c.write_all(
        b"PROXY TCP4 10.9.9.9 127.0.0.1 1234 80\r\nGET /who HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let n = support::within(
        "the refused connection to close",
        Duration::from_secs(10),
        c.read_to_end(&mut buf),
    )
    .await;
    assert!(
        n.is_err() || buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(
        backend.served(),
        3,
        "the refused request never reached the backend"
    );
}
