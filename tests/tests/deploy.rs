//! What ships in deploy/: the Prometheus alert rules and their unit tests (promtool), the
//! Prometheus and Alertmanager configurations, and a real Prometheus scraping a real daemon
//! with those rules loaded.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{Daemon, ffmpeg, media, prometheus::Prometheus, run, tempdir};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn check(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (cargo xtask test installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The alerts `deploy/prometheus/rules.yml` defines: every check below counts them, so one
/// lost in an edit fails the suite.
const ALERTS: usize = 14;

#[test]
fn alert_rules_pass_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let text = check(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(dir.join("rules.yml")),
    );
    assert!(
        text.contains(&format!("SUCCESS: {ALERTS} rules found")),
        "{text}"
    );
    let text = check(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(dir.join("tests/rules.test.yml")),
    );
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_test_a_summary_a_description_and_a_runbook() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/rules.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy().join("prometheus/tests/rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), ALERTS);
    for a in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {a}\n        exp_alerts:\n          - exp_labels"
            )),
            "{a} has no test that expects it to fire"
        );
    }
    for key in ["summary:", "description:", "runbook:"] {
        assert_eq!(
            rules.matches(key).count(),
            alerts.len(),
            "every alert has a {key}"
        );
    }
}

#[test]
fn prometheus_and_alertmanager_configs_are_valid() {
    let dir = deploy().join("prometheus");
    check(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(dir.join("prometheus.yml")),
    );
    check(
        Command::new("amtool")
            .arg("check-config")
            .arg(dir.join("alertmanager.yml")),
    );
}

/// A real Prometheus scrapes a real daemon, with the shipped rules loaded: the pipeline's
/// counts arrive as the daemon reports them, and every rule evaluates without error.
#[test]
fn a_real_prometheus_scrapes_the_daemon_with_the_rules_loaded() {
    let d = Daemon::start(&[]);
    let dir = tempdir("prometheus");
    let rules = std::fs::read_to_string(deploy().join("prometheus/rules.yml")).unwrap();
    let prom = Prometheus::start(&dir, d.port, &rules);
    let input = media::h264_aac_mp4();
    let (pid, _) = run(ffmpeg()
        .args(["-threads", "1", "-i"])
        .arg(&input)
        .args(["-f", "null", "-"]));
    let s = d.wait_ended(pid);
    let want = s.expect(
        "media_frames_total",
        &[
            ("pid", &pid.to_string()),
            ("direction", "decode"),
            ("codec", "h264"),
        ],
    );
    let q = format!(
        "media_frames_total{{job=\"observer\",pid=\"{pid}\",direction=\"decode\",codec=\"h264\"}}"
    );
    let t0 = Instant::now();
    loop {
        let r = prom.query(&q);
        let got = r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok());
        if got == Some(want) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "Prometheus has {got:?}, the daemon {want}: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every query of every shipped dashboard is valid PromQL to this Prometheus, and names
    // only metrics the daemon exports (or documents: GPU series need a GPU).
    let readme = std::fs::read_to_string(deploy().join("../README.md")).unwrap();
    let stream = s
        .one(
            "media_frames_total",
            &[
                ("pid", &pid.to_string()),
                ("direction", "decode"),
                ("codec", "h264"),
            ],
        )
        .and_then(|x| x.label("stream").cloned())
        .unwrap();
    let mut queries = 0;
    for entry in std::fs::read_dir(deploy().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in d["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let q = expr
                    .replace("$instance", ".*")
                    .replace("$stream", &stream)
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "1h");
                let r = prom.query(&q);
                assert_eq!(r["status"], "success", "{}: {q}: {r}", path.display());
                queries += 1;
                for name in q
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("media_") || w.starts_with("observer_"))
                {
                    let base = name
                        .trim_end_matches("_bucket")
                        .trim_end_matches("_sum")
                        .trim_end_matches("_count");
                    assert!(
                        s.all(base).next().is_some() || readme.contains(&format!("`{base}")),
                        "{}: {name} is neither exported nor documented",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(queries > 40, "{queries} dashboard queries");
    // Every rule has been evaluated, none failed, and nothing fires on a healthy node.
    let t0 = Instant::now();
    loop {
        let v = prom.api("/api/v1/rules", &[]);
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), ALERTS);
        let evaluated = rules.iter().all(|r| r["health"] == "ok");
        if evaluated {
            for r in &rules {
                assert_eq!(r["state"], "inactive", "{r}");
            }
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "rules not all evaluated ok: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The capabilities the systemd unit grants, as setpriv names them (`+bpf,+perfmon,...`),
/// less any this test process itself lacks (a sandbox may withhold CAP_SYS_RESOURCE).
fn unit_capabilities() -> (Vec<String>, Vec<String>) {
    let unit = std::fs::read_to_string(deploy().join("systemd/observer.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    let bit = |name: &str| match name {
        "dac_read_search" => 2,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("unexpected capability {other} in the unit"),
    };
    caps.into_iter()
        .partition(|c| bounding & (1 << bit(c)) != 0)
}

/// setpriv's capability list granting exactly `caps`: `-all,+cap_a,+cap_b`.
fn inheritable<'a>(caps: impl IntoIterator<Item = &'a String>) -> String {
    let granted: Vec<String> = caps.into_iter().map(|c| format!("+{c}")).collect();
    format!("-all,{}", granted.join(","))
}

/// Runs the daemon with only `caps`; returns its attached files and frames counted for a
/// pipeline, once ready.
fn with_capabilities(caps: &[String]) -> (f64, f64) {
    let set = inheritable(caps);
    let bin = std::env::var("OBSERVER_BIN").expect("run through cargo xtask test");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("setpriv")
        .arg(format!("--bounding-set={set}"))
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--gpu", "false"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv (util-linux)");
    let get = |path: &str| -> Option<String> {
        let mut r = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
            .call()
            .ok()?;
        r.body_mut().read_to_string().ok()
    };
    let t0 = Instant::now();
    while get("/readyz").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "daemon not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (pid, _) = run(ffmpeg()
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=25",
            "-frames:v",
            "20",
        ])
        .args(["-c:v", "mpeg4", "-f", "null", "-"]));
    std::thread::sleep(Duration::from_secs(2));
    let s = observer_tests::Scrape::parse(&get("/metrics").unwrap());
    let _ = child.kill();
    let _ = child.wait();
    let frames = s
        .value(
            "media_frames_total",
            &[("pid", &pid.to_string()), ("direction", "encode")],
        )
        .unwrap_or(0.0);
    (
        s.value("observer_attached_files", &[]).unwrap_or(0.0),
        frames,
    )
}

#[test]
fn the_systemd_units_capabilities_are_enough_and_each_missing_one_is_named() {
    let (caps, withheld) = unit_capabilities();
    eprintln!("capabilities: {caps:?}; not held by this test, so not granted: {withheld:?}");
    let (attached, frames) = with_capabilities(&caps);
    assert!(attached >= 1.0, "attached {attached} files");
    assert_eq!(frames, 20.0, "the pipeline's frames are counted");
    // The unit grants what the daemon's own table says it needs, on any kernel.
    let mut granted: Vec<String> = caps.iter().chain(&withheld).cloned().collect();
    let mut needed: Vec<String> = observer::privilege::NEEDS
        .iter()
        .map(|n| n.name.trim_start_matches("CAP_").to_lowercase())
        .collect();
    granted.sort();
    needed.sort();
    assert_eq!(
        granted, needed,
        "the unit's capabilities and observer::privilege::NEEDS"
    );
    // Each capability this kernel needs, taken away: the daemon refuses to start and names
    // it (CAP_SYS_RESOURCE only matters before Linux 5.11).
    let bin = std::env::var("OBSERVER_BIN").expect("run through cargo xtask test");
    for cap in caps.iter().filter(|c| *c != "sys_resource") {
        let set = caps
            .iter()
            .map(|c| format!("{}{c}", if c == cap { '-' } else { '+' }))
            .collect::<Vec<_>>()
            .join(",");
        let set = format!("-all,{set}");
        let mut child = Command::new("setpriv")
            .arg(format!("--bounding-set={set}"))
            .arg(format!("--inh-caps={set}"))
            .arg(format!("--ambient-caps={set}"))
            .arg(&bin)
            .args(["--listen", "127.0.0.1:0", "--gpu", "false"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux)");
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("the daemon kept running without CAP_{}", cap.to_uppercase());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = format!("CAP_{}", cap.to_uppercase());
        assert_eq!(out.status.code(), Some(1), "without {name}: {stderr}");
        assert!(
            stderr.contains(&format!("missing {name} (to ")),
            "without {name}: {stderr}"
        );
    } // Why CAP_SYS_ADMIN is in the table although CAP_PERFMON should cover uprobes: this
    // kernel refuses a uprobe perf event without it. tests/c/uprobe_open.c opens one the way
    // aya attaches a uprobe.
    if caps.iter().any(|c| c == "sys_admin") {
        let dir = tempdir("uprobe-open");
        let prog = dir.join("uprobe_open");
        run(Command::new("gcc")
            .args(["-O1", "-o"])
            .arg(&prog)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("c/uprobe_open.c")));
        let open = |caps: &[&String]| {
            let set = inheritable(caps.iter().copied());
            Command::new("setpriv")
                .arg(format!("--bounding-set={set}"))
                .arg(format!("--inh-caps={set}"))
                .arg(format!("--ambient-caps={set}"))
                .arg(&prog)
                .arg(&bin)
                .arg("0x1000")
                .output()
                .expect("setpriv (util-linux)")
        };
        let all: Vec<&String> = caps.iter().collect();
        let out = open(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let without: Vec<&String> = caps.iter().filter(|c| *c != "sys_admin").collect();
        let out = open(&without);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "Permission denied",
            "a uprobe without CAP_SYS_ADMIN"
        );
    }
}

#[test]
fn the_systemd_unit_is_valid() {
    let dir = tempdir("systemd");
    let bin = std::env::var("OBSERVER_BIN").expect("run through cargo xtask test");
    let unit = std::fs::read_to_string(deploy().join("systemd/observer.service"))
        .unwrap()
        .replace("/usr/local/bin/observer", &bin);
    let path = dir.join("observer.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

/// `python3` with one of the tools `cargo xtask test` installed from PyPI (each in a
/// directory of its own, with its own dependencies) on its path.
fn python(tool: &str) -> Command {
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", observer_tests::assets().join(tool));
    c
}

#[test]
fn the_compose_stack_follows_the_compose_spec_and_its_files_exist() {
    let compose = deploy().join("compose");
    check(
        python("check-jsonschema")
            .args([
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
            ])
            .arg(compose.join("compose.yaml")),
    );
    // Every file it mounts from the repository is there (tls/, the secured scrape's, is made
    // by make-certs.sh: the secure tests run it).
    let text = std::fs::read_to_string(compose.join("compose.yaml")).unwrap();
    let mut mounts = 0;
    for l in text.lines() {
        let Some(src) = l
            .trim()
            .strip_prefix("- ./")
            .map(|s| format!("./{s}"))
            .or_else(|| l.trim().strip_prefix("- ../").map(|s| format!("../{s}")))
        else {
            continue;
        };
        let path = src.split(':').next().unwrap();
        if path == "./tls" {
            assert!(compose.join("make-certs.sh").exists());
            mounts += 1;
            continue;
        }
        assert!(
            compose.join(path).exists(),
            "compose mounts {path}, which is missing"
        );
        mounts += 1;
    }
    assert!(mounts >= 6, "{mounts} mounts");
    // Its Prometheus configuration, with the rules where the stack mounts them and the
    // certificates make-certs.sh makes.
    let dir = tempdir("compose-prometheus");
    let tls = dir.join("tls");
    check(
        Command::new("sh")
            .arg(compose.join("make-certs.sh"))
            .arg(&tls),
    );
    std::fs::write(
        dir.join("prometheus.yml"),
        std::fs::read_to_string(compose.join("prometheus.yml"))
            .unwrap()
            .replace("/etc/prometheus/tls/", &format!("{}/", tls.display())),
    )
    .unwrap();
    std::fs::copy(deploy().join("prometheus/rules.yml"), dir.join("rules.yml")).unwrap();
    check(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(dir.join("prometheus.yml")),
    );
}

/// The manifests as Kubernetes would get them: rendered by `kubectl kustomize` where kubectl
/// is installed, else the base's resource files as listed in its kustomization (the
/// privileged and secure overlays need kustomize's patching, so they are rendered only with
/// kubectl).
fn rendered() -> Vec<(String, String)> {
    let k8s = deploy().join("kubernetes");
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok()
    {
        return ["", "privileged", "secure"]
            .iter()
            .map(|dir| {
                let text = check(Command::new("kubectl").arg("kustomize").arg(k8s.join(dir)));
                (format!("kubectl kustomize deploy/kubernetes/{dir}"), text)
            })
            .collect();
    }
    eprintln!("no kubectl here: validating the base's files as its kustomization lists them");
    let base = k8s.join("base");
    let list = std::fs::read_to_string(base.join("kustomization.yaml")).unwrap();
    let files: Vec<&str> = list
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    assert!(!files.is_empty());
    let text = files
        .iter()
        .map(|f| std::fs::read_to_string(base.join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    vec![("deploy/kubernetes/base".into(), text)]
}

/// The secure overlay's example web configuration is one the daemon loads once its
/// placeholders are filled, with cert-manager's file names, and refuses as shipped.
#[test]
fn the_secure_overlays_web_configuration_loads_once_filled_in() {
    let shipped = std::fs::read_to_string(deploy().join("kubernetes/secure/web.yml")).unwrap();
    let dir = tempdir("secure-web-config");
    let pki = observer_tests::tls::Pki::new(&dir);
    for (from, to) in [("server.crt", "tls.crt"), ("server.key", "tls.key")] {
        std::fs::copy(pki.path(from), dir.join(to)).unwrap();
    }
    let as_shipped = dir.join("shipped.yml");
    std::fs::write(
        &as_shipped,
        shipped.replace("/etc/observer/tls/", &format!("{}/", dir.display())),
    )
    .unwrap();
    let err = observer::web::load(&as_shipped).unwrap_err().to_string();
    assert!(err.contains("not a bcrypt hash"), "{err}");
    let filled = dir.join("web.yml");
    std::fs::write(
        &filled,
        shipped
            .replace("/etc/observer/tls/", &format!("{}/", dir.display()))
            .replace(
                "REPLACE-WITH-A-BCRYPT-HASH",
                &format!("'{}'", observer_tests::tls::htpasswd_hash("x")),
            ),
    )
    .unwrap();
    let (settings, files) = observer::web::load(&filled).unwrap();
    assert!(settings.tls.is_some());
    assert_eq!(settings.users.len(), 2);
    assert_eq!(
        files.len(),
        4,
        "the file, tls.crt, tls.key, ca.crt: {files:?}"
    );
}

#[test]
fn kubernetes_manifests_render_and_pass_the_kubernetes_schemas() {
    let dir = tempdir("k8s");
    for (what, text) in rendered() {
        let file = dir.join("rendered.yaml");
        std::fs::write(&file, &text).unwrap();
        // Strict: unknown fields are errors. The PodMonitor is a CRD the schemas do not
        // carry; it is checked below against the DaemonSet instead.
        let out = check(
            python("kubernetes-validate")
                .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
                .arg(&file),
        );
        for kind in [
            "namespace",
            "serviceaccount",
            "clusterrole",
            "clusterrolebinding",
            "daemonset",
        ] {
            assert!(
                out.contains(&format!("passed for resource {kind}/observer")),
                "{what}: {kind} not validated:\n{out}"
            );
        }
        // The parts that must agree with each other, read as data.
        let json = check(
            python("kubernetes-validate")
                .args([
                    "-c",
                    "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
                ])
                .arg(&file),
        );
        let docs: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        let pod = &ds["spec"]["template"];
        let spec = &pod["spec"];
        assert_eq!(spec["hostPID"], true, "{what}");
        assert_eq!(spec["tolerations"][0]["operator"], "Exists", "{what}");
        let c = &spec["containers"][0];
        let web_config = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|a| a.as_str()?.strip_prefix("--web-config-file="));
        if let Some(web_config) = web_config {
            // Secured: the probes ask through the daemon's own client, with the mounted
            // certificate and the probe's password, files the volumes hold.
            let mounts: Vec<(&str, &str)> = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap(),
                        m["mountPath"].as_str().unwrap(),
                    )
                })
                .collect();
            let mounted = |path: &str| mounts.iter().any(|(_, m)| path.starts_with(m));
            assert!(mounted(web_config), "{what}: {web_config} not mounted");
            for (probe, ready) in [("livenessProbe", false), ("readinessProbe", true)] {
                let cmd: Vec<&str> = c[probe]["exec"]["command"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{what}: {probe} is not an exec probe"))
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(cmd[..2], ["/usr/local/bin/observer", "health"], "{what}");
                assert_eq!(cmd.contains(&"--ready"), ready, "{what}: {probe}");
                assert!(cmd.contains(&"--url=https://localhost:9464"), "{what}");
                for file in cmd
                    .iter()
                    .filter_map(|a| a.split_once("-file=").map(|x| x.1))
                {
                    assert!(mounted(file), "{what}: {probe} reads {file}, not mounted");
                }
            }
            let secrets: Vec<&str> = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["secret"]["secretName"].as_str())
                .collect();
            assert_eq!(secrets, ["observer-web-config", "observer-tls"], "{what}");
            assert_eq!(
                pod["metadata"]["annotations"]["prometheus.io/scheme"],
                "https"
            );
            let pm = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
            let ep = &pm["spec"]["podMetricsEndpoints"][0];
            assert_eq!(ep["scheme"], "https", "{what}");
            assert!(
                ep["tlsConfig"]["cert"]["secret"]["name"].is_string(),
                "{what}"
            );
            assert!(ep["basicAuth"]["password"]["name"].is_string(), "{what}");
        } else {
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        }
        assert!(c["resources"]["limits"]["memory"].is_string());
        let sc = &c["securityContext"];
        if sc["privileged"] != true {
            // The same set the systemd unit grants and the capability test proves.
            let unit = std::fs::read_to_string(deploy().join("systemd/observer.service")).unwrap();
            let mut want: Vec<String> = unit
                .lines()
                .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
                .unwrap()
                .split_whitespace()
                .map(|c| c.trim_start_matches("CAP_").to_string())
                .collect();
            let mut got: Vec<String> = sc["capabilities"]["add"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{what}: DaemonSet and systemd unit capabilities");
            assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        }
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        let port = c["ports"][0]["name"].as_str().unwrap();
        let pm = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
        assert_eq!(
            pm["spec"]["selector"]["matchLabels"],
            pod["metadata"]["labels"]
        );
        assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], port);
        let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
        for rule in role["rules"].as_array().unwrap() {
            for verb in rule["verbs"].as_array().unwrap() {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                    "read-only RBAC: {rule}"
                );
            }
        }
    }
}
