//! The one thing the gateway reads from a client certificate itself: the
//! subject's common name, which is the remote principal. No I/O; a bounded
//! walk over DER that gives up (`None`) at anything unexpected. The
//! certificate has already been verified against the CA by rustls, so this
//! never decides trust, only which name a trusted certificate carries.

/// DER tags met on the way.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xA0;
/// `id-at-commonName`, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: its tag, its contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 to 4 length bytes (no certificate needs more).
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The element at the start of `der` if it has tag `want`: its contents
/// and what follows.
fn expect(der: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, body, rest) = element(der)?;
    (tag == want).then_some((body, rest))
}

/// The subject's common name (the last one, as TLS libraries take it),
/// decoded from a UTF8String, PrintableString or IA5String.
pub(crate) fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut at = tbs;
    if let Some((VERSION, _, rest)) = element(at) {
        at = rest;
    }
    // serialNumber, signature, issuer, validity: skipped whole.
    for _ in 0..4 {
        at = element(at)?.2;
    }
    let (mut rdns, _) = expect(at, SEQUENCE)?;
    let mut found = None;
    while !rdns.is_empty() {
        let (mut set, rest) = expect(rdns, SET)?;
        rdns = rest;
        while !set.is_empty() {
            let (attribute, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = expect(attribute, OID)?;
            if oid == COMMON_NAME {
                let (tag, text, _) = element(value)?;
                found = match tag {
                    // UTF8String, PrintableString, IA5String.
                    0x0C | 0x13 | 0x16 => Some(std::str::from_utf8(text).ok()?.to_string()),
                    _ => return None,
                };
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_found_among_other_attributes() {
        let der = cert_with(&[
            (rcgen::DnType::OrganizationName, "npipe"),
            (rcgen::DnType::CommonName, "build-agent-7"),
            (rcgen::DnType::CountryName, "SE"),
        ]);
        assert_eq!(subject_common_name(&der).as_deref(), Some("build-agent-7"));
    }

    #[test]
    fn a_certificate_without_one_names_no_one() {
        let der = cert_with(&[(rcgen::DnType::OrganizationName, "npipe")]);
        assert_eq!(subject_common_name(&der), None);
    }

    #[test]
    fn cut_or_garbled_input_is_refused_without_panicking() {
        let der = cert_with(&[(rcgen::DnType::CommonName, "alice")]);
        for cut in 0..der.len() {
            // A cut certificate may still parse up to its subject, never past.
            if let Some(name) = subject_common_name(&der[..cut]) {
                assert_eq!(name, "alice");
            }
        }
        for at in 0..der.len() {
            let mut bad = der.clone();
            bad[at] ^= 0xFF;
            let _ = subject_common_name(&bad);
        }
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]),
            None
        );
        assert_eq!(subject_common_name(&[]), None);
    }
}
