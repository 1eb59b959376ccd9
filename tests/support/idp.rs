//! The OIDC test provider and a small browser to drive sign-ins.
//!
//! [`Idp::start`] runs `node tests/peers/oidc/provider.mjs` (panva's
//! oidc-provider shaped like Authentik: issuer under
//! `/application/o/portcullis/` with the trailing slash), reads its one JSON
//! ready line, and kills it on drop. Its stdin is a pipe we hold, so the
//! provider also exits if the test process dies. Options are the
//! provider's environment variables (see its README).
//!
//! [`Browser`] is a cookie jar plus redirect following: requests for
//! `127.0.0.1` go straight to the provider, every other host goes to the
//! gateway (plain, or TLS without certificate checks for the HTTPS tests).
//! It fills in the provider's login form and end-session confirmation the
//! way a browser user would.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use super::backend::{Backend, Echo};
use super::client::{Resp, TestBody, TestClient};
use super::gateway::Gateway;

/// How long one start of the provider may take to print its ready line
/// (normally about a second; generous for a busy two-core machine).
const START_BOUND: Duration = Duration::from_secs(30);

/// Providers starting at once in this test process. Node spends its start
/// compiling the library; ten at a time on two cores starve each other.
static STARTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc")
}

/// Provider options before start.
#[derive(Default, Clone)]
pub struct IdpBuilder {
    env: Vec<(String, String)>,
}

impl IdpBuilder {
    /// Any provider environment variable (`ID_TOKEN_ALG`, `ACCESS_TOKEN_TTL`, ...).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Listen on this port (default: a free one).
    pub fn port(self, port: u16) -> Self {
        self.env("PORT", port)
    }

    pub fn id_token_alg(self, alg: &str) -> Self {
        self.env("ID_TOKEN_ALG", alg)
    }

    pub fn access_token_alg(self, alg: &str) -> Self {
        self.env("ACCESS_TOKEN_ALG", alg)
    }

    /// Access token lifetime in seconds (refresh tests).
    pub fn access_token_ttl(self, secs: u64) -> Self {
        self.env("ACCESS_TOKEN_TTL", secs)
    }

    /// Where the provider POSTs back-channel logout tokens.
    pub fn backchannel_logout_uri(self, uri: &str) -> Self {
        self.env("BACKCHANNEL_LOGOUT_URI", uri)
    }

    /// Starts the provider. A start that does not get ready in time is
    /// retried (twice) with a fresh process, so one stalled node start on a
    /// busy machine does not fail a test; each stall is reported on stderr.
    pub async fn start(self) -> Idp {
        let _slot = STARTING.acquire().await.expect("semaphore never closed");
        let dir = peer_dir();
        if !dir.join("node_modules/oidc-provider").is_dir() {
            panic!(
                "the OIDC test provider's dependencies are missing: run `npm ci` in tests/peers/oidc"
            );
        }
        let mut last = String::new();
        for attempt in 1..=3 {
            match self.try_start(&dir).await {
                Ok(idp) => return idp,
                Err(e) => {
                    eprintln!("OIDC test provider start attempt {attempt} failed: {e}");
                    last = e;
                }
            }
        }
        panic!("the OIDC test provider did not start: {last}");
    }

    async fn try_start(&self, dir: &std::path::Path) -> Result<Idp, String> {
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("provider.mjs"))
            .env("EXIT_ON_STDIN_CLOSE", "1")
            .env("LOG", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`node` not found: install Node.js (20 or later) to run the SSO tests")
            }
            Err(e) => panic!("cannot start the OIDC test provider: {e}"),
        };
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        {
            let stderr = child.stderr.take().unwrap();
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut buf = Vec::new();
                // Bytes, not `lines()`: a non-UTF-8 line must not stop the
                // draining (a full pipe would block the provider).
                while let Ok(n) = std::io::BufRead::read_until(&mut r, b'\n', &mut buf) {
                    if n == 0 {
                        break;
                    }
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    logs.lock().unwrap().push(line);
                    buf.clear();
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the pipe never fills.
            for _ in lines {}
        });
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(START_BOUND))
            .await
            .unwrap();
        let line = match ready {
            Ok(l) => l,
            Err(_) => {
                let state = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
                    .unwrap_or_default();
                let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", child.id()))
                    .unwrap_or_default();
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(format!(
                    "no ready line (exit: {status:?}; /proc stat: {}; wchan: {wchan}); its log:\n{}",
                    state.trim(),
                    logs.lock().unwrap().join("\n")
                ));
            }
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("provider ready line is not JSON ({e}): {line}"));
        assert_eq!(v["ready"], true, "{line}");
        Ok(Idp {
            stdin: child.stdin.take(),
            child,
            port: v["port"].as_u64().unwrap() as u16,
            issuer: v["issuer"].as_str().unwrap().to_string(),
            logs,
            client: TestClient::new(),
        })
    }
}

/// A running provider; killed on drop.
pub struct Idp {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    issuer: String,
    logs: Arc<Mutex<Vec<String>>>,
    client: TestClient,
}

impl Idp {
    pub fn builder() -> IdpBuilder {
        IdpBuilder::default()
    }

    /// Starts a provider with the defaults (users alice and bob, client
    /// `portcullis` / `portcullis-secret`, RS256).
    pub async fn start() -> Idp {
        Idp::builder().start().await
    }

    /// `http://127.0.0.1:PORT/application/o/portcullis/`
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The provider's stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// `GET /_test/stats`.
    pub async fn stats(&self) -> Value {
        self.client.get(&self.url("/_test/stats")).await.json()
    }

    /// Token-endpoint calls of one grant type so far.
    pub async fn grant_count(&self, grant: &str) -> u64 {
        self.stats().await[grant].as_u64().unwrap_or(0)
    }

    /// `POST /_test/mint`: a bearer JWT (see the provider README for fields).
    pub async fn mint(&self, body: Value) -> String {
        let r = self
            .client
            .request(
                Method::POST,
                &self.url("/_test/mint"),
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "mint: {}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    /// A real `client_credentials` access token (JWT, `typ: at+jwt`).
    pub async fn client_credentials(&self) -> String {
        let r = self
            .client
            .request(
                Method::POST,
                &format!("{}token", self.issuer),
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    (
                        "authorization",
                        "Basic cG9ydGN1bGxpczpwb3J0Y3VsbGlzLXNlY3JldA==",
                    ),
                ],
                "grant_type=client_credentials&scope=openid%20profile",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "client_credentials: {}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    /// `POST /_test/rotate_keys`: fresh signing keys; `same_kid` keeps
    /// their key ids (a rotation a `kid` lookup alone cannot notice).
    pub async fn rotate_keys(&self, same_kid: bool) {
        let r = self
            .client
            .request(
                Method::POST,
                &self.url("/_test/rotate_keys"),
                &[("content-type", "application/json")],
                json!({ "same_kid": same_kid }).to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "rotate_keys: {}", r.text());
    }

    /// `POST /_test/backchannel_logout`.
    pub async fn backchannel_logout(&self, body: Value) -> Resp {
        self.client
            .request(
                Method::POST,
                &self.url("/_test/backchannel_logout"),
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await
    }

    /// Stops the provider now (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (for peers that must know each
/// other's address before either starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------
// A browser: cookie jar, redirects, the provider's forms.

#[derive(Debug, Clone)]
pub struct Cookie {
    /// Host without port (domain cookies: the domain).
    pub domain: String,
    pub host_only: bool,
    pub path: String,
    pub name: String,
    pub value: String,
    pub secure: bool,
    /// The whole `Set-Cookie` line as received.
    pub raw: String,
}

/// Connects every request to one address, whatever the URL says.
#[derive(Clone)]
struct Fixed(SocketAddr);

impl tower::Service<Uri> for Fixed {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { Ok(TokioIo::new(tokio::net::TcpStream::connect(addr).await?)) })
    }
}

enum GatewayConn {
    Plain(TestClient),
    Tls(Client<hyper_rustls::HttpsConnector<Fixed>, TestBody>),
}

/// One browser profile: its own cookie jar.
pub struct Browser {
    gateway: GatewayConn,
    provider: TestClient,
    pub jar: Vec<Cookie>,
    /// Sent as `Accept` (default: what a browser sends for a page).
    pub accept: String,
}

impl Browser {
    /// Gateway hosts are reached over plain HTTP at `gateway`.
    pub fn new(gateway: SocketAddr) -> Self {
        Browser {
            gateway: GatewayConn::Plain(TestClient::to(gateway)),
            provider: TestClient::new(),
            jar: Vec::new(),
            accept: "text/html,application/xhtml+xml,*/*;q=0.8".into(),
        }
    }

    /// Gateway hosts are reached over TLS at `gateway`, trusting any
    /// certificate (the gateway's self-signed one); `https://` URLs.
    pub fn tls(gateway: SocketAddr) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::tls::AnyCert(provider)))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(Fixed(gateway));
        Browser {
            gateway: GatewayConn::Tls(Client::builder(TokioExecutor::new()).build(connector)),
            provider: TestClient::new(),
            jar: Vec::new(),
            accept: "text/html,application/xhtml+xml,*/*;q=0.8".into(),
        }
    }

    /// The value of cookie `name` the jar holds for `host`, if any.
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar
            .iter()
            .find(|c| c.name == name && domain_match(c, host))
            .map(|c| c.value.clone())
    }

    /// The full `Set-Cookie` line last received for `name`.
    pub fn raw_cookie(&self, name: &str) -> Option<String> {
        self.jar
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.raw.clone())
    }

    /// Puts a cookie in the jar by hand (host-only, path `/`).
    pub fn set_cookie(&mut self, host: &str, name: &str, value: &str) {
        self.jar.retain(|c| !(c.name == name && c.domain == host));
        self.jar.push(Cookie {
            domain: host.to_string(),
            host_only: true,
            path: "/".into(),
            name: name.into(),
            value: value.into(),
            secure: false,
            raw: String::new(),
        });
    }

    /// Stores the cookies of a response to `url`.
    pub fn store_cookies(&mut self, url: &str, headers: &HeaderMap) {
        let uri: Uri = url.parse().unwrap();
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        for v in headers.get_all(http::header::SET_COOKIE) {
            let Ok(line) = v.to_str() else { continue };
            let mut parts = line.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            let mut c = Cookie {
                domain: host.clone(),
                host_only: true,
                path: "/".into(),
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                secure: false,
                raw: line.to_string(),
            };
            let mut delete = false;
            for attr in parts {
                let (k, v) = attr.trim().split_once('=').unwrap_or((attr.trim(), ""));
                match k.to_ascii_lowercase().as_str() {
                    "domain" => {
                        c.domain = v.trim_start_matches('.').to_ascii_lowercase();
                        c.host_only = false;
                    }
                    "path" => c.path = v.to_string(),
                    "secure" => c.secure = true,
                    "max-age" => delete |= v.trim().parse::<i64>().is_ok_and(|n| n <= 0),
                    "expires" => delete |= v.contains("1970"),
                    _ => {}
                }
            }
            // What browsers enforce for the `__Host-` prefix.
            if c.name.starts_with("__Host-") && (!c.secure || !c.host_only || c.path != "/") {
                continue;
            }
            self.jar
                .retain(|o| !(o.name == c.name && o.domain == c.domain && o.path == c.path));
            if !delete {
                self.jar.push(c);
            }
        }
    }

    fn cookie_header(&self, url: &Uri) -> Option<String> {
        let host = url.host().unwrap_or("").to_ascii_lowercase();
        let https = url.scheme_str() == Some("https");
        let path = url.path();
        let pairs: Vec<String> = self
            .jar
            .iter()
            .filter(|c| domain_match(c, &host) && path.starts_with(&c.path) && (https || !c.secure))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// One request with the jar's cookies; stores the response's cookies.
    pub async fn request(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<TestBody>,
    ) -> Resp {
        let uri: Uri = url.parse().unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
        let cookie = self.cookie_header(&uri);
        let accept = self.accept.clone();
        let mut all: Vec<(&str, &str)> = vec![("accept", accept.as_str())];
        if let Some(c) = &cookie {
            all.push(("cookie", c));
        }
        all.extend_from_slice(headers);
        let to_provider = uri.host() == Some("127.0.0.1");
        let resp = if to_provider {
            self.provider.request(method, url, &all, body).await
        } else {
            match &self.gateway {
                GatewayConn::Plain(c) => c.request(method, url, &all, body).await,
                GatewayConn::Tls(c) => tls_request(c, method, url, &all, body.into()).await,
            }
        };
        self.store_cookies(url, &resp.headers);
        resp
    }

    pub async fn get(&mut self, url: &str) -> Resp {
        self.request(Method::GET, url, &[], TestBody::empty()).await
    }

    /// Follows redirects and the provider's forms (login as `user` with
    /// password `<user>-pw`, end-session confirmation) until a response
    /// that is neither, or until a redirect target satisfies `stop` (which
    /// is then returned without being requested).
    pub async fn follow_until(
        &mut self,
        start: &str,
        user: &str,
        stop: impl Fn(&str) -> bool,
    ) -> Step {
        let mut url = start.to_string();
        let mut method = Method::GET;
        let mut body: Option<String> = None;
        for _ in 0..25 {
            let headers: Vec<(&str, &str)> = if body.is_some() {
                vec![("content-type", "application/x-www-form-urlencoded")]
            } else {
                vec![]
            };
            let resp = self
                .request(
                    method.clone(),
                    &url,
                    &headers,
                    body.take().unwrap_or_default(),
                )
                .await;
            if resp.status.is_redirection() {
                let loc = resp
                    .header("location")
                    .unwrap_or_else(|| panic!("redirect without Location from {url}"));
                let next = resolve(&url, loc);
                if stop(&next) {
                    return Step::Stopped(next, resp);
                }
                url = next;
                method = Method::GET;
                continue;
            }
            let text = resp.text();
            if resp.status == StatusCode::OK && text.contains("name=\"password\"") {
                let action = form_action(&text).expect("login form action");
                url = resolve(&url, &action);
                method = Method::POST;
                body = Some(format!("login={user}&password={user}-pw"));
                continue;
            }
            if resp.status == StatusCode::OK && text.contains("name=\"xsrf\"") {
                let action = form_action(&text).expect("logout form action");
                let xsrf = input_value(&text, "xsrf").expect("xsrf value");
                url = resolve(&url, &action);
                method = Method::POST;
                body = Some(format!("xsrf={xsrf}&logout=yes"));
                continue;
            }
            return Step::Done(url, resp);
        }
        panic!("too many redirects starting at {start}");
    }

    /// Signs in as `user` starting at `url` and returns the last response
    /// (normally the backend's answer to `url`).
    pub async fn login(&mut self, url: &str, user: &str) -> Resp {
        match self.follow_until(url, user, |_| false).await {
            Step::Done(_, r) => r,
            Step::Stopped(..) => unreachable!(),
        }
    }
}

/// Where [`Browser::follow_until`] ended.
pub enum Step {
    /// The final URL and its response.
    Done(String, Resp),
    /// A redirect to this URL (not requested), and the redirect response.
    Stopped(String, Resp),
}

fn domain_match(c: &Cookie, host: &str) -> bool {
    if c.host_only {
        c.domain == host
    } else {
        host == c.domain || host.ends_with(&format!(".{}", c.domain))
    }
}

/// Resolves a `Location` against the URL it came from.
pub fn resolve(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let uri: Uri = base.parse().unwrap();
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().unwrap()
    );
    if loc.starts_with('/') {
        format!("{origin}{loc}")
    } else {
        let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{origin}{dir}/{loc}")
    }
}

fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let a = form.find("action=\"")? + 8;
    let end = form[a..].find('"')?;
    Some(form[a..a + end].replace("&amp;", "&"))
}

fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let start = html[..at].rfind("<input")?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[start..tag_end];
    let v = tag.find("value=\"")? + 7;
    let end = tag[v..].find('"')?;
    Some(tag[v..v + end].to_string())
}

async fn tls_request(
    client: &Client<hyper_rustls::HttpsConnector<Fixed>, TestBody>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Resp {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("no TLS response from {url}"))
        .unwrap_or_else(|e| panic!("TLS request {url}: {}", super::client::error_chain(e)));
    let (parts, body) = resp.into_parts();
    let body: Bytes = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// The query parameters of a URL.
pub fn query_of(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded_pairs(q)
}

/// Decodes `a=b&c=d` (percent and `+` decoding).
pub fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces (or adds) one query parameter of a URL.
pub fn with_query_param(url: &str, key: &str, value: &str) -> String {
    let (base, q) = url.split_once('?').unwrap_or((url, ""));
    let mut parts: Vec<String> = q
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(key))
        .map(String::from)
        .collect();
    parts.push(format!("{key}={value}"));
    format!("{base}?{}", parts.join("&"))
}

/// Convenience: a JSON body for `mint`.
pub fn mint_for(user: &str) -> Value {
    json!({ "user": user })
}

// ---------------------------------------------------------------------------
// A whole SSO setup for the sso*.rs tests.

/// The test provider's client secret.
pub const CLIENT_SECRET: &str = "portcullis-secret";
/// The session cookie name with `insecure_cookies = true`.
pub const PLAIN_COOKIE: &str = "portcullis_session";

/// Options for [`SsoEnv::start`].
#[derive(Default)]
pub struct SsoOpts {
    /// Extra lines for `[server]`.
    pub server: &'static str,
    /// Extra lines for `[oidc.authentik]`.
    pub provider: &'static str,
    /// Extra tables after the routes (more routes, `[access.NAME]` lists).
    pub routes: String,
    /// A fixed http port (back-channel tests need it before start).
    pub port: Option<u16>,
    pub idp: Option<IdpBuilder>,
}

/// A provider, an echo backend and a gateway with one provider
/// (`authentik`, insecure cookies for plain HTTP) and these routes:
/// `app` (any user), `admins` (group admins), `bob` (email), `domain`
/// (email domain example.com), `fwd` (oauth2-proxy headers), `none` (no
/// identity headers), `public` — each `<name>.localtest`.
pub struct SsoEnv {
    pub idp: Idp,
    pub backend: Backend,
    pub gw: Gateway,
}

impl SsoEnv {
    pub async fn start(o: SsoOpts) -> SsoEnv {
        let idp = o.idp.unwrap_or_default().start().await;
        let backend = Backend::echo().await;
        let http = match o.port {
            Some(p) => format!("127.0.0.1:{p}"),
            None => "{{HTTP}}".to_string(),
        };
        let toml = format!(
            r#"
[server]
http = "{http}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"
{server}

[oidc.authentik]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secret"
insecure_cookies = true
{provider}

[[route]]
host = "app.localtest"
upstream = "{up}"
auth = {{ oidc = "authentik" }}

[[route]]
host = "admins.localtest"
upstream = "{up}"
auth = {{ oidc = "authentik", groups = ["admins"] }}

[[route]]
host = "bob.localtest"
upstream = "{up}"
auth = {{ oidc = "authentik", emails = ["BOB@example.org"] }}

[[route]]
host = "domain.localtest"
upstream = "{up}"
auth = {{ oidc = "authentik", email_domains = ["example.com"] }}

[[route]]
host = "fwd.localtest"
upstream = "{up}"
auth = {{ oidc = "authentik" }}
identity_headers = "forwarded"

[[route]]
host = "none.localtest"
upstream = "{up}"
auth = {{ oidc = "authentik" }}
identity_headers = "none"

[[route]]
host = "public.localtest"
upstream = "{up}"

{routes}
"#,
            routes = o.routes,
            server = o.server,
            provider = o.provider,
            issuer = idp.issuer(),
            up = backend.url(),
        );
        let gw = Gateway::builder(&toml)
            .file("secret", CLIENT_SECRET)
            .start()
            .await;
        SsoEnv { idp, backend, gw }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.gw.http_addr().port())
    }

    pub fn browser(&self) -> Browser {
        Browser::new(self.gw.http_addr())
    }

    /// A browser signed in as `user` on `host`; returns it and the backend's
    /// echo of the first request.
    pub async fn signed_in(&self, user: &str, host: &str) -> (Browser, Echo) {
        let mut b = self.browser();
        let r = b.login(&self.url(host, "/"), user).await;
        assert_eq!(r.status, StatusCode::OK, "login as {user}: {}", r.text());
        (b, Echo(r.json()))
    }

    /// A non-browser request carrying only the session cookie.
    pub async fn with_session(&self, host: &str, path: &str, session: &str) -> Resp {
        self.gw
            .client()
            .get_with(
                &self.url(host, path),
                &[
                    ("accept", "application/json"),
                    ("cookie", &format!("{PLAIN_COOKIE}={session}")),
                ],
            )
            .await
    }
}
