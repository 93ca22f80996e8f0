//! The collector's one error type; each variant knows its HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong in the collector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No `Authorization: Bearer ...` header, or a malformed one.
    #[error("missing or malformed bearer token")]
    Unauthorized,
    /// Reads need the collector's read token (`Bearer`, or `Basic` with it as the password).
    #[error("reading needs the collector's read token")]
    ReadUnauthorized,
    /// The token is valid for no run, or for another run than the one in the URL.
    #[error("token not valid for run {0:?}")]
    Forbidden(String),
    /// The run is not registered.
    #[error("unknown run {0:?}")]
    UnknownRun(String),
    /// `POST /v1/runs` for a run that already exists.
    #[error("run {0:?} is already registered")]
    RunExists(String),
    /// Registration is closed (`--no-register`): tokens come from the configuration only.
    #[error("registration is closed on this collector; configure a token for run {0:?}")]
    RegistrationClosed(String),
    /// A run id that is not 1 to 128 characters of `[A-Za-z0-9._-]`.
    #[error("invalid run id {0:?}: expected 1 to 128 characters of A-Z a-z 0-9 . _ -")]
    BadRunId(String),
    /// The body is not the JSON expected.
    #[error("invalid request body: {0}")]
    BadJson(String),
    /// An event failed validation; the whole batch is refused.
    #[error("event {index} refused: {source}")]
    BadEvent {
        /// Position of the event in the batch.
        index: usize,
        /// What is wrong with it.
        source: tg_watch::EventError,
    },
    /// The batch holds more events than allowed.
    #[error("batch of {0} events is larger than the limit of {1}")]
    BatchTooLarge(usize, usize),
    /// The SQLite store failed; nothing was acknowledged.
    #[error("storage failed at {path}: {source}")]
    Storage {
        /// The database file.
        path: String,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The commit a batch shared with batches that arrived at the same time failed (group
    /// commit); nothing in it was acknowledged. The first of them gets [`Error::Storage`].
    #[error("storage failed at {path}: {message}")]
    SharedCommit {
        /// The database file.
        path: String,
        /// The SQLite error, as text.
        message: String,
    },
    /// A stored row could not be decoded.
    #[error("stored {what} {id} is corrupt: {source}")]
    Corrupt {
        /// `event` or `incident`.
        what: &'static str,
        /// Its row id.
        id: i64,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Listening on the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    /// The webhook URL is not `http://host:port/path`.
    #[error("invalid webhook url {0:?}: expected http://HOST:PORT/PATH")]
    BadWebhook(String),
    /// The detector thresholds are out of range.
    #[error(transparent)]
    Thresholds(#[from] tg_watch::ThresholdError),
    /// A worker task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized | Error::ReadUnauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::RegistrationClosed(_) => StatusCode::FORBIDDEN,
            Error::UnknownRun(_) => StatusCode::NOT_FOUND,
            Error::RunExists(_) => StatusCode::CONFLICT,
            Error::BadRunId(_) | Error::BadJson(_) | Error::BadEvent { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::BatchTooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Storage { .. }
            | Error::SharedCommit { .. }
            | Error::Corrupt { .. }
            | Error::Bind { .. }
            | Error::Serve(_)
            | Error::BadWebhook(_)
            | Error::Thresholds(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (status, axum::Json(body)).into_response();
        let challenge = match self {
            Error::Unauthorized => Some("Bearer"),
            // Basic lets a browser ask for the token (as the password) to show the dashboard.
            Error::ReadUnauthorized => Some("Basic realm=\"trainguard\", Bearer"),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
