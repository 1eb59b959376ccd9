//! A real headless Chromium, driven over WebDriver, for the tests that
//! need what only a browser does (HTTP/2 cookie crumbs, its caches, the
//! `Sec-Fetch-*` headers, HttpOnly cookies).
//!
//! [`Driver::start`] runs `chromedriver` on a free port (killed by pid on
//! drop); [`Driver::session`] opens one headless Chromium with its own
//! profile in a temp dir. The WebDriver protocol is JSON over plain HTTP on
//! 127.0.0.1, spoken here with hyper; nothing else is needed.
//!
//! Trust: the gateway's test certificate is accepted through
//! `--ignore-certificate-errors-spki-list` with the hash of that one leaf's
//! public key, a pin (every other certificate error still stops the page),
//! not a blanket bypass. Names: `--host-resolver-rules` maps `*.test` to
//! 127.0.0.1, so pages are `https://app.test:PORT/`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tempfile::TempDir;

/// W3C WebDriver's key for an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver may take to answer its status endpoint.
const DRIVER_START_BOUND: Duration = Duration::from_secs(20);
/// How long a browser condition may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Browsers open at once in this test process (two cores: more starve).
static OPEN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

const INSTALL: &str = "apt-get install -y chromium chromium-driver";

fn find_binary(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        path.split(':')
            .map(|d| std::path::Path::new(d).join(n))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    })
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, base64: what
/// Chromium's `--ignore-certificate-errors-spki-list` pins. `pem` may be a
/// chain; its first certificate counts.
pub fn spki_pin(pem: &str) -> String {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("certificate PEM");
    let cert = der.parse_x509().expect("certificate DER");
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A running chromedriver; killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
    chromium: String,
    _home: TempDir,
}

impl Driver {
    /// Starts chromedriver (blocking until it answers). Panics with the
    /// install command when Chromium or chromedriver is missing.
    pub fn start() -> Driver {
        let Some(chromium) = find_binary(&["chromium", "chromium-browser", "google-chrome"]) else {
            panic!("chromium not found: {INSTALL}");
        };
        let Some(driver) = find_binary(&["chromedriver"]) else {
            panic!("chromedriver not found: {INSTALL}");
        };
        let mut last = String::new();
        for _ in 0..3 {
            // Its own HOME: nothing of the user's profile or NSS db is used.
            let home = tempfile::Builder::new()
                .prefix("portcullis-chromium-")
                .tempdir()
                .expect("temp HOME for chromium");
            let port = super::tls::free_port();
            let child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .env("HOME", home.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): {INSTALL}"));
            let mut d = Driver {
                child,
                port,
                chromium: chromium.clone(),
                _home: home,
            };
            let deadline = std::time::Instant::now() + DRIVER_START_BOUND;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(status)) = d.child.try_wait() {
                    last = format!("chromedriver exited: {status}");
                    break;
                }
                if raw_http(port, "GET", "/status").is_some_and(|r| r.contains("\"ready\":true")) {
                    return d;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last.is_empty() {
                last = "chromedriver did not become ready".into();
            }
            // Port taken meanwhile, or a slow start: `d` is dropped (killed)
            // and another port tried.
        }
        panic!("{last}");
    }

    /// A new headless Chromium trusting the certificate with SPKI hash
    /// `pin`. At most two are open at once; a session waits for a slot.
    pub async fn session(&self, pin: &str) -> Session {
        let permit = OPEN.acquire().await.expect("semaphore never closed");
        let profile = tempfile::Builder::new()
            .prefix("portcullis-profile-")
            .tempdir()
            .expect("profile dir");
        let args = vec![
            "--headless=new".to_string(),
            // The tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--no-proxy-server".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--ignore-certificate-errors-spki-list={pin}"),
            "--host-resolver-rules=MAP *.test 127.0.0.1".into(),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": false,
                    "goog:chromeOptions": { "binary": self.chromium, "args": args },
                }
            }
        });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let base = format!("http://127.0.0.1:{}", self.port);
        let mut s = Session {
            client,
            base,
            port: self.port,
            id: String::new(),
            _profile: profile,
            _permit: permit,
        };
        let v = s.call(Method::POST, "/session", Some(caps)).await;
        s.id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id from chromedriver: {v}"))
            .to_string();
        s
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to chromedriver over a fresh connection, blocking; the
/// body as text. For start-up probes and for closing a session in `Drop`.
fn raw_http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    // Read the head, then exactly Content-Length bytes: chromedriver may
    // keep the connection open whatever `Connection: close` says.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One browser (a WebDriver session); closed (Chromium quits) on drop.
pub struct Session {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    port: u16,
    id: String,
    _profile: TempDir,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

/// An element reference.
#[derive(Clone, Debug)]
pub struct Element(String);

/// A cookie as WebDriver reports it (HttpOnly ones too).
#[derive(Debug, Clone)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub http_only: bool,
}

impl Session {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("WebDriver request");
        let resp = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .unwrap_or_else(|_| panic!("WebDriver {method} {path}: no answer in 60 s"))
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("WebDriver body")
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "WebDriver {method} {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        if status != StatusCode::OK {
            panic!("WebDriver {method} {path}: {status}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.id)
    }

    /// Navigates (as if typed: no `Referer`, `Sec-Fetch-Site: none`).
    pub async fn goto(&self, url: &str) {
        self.call(
            Method::POST,
            &self.path("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    pub async fn url(&self) -> String {
        self.call(Method::GET, &self.path("/url"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The Back button.
    pub async fn back(&self) {
        self.call(Method::POST, &self.path("/back"), Some(json!({})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns
    /// what it returns.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.call(
            Method::POST,
            &self.path("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Runs an async script: the last argument is the callback to call with
    /// the result.
    pub async fn exec_async(&self, script: &str, args: Value) -> Value {
        self.call(
            Method::POST,
            &self.path("/execute/async"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.exec(
            "return document.body ? document.body.innerText : '';",
            json!([]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub async fn title(&self) -> String {
        self.call(Method::GET, &self.path("/title"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub async fn find(&self, css: &str) -> Option<Element> {
        let v = self
            .call(
                Method::POST,
                &self.path("/elements"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v.as_array()?
            .first()
            .and_then(|e| e[ELEMENT_KEY].as_str())
            .map(|s| Element(s.to_string()))
    }

    /// A real click on an element (a user gesture, as the browser sees it).
    pub async fn click(&self, e: &Element) {
        self.call(
            Method::POST,
            &self.path(&format!("/element/{}/click", e.0)),
            Some(json!({})),
        )
        .await;
    }

    /// An element's attribute as the page has it (`href` as written).
    pub async fn attribute(&self, e: &Element, name: &str) -> Option<String> {
        self.call(
            Method::GET,
            &self.path(&format!("/element/{}/attribute/{name}", e.0)),
            None,
        )
        .await
        .as_str()
        .map(String::from)
    }

    /// Every cookie the browser would send to the current page, HttpOnly
    /// ones included.
    pub async fn cookies(&self) -> Vec<BrowserCookie> {
        let v = self.call(Method::GET, &self.path("/cookie"), None).await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| BrowserCookie {
                        name: c["name"].as_str().unwrap_or_default().to_string(),
                        value: c["value"].as_str().unwrap_or_default().to_string(),
                        http_only: c["httpOnly"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `check` (a script returning a value, or null while not there
    /// yet) until it returns something not null; panics after [`WAIT`]
    /// with `what`, the URL and the page text.
    pub async fn wait_for(&self, what: &str, check: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.exec(check, json!([])).await;
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}; at {} showing:\n{}",
                    self.url().await,
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's URL starts with `prefix` and it has loaded.
    pub async fn wait_for_url(&self, prefix: &str) {
        let check = format!(
            "return (location.href.startsWith({p}) && document.readyState === 'complete') || null;",
            p = Value::String(prefix.to_string())
        );
        self.wait_for(&format!("a page at {prefix}"), &check).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            // Blocking on purpose: Chromium must quit before the driver is
            // killed, or it would outlive the test.
            let _ = raw_http(self.port, "DELETE", &format!("/session/{}", self.id));
        }
    }
}
