//! How the daemon's own clients (`observer top`, `observer health`, `cargo xtask run`) reach
//! endpoints that a web configuration secures: a CA, a client certificate and basic auth, from
//! flags, the environment, or a client file in the Prometheus scrape configuration's terms
//! (`tls_config`, `basic_auth`), so the credentials a Prometheus job uses can be reused as is.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use serde::Deserialize;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientArgs {
    /// CA certificate (PEM) the daemon's certificate must chain to, instead of the system's
    /// roots.
    #[arg(long, env = "OBSERVER_CLIENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to present, for `client_auth_type: RequireAndVerifyClientCert`.
    #[arg(long, env = "OBSERVER_CLIENT_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "OBSERVER_CLIENT_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long, env = "OBSERVER_CLIENT_INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,
    /// Basic-auth user name.
    #[arg(long, env = "OBSERVER_CLIENT_USERNAME")]
    pub username: Option<String>,
    /// File holding the basic-auth password (or set `OBSERVER_CLIENT_PASSWORD`: a password on
    /// the command line is visible to every user of the machine).
    #[arg(long, env = "OBSERVER_CLIENT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// YAML client file: `tls_config` (`ca_file`, `cert_file`, `key_file`,
    /// `insecure_skip_verify`) and `basic_auth` (`username`, `password` or `password_file`),
    /// as in a Prometheus scrape job. Flags and environment win over it.
    #[arg(long, env = "OBSERVER_CLIENT_CONFIG")]
    pub client_config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    #[serde(default)]
    tls_config: TlsFile,
    basic_auth: Option<BasicAuthFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthFile {
    username: String,
    password: Option<String>,
    password_file: Option<PathBuf>,
}

/// A client file's text (`tls_config`, `basic_auth`); unknown keys are errors.
pub fn parse_client_file(text: &str) -> Result<ClientFile, String> {
    if text.trim().is_empty() {
        return Ok(ClientFile::default());
    }
    serde_saphyr::from_str(text).map_err(|e| crate::web::first_line(&e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Options(String),
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A client for one daemon: an agent with the TLS settings, and the Authorization header.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    authorization: Option<String>,
    base: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl ClientArgs {
    /// The settings the flags, the environment and the client file give together, and the
    /// password.
    fn resolve(&self) -> Result<(ClientArgs, Option<String>), ClientError> {
        let mut out = self.clone();
        let mut password = std::env::var("OBSERVER_CLIENT_PASSWORD").ok();
        if let Some(path) = &self.client_config {
            let text = String::from_utf8_lossy(&read(path)?).into_owned();
            let file = parse_client_file(&text).map_err(|message| ClientError::Invalid {
                path: path.clone(),
                message,
            })?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let rel = |p: Option<PathBuf>| p.map(|p| dir.join(p));
            out.ca_file = out.ca_file.or(rel(file.tls_config.ca_file));
            if out.cert_file.is_none() {
                out.cert_file = rel(file.tls_config.cert_file);
                out.key_file = rel(file.tls_config.key_file);
            }
            out.insecure_skip_verify |= file.tls_config.insecure_skip_verify;
            if let Some(b) = file.basic_auth
                && out.username.is_none()
            {
                out.username = Some(b.username);
                out.password_file = out.password_file.or(rel(b.password_file));
                password = password.or(b.password);
            }
        }
        if out.cert_file.is_some() != out.key_file.is_some() {
            return Err(ClientError::Options(
                "a client certificate needs both cert_file and key_file".into(),
            ));
        }
        if let Some(p) = &out.password_file {
            let text = String::from_utf8_lossy(&read(p)?).into_owned();
            password = Some(text.trim_end_matches(['\r', '\n']).to_string());
        }
        Ok((out, password))
    }

    /// A client for the daemon at `base` (`http://` or `https://`).
    pub fn client(&self, base: &str) -> Result<Client, ClientError> {
        let (r, password) = self.resolve()?;
        let authorization = match (&r.username, password) {
            (Some(user), password) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.unwrap_or_default()))
            )),
            (None, Some(_)) => {
                return Err(ClientError::Options(
                    "a basic-auth password without a user name".into(),
                ));
            }
            (None, None) => None,
        };
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            // A 401 or 503 is an answer to report, not a transport error.
            .http_status_as_error(false);
        if base.starts_with("https://") {
            config = config.tls_config(tls(&r)?);
        }
        Ok(Client {
            agent: config.build().into(),
            authorization,
            base: base.trim_end_matches('/').to_string(),
        })
    }
}

fn tls(r: &ClientArgs) -> Result<ureq::tls::TlsConfig, ClientError> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let invalid = |path: &Path, message: String| ClientError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let certs = |path: &Path| -> Result<Vec<Certificate<'static>>, ClientError> {
        let pem = read(path)?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            if let PemItem::Certificate(c) = item.map_err(|e| invalid(path, e.to_string()))? {
                certs.push(c);
            }
        }
        if certs.is_empty() {
            return Err(invalid(path, "no PEM certificate in it".into()));
        }
        Ok(certs)
    };
    let roots = match &r.ca_file {
        Some(ca) => certs(ca)?,
        None => rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect(),
    };
    let client_cert = match (&r.cert_file, &r.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let k = PrivateKey::from_pem(&read(key)?).map_err(|e| invalid(key, e.to_string()))?;
            Some(ClientCert::new_with_certs(&chain, k))
        }
        _ => None,
    };
    // ring, as on the daemon's server side: no C library in the build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&roots))
        .client_cert(client_cert)
        .disable_verification(r.insecure_skip_verify)
        .unversioned_rustls_crypto_provider(provider)
        .build())
}

/// An answer from the daemon.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Client {
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path`; an error only when no HTTP answer came (refused, TLS failed, timed out).
    pub fn get(&self, path: &str) -> Result<Answer, String> {
        let mut req = self.agent.get(&format!("{}{path}", self.base));
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        let mut r = req.call().map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        Ok(Answer { status, body })
    }

    /// GETs `path` and reads it as JSON, refusing any status but 200.
    pub fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let a = self.get(path)?;
        if a.status != 200 {
            return Err(format!(
                "HTTP {} from {}{path}: {}",
                a.status,
                self.base,
                a.body.trim()
            ));
        }
        serde_json::from_str(&a.body).map_err(|e| e.to_string())
    }
}

/// `observer health`: asks a daemon's /healthz (or /readyz) through the same settings as
/// `observer top`, for exec probes where the kubelet's own HTTP probe cannot present a client
/// certificate.
#[derive(Debug, clap::Parser)]
#[command(
    name = "observer health",
    about = "Exit 0 if a running observer answers /healthz (or /readyz) with 200, 1 if not"
)]
pub struct HealthArgs {
    /// The daemon to ask.
    #[arg(long, env = "OBSERVER_URL", default_value = "http://127.0.0.1:9464")]
    pub url: String,
    /// Ask /readyz (initial scan done) instead of /healthz.
    #[arg(long)]
    pub ready: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `observer health`; the message says what was wrong.
pub fn health(args: HealthArgs) -> Result<(), String> {
    let client = args.client.client(&args.url).map_err(|e| e.to_string())?;
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let a = client
        .get(path)
        .map_err(|e| format!("{}{path}: {e}", client.base()))?;
    if a.status == 200 {
        Ok(())
    } else {
        Err(format!(
            "{}{path}: HTTP {} {}",
            client.base(),
            a.status,
            a.body.trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_file_gives_paths_relative_to_it_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.yml");
        std::fs::write(
            &file,
            "tls_config:\n  ca_file: ca.crt\n  cert_file: c.crt\n  key_file: c.key\n\
             basic_auth:\n  username: prometheus\n  password_file: pw\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let args = ClientArgs {
            client_config: Some(file.clone()),
            ..Default::default()
        };
        let (r, password) = args.resolve().unwrap();
        assert_eq!(r.ca_file, Some(dir.path().join("ca.crt")));
        assert_eq!(r.cert_file, Some(dir.path().join("c.crt")));
        assert_eq!(r.username.as_deref(), Some("prometheus"));
        assert_eq!(
            password.as_deref(),
            Some("s3cret"),
            "the line end is not the password"
        );
        let flags = ClientArgs {
            client_config: Some(file),
            ca_file: Some("/other/ca.crt".into()),
            username: Some("ops".into()),
            ..Default::default()
        };
        let (r, password) = flags.resolve().unwrap();
        assert_eq!(r.ca_file, Some(PathBuf::from("/other/ca.crt")));
        assert_eq!(r.username.as_deref(), Some("ops"));
        assert_eq!(
            password, None,
            "the file's password belongs to the file's user"
        );
    }

    #[test]
    fn bad_client_files_are_errors_that_say_why() {
        assert!(
            parse_client_file("tls_config:\n  server_name: x\n")
                .unwrap_err()
                .contains("server_name")
        );
        assert!(parse_client_file("bearer_token: x\n").is_err());
        assert!(parse_client_file("").is_ok());
        let no_key = ClientArgs {
            cert_file: Some("c.crt".into()),
            ..Default::default()
        };
        assert!(no_key.resolve().is_err());
    }
}
