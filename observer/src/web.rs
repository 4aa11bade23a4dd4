//! The web configuration (`--web-config-file`): TLS, client certificates, basic auth, response
//! headers and a rate limit on every endpoint, in the Prometheus exporter-toolkit's format, so
//! the file operators already write for node_exporter works here unchanged.
//!
//! Like the toolkit, the file (and the certificates, keys and CAs it names) is looked at again
//! on every connection and request, so a rotated certificate is served from the next
//! handshake without a restart. Unlike the toolkit, a file that stops parsing does not take
//! the endpoints down: the last good configuration stays in force, and the failure is logged
//! and counted (`observer_web_config_last_reload_successful` 0).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::http::{HeaderName, HeaderValue};
use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedProtocolVersion,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use serde::Deserialize;

pub mod serve;

/// The file as written: exporter-toolkit's keys, nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    rate_limit: Option<RateLimitFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    /// Inline PEM, instead of the files.
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    curve_preferences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// The toolkit's default is true; HTTP/2 is not served here (scrapers use HTTP/1.1), so
    /// either value is accepted and HTTP/1.1 is what the TLS handshake offers.
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    interval: String,
    burst: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// How a client's certificate is asked for (Go's `tls.ClientAuthType`, as the toolkit names
/// them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified.
    RequireAnyClientCert,
    /// Not required; verified against the client CA when sent.
    VerifyClientCertIfGiven,
    /// Required and verified against the client CA.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            // The toolkit takes both spellings.
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            _ => return None,
        })
    }
}

/// A configuration in force: what a valid file built.
pub struct Settings {
    /// None: plain HTTP (the file has no `tls_server_config`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Subject alternative names one of which a client certificate must carry (empty: any).
    pub allowed_sans: Vec<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// User name to bcrypt hash; empty: no basic auth.
    pub users: BTreeMap<String, String>,
    pub rate_limit: Option<(Duration, u32)>,
}

impl std::fmt::Debug for Settings {
    // Hashes stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("tls", &self.tls.is_some())
            .field("allowed_sans", &self.allowed_sans)
            .field("headers", &self.headers)
            .field("users", &self.users.len())
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// The toolkit's headers (lowercase, as `HeaderName` keeps them; matched in any case): only
/// these may be set, some only to these values.
const HEADERS: &[(&str, &[&str])] = &[
    ("strict-transport-security", &[]),
    ("x-content-type-options", &["nosniff"]),
    ("x-frame-options", &["deny", "sameorigin"]),
    ("x-xss-protection", &[]),
    ("content-security-policy", &[]),
];

fn invalid(path: &Path, message: impl Into<String>) -> WebConfigError {
    WebConfigError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The files a configuration was built from, with what they looked like then: a change to
/// any of them means building it again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<(PathBuf, Option<FileLook>)>);

/// A file's modification time, size and inode.
type FileLook = (SystemTime, u64, u64);

impl Stamp {
    fn of(paths: &[PathBuf]) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        Stamp(
            paths
                .iter()
                .map(|p| {
                    // Following symbolic links: a Kubernetes Secret's files are links that an
                    // update points at new files.
                    let m = std::fs::metadata(p).ok().map(|m| {
                        (
                            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            m.len(),
                            m.ino(),
                        )
                    });
                    (p.clone(), m)
                })
                .collect(),
        )
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.0.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// Reads and builds the configuration in `path`; also returns the files it depends on.
pub fn load(path: &Path) -> Result<(Settings, Vec<PathBuf>), WebConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    build(&text, path)
}

/// Builds the configuration `text`, read from `path` (relative paths in it are relative to
/// its directory).
pub fn build(text: &str, path: &Path) -> Result<(Settings, Vec<PathBuf>), WebConfigError> {
    let file: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| WebConfigError::Parse {
            path: path.to_path_buf(),
            message: first_line(&e.to_string()),
        })?
    };
    // Relative paths are relative to the file's directory, as in the toolkit.
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut deps = vec![path.to_path_buf()];
    let tls = match file.tls_server_config {
        Some(t) => build_tls(path, dir, t, &mut deps)?,
        None => None,
    };
    let (tls, allowed_sans) = match tls {
        Some((c, sans)) => (Some(c), sans),
        None => (None, Vec::new()),
    };
    let mut headers = Vec::new();
    for (name, value) in file.http_server_config.unwrap_or_default().headers {
        let Some((canonical, allowed)) =
            HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(&name))
        else {
            return Err(invalid(
                path,
                format!(
                    "HTTP header {name:?} can not be configured (only {})",
                    HEADERS.iter().map(|h| h.0).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if value.is_empty() {
            continue;
        }
        if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&value)) {
            return Err(invalid(
                path,
                format!("invalid value {value:?} for {canonical} (one of {allowed:?})"),
            ));
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| invalid(path, format!("{canonical}: not a header value")))?;
        headers.push((HeaderName::from_static(canonical), value));
    }
    for (user, hash) in &file.basic_auth_users {
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(invalid(
                path,
                format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash \
                     (`htpasswd -nBC 10 \"\" | tr -d ':\\n'` makes one)"
                ),
            ));
        }
    }
    let rate_limit = match file.rate_limit {
        Some(r) => {
            let interval = humantime::parse_duration(&r.interval)
                .or_else(|e| go_duration(&r.interval).ok_or(e))
                .map_err(|e| invalid(path, format!("rate_limit.interval: {e}")))?;
            (!interval.is_zero()).then_some((interval, r.burst.max(1)))
        }
        None => None,
    };
    Ok((
        Settings {
            tls,
            allowed_sans,
            headers,
            users: file.basic_auth_users,
            rate_limit,
        },
        deps,
    ))
}

/// A parse error's first line (`line 3 column 3: unknown field ...`): the parser's excerpt
/// of the file that follows would put the file's text, an inline private key or password
/// hashes included, into the daemon's log.
pub fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

/// Go's duration spellings humantime does not take (`1m30s` it does; `0` and `1.5s` it does
/// not).
fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

type BuiltTls = Option<(Arc<rustls::ServerConfig>, Vec<String>)>;

fn build_tls(
    path: &Path,
    dir: &Path,
    t: TlsFile,
    deps: &mut Vec<PathBuf>,
) -> Result<BuiltTls, WebConfigError> {
    let nothing = t.cert_file.is_none()
        && t.cert.is_none()
        && t.key_file.is_none()
        && t.key.is_none()
        && t.client_ca_file.is_none()
        && t.client_ca.is_none()
        && t.client_auth_type.is_none();
    if nothing {
        // The toolkit serves plain HTTP for an empty tls_server_config.
        return Ok(None);
    }
    let mut read = |what: &str, file: &Option<String>, inline: &Option<String>| match (file, inline)
    {
        (Some(_), Some(_)) => Err(invalid(
            path,
            format!("cannot specify both {what}_file and {what}"),
        )),
        (Some(f), None) => {
            let p = dir.join(f);
            deps.push(p.clone());
            std::fs::read(&p)
                .map(Some)
                .map_err(|e| invalid(path, format!("{what}_file {}: {e}", p.display())))
        }
        (None, Some(pem)) => Ok(Some(pem.clone().into_bytes())),
        (None, None) => Ok(None),
    };
    let cert = read("cert", &t.cert_file, &t.cert)?
        .ok_or_else(|| invalid(path, "missing one of cert or cert_file"))?;
    let key = read("key", &t.key_file, &t.key)?
        .ok_or_else(|| invalid(path, "missing one of key or key_file"))?;
    let client_ca = read("client_ca", &t.client_ca_file, &t.client_ca)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(path, format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "certificate: no PEM certificate in it"));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key).map_err(|e| invalid(path, format!("key: {e}")))?;

    let auth = match t.client_auth_type.as_deref() {
        None => ClientAuth::NoClientCert,
        Some(s) => ClientAuth::parse(s).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "invalid client_auth_type {s:?} (NoClientCert, RequestClientCert, \
                     RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
                ),
            )
        })?,
    };
    if client_ca.is_some() && auth == ClientAuth::NoClientCert {
        return Err(invalid(
            path,
            "client CAs have been configured without a client_auth_type",
        ));
    }
    if !t.client_allowed_sans.is_empty()
        && !matches!(
            auth,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    {
        return Err(invalid(
            path,
            "client_allowed_sans requires client_auth_type RequireAnyClientCert or \
             RequireAndVerifyClientCert",
        ));
    }

    let provider = provider(path, &t)?;
    let versions = versions(path, t.min_version.as_deref(), t.max_version.as_deref())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| invalid(path, format!("TLS versions and ciphers: {e}")))?;
    let builder = match auth {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => builder
            .with_client_cert_verifier(Arc::new(AnyClientCert {
                required: auth == ClientAuth::RequireAnyClientCert,
                algorithms: provider.signature_verification_algorithms,
            })),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let pem = client_ca.ok_or_else(|| {
                invalid(
                    path,
                    format!("client_auth_type {auth:?} needs client_ca_file (or client_ca)"),
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| invalid(path, format!("client CA: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| invalid(path, format!("client CA: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid(path, "client CA: no PEM certificate in it"));
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if auth == ClientAuth::VerifyClientCertIfGiven {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| invalid(path, format!("client CA: {e}")))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(path, format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    Ok(Some((Arc::new(config), t.client_allowed_sans)))
}

/// ring's suites and groups, narrowed and ordered as `cipher_suites` and `curve_preferences`
/// ask (Go's names).
fn provider(path: &Path, t: &TlsFile) -> Result<Arc<CryptoProvider>, WebConfigError> {
    // ring, as everywhere in the daemon (kube's client too): aws-lc-rs would build a C
    // library. Deprecated only for lacking post-quantum key exchange, which nothing scraping
    // an exporter asks for yet.
    #[allow(deprecated)]
    let mut p = rustls::crypto::ring::default_provider();
    if !t.cipher_suites.is_empty() {
        let mut chosen: Vec<rustls::SupportedCipherSuite> = p
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .copied()
            .collect();
        for name in &t.cipher_suites {
            // Go's short names for the ChaCha suites.
            let iana = match name.as_str() {
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
                    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
                }
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
                }
                n => n,
            };
            let found = p
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()) == iana);
            match found {
                // TLS 1.3's suites are not configurable, in Go as here.
                Some(s) if s.tls13().is_some() => {}
                Some(s) => {
                    if !chosen.contains(s) {
                        chosen.push(*s);
                    }
                }
                None => {
                    return Err(invalid(
                        path,
                        format!(
                            "cipher suite {name} is not available: this daemon's TLS (rustls) \
                             offers {}",
                            p.cipher_suites
                                .iter()
                                .filter(|s| s.tls13().is_none())
                                .map(|s| format!("{:?}", s.suite()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        p.cipher_suites = chosen;
    }
    if !t.curve_preferences.is_empty() {
        let mut groups = Vec::new();
        for name in &t.curve_preferences {
            let g = match name.as_str() {
                "X25519" => rustls::crypto::ring::kx_group::X25519,
                "CurveP256" => rustls::crypto::ring::kx_group::SECP256R1,
                "CurveP384" => rustls::crypto::ring::kx_group::SECP384R1,
                other => {
                    return Err(invalid(
                        path,
                        format!("curve {other} is not available (X25519, CurveP256, CurveP384)"),
                    ));
                }
            };
            groups.push(g);
        }
        p.kx_groups = groups;
    }
    Ok(Arc::new(p))
}

fn versions(
    path: &Path,
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static SupportedProtocolVersion>, WebConfigError> {
    // TLS 1.0 and 1.1 are not implemented by rustls: a minimum below 1.2 allows what there
    // is; a maximum below 1.2 allows nothing.
    let rank = |v: Option<&str>, default: u8| -> Result<u8, WebConfigError> {
        match v {
            None | Some("") => Ok(default),
            Some("TLS10") => Ok(10),
            Some("TLS11") => Ok(11),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(other) => Err(invalid(
                path,
                format!("unknown TLS version {other:?} (TLS10, TLS11, TLS12, TLS13)"),
            )),
        }
    };
    let (lo, hi) = (rank(min, 12)?, rank(max, 13)?);
    let v: Vec<_> = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(r, _)| *r >= lo && *r <= hi)
        .map(|(_, v)| v)
        .collect();
    if v.is_empty() {
        return Err(invalid(
            path,
            format!(
                "min_version {} and max_version {} leave no TLS version this daemon serves \
                 (TLS12, TLS13)",
                min.unwrap_or("TLS12"),
                max.unwrap_or("TLS13")
            ),
        ));
    }
    Ok(v)
}

/// `RequestClientCert` and `RequireAnyClientCert`: any certificate is taken without checking
/// who issued it, as Go does; the handshake still proves the client holds its key.
#[derive(Debug)]
struct AnyClientCert {
    required: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether a client certificate carries one of `allowed` among its DNS, IP, e-mail or URI
/// subject alternative names (exact match, as in the toolkit).
pub fn has_allowed_san(cert: &CertificateDer<'_>, allowed: &[String]) -> bool {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, c)) = X509Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| {
        let name = match n {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                s.to_string()
            }
            GeneralName::IPAddress(b) => match b.len() {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                _ => return false,
            },
            _ => return false,
        };
        allowed.contains(&name)
    })
}

/// The self-metrics of the web configuration and of what the endpoints refused.
#[derive(Debug, Default)]
pub struct Stats {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// 1 while the configuration in force is the file's current content.
    pub last_reload_ok: AtomicU64,
    /// Unix seconds of the last successful load.
    pub last_success_seconds: AtomicU64,
    pub refused_handshake: AtomicU64,
    pub refused_san: AtomicU64,
    pub refused_unauthorized: AtomicU64,
    pub refused_rate_limited: AtomicU64,
}

/// The configuration in force and how to notice that its files changed.
pub struct WebConfig {
    path: PathBuf,
    state: Mutex<Current>,
    pub stats: Arc<Stats>,
    /// Passwords already checked against their hash (SHA-256 of user, hash and password):
    /// bcrypt costs tens of milliseconds by design, too much for every scrape.
    verified: Mutex<HashSet<[u8; 32]>>,
}

struct Current {
    settings: Arc<Settings>,
    stamp: Stamp,
    /// When the files were last looked at: at most every 100 ms under a burst of requests.
    checked: Instant,
    /// Tokens of the rate limit's bucket, and when it was last filled.
    tokens: f64,
    filled: Instant,
}

/// The bcrypt hash an unknown user's password is checked against, so that a wrong user name
/// takes as long to refuse as a wrong password (the toolkit does the same).
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

impl WebConfig {
    /// Loads the file; an error here stops the daemon (a bad file at start is never served
    /// around).
    pub fn open(path: &Path) -> Result<Arc<WebConfig>, WebConfigError> {
        let (settings, deps) = load(path)?;
        let stats = Arc::new(Stats::default());
        stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
        stats.last_reload_ok.store(1, Ordering::Relaxed);
        stats
            .last_success_seconds
            .store(unix_now(), Ordering::Relaxed);
        let burst = settings.rate_limit.map_or(0.0, |r| r.1 as f64);
        Ok(Arc::new(WebConfig {
            path: path.to_path_buf(),
            state: Mutex::new(Current {
                settings: Arc::new(settings),
                stamp: Stamp::of(&deps),
                checked: Instant::now(),
                tokens: burst,
                filled: Instant::now(),
            }),
            stats,
            verified: Mutex::new(HashSet::new()),
        }))
    }

    /// The configuration in force, built again first if one of its files changed since.
    pub fn current(&self) -> Arc<Settings> {
        let mut cur = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if cur.checked.elapsed() >= Duration::from_millis(100) {
            cur.checked = Instant::now();
            let now = Stamp::of(&cur.stamp.paths());
            if now != cur.stamp {
                self.reload(&mut cur);
            }
        }
        cur.settings.clone()
    }

    fn reload(&self, cur: &mut Current) {
        match load(&self.path) {
            Ok((settings, deps)) => {
                tracing::info!(
                    file = %self.path.display(),
                    tls = settings.tls.is_some(),
                    users = settings.users.len(),
                    "web configuration reloaded"
                );
                if settings.rate_limit != cur.settings.rate_limit {
                    cur.tokens = settings.rate_limit.map_or(0.0, |r| r.1 as f64);
                }
                cur.settings = Arc::new(settings);
                cur.stamp = Stamp::of(&deps);
                self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.stats.last_reload_ok.store(1, Ordering::Relaxed);
                self.stats
                    .last_success_seconds
                    .store(unix_now(), Ordering::Relaxed);
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "web configuration not reloaded: the last good one stays in force"
                );
                // Not tried again until one of the files changes again.
                cur.stamp = Stamp::of(&cur.stamp.paths());
                self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.stats.last_reload_ok.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Takes a token from the rate limit's bucket; false when it is empty.
    pub fn admit(&self, settings: &Settings) -> bool {
        let Some((interval, burst)) = settings.rate_limit else {
            return true;
        };
        let mut cur = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let refill = cur.filled.elapsed().as_secs_f64() / interval.as_secs_f64();
        cur.filled = Instant::now();
        cur.tokens = (cur.tokens + refill).min(burst as f64);
        if cur.tokens >= 1.0 {
            cur.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `user` and `password` match `basic_auth_users` (always true without users).
    /// bcrypt's comparison is constant-time; it runs on a blocking thread.
    pub async fn authorized(&self, settings: &Settings, user: &str, password: &str) -> bool {
        if settings.users.is_empty() {
            return true;
        }
        let (known, hash) = match settings.users.get(user) {
            Some(h) => (true, h.as_str()),
            None => (false, DUMMY_HASH),
        };
        let key = {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            for part in [user, hash, password] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            <[u8; 32]>::from(h.finalize())
        };
        if known
            && self
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
        {
            return true;
        }
        let (hash, password) = (hash.to_string(), password.to_string());
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false)
                && known;
        if ok {
            let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            // A bound on what a stream of distinct right passwords can grow it to.
            if v.len() >= 1024 {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
