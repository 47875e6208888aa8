//! `export_users`: exports the `users` table to a CSV or JSON file in chunks, reporting
//! progress and honouring cancellation; and the route that hands the file to its owner.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use forge::prelude::*;
use forge_gateway::auth::Auth;
use forge_gateway::error::ApiError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::settings;

/// Rows read and written per chunk: between two chunks the job reports progress and checks
/// for a cancel.
const CHUNK: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ExportFormat {
    Csv,
    Json,
}

impl ExportFormat {
    fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
        }
    }
}

/// What a finished export gives its owner.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExportResult {
    /// Where the file is, for a plain link: only the user who started the export gets it
    /// (the page's download cookie says who follows the link).
    pub download_url: String,
    /// Rows exported (the header line not counted).
    pub rows: u32,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
struct UserRow {
    id: i32,
    name: String,
    email: String,
    country: String,
    plan: String,
    signed_up: chrono::NaiveDate,
}

/// Exports every user to a file, `CHUNK` rows at a time.
#[forge::job(max_attempts = 3, timeout = "10m", backoff = "1s")]
pub(crate) async fn export_users(ctx: &JobContext, format: ExportFormat) -> Result<ExportResult> {
    let dir = settings::get().exports_dir();
    tokio::fs::create_dir_all(&dir).await?;
    let path = export_path(&dir, ctx.job_id(), format);
    // Written under another name and renamed at the end, so a download never sees half a file
    // (a retry after a crash starts it again).
    let partial = path.with_extension("partial");
    match write_export(ctx, format, &partial).await {
        Ok(rows) => {
            tokio::fs::rename(&partial, &path).await?;
            Ok(ExportResult {
                download_url: format!("/downloads/{}.{}", ctx.job_id(), format.extension()),
                rows,
            })
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e)
        }
    }
}

async fn write_export(ctx: &JobContext, format: ExportFormat, path: &Path) -> Result<u32> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(ctx.db())
        .await?;
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(path).await?);
    out.write_all(match format {
        ExportFormat::Csv => b"id,name,email,country,plan,signed_up\n".as_slice(),
        ExportFormat::Json => b"[\n",
    })
    .await?;
    let mut done: i64 = 0;
    let mut last_id = 0;
    loop {
        ctx.check_cancelled().await?;
        let rows: Vec<UserRow> = sqlx::query_as(
            "SELECT id, name, email, country, plan, signed_up FROM users \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(last_id)
        .bind(CHUNK)
        .fetch_all(ctx.db())
        .await?;
        let Some(last) = rows.last() else { break };
        last_id = last.id;
        let mut buf = Vec::with_capacity(rows.len() * 96);
        for (i, row) in rows.iter().enumerate() {
            match format {
                ExportFormat::Csv => csv_line(&mut buf, row),
                ExportFormat::Json => {
                    if done > 0 || i > 0 {
                        buf.extend_from_slice(b",\n");
                    }
                    serde_json::to_writer(&mut buf, row)?;
                }
            }
        }
        out.write_all(&buf).await?;
        done += rows.len() as i64;
        let percent = (done as f64 * 100.0 / total.max(1) as f64).min(100.0);
        ctx.progress(percent, format!("Processing row {done}..."))
            .await?;
        tokio::time::sleep(settings::get().export_chunk_delay).await;
    }
    if format == ExportFormat::Json {
        out.write_all(b"\n]\n").await?;
    }
    out.flush().await?;
    out.get_mut().sync_all().await?;
    u32::try_from(done).map_err(Error::fatal)
}

fn csv_line(buf: &mut Vec<u8>, row: &UserRow) {
    let fields = [
        row.id.to_string(),
        csv_field(&row.name),
        csv_field(&row.email),
        csv_field(&row.country),
        csv_field(&row.plan),
        row.signed_up.to_string(),
    ];
    buf.extend_from_slice(fields.join(",").as_bytes());
    buf.push(b'\n');
}

/// RFC 4180 quoting, only where needed.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn export_path(dir: &Path, job_id: Uuid, format: ExportFormat) -> PathBuf {
    dir.join(format!("{job_id}.{}", format.extension()))
}

/// The cookie that lets a plain `<a href={downloadUrl}>` download: set on sign-in, sent only
/// with requests under `/downloads`, never readable by the page's scripts.
const COOKIE: &str = "forge_demo_downloads";

/// What the download routes need.
#[derive(Clone)]
pub(crate) struct Downloads {
    pub(crate) forge: Forge,
    pub(crate) auth: Auth,
}

/// `POST /downloads/session` with `Authorization: Bearer <token>`: sets the download cookie to
/// that token until it expires (the page calls it right after signing in). `DELETE` clears it.
///
/// A cookie rather than a signed URL: `output.downloadUrl` is stored with the job and shown
/// again after any reload, so a link that expires would break, and one that does not would
/// open the file for anyone it reaches. The cookie keeps the stored URL plain and the check
/// where it belongs: whoever follows the link must be the export's owner. `HttpOnly` keeps it
/// from scripts, `SameSite=Strict` from other sites, `Path=/downloads` from every other route.
pub(crate) async fn set_cookie(State(d): State<Downloads>, headers: HeaderMap) -> Response {
    let token = match bearer(&headers) {
        Some(token) => token,
        None => return ApiError::unauthenticated("sign in first").into_response(),
    };
    let identity = match d.auth.verify(token) {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    let max_age = identity
        .expires_at
        .duration_since(SystemTime::now())
        .map_or(0, |left| left.as_secs());
    cookie_response(&format!(
        "{COOKIE}={token}; Path=/downloads; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    ))
}

/// `DELETE /downloads/session`: signing out clears the download cookie.
pub(crate) async fn clear_cookie() -> Response {
    cookie_response(&format!(
        "{COOKIE}=; Path=/downloads; Max-Age=0; HttpOnly; SameSite=Strict"
    ))
}

fn cookie_response(cookie: &str) -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cookie.to_string())],
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The download cookie's token, if the request carries one.
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|token| !token.is_empty())
}

/// `GET /downloads/{jobId}.{csv|json}`: the file of a completed export, for the user who
/// started it, identified by the download cookie (a plain link) or by `Authorization: Bearer`
/// (a script). Anyone else gets the same 404 as for an unknown id, so ids cannot be probed.
pub(crate) async fn download(
    State(d): State<Downloads>,
    UrlPath(file): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let user = match (bearer(&headers), cookie_token(&headers)) {
        (Some(token), _) | (None, Some(token)) => d.auth.verify(token).map(|i| i.user_id),
        (None, None) => Err(ApiError::unauthenticated("sign in to download exports")),
    };
    let user = match user {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let Some((job_id, format)) = parse_file_name(&file) else {
        return not_found();
    };
    let job = match d.forge.job(job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return not_found(),
        Err(e) => return ApiError::internal(format_args!("reading a job: {e}")).into_response(),
    };
    let owned = job.owner.as_deref() == Some(user.as_str());
    if !owned || job.function_name != "export_users" || job.status != JobStatus::Completed {
        return not_found();
    }
    let path = export_path(&settings::get().exports_dir(), job_id, format);
    // Exports are a few MB: read whole, which keeps the answer simple.
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return not_found(),
        Err(e) => {
            return ApiError::internal(format_args!("opening an export: {e}")).into_response()
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"users-{job_id}.{}\"",
                    format.extension()
                ),
            ),
        ],
        Body::from(bytes),
    )
        .into_response()
}

/// `"<uuid>.csv"` → the job id and the format.
fn parse_file_name(file: &str) -> Option<(Uuid, ExportFormat)> {
    let (id, extension) = file.rsplit_once('.')?;
    let format = match extension {
        "csv" => ExportFormat::Csv,
        "json" => ExportFormat::Json,
        _ => return None,
    };
    Some((Uuid::parse_str(id).ok()?, format))
}

fn not_found() -> Response {
    ApiError::not_found("no such export").into_response()
}
