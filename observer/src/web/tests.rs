use super::*;

/// A directory with a self-signed server certificate (`server.crt`, `server.key`) for
/// `localhost` and 127.0.0.1, and a web configuration written by [`Dir::config`].
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        let d = Dir(tempfile::tempdir().unwrap());
        let k = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(d.path("server.crt"), k.cert.pem()).unwrap();
        std::fs::write(d.path("server.key"), k.signing_key.serialize_pem()).unwrap();
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn config(&self, text: &str) -> PathBuf {
        let p = self.path("web.yml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load(&self, text: &str) -> Result<Settings, WebConfigError> {
        load(&self.config(text)).map(|(s, _)| s)
    }

    fn error(&self, text: &str) -> String {
        self.load(text).unwrap_err().to_string()
    }
}

/// `htpasswd -nbBC 4 "" secret`'s kind of hash, made here at the lowest cost.
fn hash(password: &str) -> String {
    bcrypt::hash_with_salt(password, 4, [7; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY)
}

#[test]
fn the_toolkits_sample_file_loads_with_paths_relative_to_it() {
    let d = Dir::new();
    std::fs::write(
        d.path("ca.crt"),
        std::fs::read(d.path("server.crt")).unwrap(),
    )
    .unwrap();
    // exporter-toolkit's documented keys, as an operator writes them for node_exporter.
    let s = d
        .load(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS12\n  max_version: TLS13\n  cipher_suites:\n    \
             - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n    \
             - TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305\n  prefer_server_cipher_suites: true\n  \
             curve_preferences: [X25519, CurveP256]\n\
             http_server_config:\n  http2: false\n  headers:\n    \
             X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n    \
             Strict-Transport-Security: max-age=31536000\n\
             basic_auth_users:\n  prometheus: '{}'\n\
             rate_limit:\n  interval: 100ms\n  burst: 5\n",
            hash("secret")
        ))
        .unwrap();
    let tls = s.tls.as_ref().unwrap();
    assert!(tls.ignore_client_order);
    assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert_eq!(s.headers.len(), 3);
    assert_eq!(s.users.len(), 1);
    assert_eq!(s.rate_limit, Some((Duration::from_millis(100), 5)));
}

#[test]
fn no_file_content_and_an_empty_tls_section_mean_plain_http() {
    let d = Dir::new();
    let s = d.load("").unwrap();
    assert!(s.tls.is_none() && s.users.is_empty() && s.headers.is_empty());
    let s = d.load("tls_server_config: {}\n").unwrap();
    assert!(s.tls.is_none());
}

#[test]
fn unknown_keys_are_errors_that_name_them() {
    let d = Dir::new();
    let e = d.error(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  certfile: x\n",
    );
    assert!(e.contains("certfile"), "{e}");
    let e = d.error("basic_auth:\n  user: x\n");
    assert!(e.contains("basic_auth"), "{e}");
    let e = d.error("tls_server_config: [\n");
    assert!(e.contains("web.yml") && e.contains("line 1"), "{e}");
    // The parser's excerpt of the file stays out of the message: an inline key would be in
    // it.
    let e =
        d.error("tls_server_config:\n  cert: x\n  key: |\n    SECRET-KEY-MATERIAL\n  bogus: 1\n");
    assert!(e.contains("bogus") && !e.contains("SECRET"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn inconsistent_tls_settings_are_refused_as_the_toolkit_refuses_them() {
    let d = Dir::new();
    let base = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    for (extra, says) in [
        (
            "  client_ca_file: server.crt\n",
            "without a client_auth_type",
        ),
        (
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        ("  client_auth_type: Always\n", "invalid client_auth_type"),
        (
            "  client_allowed_sans: [a]\n",
            "client_allowed_sans requires",
        ),
        ("  max_version: TLS11\n", "leave no TLS version"),
        ("  min_version: SSL3\n", "unknown TLS version"),
        (
            "  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
            "offers TLS_ECDHE",
        ),
        (
            "  curve_preferences: [CurveP521]\n",
            "CurveP521 is not available",
        ),
        ("  cert: inline\n", "both cert_file and cert"),
    ] {
        let e = d.error(&format!("{base}{extra}"));
        assert!(e.contains(says), "{extra:?}: {e}");
    }
    let e = d.error("tls_server_config:\n  key_file: server.key\n");
    assert!(e.contains("missing one of cert or cert_file"), "{e}");
    let e = d.error("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n");
    assert!(e.contains("missing.crt"), "{e}");
    // A key that is not the certificate's.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(d.path("other.key"), other.serialize_pem()).unwrap();
    let e = d.error("tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n");
    assert!(e.contains("certificate and key"), "{e}");
}

#[test]
fn tls_versions_follow_min_and_max() {
    let d = Dir::new();
    let p = d.path("x");
    let v = |min, max| versions(&p, min, max).unwrap();
    assert_eq!(v(None, None).len(), 2);
    assert_eq!(v(Some("TLS13"), None), vec![&rustls::version::TLS13]);
    assert_eq!(v(None, Some("TLS12")), vec![&rustls::version::TLS12]);
    // Below 1.2 there is nothing to offer: a minimum there allows what there is.
    assert_eq!(v(Some("TLS10"), None).len(), 2);
}

#[test]
fn only_the_toolkits_headers_and_values_are_taken() {
    let d = Dir::new();
    let e = d.error("http_server_config:\n  headers:\n    Server: observer\n");
    assert!(e.contains("can not be configured"), "{e}");
    let e = d.error("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
    assert!(e.contains("invalid value"), "{e}");
    let s = d
        .load("http_server_config:\n  headers:\n    x-frame-options: SAMEORIGIN\n    X-XSS-Protection: ''\n")
        .unwrap();
    assert_eq!(s.headers.len(), 1, "a blank header is unset");
    assert_eq!(s.headers[0].0, "x-frame-options");
}

#[test]
fn passwords_must_be_bcrypt_hashes() {
    let d = Dir::new();
    let e = d.error("basic_auth_users:\n  prometheus: secret\n");
    assert!(e.contains("not a bcrypt hash"), "{e}");
    assert!(!e.contains("secret"), "the password is not echoed: {e}");
}

#[tokio::test]
async fn basic_auth_checks_user_and_password_and_caches_only_successes() {
    let d = Dir::new();
    let path = d.config(&format!(
        "basic_auth_users:\n  prometheus: {}\n  alice: {}\n",
        hash("secret"),
        hash("other")
    ));
    let web = WebConfig::open(&path).unwrap();
    let s = web.current();
    // An unknown user is checked against this: were it not a hash, bcrypt would refuse at
    // once, and a wrong user name would be told from a wrong password by the time it takes.
    assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
    assert!(web.authorized(&s, "prometheus", "secret").await);
    assert!(
        web.authorized(&s, "prometheus", "secret").await,
        "from the cache"
    );
    assert!(!web.authorized(&s, "prometheus", "other").await);
    assert!(!web.authorized(&s, "alice", "secret").await);
    assert!(!web.authorized(&s, "mallory", "secret").await);
    assert!(!web.authorized(&s, "prometheus", "").await);
    assert_eq!(web.verified.lock().unwrap().len(), 1);
}

#[test]
fn a_file_that_stops_parsing_keeps_the_last_good_configuration() {
    let d = Dir::new();
    let path = d.config(&format!("basic_auth_users:\n  prometheus: {}\n", hash("a")));
    let web = WebConfig::open(&path).unwrap();
    assert_eq!(web.current().users.len(), 1);
    let wait = || std::thread::sleep(Duration::from_millis(120));
    std::fs::write(&path, "basic_auth_users: [\n").unwrap();
    wait();
    assert_eq!(web.current().users.len(), 1, "the last good one stays");
    assert_eq!(web.stats.last_reload_ok.load(Ordering::Relaxed), 0);
    assert_eq!(web.stats.reloads_failed.load(Ordering::Relaxed), 1);
    wait();
    web.current();
    assert_eq!(
        web.stats.reloads_failed.load(Ordering::Relaxed),
        1,
        "not retried until the file changes again"
    );
    std::fs::write(
        &path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    )
    .unwrap();
    wait();
    let s = web.current();
    assert!(s.tls.is_some() && s.users.is_empty());
    assert_eq!(web.stats.last_reload_ok.load(Ordering::Relaxed), 1);
    assert_eq!(web.stats.reloads_ok.load(Ordering::Relaxed), 2);
    // A file the configuration names counts as part of it: a certificate replaced on disk
    // (here by one that does not match the key) is noticed.
    let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(d.path("server.crt"), k.cert.pem()).unwrap();
    wait();
    web.current();
    assert_eq!(web.stats.reloads_failed.load(Ordering::Relaxed), 2);
    std::fs::write(d.path("server.key"), k.signing_key.serialize_pem()).unwrap();
    wait();
    web.current();
    assert_eq!(web.stats.reloads_ok.load(Ordering::Relaxed), 3);
    assert_eq!(web.stats.last_reload_ok.load(Ordering::Relaxed), 1);
}

#[test]
fn the_rate_limit_admits_a_burst_then_one_per_interval() {
    let d = Dir::new();
    let path = d.config("rate_limit:\n  interval: 1h\n  burst: 3\n");
    let web = WebConfig::open(&path).unwrap();
    let s = web.current();
    let admitted = (0..10).filter(|_| web.admit(&s)).count();
    assert_eq!(admitted, 3);
    let path = d.config("rate_limit:\n  interval: 0\n  burst: 3\n");
    let web = WebConfig::open(&path).unwrap();
    let s = web.current();
    assert!((0..10).all(|_| web.admit(&s)), "interval 0 turns it off");
}

#[test]
fn allowed_sans_match_dns_and_ip_names_exactly() {
    let k =
        rcgen::generate_simple_self_signed(vec!["prometheus.monitoring".into(), "10.0.0.7".into()])
            .unwrap();
    let der = k.cert.der();
    assert!(has_allowed_san(der, &["prometheus.monitoring".into()]));
    assert!(has_allowed_san(der, &["x".into(), "10.0.0.7".into()]));
    assert!(!has_allowed_san(der, &["prometheus".into()]));
    assert!(!has_allowed_san(der, &["10.0.0.8".into()]));
}
