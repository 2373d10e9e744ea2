//! Whether a failed attempt is worth another: decided on the code an arrowport receiver names
//! (`arrowport-error-code`, or REST's `error.code`), else on the gRPC or HTTP status; the pause between attempts.

use super::*;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`] (a 503's Retry-After wins when given).
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why an attempt failed: worth another attempt or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A transient failure; `after` is how long the remote asked to wait.
    Transient {
        message: String,
        after: Option<Duration>,
    },
    Permanent(String),
}

impl Failure {
    pub(super) fn transient(message: impl Into<String>) -> Failure {
        Failure::Transient { message: message.into(), after: None }
    }
}

/// A gRPC status as a failure: the remote's message, transient where a retry can succeed.
pub(super) fn status_failure(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let message =
        if status.message().is_empty() { format!("{:?}", status.code()) } else { status.message().to_string() };
    let text = format!("the remote refused the request ({:?}): {message}", status.code());
    // An arrowport receiver names its failure's code; other Flight servers are judged by the gRPC code alone.
    let named = status.metadata().get(GRPC_CODE_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorCode::from_name);
    if let Some(code) = named {
        return if code.is_transient() { Failure::transient(text) } else { Failure::Permanent(text) };
    }
    match status.code() {
        Code::Unavailable | Code::Aborted | Code::Cancelled | Code::DeadlineExceeded => Failure::transient(text),
        // The transport's own failures (a connection reset mid-call) come as Unknown with a source.
        Code::Unknown
            if std::error::Error::source(status).is_some()
                || message.contains("transport")
                || message.contains("h2") =>
        {
            Failure::transient(format!("the connection failed: {}", error_chain(status)))
        }
        _ => Failure::Permanent(text),
    }
}

/// An HTTP error answer as a failure: 503 (with its Retry-After), 502, 504, 408 and 409 "in progress" are
/// transient.
pub(super) fn http_failure(status: u16, body: &[u8], retry_after: Option<Duration>) -> Failure {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = json.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
    let message = json
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).trim().to_string());
    let text = format!("the remote refused the request (HTTP {status}): {message}");
    match (status, ErrorCode::from_name(code)) {
        (503, _) => Failure::Transient { message: text, after: retry_after },
        (_, Some(code)) if code.is_transient() => Failure::transient(text),
        (502 | 504 | 408, _) => Failure::transient(text),
        _ => Failure::Permanent(text),
    }
}

pub(super) fn flight_error_text(e: &arrow_flight::error::FlightError) -> String {
    match e {
        arrow_flight::error::FlightError::ExternalError(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// An error with its causes, as one line.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
