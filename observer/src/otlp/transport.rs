//! The connections the OTLP exporters send over: TLS for `https://` endpoints (the system's
//! roots, or a private CA and a client certificate from OpenTelemetry's variables), and the
//! headers of `OTEL_EXPORTER_OTLP_HEADERS`. One rustls stack on ring, no OpenSSL.
//!
//! The SDK's span and log exporters read the header variables themselves; the metrics
//! exporter, which the daemon writes itself (see `metrics`), reads them here.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::{OtlpError, Signal};

/// A signal's variable (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`), else the general one
/// (`OTEL_EXPORTER_OTLP_CERTIFICATE`), as the specification orders them.
fn var(signal: Signal, what: &str) -> Option<String> {
    var_in(|name| std::env::var(name).ok(), signal, what)
}

/// [`var`] over any environment (the tests' own).
fn var_in(env: impl Fn(&str) -> Option<String>, signal: Signal, what: &str) -> Option<String> {
    let specific = format!(
        "OTEL_EXPORTER_OTLP_{}_{what}",
        signal.name().to_ascii_uppercase()
    );
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    set(env(&specific)).or_else(|| set(env(&format!("OTEL_EXPORTER_OTLP_{what}"))))
}

/// The PEM files a signal's TLS uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Trusted CA certificates, instead of the system's roots.
    pub ca: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn from_env(signal: Signal) -> TlsFiles {
        TlsFiles {
            ca: var(signal, "CERTIFICATE").map(PathBuf::from),
            client_certificate: var(signal, "CLIENT_CERTIFICATE").map(PathBuf::from),
            client_key: var(signal, "CLIENT_KEY").map(PathBuf::from),
        }
    }

    fn is_empty(&self) -> bool {
        *self == TlsFiles::default()
    }
}

fn tls_error(signal: Signal, message: impl Into<String>) -> OtlpError {
    OtlpError::Tls {
        signal: signal.name(),
        message: message.into(),
    }
}

fn read(signal: Signal, what: &str, path: &PathBuf) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|e| tls_error(signal, format!("{what} {}: {e}", path.display())))
}

/// A rustls client configuration for `signal`: the CA file or the system's roots, and the
/// client certificate when one is given.
pub fn client_config(
    signal: Signal,
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, OtlpError> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            let pem = read(signal, "certificate", ca)?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| tls_error(signal, format!("{}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| tls_error(signal, format!("{}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(tls_error(
                    signal,
                    format!("{}: no PEM certificate in it", ca.display()),
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(
                    signal = signal.name(),
                    "no system root certificates found: an https:// OTLP endpoint will not \
                     verify (set OTEL_EXPORTER_OTLP_CERTIFICATE)"
                );
            }
        }
    }
    // ring, as everywhere in the daemon: no C library in the build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(signal, e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&files.client_certificate, &files.client_key) {
        (Some(cert), Some(key)) => {
            let pem = read(signal, "client certificate", cert)?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| tls_error(signal, format!("{}: {e}", cert.display())))?;
            let key_pem = read(signal, "client key", key)?;
            let k = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| tls_error(signal, format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| tls_error(signal, format!("client certificate and key: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(tls_error(
                signal,
                "a client certificate needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and \
                 OTEL_EXPORTER_OTLP_CLIENT_KEY",
            ));
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn is_tls(base: &str, signal: Signal) -> bool {
    let tls = base.starts_with("https://");
    if !tls && !TlsFiles::from_env(signal).is_empty() {
        tracing::warn!(
            signal = signal.name(),
            "OTLP certificate variables are set but the endpoint is not https://: unused"
        );
    }
    tls
}

/// The HTTP client for `signal`: TLS for `https://`, each request bounded by `timeout`.
pub fn http_client(
    base: &str,
    signal: Signal,
    timeout: Duration,
) -> Result<reqwest::Client, OtlpError> {
    let tls = if is_tls(base, signal) {
        client_config(signal, &TlsFiles::from_env(signal), &[b"http/1.1"])?
    } else {
        // reqwest is built without a process-wide TLS provider: plain HTTP gets a
        // configuration too, never used.
        client_config(signal, &TlsFiles::default(), &[b"http/1.1"])?
    };
    reqwest::Client::builder()
        .timeout(timeout)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| tls_error(signal, e.to_string()))
}

/// The gRPC channel for `signal`, connected at its first request.
pub fn grpc_channel(
    base: &str,
    signal: Signal,
    timeout: Duration,
) -> Result<tonic::transport::Channel, OtlpError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut endpoint = Endpoint::from_shared(base.to_string())
        .map_err(|e| tls_error(signal, format!("{base}: {e}")))?
        .timeout(timeout)
        .connect_timeout(timeout);
    if is_tls(base, signal) {
        let files = TlsFiles::from_env(signal);
        // Checked the way the HTTP client would use them, for the same errors at start.
        client_config(signal, &files, &[b"h2"])?;
        let mut tls = ClientTlsConfig::new();
        tls = match &files.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(signal, "certificate", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&files.client_certificate, &files.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(signal, "client certificate", cert)?,
                read(signal, "client key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| tls_error(signal, e.to_string()))?;
    }
    Ok(endpoint.connect_lazy())
}

/// `OTEL_EXPORTER_OTLP_{SIGNAL}_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs,
/// comma-separated, values percent-decoded (the specification's format). Malformed pairs are
/// skipped; values are never logged.
pub fn headers(signal: Signal) -> Vec<(String, String)> {
    let Some(text) = var(signal, "HEADERS") else {
        return Vec::new();
    };
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_ascii_lowercase(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signals_own_variable_wins_over_the_general_one() {
        let env: std::collections::HashMap<&str, &str> = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/all/ca.crt"),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics/ca.crt"),
            ("OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY", " "),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/all/tls.key"),
        ]
        .into_iter()
        .collect();
        let get = |name: &str| env.get(name).map(|v| v.to_string());
        let ca = |s| var_in(get, s, "CERTIFICATE");
        assert_eq!(ca(Signal::Metrics).as_deref(), Some("/metrics/ca.crt"));
        assert_eq!(ca(Signal::Traces).as_deref(), Some("/all/ca.crt"));
        // A blank signal variable is unset, not an empty path.
        assert_eq!(
            var_in(get, Signal::Logs, "CLIENT_KEY").as_deref(),
            Some("/all/tls.key")
        );
        assert_eq!(var_in(get, Signal::Logs, "HEADERS"), None);
    }

    #[test]
    fn unreadable_or_unparsable_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.crt");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.crt");
        for (files, says) in [
            (
                TlsFiles {
                    ca: Some(missing.clone()),
                    ..Default::default()
                },
                "missing.crt",
            ),
            (
                TlsFiles {
                    ca: Some(garbage.clone()),
                    ..Default::default()
                },
                "no PEM certificate",
            ),
            (
                TlsFiles {
                    client_certificate: Some(garbage.clone()),
                    ..Default::default()
                },
                "needs both",
            ),
            (
                TlsFiles {
                    client_certificate: Some(garbage.clone()),
                    client_key: Some(missing.clone()),
                    ..Default::default()
                },
                "missing.crt",
            ),
        ] {
            let e = client_config(Signal::Traces, &files, &[b"h2"])
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("traces"), "{e}");
        }
    }

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(percent_decode("Bearer%20abc%3D"), "Bearer abc=");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%é%"), "%é%");
    }
}
