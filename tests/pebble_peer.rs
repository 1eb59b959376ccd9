//! Proves the Pebble harness (tests/support/pebble.rs) is a working ACME server for a real
//! client: instant-acme issues a certificate for test.example.com via HTTP-01 answered by a
//! tiny hyper server on the port handed to Pebble as `httpPort`.
//!
//! Needs `apt-get install -y pebble`. Run: `cargo test --test pebble_peer -- --nocapture`.

#[path = "support/pebble.rs"]
mod pebble;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use pebble::{FullBody, Pebble, PebbleOptions, pem_to_certs};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{ServerName, UnixTime};

const DOMAIN: &str = "test.example.com";
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// token -> key authorization, plus a count of validation requests that were answered.
#[derive(Default)]
struct Http01State {
    tokens: Mutex<HashMap<String, String>>,
    hits: AtomicUsize,
}

/// Serve `/.well-known/acme-challenge/<token>` on `listener` until the task is aborted.
async fn serve_http01(listener: tokio::net::TcpListener, state: Arc<Http01State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path();
                    let host = req.headers().get("host").cloned();
                    let key_auth = path
                        .strip_prefix("/.well-known/acme-challenge/")
                        .and_then(|t| state.tokens.lock().unwrap().get(t).cloned());
                    println!(
                        "http-01 request: host={host:?} path={path} found={}",
                        key_auth.is_some()
                    );
                    let rsp = match key_auth {
                        Some(ka) => {
                            state.hits.fetch_add(1, Ordering::SeqCst);
                            Response::new(FullBody::from(ka))
                        }
                        None => {
                            let mut r = Response::new(FullBody::from("not found"));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn retry_policy() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(Duration::from_secs(30))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn new_account(pebble: &Pebble) -> Account {
    // Same path the gateway takes for `acme.ca_file`: instant-acme's own hyper-rustls client
    // with a RootCertStore holding just that CA.
    let (account, _credentials) = Account::builder_with_root(pebble.ca_file())
        .expect("instant-acme client trusting the harness CA")
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            pebble.directory_url(),
            None,
        )
        .await
        .expect("create ACME account");
    account
}

/// Finalize a ready order with an rcgen CSR for DOMAIN and download the PEM chain.
async fn finalize(order: &mut instant_acme::Order) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![DOMAIN.to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    order.finalize_csr(csr.der()).await.expect("finalize");
    order
        .poll_certificate(&retry_policy())
        .await
        .expect("download certificate")
}

/// Leaf is for exactly DOMAIN and the chain verifies to Pebble's current /roots/0.
async fn verify_chain(pebble: &Pebble, chain_pem: &str) {
    let chain = pem_to_certs(chain_pem);
    assert!(
        chain.len() >= 2,
        "expected leaf + intermediate, got {}",
        chain.len()
    );
    let (leaf, intermediates) = chain.split_first().unwrap();

    // Leaf names: exactly test.example.com.
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).expect("parse leaf");
    let names: Vec<String> = parsed
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, vec![DOMAIN.to_owned()]);
    let validity = parsed.validity();
    println!(
        "leaf: subject={} issuer={} not_before={} not_after={} ({}s)",
        parsed.subject(),
        parsed.issuer(),
        validity.not_before,
        validity.not_after,
        validity.not_after.timestamp() - validity.not_before.timestamp()
    );

    // Chain must verify (as a TLS server cert for test.example.com) to Pebble's issuing root.
    let root_pem = pebble.issuing_root_pem().await;
    let mut roots = rustls::RootCertStore::empty();
    for root in pem_to_certs(&root_pem) {
        roots.add(root).unwrap();
    }
    let verifier = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &ServerName::try_from(DOMAIN).unwrap(),
            &[],
            UnixTime::now(),
        )
        .expect("issued chain verifies to /roots/0");

    // ...and not to the CA of Pebble's own HTTPS certificate.
    let mut wrong = rustls::RootCertStore::empty();
    for c in pem_to_certs(&pebble.ca_pem()) {
        wrong.add(c).unwrap();
    }
    let wrong = WebPkiServerVerifier::builder(Arc::new(wrong))
        .build()
        .unwrap();
    assert!(
        wrong
            .verify_server_cert(
                leaf,
                intermediates,
                &ServerName::try_from(DOMAIN).unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err()
    );
}

#[tokio::test]
async fn pebble_issues_certificate_over_http01() {
    tokio::time::timeout(TEST_TIMEOUT, issue_over_http01())
        .await
        .expect("test timed out");
}

async fn issue_over_http01() {
    let t0 = Instant::now();
    pebble::install_crypto_provider();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = listener.local_addr().unwrap().port();
    let state = Arc::new(Http01State::default());
    let server = tokio::spawn(serve_http01(listener, state.clone()));

    let pebble =
        Pebble::start(PebbleOptions::new(http_port, free_port()).validity_secs(3600)).await;
    println!(
        "pebble ready after {:?}: {}",
        t0.elapsed(),
        pebble.directory_url()
    );

    let account = new_account(&pebble).await;
    println!("account {}", account.id());

    let identifiers = [Identifier::Dns(DOMAIN.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .expect("new order");

    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.expect("fetch authorization");
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => panic!("unexpected authorization status {other:?}"),
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .expect("http-01 challenge offered");
        state.tokens.lock().unwrap().insert(
            challenge.token.clone(),
            challenge.key_authorization().as_str().to_owned(),
        );
        challenge.set_ready().await.expect("challenge set_ready");
    }

    let status = order.poll_ready(&retry_policy()).await.expect("poll_ready");
    assert_eq!(
        status,
        OrderStatus::Ready,
        "order state: {:?}",
        order.state()
    );

    let chain_pem = finalize(&mut order).await;
    let issued_after = t0.elapsed();
    verify_chain(&pebble, &chain_pem).await;

    let hits = state.hits.load(Ordering::SeqCst);
    assert!(hits >= 1, "pebble never fetched the http-01 token");
    println!(
        "issued in {issued_after:?} (total {:?}); http-01 validation requests answered: {hits}",
        t0.elapsed()
    );
    server.abort();
}

#[tokio::test]
async fn pebble_stop_and_restart_keep_urls_and_https_ca() {
    tokio::time::timeout(TEST_TIMEOUT, stop_and_restart())
        .await
        .expect("test timed out");
}

async fn stop_and_restart() {
    let t0 = Instant::now();
    pebble::install_crypto_provider();
    let mut pebble = Pebble::start(PebbleOptions::new(free_port(), free_port())).await;
    let dir_url = pebble.directory_url();
    let ca_pem = pebble.ca_pem();
    let root_before = pebble.issuing_root_pem().await;
    let account = new_account(&pebble).await;

    pebble.stop();
    assert!(!pebble.is_running());
    let client = pebble.https_client();
    let down =
        tokio::time::timeout(Duration::from_secs(5), client.get(dir_url.parse().unwrap())).await;
    assert!(
        matches!(down, Ok(Err(_))),
        "directory still reachable after stop"
    );

    pebble.restart().await;
    assert!(pebble.is_running());
    assert_eq!(pebble.directory_url(), dir_url);
    assert_eq!(pebble.ca_pem(), ca_pem);
    let root_after = pebble.issuing_root_pem().await;
    assert_ne!(
        root_before, root_after,
        "pebble keeps no state across restarts"
    );

    // Accounts do not survive a restart either.
    let identifiers = [Identifier::Dns(DOMAIN.to_owned())];
    let err = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .err()
        .expect("old account must be unknown after restart");
    println!("old account after restart: {err}");
    // A fresh account works against the restarted server.
    new_account(&pebble).await;
    println!("stop/restart test took {:?}", t0.elapsed());
}

#[tokio::test]
async fn pebble_issues_certificate_over_dns01() {
    tokio::time::timeout(TEST_TIMEOUT, issue_over_dns01())
        .await
        .expect("test timed out");
}

async fn issue_over_dns01() {
    let t0 = Instant::now();
    pebble::install_crypto_provider();
    let pebble = Pebble::start(PebbleOptions::new(free_port(), free_port())).await;
    let account = new_account(&pebble).await;

    let identifiers = [Identifier::Dns(DOMAIN.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .expect("new order");
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.expect("fetch authorization");
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = authz
            .challenge(ChallengeType::Dns01)
            .expect("dns-01 challenge offered");
        let value = challenge.key_authorization().dns_value();
        pebble
            .set_dns_txt(&format!("_acme-challenge.{DOMAIN}"), &value)
            .await;
        challenge.set_ready().await.expect("challenge set_ready");
    }
    let status = order.poll_ready(&retry_policy()).await.expect("poll_ready");
    assert_eq!(
        status,
        OrderStatus::Ready,
        "order state: {:?}",
        order.state()
    );
    let chain_pem = finalize(&mut order).await;
    verify_chain(&pebble, &chain_pem).await;
    pebble
        .clear_dns_txt(&format!("_acme-challenge.{DOMAIN}"))
        .await;
    println!("dns-01 issuance took {:?}", t0.elapsed());
}
