//! The processor's JSON API: `GET /api/reports?sender=&kind=&limit=`,
//! `GET /api/online`, `GET /api/stats`.

use crate::link::LinkStats;
use crate::sql::SqlProcessor;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone)]
struct Api {
    db: SqlProcessor,
    stats: Arc<LinkStats>,
}

#[derive(Deserialize)]
struct ReportQuery {
    sender: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
}

type ApiResult = Result<Json<serde_json::Value>, (StatusCode, String)>;

fn internal(e: anyhow::Error) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

async fn reports(State(api): State<Api>, Query(q): Query<ReportQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = api
        .db
        .reports(
            q.sender.as_deref().filter(|s| !s.is_empty()),
            q.kind.as_deref().filter(|s| !s.is_empty()),
            limit,
        )
        .await
        .map_err(internal)?;
    Ok(Json(serde_json::json!(rows)))
}

async fn online(State(api): State<Api>) -> ApiResult {
    Ok(Json(serde_json::json!(api
        .db
        .online()
        .await
        .map_err(internal)?)))
}

async fn stats_handler(State(api): State<Api>) -> ApiResult {
    Ok(Json(serde_json::json!({
        "connected": api.stats.connected.load(Ordering::Relaxed),
        "connections": api.stats.connections.load(Ordering::Relaxed),
        "processed": api.stats.processed.load(Ordering::Relaxed),
        "failed": api.stats.failed.load(Ordering::Relaxed),
        "reports": api.db.report_count().await.map_err(internal)?,
        "online": api.db.online().await.map_err(internal)?.len(),
    })))
}

pub fn router(db: SqlProcessor, stats: Arc<LinkStats>) -> Router {
    Router::new()
        .route("/api/reports", get(reports))
        .route("/api/online", get(online))
        .route("/api/stats", get(stats_handler))
        .with_state(Api { db, stats })
}

/// Serves the API on `addr` until the process ends.
pub async fn serve(addr: &str, db: SqlProcessor, stats: Arc<LinkStats>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "HTTP API listening");
    serve_on(listener, db, stats).await
}

/// Serves the API on a listener bound by the caller (a test binds port 0,
/// so no other process can take the port between choosing and binding).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    db: SqlProcessor,
    stats: Arc<LinkStats>,
) -> anyhow::Result<()> {
    axum::serve(listener, router(db, stats)).await?;
    Ok(())
}
