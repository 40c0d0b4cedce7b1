//! The Open Service Broker error body, and reading request bodies with a cap.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError, web};
use futures::StreamExt;
use serde_json::json;

/// The largest request body accepted: OSB bodies are small.
pub const MAX_BODY: usize = 64 * 1024;

/// An error as OSB returns it: `{"error": "...", "description": "..."}`.
#[derive(Debug, thiserror::Error)]
#[error("{status} {description}")]
pub struct OsbError {
    pub status: StatusCode,
    pub error: Option<&'static str>,
    pub description: String,
}

impl OsbError {
    pub fn new(status: StatusCode, description: impl Into<String>) -> Self {
        Self { status, error: None, description: description.into() }
    }

    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, description)
    }

    pub fn code(mut self, error: &'static str) -> Self {
        self.error = Some(error);
        self
    }

    /// A failure of ours, logged here where it is handled; the caller gets no details.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the broker's log")
    }
}

impl ResponseError for OsbError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "description": self.description });
        if let Some(e) = self.error {
            body["error"] = json!(e);
        }
        HttpResponse::build(self.status).json(body)
    }
}

/// Reads the body, refusing more than [`MAX_BODY`] bytes with a 413 OSB error.
pub async fn read_body(mut payload: web::Payload) -> Result<web::Bytes, OsbError> {
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| OsbError::bad_request(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(OsbError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {MAX_BODY} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Parses a JSON body into `T`, with a 400 that says what is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OsbError> {
    if body.is_empty() {
        return Err(OsbError::bad_request("a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| OsbError::bad_request(format!("malformed JSON body: {e}")))
}
