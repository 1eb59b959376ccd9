//! RFC 2136 dynamic updates signed with TSIG (RFC 8945): add one TXT value
//! to `_acme-challenge.NAME`, delete exactly that value afterwards. The
//! server's answer is read before its signature is checked, so a wrong key
//! (BADSIG/BADKEY, sent unsigned), a refused update and a zone the server
//! does not serve each come back in their own words.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, ResponseCode, update_message};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HAlg, TsigError};
use hickory_proto::rr::{Name, RData, Record, RecordSet, TSigner};

use super::wire;
use crate::config::TsigAlgorithm;

/// How long the TXT record may be cached.
const TTL: u32 = 60;

pub(crate) struct Rfc2136 {
    pub server: SocketAddr,
    pub zone: Name,
    pub key_name: String,
    pub signer: TSigner,
}

impl Rfc2136 {
    pub fn new(
        server: SocketAddr,
        zone: &str,
        key_name: &str,
        algorithm: TsigAlgorithm,
        secret: &[u8],
    ) -> Result<Self, String> {
        let alg = match algorithm {
            TsigAlgorithm::HmacSha256 => HAlg::HmacSha256,
            TsigAlgorithm::HmacSha384 => HAlg::HmacSha384,
            TsigAlgorithm::HmacSha512 => HAlg::HmacSha512,
        };
        let zone = Name::from_ascii(zone).map_err(|e| format!("zone {zone}: {e}"))?;
        let kn = Name::from_ascii(key_name).map_err(|e| format!("key name {key_name}: {e}"))?;
        let signer = TSigner::new(secret.to_vec(), alg, kn, 300)
            .map_err(|e| format!("TSIG key {key_name}: {e}"))?;
        Ok(Rfc2136 {
            server,
            zone,
            key_name: key_name.to_string(),
            signer,
        })
    }

    pub async fn present(&self, fqdn: &Name, value: &str) -> Result<(), String> {
        let rrset = self.rrset(fqdn, value)?;
        let msg = update_message::append(rrset, self.zone.clone(), false, false);
        self.send(msg, fqdn, "add").await
    }

    pub async fn cleanup(&self, fqdn: &Name, value: &str) -> Result<(), String> {
        let rrset = self.rrset(fqdn, value)?;
        let msg = update_message::delete_by_rdata(rrset, self.zone.clone(), false);
        self.send(msg, fqdn, "delete").await
    }

    fn rrset(&self, fqdn: &Name, value: &str) -> Result<RecordSet, String> {
        if !self.zone.zone_of(fqdn) {
            return Err(format!(
                "{fqdn} is not in zone {} (acme.dns.zone): this provider cannot write it",
                self.zone
            ));
        }
        let mut set = RecordSet::from(Record::from_rdata(
            fqdn.clone(),
            TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        ));
        set.set_ttl(TTL);
        Ok(set)
    }

    async fn send(&self, mut msg: Message, fqdn: &Name, what: &str) -> Result<(), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        msg.metadata.id = {
            let mut b = [0u8; 2];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
            u16::from_be_bytes(b)
        };
        let verifier = msg
            .finalize(&self.signer, now)
            .map_err(|e| format!("could not sign the update: {e}"))?;
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        let answer = wire::exchange(self.server, &bytes).await?;
        let reply = Message::from_vec(&answer)
            .map_err(|e| format!("unreadable answer from {}: {e}", self.server))?;
        if reply.metadata.id != msg.metadata.id {
            return Err(format!("{} answered another request", self.server));
        }
        let rcode = reply.metadata.response_code;
        let tsig_error = reply.signature().and_then(|s| s.data.error);
        let server = self.server;
        let zone = &self.zone;
        let key = &self.key_name;
        if let Some(e) = tsig_error {
            return Err(match e {
                TsigError::BadSig => format!(
                    "wrong TSIG key: {server} rejected the signature of key {key} (BADSIG); tsig_secret_file does not hold the secret the server has for this key"
                ),
                TsigError::BadKey => format!(
                    "unknown TSIG key: {server} does not know key {key} with this algorithm (BADKEY); check tsig_key_name and tsig_algorithm"
                ),
                TsigError::BadTime => format!(
                    "TSIG time check failed at {server} (BADTIME): this machine's clock and the server's differ by more than 5 minutes"
                ),
                other => format!("{server} rejected the TSIG signature ({other:?})"),
            });
        }
        match rcode {
            ResponseCode::NoError => {}
            ResponseCode::Refused => {
                return Err(format!(
                    "update refused: {server} answered REFUSED to {what} TXT {fqdn}; its update policy (allow-update / update-policy) does not let key {key} change zone {zone}"
                ));
            }
            ResponseCode::NotAuth | ResponseCode::NotZone => {
                return Err(format!(
                    "zone not found: {server} is not the primary server of zone {zone} ({}); check acme.dns.zone and acme.dns.server",
                    if rcode == ResponseCode::NotAuth {
                        "NOTAUTH"
                    } else {
                        "NOTZONE"
                    }
                ));
            }
            other => {
                return Err(format!(
                    "{server} answered {} to {what} TXT {fqdn}",
                    wire::rcode_words(other)
                ));
            }
        }
        // A success must be signed by the same key.
        match verifier {
            Some(mut v) => v
                .verify(&answer)
                .map(|_| ())
                .map_err(|e| format!("the answer from {server} is not signed with key {key}: {e}")),
            None => Ok(()),
        }
    }
}
