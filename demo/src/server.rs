//! The demo backends: HTTP/1.1 servers on loopback, one role each.
//!
//! | route | role | answer |
//! |---|---|---|
//! | `GET /health` | both | `{"status": "ok", "role", "instance"}` (what the `http-health` checker asks) |
//! | `POST /forecast` | forecast | body `{"symbol"?: "ACME", "horizon"?: 7}` → the forecast by the model the mesh sent (`x-evolve-model` / `x-evolve-model-version` headers, else the `evolve_model` field), with `x-evolve-outcome: mae=…; mape=…` from the holdout backtest |
//! | `POST /analysis` | analysis | body `{"symbol"?: "ACME", "window"?: 250, "risk_free_rate"?: 0.0}` → returns, volatility, max drawdown, Sharpe |
//! | `GET /symbols` | both | the bundled symbols and their date ranges |
//!
//! Every answer carries `x-demo-instance`. Bad bodies get `400 {"error": {"code", "message"}}`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::analysis::analyse;
use crate::data::{Series, next_weekday};
use crate::forecast::{self, HOLDOUT, MAX_HORIZON, backtest, method_for};

/// A response; boxed as an early-return error so results stay small.
type Answer = Response<Full<Bytes>>;

/// Largest request body a backend reads.
const MAX_BODY_BYTES: usize = 64 << 10;

/// The symbol used when a request names none.
pub const DEFAULT_SYMBOL: &str = "ACME";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Forecast,
    Analysis,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Forecast => "forecast",
            Role::Analysis => "analysis",
        }
    }
}

/// One backend's identity and data.
#[derive(Debug)]
pub struct Backend {
    pub role: Role,
    pub instance: String,
    pub data: Arc<BTreeMap<String, Series>>,
}

/// Serves `backend` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, backend: Arc<Backend>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let backend = Arc::clone(&backend);
                async move { Ok::<_, Infallible>(handle(&backend, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` (a clear error when it is taken).
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for {what}: {e}; is another demo running?")
    })
}

async fn handle(backend: &Backend, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut response = route(backend, request).await;
    if let Ok(value) = HeaderValue::from_str(&backend.instance) {
        response.headers_mut().insert("x-demo-instance", value);
    }
    response
}

async fn route(backend: &Backend, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.as_str(), backend.role) {
        (Method::GET, "/health", role) => json_response(
            StatusCode::OK,
            &json!({"status": "ok", "role": role.as_str(), "instance": backend.instance}),
        ),
        (Method::GET, "/symbols", _) => json_response(StatusCode::OK, &symbols(backend)),
        (Method::POST | Method::GET, "/forecast", Role::Forecast) => {
            let headers = request.headers().clone();
            match read_json(request).await {
                Ok(body) => forecast_answer(backend, &headers, &body),
                Err(response) => response,
            }
        }
        (Method::POST | Method::GET, "/analysis", Role::Analysis) => match read_json(request).await
        {
            Ok(body) => analysis_answer(backend, &body),
            Err(response) => response,
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "this {} backend serves GET /health, GET /symbols and POST /{}",
                backend.role.as_str(),
                backend.role.as_str()
            ),
        ),
    }
}

fn symbols(backend: &Backend) -> Value {
    let symbols: Vec<Value> = backend
        .data
        .values()
        .map(|s| {
            json!({
                "symbol": s.symbol,
                "closes": s.closes.len(),
                "from": s.dates.first(),
                "to": s.dates.last(),
            })
        })
        .collect();
    json!({ "symbols": symbols })
}

/// The body as a JSON object; an empty body is `{}`.
async fn read_json(request: Request<Incoming>) -> Result<Value, Response<Full<Bytes>>> {
    let bytes = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("bodies are limited to {MAX_BODY_BYTES} bytes"),
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object",
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not JSON: {e}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct ForecastRequest {
    #[serde(default = "default_symbol")]
    symbol: String,
    #[serde(default = "default_horizon")]
    horizon: usize,
    #[serde(default)]
    evolve_model: Option<ModelField>,
}

#[derive(Debug, Deserialize)]
struct ModelField {
    name: String,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    source: Option<String>,
}

fn default_symbol() -> String {
    DEFAULT_SYMBOL.into()
}

fn default_horizon() -> usize {
    7
}

/// Fields the mesh or the client add that a backend ignores, besides its own.
fn parse<T: for<'de> Deserialize<'de>>(body: &Value) -> Result<T, Box<Answer>> {
    serde_json::from_value(body.clone()).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body does not fit: {e}"),
        ))
    })
}

fn series<'a>(backend: &'a Backend, symbol: &str) -> Result<&'a Series, Box<Answer>> {
    backend.data.get(symbol).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "unknown_symbol",
            format!(
                "symbol {symbol:?} is not in the bundled data; known: {}",
                backend.data.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    })
}

fn forecast_answer(
    backend: &Backend,
    headers: &hyper::HeaderMap,
    body: &Value,
) -> Response<Full<Bytes>> {
    let request: ForecastRequest = match parse(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    if !(1..=MAX_HORIZON).contains(&request.horizon) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("horizon: {} is outside 1-{MAX_HORIZON}", request.horizon),
        );
    }
    let series = match series(backend, &request.symbol) {
        Ok(series) => series,
        Err(response) => return *response,
    };
    // The header wins over the body field (the mesh sends both for JSON bodies).
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (model, version, source) = match header("x-evolve-model") {
        Some(name) => (
            Some(name.to_string()),
            header("x-evolve-model-version").and_then(|v| v.parse().ok()),
            header("x-evolve-model-source").map(str::to_string),
        ),
        None => match request.evolve_model {
            Some(field) => (Some(field.name), field.version, field.source),
            None => (None, None, None),
        },
    };
    let (method, fallback) = method_for(model.as_deref(), version);
    let (values, test) = match (
        forecast::forecast(&series.closes, method, request.horizon),
        backtest(&series.closes, method, HOLDOUT),
    ) {
        (Ok(values), Ok(test)) => (values, test),
        (Err(e), _) | (_, Err(e)) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "too_short", e.to_string());
        }
    };
    let mut date = series.dates.last().copied().unwrap_or_default();
    let points: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            date = next_weekday(date);
            json!({"step": i + 1, "date": date, "value": round(*value, 4)})
        })
        .collect();
    let answer = json!({
        "symbol": series.symbol,
        "instance": backend.instance,
        "model": model.as_ref().map(|name| json!({"name": name, "version": version, "source": source})),
        "fallback": fallback,
        "method": method.describe(),
        "horizon": request.horizon,
        "last": {"date": series.dates.last(), "close": series.closes.last()},
        "forecast": points,
        "backtest": {"holdout": test.holdout, "mae": round(test.mae, 6), "mape": round(test.mape, 6)},
    });
    let mut response = json_response(StatusCode::OK, &answer);
    let outcome = format!("mae={:.6}; mape={:.6}", test.mae, test.mape);
    if let Ok(value) = HeaderValue::from_str(&outcome) {
        response.headers_mut().insert("x-evolve-outcome", value);
    }
    response
}

#[derive(Debug, Deserialize)]
struct AnalysisRequest {
    #[serde(default = "default_symbol")]
    symbol: String,
    /// The last this-many closes (all when absent).
    #[serde(default)]
    window: Option<usize>,
    #[serde(default)]
    risk_free_rate: f64,
}

fn analysis_answer(backend: &Backend, body: &Value) -> Response<Full<Bytes>> {
    let request: AnalysisRequest = match parse(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let series = match series(backend, &request.symbol) {
        Ok(series) => series,
        Err(response) => return *response,
    };
    let window = request.window.unwrap_or(series.closes.len());
    if !(3..=series.closes.len()).contains(&window) || !request.risk_free_rate.is_finite() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "window must be 3-{} closes and risk_free_rate a finite number",
                series.closes.len()
            ),
        );
    }
    let start = series.closes.len() - window;
    let closes = &series.closes[start..];
    let Some(figures) = analyse(closes, request.risk_free_rate) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_short",
            "at least 3 closes are needed",
        );
    };
    let dd = figures.max_drawdown;
    json_response(
        StatusCode::OK,
        &json!({
            "symbol": series.symbol,
            "instance": backend.instance,
            "window": window,
            "from": series.dates[start],
            "to": series.dates.last(),
            "total_return": round(figures.total_return, 6),
            "mean_daily_return": round(figures.mean_daily_return, 8),
            "volatility_annualised": round(figures.volatility_annualised, 6),
            "max_drawdown": {
                "value": round(dd.value, 6),
                "peak_date": series.dates[start + dd.peak],
                "trough_date": series.dates[start + dd.trough],
            },
            "sharpe_ratio": round(figures.sharpe_ratio, 6),
            "risk_free_rate": request.risk_free_rate,
        }),
    )
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message.into()}}),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hyper::Method;
    use serde_json::{Value, json};

    use super::*;
    use crate::client::Api;
    use crate::data;
    use crate::forecast::Method as Forecast;

    async fn start(role: Role) -> (Api, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Arc::new(Backend {
            role,
            instance: "t1".into(),
            data: Arc::new(data::parse(data::BUNDLED_CSV).unwrap()),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, backend, stopped));
        (Api::new(format!("http://{addr}")), stop)
    }

    fn outcome(headers: &hyper::HeaderMap) -> (f64, f64) {
        let text = headers["x-evolve-outcome"].to_str().unwrap();
        let mut values = text.split("; ").map(|kv| {
            let (_, v) = kv.split_once('=').unwrap();
            v.parse::<f64>().unwrap()
        });
        (values.next().unwrap(), values.next().unwrap())
    }

    #[tokio::test]
    async fn the_forecast_follows_the_model_header_over_the_field_and_reports_its_backtest() {
        let (api, _stop) = start(Role::Forecast).await;
        let acme = data::parse(data::BUNDLED_CSV).unwrap()["ACME"]
            .closes
            .clone();
        let body = json!({"horizon": 3, "evolve_model": {"name": "ses", "version": 1}});
        let (status, headers, bytes) = api
            .raw(
                Method::POST,
                "/forecast",
                &[
                    ("content-type", "application/json"),
                    ("x-evolve-model", "linear-trend"),
                ],
                Some(Bytes::from(body.to_string())),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-demo-instance"], "t1");
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["method"], "linear trend over the last 60 closes");
        let method = Forecast::LinearTrend { window: 60 };
        let expected = backtest(&acme, method, HOLDOUT).unwrap();
        let (mae, mape) = outcome(&headers);
        assert!((mae - expected.mae).abs() < 1e-6 && (mape - expected.mape).abs() < 1e-6);
        let values = forecast::forecast(&acme, method, 3).unwrap();
        assert_eq!(answer["forecast"][2]["value"], json!(round(values[2], 4)));

        // Without the header, the JSON field decides.
        let (_, answer) = api
            .call(Method::POST, "/forecast", Some(&body))
            .await
            .unwrap();
        assert_eq!(answer["method"], "simple exponential smoothing, alpha 0.5");
        assert_eq!(answer["model"]["version"], 1);
        assert_eq!(answer["fallback"], Value::Null);
    }

    #[tokio::test]
    async fn analysis_answers_the_figures_of_its_window() {
        let (api, _stop) = start(Role::Analysis).await;
        let (status, answer) = api
            .call(
                Method::POST,
                "/analysis",
                Some(&json!({"symbol": "GLOBEX", "window": 100})),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let closes = &data::parse(data::BUNDLED_CSV).unwrap()["GLOBEX"].closes;
        let expected = analyse(&closes[closes.len() - 100..], 0.0).unwrap();
        assert_eq!(answer["window"], 100);
        assert_eq!(
            answer["sharpe_ratio"],
            json!(round(expected.sharpe_ratio, 6))
        );
        assert_eq!(
            answer["max_drawdown"]["value"],
            json!(round(expected.max_drawdown.value, 6))
        );
    }

    #[tokio::test]
    async fn bad_requests_get_specific_errors() {
        let (api, _stop) = start(Role::Forecast).await;
        let code = |answer: &Value| answer["error"]["code"].as_str().unwrap_or("").to_string();
        let (status, _, bytes) = api
            .raw(
                Method::POST,
                "/forecast",
                &[],
                Some(Bytes::from_static(b"{nope")),
            )
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (status, code(&answer).as_str()),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );
        let (status, answer) = api
            .call(Method::POST, "/forecast", Some(&json!({"horizon": 0})))
            .await
            .unwrap();
        assert_eq!(
            (status, code(&answer).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        let (status, answer) = api
            .call(Method::POST, "/forecast", Some(&json!({"symbol": "AAPL"})))
            .await
            .unwrap();
        assert_eq!(
            (status, code(&answer).as_str()),
            (StatusCode::NOT_FOUND, "unknown_symbol")
        );
        let (status, _) = api.call(Method::POST, "/analysis", None).await.unwrap();
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "a forecast backend serves no analysis"
        );
        let big = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
        let (status, _, _) = api
            .raw(Method::POST, "/forecast", &[], Some(big))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, answer) = api.call(Method::GET, "/health", None).await.unwrap();
        assert_eq!(
            (status, &answer["role"]),
            (StatusCode::OK, &json!("forecast"))
        );
    }
}
