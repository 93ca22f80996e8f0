//! The HTTP surface: [`router`] builds it without a socket (tests drive it with
//! `tower::ServiceExt::oneshot`); [`serve`] runs it on a listener.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::collector::{Collector, now_unix_s};
use crate::error::Error;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The collector's routes:
///
/// - `POST /v1/runs` `{"run": "ID"}` (or `{}` for a fresh id) → `201 {"run", "token"}`
/// - `GET /v1/runs` → the runs with their counts
/// - `POST /v1/runs/{run}/events` with `Authorization: Bearer TOKEN` and a
///   [`tg_watch::Batch`] → `200 {"accepted": N}` once stored durably
/// - `GET /v1/runs/{run}/incidents` → the run's incidents (JSON array, oldest first)
/// - `GET /v1/runs/{run}/ranks` → per-rank state
/// - `GET /metrics` → Prometheus text format
/// - `GET /` (optionally `?run=ID`) → the dashboard
/// - `GET /healthz` → `ok`
///
/// With a read token configured, every `GET` but `/healthz` needs it.
pub fn router(collector: Collector) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/runs", get(list_runs).post(register))
        .route("/v1/runs/{run}/events", post(ingest))
        .route("/v1/runs/{run}/incidents", get(incidents))
        .route("/v1/runs/{run}/ranks", get(ranks))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(collector)
}

/// Serve on `listener` until Ctrl-C or SIGTERM, with the background tasks (heartbeat ticker,
/// webhook) running.
pub async fn serve(listener: tokio::net::TcpListener, collector: Collector) -> Result<(), Error> {
    collector.spawn_background();
    axum::serve(listener, router(collector))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(Error::Serve)
}

/// Bind `listen`, call `on_listening` with the bound address (the port is chosen by the system
/// for port 0), and [`serve`] on a runtime of its own until Ctrl-C or SIGTERM.
pub fn serve_blocking(
    listen: &str,
    collector: Collector,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let bind = |source| Error::Bind {
            addr: listen.to_string(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        on_listening(listener.local_addr().map_err(bind)?);
        serve(listener, collector).await
    })
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The token of a read: `Bearer TOKEN`, or `Basic` with the token as the password (what a
/// browser sends after the collector's challenge).
fn read_token(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    if let Some(token) = bearer(headers) {
        return Some(token);
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

fn authorize_read(c: &Collector, headers: &HeaderMap) -> Result<(), Error> {
    c.authorize_read(read_token(headers).as_deref())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    #[serde(default)]
    run: Option<String>,
}

async fn register(State(c): State<Collector>, body: Bytes) -> Result<Response, Error> {
    let request: RegisterRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterRequest { run: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::BadJson(e.to_string()))?
    };
    let (run, token) = blocking(move || c.register(request.run)).await?;
    let body = serde_json::json!({ "run": run, "token": token });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn ingest(
    State(c): State<Collector>,
    Path(run): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let token = bearer(&headers);
    let accepted = blocking(move || c.ingest(&run, token.as_deref(), &body)).await?;
    Ok(axum::Json(serde_json::json!({ "accepted": accepted })).into_response())
}

async fn list_runs(State(c): State<Collector>, headers: HeaderMap) -> Result<Response, Error> {
    authorize_read(&c, &headers)?;
    let runs = blocking(move || c.runs()).await?;
    Ok(axum::Json(runs).into_response())
}

async fn incidents(
    State(c): State<Collector>,
    Path(run): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    authorize_read(&c, &headers)?;
    let incidents = blocking(move || c.incidents(&run)).await?;
    Ok(axum::Json(incidents).into_response())
}

async fn ranks(
    State(c): State<Collector>,
    Path(run): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    authorize_read(&c, &headers)?;
    let ranks = blocking(move || c.ranks(&run)).await?;
    Ok(axum::Json(ranks).into_response())
}

async fn metrics(State(c): State<Collector>, headers: HeaderMap) -> Result<Response, Error> {
    authorize_read(&c, &headers)?;
    let text = c.metrics(now_unix_s());
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

#[derive(Debug, serde::Deserialize)]
struct DashboardQuery {
    run: Option<String>,
}

async fn dashboard(
    State(c): State<Collector>,
    Query(q): Query<DashboardQuery>,
    headers: HeaderMap,
) -> Result<Html<String>, Error> {
    authorize_read(&c, &headers)?;
    let page = blocking(move || c.dashboard(q.run.as_deref(), now_unix_s())).await?;
    Ok(Html(page))
}
