//! The `/metrics` families as OTLP metrics (`--otlp-metrics`): the same names, labels as
//! attributes, counters as cumulative monotonic sums, gauges as gauges, histograms with their
//! explicit bounds. Sent every `--otlp-metrics-interval` over the configured transport.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use prometheus::proto::{MetricFamily, MetricType};
use prost::Message as _;

use super::{Signal, Stats};
use crate::{config::OtlpProtocol, state::SharedState};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn string(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

/// The SDK resource's attributes, as protocol messages.
fn resource(res: &opentelemetry_sdk::Resource) -> Resource {
    Resource {
        attributes: res
            .iter()
            .map(|(k, v)| string(k.as_str(), &v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// One export request with every family; `start_ns` is when the counters started (the
/// daemon's start).
pub fn request(
    families: &[MetricFamily],
    res: &opentelemetry_sdk::Resource,
    start_ns: u64,
    now_ns: u64,
) -> ExportMetricsServiceRequest {
    let mut metrics = Vec::with_capacity(families.len());
    for f in families {
        let attrs = |m: &prometheus::proto::Metric| -> Vec<KeyValue> {
            m.get_label()
                .iter()
                .map(|l| string(l.name(), l.value()))
                .collect()
        };
        let number = |m: &prometheus::proto::Metric, v: f64| NumberDataPoint {
            attributes: attrs(m),
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let data = match f.get_field_type() {
            MetricType::COUNTER => Data::Sum(Sum {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| number(m, m.get_counter().get_value()))
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            MetricType::HISTOGRAM => Data::Histogram(Histogram {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| {
                        let h = m.get_histogram();
                        // Prometheus buckets are cumulative with upper bounds; OTLP wants a
                        // count per bucket and one more bucket above the last bound.
                        let mut bounds = Vec::new();
                        let mut counts = Vec::new();
                        let mut below = 0;
                        for b in h.get_bucket() {
                            bounds.push(b.upper_bound());
                            counts.push(b.cumulative_count().saturating_sub(below));
                            below = b.cumulative_count();
                        }
                        counts.push(h.get_sample_count().saturating_sub(below));
                        HistogramDataPoint {
                            attributes: attrs(m),
                            start_time_unix_nano: start_ns,
                            time_unix_nano: now_ns,
                            count: h.get_sample_count(),
                            sum: Some(h.get_sample_sum()),
                            bucket_counts: counts,
                            explicit_bounds: bounds,
                            ..Default::default()
                        }
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            _ => Data::Gauge(Gauge {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| number(m, m.get_gauge().get_value()))
                    .collect(),
            }),
        };
        metrics.push(Metric {
            name: f.name().to_string(),
            description: f.help().to_string(),
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(res)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "observer".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Data points in a request: what the exported and dropped counts count.
fn points(req: &ExportMetricsServiceRequest) -> u64 {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        } as u64)
        .sum()
}

enum Transport {
    Grpc(MetricsServiceClient<tonic::transport::Channel>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

/// `OTEL_EXPORTER_OTLP_METRICS_HEADERS` (or `OTEL_EXPORTER_OTLP_HEADERS`), as gRPC metadata.
fn metadata(headers: &[(String, String)]) -> tonic::metadata::MetadataMap {
    let mut m = tonic::metadata::MetadataMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse(),
        ) {
            m.append(k, v);
        }
    }
    m
}

impl Transport {
    async fn send(
        &mut self,
        req: ExportMetricsServiceRequest,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        match self {
            Transport::Grpc(c) => {
                let mut r = tonic::Request::new(req);
                *r.metadata_mut() = metadata(headers);
                c.export(r).await.map(drop).map_err(|e| e.to_string())
            }
            Transport::Http { client, url } => {
                let mut r = client.post(url.as_str());
                for (k, v) in headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                let r = r
                    .header("content-type", "application/x-protobuf")
                    .body(req.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", r.status()))
                }
            }
        }
    }
}

pub struct Settings {
    pub base: String,
    pub protocol: OtlpProtocol,
    pub interval: Duration,
    pub timeout: Duration,
    pub resource: opentelemetry_sdk::Resource,
}

/// Starts the periodic export; runs inside the Tokio runtime.
pub fn start(
    s: Settings,
    shared: SharedState,
    stats: Arc<Stats>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut transport = match s.protocol {
        OtlpProtocol::Grpc => Transport::Grpc(MetricsServiceClient::new(
            super::transport::grpc_channel(&s.base, Signal::Metrics, s.timeout)
                .map_err(|e| e.to_string())?,
        )),
        OtlpProtocol::HttpProtobuf => Transport::Http {
            client: super::transport::http_client(&s.base, Signal::Metrics, s.timeout)
                .map_err(|e| e.to_string())?,
            url: format!("{}/v1/metrics", s.base),
        },
    };
    let headers = super::transport::headers(Signal::Metrics);
    let start_ns = now_ns();
    Ok(tokio::spawn(async move {
        let st = stats.of(Signal::Metrics);
        let mut tick = tokio::time::interval(s.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let families = match shared.lock() {
                Ok(g) => crate::metrics::families(&g),
                Err(_) => continue,
            };
            let req = request(&families, &s.resource, start_ns, now_ns());
            let n = points(&req);
            let sent = match tokio::time::timeout(s.timeout, transport.send(req, &headers)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer in {:?}", s.timeout)),
            };
            match sent {
                Ok(()) => {
                    st.exported.fetch_add(n, Ordering::Relaxed);
                    failing = false;
                }
                Err(e) => {
                    st.dropped.fetch_add(n, Ordering::Relaxed);
                    st.failed_requests.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(signal = "metrics", error = %e,
                            "OTLP metrics export failed; retrying every interval");
                    }
                }
            }
        }
    }))
}
