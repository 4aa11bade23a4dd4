//! A real Prometheus (Debian's package) for the tests: scrapes one daemon every second and
//! evaluates the given rules every second; stopped when dropped.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

pub struct Prometheus {
    child: Child,
    pub port: u16,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (config, rules and data go there), scraping the daemon on
    /// `daemon_port` with `rules` (a rule file's text) loaded.
    pub fn start(dir: &Path, daemon_port: u16, rules: &str) -> Prometheus {
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        Prometheus::start_config(
            dir,
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yml]\nscrape_configs:\n  - job_name: observer\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{daemon_port}']\n"
            ),
        )
    }

    /// Starts Prometheus in `dir` with this configuration file's text.
    pub fn start_config(dir: &Path, config: &str) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (cargo xtask test installs it)");
        Prometheus { child, port }
    }

    /// A GET of Prometheus' HTTP API, as JSON.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let mut req = ureq::get(&format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut r = req.call().expect("Prometheus API");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// The health (`up`, `down`, `unknown`) and last error of the job's first target, as
    /// Prometheus' targets page shows them.
    /// None while Prometheus is still starting.
    pub fn target(&self, job: &str) -> Option<(String, String)> {
        let mut r = ureq::get(&format!(
            "http://127.0.0.1:{}/api/v1/targets?state=active",
            self.port
        ))
        .call()
        .ok()?;
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        v["data"]["activeTargets"]
            .as_array()?
            .iter()
            .find(|t| t["labels"]["job"] == job)
            .map(|t| {
                (
                    t["health"].as_str().unwrap_or("").to_string(),
                    t["lastError"].as_str().unwrap_or("").to_string(),
                )
            })
    }

    /// An instant query.
    pub fn query(&self, q: &str) -> serde_json::Value {
        self.api("/api/v1/query", &[("query", q)])
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
