//! Secured endpoints (`--web-config-file`), against real clients: Debian's Prometheus scraping
//! over TLS with a client certificate and basic auth, curl proving each refusal, a server
//! certificate that expires and is replaced on disk, a configuration that stops parsing.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use observer::client::ClientArgs;
use observer_tests::{
    Daemon, daemon_bin, patience,
    prometheus::Prometheus,
    tempdir,
    tls::{Pki, htpasswd_hash},
};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let within = patience(within);
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The client settings a scrape with the CA, `client.crt` and basic auth uses.
fn client(dir: &Path, user: &str, password_file: &Path) -> ClientArgs {
    ClientArgs {
        ca_file: Some(dir.join("ca.crt")),
        cert_file: Some(dir.join("client.crt")),
        key_file: Some(dir.join("client.key")),
        username: Some(user.into()),
        password_file: Some(password_file.to_path_buf()),
        ..Default::default()
    }
}

/// curl's exit code, the HTTP status it saw (`000` for none) and its error text.
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("curl (cargo xtask test installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The status line and headers curl got, lowercase.
fn curl_head(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl (cargo xtask test installs it)");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

#[test]
fn the_compose_stacks_prometheus_scrapes_over_mtls_with_basic_auth() {
    let dir = tempdir("secure-compose");
    let tls = dir.join("tls");
    // The compose stack's own script makes the certificates, the password and the web
    // configuration, with openssl and htpasswd, as an operator runs it.
    let out = Command::new("sh")
        .arg(deploy().join("compose/make-certs.sh"))
        .arg(&tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Daemon::start_secured(
        &["--web-config-file", tls.join("web.yml").to_str().unwrap()],
        &[],
        client(&tls, "prometheus", &tls.join("password")),
    );
    // The compose stack's Prometheus configuration as shipped, pointed at this daemon and at
    // these files (in the stack: the `observer` service and the mounted tls/ directory), and
    // scraping every second instead of 15.
    let config = std::fs::read_to_string(deploy().join("compose/prometheus.yml"))
        .unwrap()
        .replace("observer:9464", &format!("localhost:{}", d.port))
        .replace("/etc/prometheus/tls/", &format!("{}/", tls.display()))
        .replace("interval: 15s", "interval: 1s");
    assert!(config.contains("scheme: https") && config.contains("basic_auth"));
    std::fs::copy(deploy().join("prometheus/rules.yml"), dir.join("rules.yml")).unwrap();
    let prom = Prometheus::start_config(&dir, &config);
    let mut last = None;
    wait(
        "the compose Prometheus' target to be up",
        Duration::from_secs(60),
        || {
            last = prom.target("observer");
            last.as_ref().is_some_and(|(h, _)| h == "up")
        },
    );
    let up = prom.query("up{job=\"observer\"}");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    // What it scraped is the daemon's: its own web configuration gauge.
    wait(
        "a scraped series of the daemon",
        Duration::from_secs(30),
        || {
            let r = prom.query("observer_web_config_last_reload_successful");
            r["data"]["result"][0]["value"][1] == "1"
        },
    );
}

#[test]
fn every_refusal_holds_and_a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let dir = tempdir("secure-refusals");
    let pki = Pki::new(&dir);
    let password = dir.join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let web = dir.join("web.yml");
    let good_config = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
         basic_auth_users:\n  prometheus: {}\n",
        htpasswd_hash("s3cret")
    );
    std::fs::write(&web, &good_config).unwrap();
    let d = Daemon::start_secured(
        &["--web-config-file", web.to_str().unwrap()],
        &[],
        client(&dir, "prometheus", &password),
    );
    let url = |path: &str| format!("https://localhost:{}{path}", d.port);
    let p = |name: &str| pki.path(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (p("ca.crt"), p("client.crt"), p("client.key"));
    let trusted = ["--cacert", &ca, "--cert", &cert, "--key", &key];

    // Everything right: 200, with the configured header.
    let mut args = trusted.to_vec();
    args.extend(["-u", "prometheus:s3cret"]);
    let metrics = url("/metrics");
    args.push(&metrics);
    let head = curl_head(&args);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");

    // Plain HTTP to the TLS port: no answer.
    let (code, status, err) = curl(&[&format!("http://localhost:{}/metrics", d.port)]);
    assert!(
        code != 0 && status == "000",
        "plain HTTP: {code} {status} {err}"
    );
    // No client certificate: the handshake fails.
    let (code, status, err) = curl(&["--cacert", &ca, "-u", "prometheus:s3cret", &metrics]);
    assert!(
        code != 0 && status == "000",
        "no client certificate: {code} {status} {err}"
    );
    // A client certificate from a CA the daemon does not trust.
    let (rc, rk) = (p("rogue-client.crt"), p("rogue-client.key"));
    let (code, status, err) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &rc,
        "--key",
        &rk,
        "-u",
        "prometheus:s3cret",
        &metrics,
    ]);
    assert!(
        code != 0 && status == "000",
        "untrusted client certificate: {code} {status} {err}"
    );
    // The right certificate with a wrong password, an unknown user, or none: 401, on every
    // endpoint.
    for (creds, path) in [
        (Some("prometheus:wrong"), "/metrics"),
        (Some("mallory:s3cret"), "/metrics"),
        (None, "/metrics"),
        (None, "/streams"),
        (None, "/ios"),
        (None, "/healthz"),
        (None, "/readyz"),
    ] {
        let u = url(path);
        let mut a = trusted.to_vec();
        if let Some(c) = creds {
            a.extend(["-u", c]);
        }
        a.push(&u);
        let head = curl_head(&a);
        assert!(head.starts_with("http/1.1 401"), "{creds:?} {path}: {head}");
        assert!(head.contains("www-authenticate: basic"), "{head}");
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "headers on refusals: {head}"
        );
    }
    let s = d.scrape();
    let refused = |reason: &str| {
        s.value("observer_http_refused_total", &[("reason", reason)])
            .unwrap()
    };
    assert!(refused("tls_handshake") >= 3.0, "{}", s.text);
    assert_eq!(refused("unauthorized"), 7.0);

    // The server certificate expires: replaced on disk by an expired one, it is served from
    // the next handshake, and clients refuse it.
    pki.write_server_cert(true);
    wait(
        "the expired certificate to be served",
        Duration::from_secs(10),
        || {
            curl(&[
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "-u",
                "prometheus:s3cret",
                &metrics,
            ])
            .0 == 60
        },
    );
    // Prometheus scraping with the client certificate and password, as an operator's job
    // does: down, for the expired certificate.
    let prom = Prometheus::start_config(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: observer\n    \
             scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      \
             key_file: {key}\n    basic_auth:\n      username: prometheus\n      \
             password_file: {}\n    static_configs:\n      - targets: ['localhost:{}']\n",
            password.display(),
            d.port
        ),
    );
    let health = |want: &str| {
        let mut last = None;
        wait(
            &format!("the target to be {want}"),
            Duration::from_secs(60),
            || {
                last = prom.target("observer");
                last.as_ref().is_some_and(|(h, _)| h == want)
            },
        );
        last.unwrap().1
    };
    let error = health("down");
    assert!(error.contains("expired"), "Prometheus' error: {error}");
    // Renewed on disk: the next scrape succeeds, the daemon never restarted.
    let pid = d.pid();
    pki.write_server_cert(false);
    health("up");
    assert_eq!(d.pid(), pid);

    // A configuration that stops parsing keeps the last good one in force, and says so.
    std::fs::write(&web, format!("{good_config}unknown_key: 1\n")).unwrap();
    let mut s = d.scrape();
    wait("the failed reload to show", Duration::from_secs(30), || {
        s = d.scrape();
        s.value("observer_web_config_last_reload_successful", &[]) == Some(0.0)
    });
    assert_eq!(
        s.value(
            "observer_web_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(1.0)
    );
    let (code, status, _) = curl(&[&format!("http://localhost:{}/metrics", d.port)]);
    assert!(code != 0 && status == "000", "still TLS only");
    let (_, status, _) = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &metrics]);
    assert_eq!(status, "401", "still basic auth");
    assert!(d.log_text().contains("unknown_key"), "the log says why");
    health("up");
    // Fixed: in force again.
    std::fs::write(&web, &good_config).unwrap();
    wait(
        "the good configuration back",
        Duration::from_secs(30),
        || {
            d.scrape()
                .value("observer_web_config_last_reload_successful", &[])
                == Some(1.0)
        },
    );
}

#[test]
fn a_web_configuration_bad_at_start_stops_the_daemon_with_the_file_and_the_reason() {
    let dir = tempdir("secure-bad");
    let pki = Pki::new(&dir);
    for (text, says) in [
        (
            "tls_server_config:\n  cert_file: server.crt\n  keyfile: server.key\n",
            "keyfile",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        (
            "basic_auth_users:\n  prometheus: s3cret\n",
            "not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: nothere.crt\n  key_file: server.key\n",
            "nothere.crt",
        ),
    ] {
        let web = pki.path("web.yml");
        std::fs::write(&web, text).unwrap();
        let out = Command::new(daemon_bin())
            .args(["--listen", "127.0.0.1:0", "--web-config-file"])
            .arg(&web)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started");
        assert!(
            err.contains(web.to_str().unwrap()) && err.contains(says),
            "{text}: {err}"
        );
    }
}

#[test]
fn observer_health_and_top_reach_a_secured_daemon_with_a_client_file() {
    let dir = tempdir("secure-clients");
    let pki = Pki::new(&dir);
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
             basic_auth_users:\n  ops: {}\n",
            htpasswd_hash("pw")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pw"), "pw").unwrap();
    let d = Daemon::start_secured(
        &["--web-config-file", web.to_str().unwrap()],
        &[],
        client(&dir, "ops", &dir.join("pw")),
    );
    // The client file, in a Prometheus scrape job's terms, paths relative to it.
    let file = dir.join("client.yml");
    std::fs::write(
        &file,
        "tls_config:\n  ca_file: ca.crt\n  cert_file: client.crt\n  key_file: client.key\n\
         basic_auth:\n  username: ops\n  password_file: pw\n",
    )
    .unwrap();
    let url = format!("https://localhost:{}", d.port);
    let run = |args: &[&str]| {
        Command::new(daemon_bin())
            .args(args)
            .env_remove("OBSERVER_CLIENT_CONFIG")
            .output()
            .unwrap()
    };
    let ok = run(&[
        "health",
        "--ready",
        "--url",
        &url,
        "--client-config",
        file.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without the client certificate, and with a wrong password: refused, saying why.
    let no_cert = run(&[
        "health",
        "--url",
        &url,
        "--ca-file",
        pki.path("ca.crt").to_str().unwrap(),
    ]);
    assert!(!no_cert.status.success());
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let bad = run(&[
        "health",
        "--url",
        &url,
        "--client-config",
        file.to_str().unwrap(),
        "--username",
        "ops",
        "--password-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // `observer top --once` with the same file through the environment.
    let top = Command::new(daemon_bin())
        .args(["top", "--once", "--interval", "200ms", "--url", &url])
        .env("OBSERVER_CLIENT_CONFIG", &file)
        .output()
        .unwrap();
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(String::from_utf8_lossy(&top.stdout).contains("live streams"));
}

#[test]
fn client_allowed_sans_and_the_rate_limit_refuse_what_they_name() {
    let dir = tempdir("secure-sans");
    let pki = Pki::new(&dir);
    let web = dir.join("web.yml");
    let config = |sans: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             client_allowed_sans: [{sans}]\n"
        )
    };
    std::fs::write(&web, config("prometheus")).unwrap();
    let none = dir.join("none");
    std::fs::write(&none, "").unwrap();
    let mut args = client(&dir, "", &none);
    args.username = None;
    args.password_file = None;
    let d = Daemon::start_secured(&["--web-config-file", web.to_str().unwrap()], &[], args);
    let p = |name: &str| pki.path(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (p("ca.crt"), p("client.crt"), p("client.key"));
    let metrics = format!("https://localhost:{}/metrics", d.port);
    let scrape = || curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &metrics]);
    assert_eq!(scrape().1, "200");
    // The same certificate, its SAN (`prometheus`) no longer allowed: refused after the
    // handshake, from the reload on.
    std::fs::write(&web, config("grafana, 10.0.0.1")).unwrap();
    wait("the SAN refusal", Duration::from_secs(10), || {
        scrape().1 == "000"
    });
    std::fs::write(&web, config("prometheus")).unwrap();
    wait("the SAN allowed again", Duration::from_secs(10), || {
        scrape().1 == "200"
    });
    let s = d.scrape();
    assert!(
        s.value("observer_http_refused_total", &[("reason", "client_san")])
            .unwrap()
            >= 1.0
    );
    drop(d);

    // Plain HTTP, a bucket of 1,000 requests refilled one an hour: the daemon's readiness
    // checks (one each 50 ms) took some, and the 1,001st request at most is refused.
    std::fs::write(&web, "rate_limit:\n  interval: 1h\n  burst: 1000\n").unwrap();
    let d = Daemon::start(&["--web-config-file", web.to_str().unwrap()]);
    let answers: Vec<u16> = (0..1001)
        .map(|_| d.get("/healthz").expect("an answer").0)
        .collect();
    let refused = answers.iter().position(|&c| c == 429);
    assert!(refused.is_some(), "{answers:?}");
    assert!(
        answers[..refused.unwrap()].iter().all(|&c| c == 200)
            && answers[refused.unwrap()..].iter().all(|&c| c == 429),
        "{answers:?}"
    );
}
