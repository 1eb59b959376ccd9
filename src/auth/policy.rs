//! Route policies: which signed-in users may use a route.
//!
//! With no lists every user of the provider is allowed. Otherwise a user
//! is allowed when any list matches: a group in `groups`, the email in
//! `emails`, or the email's domain in `email_domains`. Emails count only
//! when the provider does not say they are unverified.

use crate::config::OidcPolicy;

use super::identity::Identity;

/// Is this user allowed on the route?
#[inline]
pub fn allows(policy: &OidcPolicy, id: &Identity) -> bool {
    if policy.allows_everyone() {
        return true;
    }
    if !policy.groups.is_empty()
        && id
            .claims
            .groups
            .iter()
            .any(|g| policy.groups.iter().any(|p| p == g))
    {
        return true;
    }
    let Some(email) = id.policy_email() else {
        return false;
    };
    if policy.emails.iter().any(|e| e.eq_ignore_ascii_case(email)) {
        return true;
    }
    match email.rsplit_once('@') {
        Some((_, domain)) => policy
            .email_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::UserClaims;
    use crate::config::IdentityHeaders;

    fn policy(groups: &[&str], emails: &[&str], domains: &[&str]) -> OidcPolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        OidcPolicy {
            provider: "p".into(),
            provider_index: 0,
            groups: v(groups),
            emails: v(emails),
            email_domains: v(domains),
            identity_headers: IdentityHeaders::Authentik,
        }
    }

    fn user(groups: &[&str], email: &str, verified: Option<bool>) -> Identity {
        Identity::new(UserClaims {
            sub: "s".into(),
            username: "u".into(),
            email: Some(email.into()),
            email_verified: verified,
            name: None,
            groups: groups.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn table() {
        let alice = user(&["admins", "users"], "Alice@Example.com", Some(true));
        let bob = user(&["users"], "bob@example.org", Some(true));
        let mallory = user(&[], "boss@example.com", Some(false));
        let cases = [
            (policy(&[], &[], &[]), [true, true, true]),
            (policy(&["admins"], &[], &[]), [true, false, false]),
            (policy(&["Admins"], &[], &[]), [false, false, false]),
            (policy(&[], &["bob@example.org"], &[]), [false, true, false]),
            (policy(&[], &[], &["example.com"]), [true, false, false]),
            (
                policy(&["admins"], &["bob@example.org"], &[]),
                [true, true, false],
            ),
            (
                policy(&[], &["boss@example.com"], &["example.com"]),
                [true, false, false],
            ),
        ];
        for (i, (p, want)) in cases.iter().enumerate() {
            let got = [allows(p, &alice), allows(p, &bob), allows(p, &mallory)];
            assert_eq!(&got, want, "case {i}: {p:?}");
        }
    }
}
