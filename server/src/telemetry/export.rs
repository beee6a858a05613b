//! The OTLP exporter: finished spans go into the SDK's batch processor (a
//! bounded queue and its own thread; a full queue drops spans, a request
//! never waits), through the secrets filter ([`Scrubbed`]), to a collector
//! over gRPC (tonic) or HTTP/protobuf (our reqwest client), plain or TLS.
//!
//! The `OTEL_EXPORTER_OTLP_*` environment variables the SDK reads
//! (headers, compression) apply where the `otlp_*` keys say nothing.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use avap_hostfns::redact::url as redact_url;
use axum::body::Bytes;
use opentelemetry::{KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter};
use serde::{Deserialize, Serialize};

use super::redact;

/// Finished spans waiting for the exporter; more are dropped.
const QUEUE: usize = 4096;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How long a span waits for companions before its batch is sent.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// One export request, connection included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a collector's answer read over HTTP (it is a small protobuf).
const MAX_ANSWER: usize = 64 * 1024;

/// How spans travel to the collector (`otlp_protocol`; the values of
/// `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, usually port 4317.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies posted to `{endpoint}/v1/traces`, usually port 4318.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Where spans go and how.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// The collector's base URL, without a trailing `/`.
    base: String,
    protocol: OtlpProtocol,
    /// A PEM CA bundle to trust instead of the webpki roots (`otlp_ca_file`).
    ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            OtlpProtocol::Grpc => write!(f, "{} (gRPC)", redact_url(&self.base)),
            OtlpProtocol::HttpProtobuf => write!(f, "{}/v1/traces", redact_url(&self.base)),
        }
    }
}

impl OtlpEndpoint {
    /// The `otlp_endpoint` setting (`http://` or `https://` base URL); the
    /// error says what is wrong with it.
    pub fn parse(url: &str, protocol: OtlpProtocol, ca_pem: Option<Vec<u8>>) -> Result<OtlpEndpoint, String> {
        let example = match protocol {
            OtlpProtocol::Grpc => "http://127.0.0.1:4317",
            OtlpProtocol::HttpProtobuf => "http://127.0.0.1:4318",
        };
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e}); give one such as {example}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("not an http:// or https:// URL such as {example}"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("name a host (and port), as in {example}"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(
                "no user or password in the URL: pass credentials as headers in OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
            );
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err("no query string or fragment: give the collector's base URL".to_owned());
        }
        if protocol == OtlpProtocol::Grpc && parsed.path() != "/" {
            return Err(format!(
                "a gRPC endpoint has no path: give scheme, host and port, as in {example}"
            ));
        }
        if ca_pem.is_some() && parsed.scheme() != "https" {
            return Err("otlp_ca_file is set but the endpoint is not https://".to_owned());
        }
        Ok(OtlpEndpoint {
            base: url.trim_end_matches('/').to_owned(),
            protocol,
            ca_pem,
        })
    }

    fn is_tls(&self) -> bool {
        self.base.starts_with("https://")
    }
}

/// The batch processor that exports to `endpoint`. Call inside a Tokio
/// runtime: the gRPC channel and the HTTP client live on it.
pub(super) fn processor(endpoint: &OtlpEndpoint) -> Result<BatchSpanProcessor, String> {
    let cannot = |e: &dyn fmt::Display| format!("cannot set up the OTLP exporter for {endpoint}: {e}");
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| cannot(&e))?;
    let exporter = match endpoint.protocol {
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.base.clone())
                .with_timeout(EXPORT_TIMEOUT);
            if endpoint.is_tls() {
                let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
                if let Some(pem) = &endpoint.ca_pem {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            // tonic connects lazily, on the runtime entered here.
            let _entered = runtime.enter();
            builder.build().map_err(|e| cannot(&e))?
        }
        OtlpProtocol::HttpProtobuf => {
            let mut client = crate::http_client::async_builder(EXPORT_TIMEOUT);
            if let Some(pem) = &endpoint.ca_pem {
                let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| cannot(&e))?;
                client = roots
                    .into_iter()
                    .fold(client, reqwest::ClientBuilder::add_root_certificate);
            }
            let client = OtlpHttpClient {
                client: client.timeout(EXPORT_TIMEOUT).build().map_err(|e| cannot(&e))?,
                runtime,
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.base))
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(EXPORT_TIMEOUT)
                .with_http_client(client)
                .build()
                .map_err(|e| cannot(&e))?
        }
    };
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_max_export_batch_size(MAX_BATCH)
        .with_scheduled_delay(FLUSH_EVERY)
        .build();
    Ok(
        BatchSpanProcessor::builder(Scrubbed::new(exporter, endpoint.to_string()))
            .with_batch_config(batches)
            .build(),
    )
}

/// An exporter behind the secrets filter: a span's name, attributes and
/// events are filtered on their way out ([`redact`]); failures are logged
/// once per outage, not per batch.
#[derive(Debug)]
pub(super) struct Scrubbed<E> {
    inner: E,
    /// The collector as logs show it.
    shown: String,
    failing: AtomicBool,
}

impl<E> Scrubbed<E> {
    pub(super) fn new(inner: E, shown: String) -> Scrubbed<E> {
        Scrubbed {
            inner,
            shown,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Scrubbed<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &mut batch {
            if let std::borrow::Cow::Owned(name) = redact::scrub(&span.name) {
                span.name = name.into();
            }
            scrub_all(&mut span.attributes);
            for event in &mut span.events.events {
                scrub_all(&mut event.attributes);
            }
        }
        let count = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.shown, "sending spans again");
            }
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(
                    endpoint = %self.shown,
                    dropped = count,
                    "cannot send spans to the OTLP collector: {e}; spans are dropped until it answers"
                );
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Secret-named attributes lose their value; text values are scrubbed.
fn scrub_all(attributes: &mut [KeyValue]) {
    for kv in attributes {
        if redact::is_sensitive(kv.key.as_str()) {
            kv.value = Value::from(redact::REDACTED);
        } else if let Value::String(text) = &kv.value
            && let std::borrow::Cow::Owned(shown) = redact::field_text(kv.key.as_str(), text.as_str())
        {
            kv.value = Value::from(shown);
        }
    }
}

/// OTLP/HTTP through the server's reqwest client. The batch thread is not
/// a Tokio thread, so each request is spawned on the runtime.
#[derive(Debug)]
struct OtlpHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: axum::http::Request<Bytes>,
    ) -> Result<axum::http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let exchange = async move {
            let mut response = client.execute(request).await?;
            let mut answer = axum::http::Response::builder().status(response.status());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(headers) = answer.headers_mut() {
                *headers = std::mem::take(response.headers_mut());
            }
            Ok::<_, opentelemetry_http::HttpError>(answer.body(Bytes::from(body))?)
        };
        self.runtime.spawn(exchange).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let http = |u: &str| OtlpEndpoint::parse(u, OtlpProtocol::HttpProtobuf, None);
        let grpc = |u: &str| OtlpEndpoint::parse(u, OtlpProtocol::Grpc, None);
        assert_eq!(
            http("http://127.0.0.1:4318/").unwrap().to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http("https://collector.example/otlp").unwrap().to_string(),
            "https://collector.example/otlp/v1/traces"
        );
        assert_eq!(
            grpc("https://collector:4317").unwrap().to_string(),
            "https://collector:4317 (gRPC)"
        );
        assert!(grpc("http://collector:4317/v1").unwrap_err().contains("no path"));
        assert!(http("ftp://collector").unwrap_err().contains("http://"));
        assert!(http("collector:4318").unwrap_err().contains("http"));
        assert!(
            http("http://u:p@collector:4318")
                .unwrap_err()
                .contains("OTEL_EXPORTER_OTLP_HEADERS")
        );
        assert!(http("http://collector:4318/?a=b").unwrap_err().contains("query"));
        let ca = Some(b"pem".to_vec());
        assert!(
            OtlpEndpoint::parse("http://c:4318", OtlpProtocol::HttpProtobuf, ca)
                .unwrap_err()
                .contains("https")
        );
    }

    #[test]
    fn attributes_are_filtered() {
        let mut attributes = vec![
            KeyValue::new("api_key", "avap_0123abcd_s3cret"),
            KeyValue::new("url.full", "https://u:pw@example.com/?token=abc"),
            KeyValue::new("count", 3),
        ];
        scrub_all(&mut attributes);
        assert_eq!(attributes[0].value, Value::from(redact::REDACTED));
        let shown = attributes[1].value.as_str();
        assert!(!shown.contains("pw@") && !shown.contains("abc"), "{shown}");
        assert_eq!(attributes[2].value, Value::from(3));
    }
}
