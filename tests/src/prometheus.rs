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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yml]\nscrape_configs:\n  - job_name: observer\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{daemon_port}']\n"
            ),
        )
        .unwrap();
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
