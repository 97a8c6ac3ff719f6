//! A minimal client of the daemon's API for CLI commands.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ApiArgs;
use super::render::print_json;

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
    let response = send(api, method, path, body).await?;
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

/// One request to the daemon (with the token, and `body` as JSON); the response, body unread.
async fn send(
    api: &ApiArgs,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("--api {} does not form a valid URL", api.api))?;
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = bearer_token(api)? {
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
    client.request(request).await.with_context(|| {
        format!(
            "cannot reach the daemon at {}; is `evolve serve` running? (set --api or EVOLVE_API)",
            api.api
        )
    })
}

/// The token to present: `--token` / EVOLVE_TOKEN, else `--token-file` / EVOLVE_TOKEN_FILE,
/// else EVOLVE_AUTH_TOKEN.
fn bearer_token(api: &ApiArgs) -> anyhow::Result<Option<String>> {
    if let Some(token) = api.token.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(token.clone()));
    }
    if let Some(path) = &api.token_file {
        return read_token_file(path).map(Some);
    }
    Ok(std::env::var("EVOLVE_AUTH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty()))
}

/// Longest token file read: a token is a line; this only stops a wrong path from being read.
const MAX_TOKEN_FILE_BYTES: u64 = 64 << 10;

fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the token file {} has mode {mode:o}, so its group or others may read it: run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        bail!(
            "the token file {} is larger than a token file can be",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    match text.lines().map(str::trim).find(|line| !line.is_empty()) {
        Some(token) => Ok(token.to_string()),
        None => bail!("the token file {} is empty", path.display()),
    }
}

/// Longest line [`follow_lines`] accepts: far above any event, it only stops a wrong `--api` URL
/// from growing one line forever.
const MAX_LINE_BYTES: usize = 1 << 20;

/// `GET path` whose answer is a stream of lines (`GET /v1/events?follow=true`): `on_line` gets
/// each one as it arrives, until it returns `false` or the daemon ends the stream.
pub async fn follow_lines(
    api: &ApiArgs,
    path: &str,
    mut on_line: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let response = send(api, Method::GET, path, None).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the daemon's answer: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        bail!("{}", error_text(status, &value));
    }
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the daemon's stream: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if !on_line(String::from_utf8_lossy(&line[..end]).as_ref()) {
                return Ok(());
            }
        }
        if pending.len() > MAX_LINE_BYTES {
            bail!("the daemon sent a line longer than {MAX_LINE_BYTES} bytes; is --api right?");
        }
    }
    Ok(())
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

/// Like [`call_ok`], for the commands whose `--json` output is the answer as it came: with
/// `--json` it is printed here and `None` returned, else the caller renders it as text.
pub async fn call_for_text(
    api: &ApiArgs,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Option<Value>> {
    let value = call_ok(api, method, path, body).await?;
    if api.json {
        print_json(&value)?;
        return Ok(None);
    }
    Ok(Some(value))
}

/// `?k=v&…` of the pairs that have a value (empty when none has), each value percent-encoded.
pub fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// `text` safe as a query string value: every byte but `A-Za-z0-9 . _ -` escaped (`~` too,
/// which RFC 3986 would allow bare: the stricter set costs nothing and the daemon decodes both).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query_string(&[
                ("since", Some("2026-01-01T00:00:00+01:00".into())),
                ("tag", None)
            ]),
            "?since=2026-01-01T00%3A00%3A00%2B01%3A00"
        );
        assert_eq!(query_string(&[("tag", None)]), "");
        assert_eq!(
            percent_encode("Az09._-~ /&=é"),
            "Az09._-%7E%20%2F%26%3D%C3%A9"
        );
    }
}
