//! [`JsonBody`]: axum's `Json` with our error format. The body is buffered
//! under the router's `DefaultBodyLimit` (413 `BodyTooLarge` over it) and
//! parsed with `serde_json`, so a malformed body gets the parser's message
//! and position as an [`ApiError`].

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// A JSON request body of type `T` (any content type is accepted).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// The whole body, under the router's `DefaultBodyLimit`.
pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: state.config().max_body_bytes,
            }
        } else {
            ApiError::invalid(format!("cannot read the request body: {}", rejection.body_text()))
        }
    })
}

/// Parse a whole body as `T`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::from_json(&e))
}
