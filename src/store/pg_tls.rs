//! TLS to PostgreSQL with rustls, driven by the URL as libpq reads it: `sslmode=disable|prefer|
//! require|verify-ca|verify-full` and `sslrootcert=/path/ca.pem`. `verify-ca` and `verify-full`
//! check the server's certificate chain and name (against `sslrootcert`, else the Mozilla roots);
//! `require` encrypts without checking, as libpq does — unless `sslrootcert` is given, which
//! makes it check too. The default, `prefer`, uses TLS when the server offers it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// The connection settings of a PostgreSQL URL and the TLS connector its `sslmode` asks for.
pub fn connect_settings(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let invalid = |m: String| StoreError::Invalid(format!("invalid postgres URL: {m}"));
    let mut parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    let (mut mode, mut root_cert) = ("prefer".to_string(), None);
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| match k.as_ref() {
            "sslmode" => {
                mode = v.to_string();
                None
            }
            "sslrootcert" => {
                root_cert = Some(v.to_string());
                None
            }
            _ => Some((k.to_string(), v.to_string())),
        })
        .collect();
    // Percent-encoded, not form-encoded: tokio-postgres reads `+` as a plus, not a space.
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let query: Vec<String> = kept.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    parsed.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
    let mut config: tokio_postgres::Config =
        parsed.as_str().parse().map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?;
    let verify = match mode.as_str() {
        "disable" => {
            config.ssl_mode(SslMode::Disable);
            false
        }
        "allow" | "prefer" => {
            config.ssl_mode(SslMode::Prefer);
            root_cert.is_some()
        }
        "require" => {
            config.ssl_mode(SslMode::Require);
            root_cert.is_some()
        }
        "verify-ca" | "verify-full" => {
            config.ssl_mode(SslMode::Require);
            true
        }
        other => {
            return Err(invalid(format!(
                "unknown sslmode {other:?} (disable, prefer, require, verify-ca, verify-full)"
            )))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::failed("TLS setup", e))?;
    let tls = if verify {
        let mut roots = RootCertStore::empty();
        match &root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| StoreError::failed(format!("sslrootcert {path}"), e))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(StoreError::Invalid(format!("sslrootcert {path}: no certificate in it")));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))).with_no_client_auth()
    };
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// `sslmode=require` without a root certificate: the channel is encrypted, the certificate is not
/// checked (libpq's meaning; use `verify-full` to check it).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
