//! Which TLS failures retrying cannot heal, decided on the rustls error's type whichever
//! transport (tonic, hyper, reqwest) wrapped it: the gRPC client and the Flower node both
//! exit at once on these, with the cause and the fix, instead of retrying for minutes.

/// What kind of permanent TLS failure [`tls_failure`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailureKind {
    /// The peer's certificate is not signed by a trusted CA.
    UntrustedCertificate,
    /// The peer's certificate does not name the host we connected to.
    WrongName,
    /// Another problem with the peer's certificate (expired, not yet valid, revoked, unusable).
    BadCertificate,
    /// The peer ended the handshake with an alert: for a client, usually a missing or
    /// refused client certificate.
    RefusedByPeer,
    /// The peer does not speak TLS at all (a plain-HTTP server on that port).
    NotTls,
    /// The two sides share no TLS version, cipher suite or protocol, or the peer broke TLS.
    Incompatible,
}

/// A TLS failure that retrying cannot heal: its kind and the TLS library's explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFailure {
    /// What failed.
    pub kind: TlsFailureKind,
    /// rustls's description.
    pub detail: String,
}

/// The permanent TLS failure among `e` and its sources, if there is one (decided on the
/// rustls error's type, whichever transport wrapped it).
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur = Some(e);
    let mut depth = 0;
    while let Some(err) = cur {
        if let Some(r) = as_rustls(err) {
            return classify(r);
        }
        depth += 1;
        if depth > 32 {
            break;
        }
        cur = err.source();
    }
    None
}

fn as_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    // An io::Error's `source()` skips its payload, and transports nest them (hyper-util
    // wraps rustls's `InvalidData` error in an `Other` one), so look inside each layer.
    let mut cur: &'a (dyn std::error::Error + 'static) = e;
    for _ in 0..8 {
        if let Some(r) = cur.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        let inner = cur.downcast_ref::<std::io::Error>()?.get_ref()?;
        cur = inner;
    }
    None
}

fn classify(e: &rustls::Error) -> Option<TlsFailure> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let kind = match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            TlsFailureKind::UntrustedCertificate
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            TlsFailureKind::WrongName
        }
        E::InvalidCertificate(_) | E::InvalidCertRevocationList(_) | E::NoCertificatesPresented => {
            TlsFailureKind::BadCertificate
        }
        E::InvalidMessage(_) => TlsFailureKind::NotTls,
        E::AlertReceived(a) => match a {
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
            | A::HandshakeFailure
            | A::DecryptError => TlsFailureKind::RefusedByPeer,
            A::ProtocolVersion
            | A::InsufficientSecurity
            | A::IllegalParameter
            | A::DecodeError
            | A::NoApplicationProtocol
            | A::UnrecognisedName => TlsFailureKind::Incompatible,
            _ => return None,
        },
        E::PeerIncompatible(_)
        | E::PeerMisbehaved(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::NoApplicationProtocol => TlsFailureKind::Incompatible,
        _ => return None,
    };
    Some(TlsFailure {
        kind,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn finds_rustls_errors_inside_nested_io_errors() {
        // As hyper-util reports a plain-HTTP answer to a ClientHello.
        let inner = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let outer = io::Error::other(inner);
        let f = tls_failure(&outer).expect("the nested rustls error is found");
        assert_eq!(f.kind, TlsFailureKind::NotTls);
        let plain = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&plain), None);
    }
}
