//! A small JSON client of the daemon's API, for seeding.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Largest answer read (the registry's answers here are a few KiB).
const MAX_ANSWER_BYTES: usize = 16 << 20;

pub struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub fn new(base: String) -> Api {
        Api {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, _, bytes) = self
            .raw(
                method,
                path,
                &[("content-type", "application/json")],
                body.map(|b| Bytes::from(b.to_string())),
            )
            .await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// One request with the given headers and body; the status, headers and whole body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        let uri: hyper::Uri = format!("{}{path}", self.base)
            .parse()
            .with_context(|| format!("{}{path} is not a URL", self.base))?;
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self
            .client
            .request(builder.body(Full::new(body.unwrap_or_default()))?)
            .await
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let (parts, body) = response.into_parts();
        let bytes = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading {method} {path}: {e}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }

    /// Like [`Api::call`], failing on any status but 2xx and `also_ok`.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        also_ok: &[StatusCode],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        anyhow::ensure!(
            status.is_success() || also_ok.contains(&status),
            "{method} {path} answered {status}: {value}"
        );
        Ok((status, value))
    }
}
