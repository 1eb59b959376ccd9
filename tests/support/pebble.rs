//! Test harness: a real Pebble ACME server (Let's Encrypt's test CA) plus
//! `pebble-challtestsrv` as its DNS server, for integration tests of the ACME client.
//!
//! Use from an integration test with:
//!
//! ```ignore
//! #[path = "support/pebble.rs"]
//! mod pebble;
//! ```
//!
//! Layout of one instance:
//! * `pebble-challtestsrv` answers DNS on `127.0.0.1:<dns_port>` with `127.0.0.1` for every
//!   A query and nothing for AAAA; its own HTTP-01 / TLS-ALPN-01 listeners are disabled, so
//!   Pebble's validation authority (VA) connects to `127.0.0.1:<http_port>` /
//!   `127.0.0.1:<tls_port>` — the ports given in [`PebbleOptions`], i.e. the gateway under test.
//! * `pebble` serves ACME on `https://127.0.0.1:<acme_port>/dir` and its management interface on
//!   `https://127.0.0.1:<mgmt_port>/` using a certificate signed by a per-instance CA generated
//!   here with rcgen ([`Pebble::ca_file`]).
//!
//! Things tests must cope with (Pebble 2.4.0, Debian package):
//! * every restart of `pebble` loses ALL state (accounts, orders, authorizations) and
//!   generates a NEW issuing root/intermediate; the HTTPS certificate/CA stays the same;
//! * by default 5% of valid nonces are rejected with `badNonce`
//!   ([`PebbleOptions::nonce_reject_percent`]);
//! * by default valid authorizations are reused 50% of the time, so a new order may come back
//!   already `ready` with `valid` authorizations ([`PebbleOptions::authz_reuse_percent`]);
//! * the directory has no `renewalInfo` (no ARI) and no profiles;
//! * the VA fetches each HTTP-01 token 3 times and sends `Host: <name>:<http_port>` (with the
//!   port), so challenge routing must strip the port from the Host header;
//! * issued leaves have notAfter = notBefore + validity - 1 s.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// How long [`Pebble::start`] / [`Pebble::restart`] wait for the servers to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout for a single HTTP request made by the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const NOT_INSTALLED: &str = "pebble not installed: run `apt-get install -y pebble`";

/// HTTPS client trusting only the harness CA (Pebble's own HTTPS certificate).
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, FullBody>;

/// The one ACME server folder under `state_dir/acme` (named after the
/// directory URL), where the account and certificates are stored.
pub fn acme_dir(state: &Path) -> PathBuf {
    let acme = state.join("acme");
    std::fs::read_dir(&acme)
        .unwrap_or_else(|e| panic!("{}: {e}", acme.display()))
        .next()
        .expect("one ACME server folder")
        .unwrap()
        .path()
}

/// A file's permission bits (stored keys must be 0600).
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Options for [`Pebble::start`].
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// Port on 127.0.0.1 where Pebble's VA connects for HTTP-01 validation (the gateway's
    /// plain-HTTP listener).
    pub http_port: u16,
    /// Port on 127.0.0.1 where Pebble's VA connects for TLS-ALPN-01 validation (the gateway's
    /// HTTPS listener).
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds for issued certificates. `None` = Pebble's
    /// default (5 years).
    pub validity_secs: Option<u64>,
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of valid nonces rejected as `badNonce`.
    /// `None` = Pebble's default (5%). Clients must cope, so keep the default unless a test is
    /// specifically about nonces.
    pub nonce_reject_percent: Option<u8>,
    /// `PEBBLE_AUTHZREUSE`: percentage of new orders that reuse an existing valid
    /// authorization. `None` = Pebble's default (50%).
    pub authz_reuse_percent: Option<u8>,
    /// `PEBBLE_VA_ALWAYS_VALID=1`: every challenge succeeds without any validation request.
    pub always_valid: bool,
    /// Resolve through this DNS server (e.g. a test BIND) instead of
    /// pebble-challtestsrv, which is then not started.
    pub dns_server: Option<SocketAddr>,
}

impl PebbleOptions {
    /// Options with Pebble's defaults; the VA validates against `127.0.0.1:http_port` (HTTP-01)
    /// and `127.0.0.1:tls_port` (TLS-ALPN-01).
    pub fn new(http_port: u16, tls_port: u16) -> Self {
        Self {
            http_port,
            tls_port,
            validity_secs: None,
            nonce_reject_percent: None,
            authz_reuse_percent: None,
            always_valid: false,
            dns_server: None,
        }
    }

    pub fn dns_server(mut self, addr: SocketAddr) -> Self {
        self.dns_server = Some(addr);
        self
    }

    pub fn validity_secs(mut self, secs: u64) -> Self {
        self.validity_secs = Some(secs);
        self
    }

    pub fn nonce_reject_percent(mut self, percent: u8) -> Self {
        self.nonce_reject_percent = Some(percent);
        self
    }

    pub fn authz_reuse_percent(mut self, percent: u8) -> Self {
        self.authz_reuse_percent = Some(percent);
        self
    }

    pub fn always_valid(mut self, on: bool) -> Self {
        self.always_valid = on;
        self
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    acme: u16,
    mgmt: u16,
    dns: u16,
    challtestsrv_mgmt: u16,
}

impl Ports {
    fn pick() -> Self {
        // Bind all four at once so they are distinct, then release them (small race accepted;
        // start() retries with fresh ports if a bind fails).
        let listeners: Vec<TcpListener> = (0..4)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        let port = |i: usize| listeners[i].local_addr().unwrap().port();
        Self {
            acme: port(0),
            mgmt: port(1),
            dns: port(2),
            challtestsrv_mgmt: port(3),
        }
    }
}

/// A running Pebble + pebble-challtestsrv pair. Both children are killed and reaped on drop.
pub struct Pebble {
    opts: PebbleOptions,
    ports: Ports,
    dir: tempfile::TempDir,
    pebble_bin: PathBuf,
    challtestsrv_bin: PathBuf,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
    client: HttpsClient,
}

impl Pebble {
    /// Generate a CA + HTTPS certificate, write Pebble's config, start both servers on free
    /// ports and wait (at most 20 s) until the ACME directory, the management interface and
    /// the DNS server answer. Panics (with both children's logs) on failure.
    pub async fn start(opts: PebbleOptions) -> Pebble {
        let pebble_bin = find_binary("pebble").expect(NOT_INSTALLED);
        let challtestsrv_bin = find_binary("pebble-challtestsrv").expect(NOT_INSTALLED);
        install_crypto_provider();

        let mut last_error = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("portcullis-pebble-")
                .tempdir()
                .expect("create temp dir for pebble");
            write_tls_material(dir.path());
            let client = https_client(&dir.path().join("ca.pem"));
            let mut pebble = Pebble {
                opts: opts.clone(),
                ports: Ports::pick(),
                dir,
                pebble_bin: pebble_bin.clone(),
                challtestsrv_bin: challtestsrv_bin.clone(),
                pebble: None,
                challtestsrv: None,
                client,
            };
            pebble.write_config();
            let own_dns = opts.dns_server.is_none();
            if own_dns {
                pebble.spawn_challtestsrv();
            }
            pebble.spawn_pebble();
            match pebble.wait_ready(own_dns).await {
                Ok(()) => return pebble,
                Err(err) => {
                    pebble.kill_children();
                    let logs = pebble.logs();
                    last_error = format!("{err}\n{logs}");
                    // A port picked by Ports::pick() was taken in the meantime: retry.
                    if !logs.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("pebble did not start: {last_error}");
    }

    /// ACME directory URL: `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.ports.acme)
    }

    /// Base URL of Pebble's management interface: `https://127.0.0.1:<port>`.
    pub fn management_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.mgmt)
    }

    /// PEM file with the CA that signed Pebble's own HTTPS certificate (for `acme.ca_file`).
    /// Stable across [`Pebble::restart`].
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Contents of [`Pebble::ca_file`].
    pub fn ca_pem(&self) -> String {
        fs::read_to_string(self.ca_file()).expect("read ca.pem")
    }

    /// The options this instance was started with.
    pub fn options(&self) -> &PebbleOptions {
        &self.opts
    }

    /// Address of the pebble-challtestsrv DNS server Pebble resolves names with.
    pub fn dns_addr(&self) -> SocketAddr {
        self.opts
            .dns_server
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], self.ports.dns)))
    }

    /// Temp directory holding config, certificates and the children's logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// HTTPS client trusting [`Pebble::ca_file`] (only), for ad-hoc requests to Pebble.
    pub fn https_client(&self) -> HttpsClient {
        self.client.clone()
    }

    /// PEM of the current issuing root, fetched from `<management>/roots/0`.
    /// Changes on every [`Pebble::restart`].
    pub async fn issuing_root_pem(&self) -> String {
        self.get_management("/roots/0").await
    }

    /// PEM of the current issuing intermediate, fetched from `<management>/intermediates/0`.
    pub async fn issuing_intermediate_pem(&self) -> String {
        self.get_management("/intermediates/0").await
    }

    /// Make DNS answer `TXT <value>` for `name` (e.g. `_acme-challenge.test.example.com`),
    /// for DNS-01 tests.
    pub async fn set_dns_txt(&self, name: &str, value: &str) {
        let body = serde_json::json!({ "host": fqdn(name), "value": value });
        self.post_challtestsrv("/set-txt", body).await;
    }

    /// Remove TXT records set with [`Pebble::set_dns_txt`] for `name`.
    pub async fn clear_dns_txt(&self, name: &str) {
        let body = serde_json::json!({ "host": fqdn(name) });
        self.post_challtestsrv("/clear-txt", body).await;
    }

    /// Pebble's and pebble-challtestsrv's combined stdout/stderr so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            fs::read_to_string(self.dir.path().join(name))
                .unwrap_or_else(|e| format!("<cannot read {name}: {e}>"))
        };
        format!(
            "--- pebble log ---\n{}\n--- pebble-challtestsrv log ---\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }

    /// Whether the `pebble` process (not challtestsrv) is currently running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.pebble.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kill `pebble` (the ACME server) and wait for it; DNS keeps running. Ports, config and CA
    /// are kept so [`Pebble::restart`] brings it back at the same URLs. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop (if running) and start `pebble` again on the same ports with the same HTTPS CA,
    /// waiting until it is ready. NOTE: the new instance has no accounts/orders and a new
    /// issuing root.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn_pebble();
        if let Err(err) = self.wait_ready(false).await {
            panic!("pebble did not restart: {err}\n{}", self.logs());
        }
    }

    // ---- internals ----------------------------------------------------------------------

    fn write_config(&self) {
        let d = self.dir.path();
        let mut cfg = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.ports.acme),
            "managementListenAddress": format!("127.0.0.1:{}", self.ports.mgmt),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": self.opts.http_port,
            "tlsPort": self.opts.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": [],
            // Ignored by Pebble 2.4.0 (kept for newer versions).
            "retryAfter": { "authz": 1, "order": 1 },
        });
        if let Some(secs) = self.opts.validity_secs {
            cfg["certificateValidityPeriod"] = secs.into();
        }
        let json = serde_json::to_string_pretty(&serde_json::json!({ "pebble": cfg })).unwrap();
        fs::write(d.join("pebble-config.json"), json).expect("write pebble-config.json");
    }

    fn log_file(&self, name: &str, header: &str) -> (Stdio, Stdio) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("open log file");
        let _ = writeln!(f, "=== {header} ===");
        let f2 = f.try_clone().expect("clone log file");
        (Stdio::from(f), Stdio::from(f2))
    }

    fn spawn_challtestsrv(&mut self) {
        let (out, err) = self.log_file(
            "challtestsrv.log",
            &format!(
                "pebble-challtestsrv dns=127.0.0.1:{} management=127.0.0.1:{}",
                self.ports.dns, self.ports.challtestsrv_mgmt
            ),
        );
        // Note: this version has no `-doh` flag (passing it makes it exit with status 2).
        let child = Command::new(&self.challtestsrv_bin)
            .arg("-defaultIPv4")
            .arg("127.0.0.1")
            .arg("-defaultIPv6")
            .arg("")
            .arg("-http01")
            .arg("")
            .arg("-https01")
            .arg("")
            .arg("-tlsalpn01")
            .arg("")
            .arg("-dns01")
            .arg(format!("127.0.0.1:{}", self.ports.dns))
            .arg("-management")
            .arg(format!("127.0.0.1:{}", self.ports.challtestsrv_mgmt))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn pebble-challtestsrv");
        self.challtestsrv = Some(child);
    }

    fn spawn_pebble(&mut self) {
        let (out, err) = self.log_file(
            "pebble.log",
            &format!(
                "pebble acme=127.0.0.1:{} management=127.0.0.1:{}",
                self.ports.acme, self.ports.mgmt
            ),
        );
        let mut cmd = Command::new(&self.pebble_bin);
        cmd.arg("-config")
            .arg(self.dir.path().join("pebble-config.json"))
            .arg("-dnsserver")
            .arg(self.dns_addr().to_string())
            .arg("-strict=false")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("PEBBLE_VA_NOSLEEP", "1");
        // Don't let the developer's environment leak into the test.
        for var in [
            "PEBBLE_VA_ALWAYS_VALID",
            "PEBBLE_VA_SLEEPTIME",
            "PEBBLE_WFE_NONCEREJECT",
            "PEBBLE_AUTHZREUSE",
            "PEBBLE_ALTERNATE_ROOTS",
            "PEBBLE_CHAIN_LENGTH",
            "PEBBLE_WFE_ORDERS_PER_PAGE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(p) = self.opts.nonce_reject_percent {
            cmd.env("PEBBLE_WFE_NONCEREJECT", p.to_string());
        }
        if let Some(p) = self.opts.authz_reuse_percent {
            cmd.env("PEBBLE_AUTHZREUSE", p.to_string());
        }
        if self.opts.always_valid {
            cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
        }
        self.pebble = Some(cmd.spawn().expect("spawn pebble"));
    }

    fn kill_children(&mut self) {
        for child in [self.pebble.take(), self.challtestsrv.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Poll until ready; `Err` with a description if a child exits or the timeout passes.
    async fn wait_ready(&mut self, check_dns: bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let (mut acme_ok, mut mgmt_ok, mut dns_ok) = (false, false, !check_dns);
        let mut last = String::from("no attempt yet");
        loop {
            let own_dns = self.opts.dns_server.is_none();
            for (name, child) in [
                ("pebble", &mut self.pebble),
                ("pebble-challtestsrv", &mut self.challtestsrv),
            ] {
                if name == "pebble-challtestsrv" && !own_dns {
                    continue;
                }
                match child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(status))) => {
                        return Err(format!("{name} exited early with {status}"));
                    }
                    Some(Err(e)) => return Err(format!("{name}: try_wait failed: {e}")),
                    None => return Err(format!("{name} is not running")),
                    Some(Ok(None)) => {}
                }
            }
            if !dns_ok {
                match dns_probe(self.dns_addr()).await {
                    Ok(()) => dns_ok = true,
                    Err(e) => last = format!("dns: {e}"),
                }
            }
            if !acme_ok {
                match get(&self.client, &self.directory_url()).await {
                    Ok((200, body)) if body.contains("newOrder") => acme_ok = true,
                    Ok((status, body)) => last = format!("directory: HTTP {status}: {body}"),
                    Err(e) => last = format!("directory: {e}"),
                }
            }
            if !mgmt_ok {
                match get(&self.client, &format!("{}/roots/0", self.management_url())).await {
                    Ok((200, body)) if body.contains("BEGIN CERTIFICATE") => mgmt_ok = true,
                    Ok((status, body)) => last = format!("management: HTTP {status}: {body}"),
                    Err(e) => last = format!("management: {e}"),
                }
            }
            if acme_ok && mgmt_ok && dns_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {READY_TIMEOUT:?} (acme={acme_ok} management={mgmt_ok} dns={dns_ok}); last error: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get_management(&self, path: &str) -> String {
        let url = format!("{}{}", self.management_url(), path);
        match get(&self.client, &url).await {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET {url}: HTTP {status}: {body}\n{}", self.logs()),
            Err(e) => panic!("GET {url}: {e}\n{}", self.logs()),
        }
    }

    async fn post_challtestsrv(&self, path: &str, body: serde_json::Value) {
        let client: Client<HttpConnector, FullBody> =
            Client::builder(TokioExecutor::new()).build_http();
        let url = format!("http://127.0.0.1:{}{}", self.ports.challtestsrv_mgmt, path);
        let req = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(FullBody::from(body.to_string()))
            .unwrap();
        let rsp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
            .await
            .unwrap_or_else(|_| panic!("POST {url}: timed out"))
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(
            rsp.status().is_success(),
            "POST {url}: HTTP {}",
            rsp.status()
        );
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill_children();
    }
}

// ---- helpers ------------------------------------------------------------------------------

/// Install ring as the process-wide rustls provider (no-op if one is already installed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// Generate a CA and a leaf for 127.0.0.1/localhost signed by it; write ca.pem, cert.pem
/// (leaf + CA) and key.pem into `dir`.
fn write_tls_material(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis test Pebble HTTPS CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("generate leaf key");
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("sign leaf");

    fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
    fs::write(
        dir.join("cert.pem"),
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
    )
    .expect("write cert.pem");
    fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).expect("write key.pem");
}

fn https_client(ca_file: &Path) -> HttpsClient {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("open ca.pem") {
        roots
            .add(cert.expect("parse ca.pem"))
            .expect("add CA to root store");
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn get(client: &HttpsClient, url: &str) -> Result<(u16, String), String> {
    let fut = async {
        let rsp = client
            .get(url.parse().map_err(|e| format!("bad url {url}: {e}"))?)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = rsp.status().as_u16();
        let body = collect_body(rsp.into_body())
            .await
            .map_err(|e| format!("reading body: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("GET {url}: timed out")))
}

/// Send one DNS `A` query for `ready.probe.` over UDP and wait briefly for any answer with our id.
async fn dns_probe(addr: SocketAddr) -> Result<(), String> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let mut q = vec![0x4a, 0x17, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "probe"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, addr).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) if n >= 2 && buf[..2] == q[..2] => Ok(()),
        Ok(Ok(_)) => Err("unexpected DNS reply".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no DNS reply".into()),
    }
}

/// Read a PEM file / string into DER certificates (convenience for tests).
pub fn pem_to_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("parse PEM certificates")
}

/// Minimal in-memory HTTP body (the crate has no http-body-util dependency). `Default` is empty.
#[derive(Debug, Default, Clone)]
pub struct FullBody(Option<Bytes>);

impl FullBody {
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self(Some(data.into()))
    }
}

impl From<String> for FullBody {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<&'static str> for FullBody {
    fn from(s: &'static str) -> Self {
        Self::new(s)
    }
}

impl Body for FullBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Read a whole response body into memory.
pub async fn collect_body<B>(body: B) -> Result<Vec<u8>, B::Error>
where
    B: Body,
    B::Data: bytes::Buf,
{
    use bytes::Buf as _;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(mut data) = frame?.into_data() {
            while data.has_remaining() {
                let chunk = data.chunk();
                out.extend_from_slice(chunk);
                let n = chunk.len();
                data.advance(n);
            }
        }
    }
    Ok(out)
}
