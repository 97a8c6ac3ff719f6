//! A minimal client of the daemon's API for CLI commands.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ApiArgs;

/// Largest API answer the CLI reads; far above any real one, it only stops a wrong `--api` URL
/// from streaming forever into memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Sends a request and returns the status and parsed JSON body.
pub async fn call(
    api: &ApiArgs,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("--api {} does not form a valid URL", api.api))?;
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = &api.token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let payload = match body {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(Full::new(payload))
        .context("building the request")?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.with_context(|| {
        format!(
            "cannot reach the daemon at {}; is `evolve serve` running? (set --api or EVOLVE_API)",
            api.api
        )
    })?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the daemon's answer: {e}"))?
        .to_bytes();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .with_context(|| format!("the daemon answered {status} with a body that is not JSON"))?
    };
    Ok((status, value))
}

/// Like [`call`], but a non-2xx answer becomes an error carrying the API's message.
pub async fn call_ok(
    api: &ApiArgs,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let (status, value) = call(api, method, path, body).await?;
    if !status.is_success() {
        bail!("{}", error_text(status, &value));
    }
    Ok(value)
}

/// `STATUS CODE: message` of an API error answer.
pub fn error_text(status: StatusCode, value: &Value) -> String {
    let message = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)");
    let code = value
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("error");
    format!("{status} {code}: {message}")
}
