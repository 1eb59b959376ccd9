//! DNS messages over TCP: one exchange (write a length-prefixed message,
//! read one back), TXT lookups for the propagation check, and finding a
//! zone's authoritative servers. Messages are built and parsed by
//! hickory-proto; only the two-byte TCP framing (RFC 1035 4.2.2) is ours.
//! TCP, not UDP: updates and TXT answers are small, there is no
//! retransmission or source-port matching to get right, and a spoofed
//! answer would need the TCP handshake.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `request` (already encoded) to `server` and returns the raw answer.
pub(crate) async fn exchange(server: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let run = async {
        let mut s = TcpStream::connect(server).await?;
        let len = u16::try_from(request.len())
            .map_err(|_| std::io::Error::other("message over 64 KiB"))?;
        let mut buf = Vec::with_capacity(request.len() + 2);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(request);
        s.write_all(&buf).await?;
        let n = s.read_u16().await? as usize;
        let mut answer = vec![0; n];
        s.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, run).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(format!("could not reach the DNS server {server}: {e}")),
        Err(_) => Err(format!(
            "the DNS server {server} did not answer within {}s",
            EXCHANGE_TIMEOUT.as_secs()
        )),
    }
}

/// Asks `server` one question; `recursive` sets RD (for resolvers).
async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    recursive: bool,
) -> Result<Message, String> {
    let mut m = Message::query();
    m.metadata.id = rand_id();
    m.metadata.recursion_desired = recursive;
    m.add_query(Query::query(name.clone(), rtype));
    let bytes = m.to_vec().map_err(|e| e.to_string())?;
    let answer = exchange(server, &bytes).await?;
    let msg =
        Message::from_vec(&answer).map_err(|e| format!("unreadable answer from {server}: {e}"))?;
    if msg.metadata.id != m.metadata.id {
        return Err(format!("answer from {server} for another question"));
    }
    Ok(msg)
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u16::from_be_bytes(b)
}

/// What a server answers for TXT at `name`: the values, or the rcode in
/// words when there are none.
pub(crate) async fn txt_values(
    server: SocketAddr,
    name: &Name,
    recursive: bool,
) -> Result<Vec<String>, String> {
    let msg = query(server, name, RecordType::TXT, recursive).await?;
    let rcode = msg.metadata.response_code;
    if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
        return Err(format!("{server} answered {}", rcode_words(rcode)));
    }
    Ok(msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

/// The authoritative servers of the zone holding `name`, found through the
/// system's resolver (`/etc/resolv.conf`): the closest enclosing name with
/// NS records, its server names resolved to addresses on port 53.
pub(crate) async fn authoritative_servers(name: &Name) -> Result<Vec<SocketAddr>, String> {
    let resolvers = system_resolvers();
    let Some(resolver) = resolvers.first().copied() else {
        return Err("no nameserver in /etc/resolv.conf to find the zone's servers".into());
    };
    let mut candidate = name.base_name();
    loop {
        let msg = query(resolver, &candidate, RecordType::NS, true).await?;
        let hosts: Vec<String> = msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(ns.0.to_ascii()),
                _ => None,
            })
            .collect();
        if !hosts.is_empty() {
            let mut addrs = Vec::new();
            for h in &hosts {
                if let Ok(found) = tokio::net::lookup_host((h.trim_end_matches('.'), 53)).await {
                    addrs.extend(found);
                }
            }
            if addrs.is_empty() {
                return Err(format!(
                    "the name servers of {candidate} ({}) have no addresses",
                    hosts.join(", ")
                ));
            }
            addrs.sort();
            addrs.dedup();
            return Ok(addrs);
        }
        if candidate.num_labels() <= 1 {
            return Err(format!("no zone with NS records found above {name}"));
        }
        candidate = candidate.base_name();
    }
}

fn system_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// An rcode in plain words.
pub(crate) fn rcode_words(r: ResponseCode) -> String {
    let words = match r {
        ResponseCode::FormErr => "FORMERR: the server could not read the request",
        ResponseCode::ServFail => "SERVFAIL: the server failed",
        ResponseCode::NXDomain => "NXDOMAIN: no such name",
        ResponseCode::NotImp => "NOTIMP: the server does not implement this",
        ResponseCode::Refused => "REFUSED: the server refused",
        ResponseCode::NotAuth => {
            "NOTAUTH: the server is not authoritative or the request is not authorized"
        }
        ResponseCode::NotZone => "NOTZONE: the name is not in the zone",
        other => return format!("{other:?}"),
    };
    words.to_string()
}
