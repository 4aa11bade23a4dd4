//! A `/metrics` scrape, parsed with prometheus-parse into something tests can query.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The value; for a histogram its sample count.
    pub value: f64,
    /// Histogram buckets: (upper bound, cumulative count).
    pub buckets: Vec<(f64, f64)>,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&String> {
        self.labels.get(k)
    }

    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|x| x == v))
    }
}

#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("unparsable /metrics ({e}):\n{text}"));
        let samples = parsed
            .samples
            .into_iter()
            .map(|s| {
                let labels: BTreeMap<String, String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let (value, buckets) = match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => (v, Vec::new()),
                    prometheus_parse::Value::Histogram(b) => {
                        let b: Vec<(f64, f64)> = b.iter().map(|h| (h.less_than, h.count)).collect();
                        (b.last().map_or(0.0, |x| x.1), b)
                    }
                    prometheus_parse::Value::Summary(_) => (f64::NAN, Vec::new()),
                };
                Sample {
                    name: s.metric,
                    labels,
                    value,
                    buckets,
                }
            })
            .collect();
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Sample> + 'a {
        let name = name.to_string();
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The one sample of `name` with these labels; panics if there are several.
    pub fn one(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        let found: Vec<&Sample> = self.all(name).filter(|s| s.has(labels)).collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} series:\n{found:#?}",
            found.len()
        );
        found.first().copied()
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.one(name, labels).map(|s| s.value)
    }

    /// The value of the one series of `name` with these labels; panics, showing the scrape, if
    /// there is none.
    pub fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} for {labels:?}\n{}", self.text))
    }

    /// Asserts each `(metric, expected value)` for the series with these labels.
    pub fn assert_values(&self, labels: &[(&str, &str)], want: &[(&str, u64)]) {
        for (name, v) in want {
            assert_eq!(self.expect(name, labels), *v as f64, "{name} of {labels:?}");
        }
    }

    /// Whether a file whose path contains `path_part` is attached.
    pub fn attached(&self, path_part: &str) -> bool {
        self.all("observer_attached_file_info")
            .any(|x| x.label("path").is_some_and(|p| p.contains(path_part)))
    }

    /// Sum over every series of `name` with these labels.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.all(name)
            .filter(|s| s.has(labels))
            .map(|s| s.value)
            .sum()
    }
}
