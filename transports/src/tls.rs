//! TLS pieces shared by QUIC and `wss://`: the deterministic self-signed certificate, a
//! server-certificate verifier that accepts any certificate (peers are authenticated by the
//! Noise handshake, not by TLS), and loading PEM files.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{TlsFiles, TransportError};

/// The server name used for every TLS connection (not checked).
pub(crate) const SERVER_NAME: &str = "clustd";
/// ALPN protocol id.
pub(crate) const ALPN: &[u8] = b"clustd/1";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// A self-signed Ed25519 certificate whose key derives from `seed`, so simulated runs are
/// reproducible (Ed25519 signatures are deterministic too).
pub(crate) fn self_signed(
    seed: [u8; 32],
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TransportError> {
    // PKCS#8 v1 wrapping of an Ed25519 private key (RFC 8410): fixed prefix + 32-byte seed.
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut pkcs8 = PREFIX.to_vec();
    pkcs8.extend_from_slice(&seed);
    let key_der = PrivatePkcs8KeyDer::from(pkcs8);
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &rcgen::PKCS_ED25519)
        .map_err(tls_err)?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls_err)?;
    let cert = params.self_signed(&key).map_err(tls_err)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(key_der)))
}

/// Loads a PEM certificate chain and private key.
pub(crate) fn load(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TransportError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "{}: no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TransportError::Tls(format!("{}: {e}", files.key.display())))?;
    Ok((certs, key))
}

pub(crate) fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    tls13_only: bool,
) -> Result<rustls::ServerConfig, TransportError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider());
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(tls_err)?;
    let mut config = builder
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

pub(crate) fn client_config(tls13_only: bool) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone());
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(tls_err)?;
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

pub(crate) fn server_name() -> Result<ServerName<'static>, TransportError> {
    ServerName::try_from(SERVER_NAME).map_err(tls_err)
}

/// Accepts any server certificate but still checks the handshake signatures, so the TLS
/// session is sound; who the server is gets proven by the Noise handshake inside.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
