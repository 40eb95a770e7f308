//! How request bodies, queries and paths are read: size limits, and extractor errors turned into
//! problem documents that name the field (so no handler sees a raw serde or actix error).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
use actix_web::web;
use futures_util::Stream;
use std::future::Future;

use crate::error::ApiError;

/// Body limit for JSON requests (batches of notifications need room).
pub const JSON_LIMIT: usize = 4 * 1024 * 1024;
/// Body limit for handlers that read raw bytes (the SMTP test).
pub const BYTES_LIMIT: usize = 256 * 1024;

pub fn payload_config() -> web::PayloadConfig {
    web::PayloadConfig::new(BYTES_LIMIT)
}

/// The body limit that applies to `path`, for the 413 answer.
pub fn body_limit(path: &str) -> usize {
    if path == "/settings/smtp/test" {
        BYTES_LIMIT
    } else {
        JSON_LIMIT
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(JSON_LIMIT)
        .error_handler(|err, _req| json_error(err).into())
}

pub fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("send the body as JSON with Content-Type: application/json".into())
        }
        // Type errors inside fields are collected per field; this is a body of the wrong shape.
        // The serde message is not echoed: it can quote the submitted values.
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::field(
            "body",
            "invalid_type",
            "the body must be a JSON object with the documented fields",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::BadRequest {
            code: "malformed_json",
            detail: format!(
                "the body is not valid JSON ({} at line {}, column {})",
                if e.is_eof() {
                    "unexpected end"
                } else {
                    "syntax error"
                },
                e.line(),
                e.column()
            ),
        },
        JsonPayloadError::Payload(e) => payload_error(e),
        _ => invalid_body(),
    }
}

fn invalid_body() -> ApiError {
    ApiError::BadRequest {
        code: "invalid_body",
        detail: "the request body could not be read".into(),
    }
}

/// A body that could not be read: 408 when it came too slowly ([`Deadline`]).
pub fn payload_error(e: PayloadError) -> ApiError {
    match e {
        PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ApiError::RequestTimeout {
            secs: io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<TooSlow>())
                .map_or(0, |slow| slow.0.as_secs()),
        },
        PayloadError::Overflow => ApiError::PayloadTooLarge { limit: BYTES_LIMIT },
        _ => invalid_body(),
    }
}

/// A request body that must have arrived within a bound from the end of the headers: a client
/// that sends one byte now and then would otherwise hold a connection and its buffers forever.
pub struct Deadline {
    inner: Payload,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Debug)]
struct TooSlow(Duration);

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within {} s", self.0.as_secs())
    }
}

impl std::error::Error for TooSlow {}

impl Deadline {
    pub fn new(inner: Payload, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl Stream for Deadline {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let slow = TooSlow(self.limit);
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    slow,
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let detail = match &err {
            QueryPayloadError::Deserialize(e) => e.to_string(),
            _ => "invalid query string".to_string(),
        };
        ApiError::field(
            "query",
            "invalid_query",
            format!("the query string is invalid: {detail}"),
        )
        .into()
    })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_err: PathError, req| {
        ApiError::NotFound(format!("no resource at {}", req.path())).into()
    })
}
