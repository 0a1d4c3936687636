//! `fanout serve`: a job's function as an HTTP endpoint, a fresh sandboxed instance per
//! request from a function compiled once at start, as Spin and `wasmtime serve` do, and one
//! process image for Cloud Run, Knative, Code Engine apps and Azure Functions custom
//! handlers. Owns the HTTP surface: the routes (`POST /NAME` runs the function on the body,
//! `GET /healthz`), status codes, the bearer token, the Azure custom-handler envelope, one
//! log line per request, and the stop on SIGTERM (no new connections; what is in flight and
//! queued is answered). The instances are [`workers`]'; nothing here reads or writes a job's
//! manifest or storage.

pub mod workers;

use crate::runtime::Outcome;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use workers::{NotTaken, Reply, Workers};

/// How the server answers, besides its workers' limits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bodies longer than this are refused (413) before they are read.
    pub max_body: u64,
    /// Requests must carry `Authorization: Bearer TOKEN` (else 401); `/healthz` never does.
    pub token: Option<String>,
    /// Log lines as JSON objects.
    pub json_logs: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
}

/// Where to listen when `--listen` is not given: Azure Functions' custom-handler port, else
/// the `PORT` Cloud Run, Knative and Code Engine set, else 8080; on every interface.
pub fn default_address(var: impl Fn(&str) -> Option<String>) -> Result<SocketAddr, String> {
    for name in ["FUNCTIONS_CUSTOMHANDLER_PORT", "PORT"] {
        if let Some(value) = var(name).filter(|value| !value.trim().is_empty()) {
            let port: u16 = value.trim().parse().map_err(|_| format!("${name} is {value:?}, not a port"))?;
            return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
        }
    }
    Ok(SocketAddr::from(([0, 0, 0, 0], 8080)))
}

/// A listener on `address`, before anything is announced (a port taken is one line, exit 2).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address).await.map_err(|source| ServeError::Listen { address, source })
}

struct Server {
    workers: Workers,
    settings: Settings,
}

/// Serves until the first stop (`stops` counts SIGTERMs and Ctrl-Cs), then takes no more
/// connections or requests and answers those in flight and queued; a second stop ends it
/// without waiting for them.
pub async fn serve(listener: TcpListener, workers: Workers, settings: Settings, mut stops: watch::Receiver<u32>) {
    let server = Arc::new(Server { workers: workers.clone(), settings });
    let graceful = GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A timer turns on hyper's own limit on reading a request's head (30 s): a client that
    // never finishes its headers is dropped.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stops.wait_for(|&n| n >= 1) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of descriptors (or a reset before accept): wait a moment rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let service = hyper::service::service_fn(move |request| {
            let server = server.clone();
            async move { Ok::<_, std::convert::Infallible>(server.handle(request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    workers.stop_taking();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = stops.wait_for(|&n| n >= 2) => eprintln!("fanout: stopped again: not waiting for the requests in flight"),
    }
}

/// What a request came to, for its response and its log line.
struct Answer {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    outcome: String,
    headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
}

impl Answer {
    fn json(status: StatusCode, value: serde_json::Value, outcome: &str) -> Answer {
        let body = Bytes::from(serde_json::to_vec(&value).expect("json"));
        Answer { status, body, content_type: "application/json", outcome: outcome.to_string(), headers: Vec::new() }
    }

    fn refused(status: StatusCode, message: impl Into<String>) -> Answer {
        Answer::json(status, json!({"error": message.into()}), "refused")
    }

    fn with(mut self, name: hyper::header::HeaderName, value: &'static str) -> Answer {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

impl Server {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let http1 = request.version() < hyper::Version::HTTP_2;
        let answer = self.route(request).await;
        self.log(&method, &path, &answer, started);
        // A request refused before its body was read leaves the rest of it on the connection:
        // the client is told not to send another on it (HTTP/1; HTTP/2 streams are apart).
        let unread = matches!(answer.status.as_u16(), 400 | 401 | 405 | 413);
        let mut response = Response::new(Full::new(answer.body));
        *response.status_mut() = answer.status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
        for (name, value) in answer.headers {
            response.headers_mut().insert(name, value);
        }
        if unread && http1 {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Answer {
        if request.uri().path() == "/healthz" {
            return match *request.method() {
                Method::GET | Method::HEAD => {
                    Answer::json(StatusCode::OK, serde_json::to_value(self.workers.health()).expect("json"), "health")
                }
                _ => Answer::refused(StatusCode::METHOD_NOT_ALLOWED, "/healthz answers GET").with(ALLOW, "GET, HEAD"),
            };
        }
        if let Some(token) = &self.settings.token {
            let given = request.headers().get(AUTHORIZATION).and_then(|value| value.to_str().ok());
            // The scheme's name is case-insensitive (RFC 9110); the token is not.
            let presented = given.and_then(|value| {
                let (scheme, rest) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
            if !presented.is_some_and(|given| constant_time_eq(given, token)) {
                return Answer::refused(StatusCode::UNAUTHORIZED, "a bearer token is needed")
                    .with(WWW_AUTHENTICATE, "Bearer");
            }
        }
        if request.method() != Method::POST {
            return Answer::refused(StatusCode::METHOD_NOT_ALLOWED, "POST /NAME runs the function on the body")
                .with(ALLOW, "POST");
        }
        let name = match name_of(request.uri().path()) {
            Ok(name) => name,
            Err(message) => return Answer::refused(StatusCode::BAD_REQUEST, message),
        };
        let max = self.settings.max_body;
        let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max) {
            return too_large(max);
        }
        let is_json =
            request.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body = match Limited::new(request.into_body(), max as usize).collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => return too_large(max),
            Err(error) => return Answer::refused(StatusCode::BAD_REQUEST, format!("reading the body: {error}")),
        };
        // Azure Functions' custom handler wraps a trigger's data in an envelope and wants one back.
        let envelope = if is_json { azure::Envelope::read(&body) } else { None };
        let input = envelope.as_ref().map_or(body, |envelope| envelope.input.clone());
        let reply = match self.workers.submit(name, input) {
            Ok(waiting) => match waiting.await {
                Ok(reply) => reply,
                Err(_) => return Answer::json(StatusCode::INTERNAL_SERVER_ERROR, json!({"outcome": "error"}), "error"),
            },
            Err(NotTaken::Busy) => {
                return Answer::refused(StatusCode::SERVICE_UNAVAILABLE, "every worker is busy and the queue is full")
                    .with(RETRY_AFTER, "1")
            }
            Err(NotTaken::Stopping) => {
                return Answer::refused(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")
                    .with(RETRY_AFTER, "1")
            }
        };
        let answer = answer_of(reply);
        match envelope {
            Some(_) => azure::wrap(answer),
            None => answer,
        }
    }

    fn log(&self, method: &Method, path: &str, answer: &Answer, started: Instant) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, bytes, outcome) = (answer.status.as_u16(), answer.body.len(), &answer.outcome);
        if self.settings.json_logs {
            let line = json!({"method": method.as_str(), "path": path, "status": status, "bytes": bytes,
                              "ms": (ms * 1000.0).round() / 1000.0, "outcome": outcome});
            eprintln!("{line}");
        } else {
            eprintln!("{method} {path} {status} {bytes} B {ms:.1} ms {outcome}");
        }
    }
}

fn too_large(max: u64) -> Answer {
    Answer::refused(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over {} (--max-body)", crate::units::format_size(max)),
    )
}

/// A token compared in time that does not depend on where it differs.
fn constant_time_eq(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The request's name: one plain path segment, percent-decoded (`/photo.jpg`: `photo.jpg`).
fn name_of(path: &str) -> Result<String, String> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    let refused = || Err(format!("{path:?}: the path must be one plain name, as in POST /photo.jpg"));
    if raw.is_empty() || raw.contains('/') {
        return refused();
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' && tail.len() >= 2 {
            let hex = std::str::from_utf8(&tail[..2]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else { return refused() };
            bytes.push(byte);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    let Ok(name) = String::from_utf8(bytes) else { return refused() };
    // A leading '-' would read as an option where a command's placeholder is a whole word.
    let plain = name != "."
        && name != ".."
        && !name.starts_with('-')
        && name.len() <= 255
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    if !plain {
        return refused();
    }
    Ok(name)
}

/// The content type of an output, from its name's extension.
fn content_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "csv" => "text/csv",
        "txt" | "log" | "md" => "text/plain; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "xml" => "application/xml",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" | "opus" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "zip" => "application/zip",
        "tar" => "application/x-tar",
        "gz" => "application/gzip",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// A request's reply as an HTTP answer: the one output file, else stdout, else a tar of
/// every output; a failure as JSON naming the outcome with the end of stderr (504 for a
/// timeout, 500 otherwise).
fn answer_of(reply: Reply) -> Answer {
    let Reply { outcome, outputs, stdout, stderr_tail, elapsed } = reply;
    let failure = |status: StatusCode, kind: &str, detail: String| {
        let body = json!({"outcome": kind, "detail": detail, "stderr": stderr_tail, "ms": elapsed.as_millis() as u64});
        Answer::json(status, body, kind)
    };
    if !outcome.is_ok() {
        let status = match outcome {
            Outcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let kind = outcome.kind().name();
        return failure(status, kind, outcome.to_string());
    }
    let mut outputs = match outputs {
        Ok(outputs) => outputs,
        Err(message) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "error", message),
    };
    let ok = |body: Bytes, content_type: &'static str| Answer {
        status: StatusCode::OK,
        body,
        content_type,
        outcome: "ok".into(),
        headers: Vec::new(),
    };
    match outputs.len() {
        0 => ok(stdout, "application/octet-stream"),
        1 => {
            let (name, body) = outputs.pop().expect("one output");
            ok(body, content_type(&name))
        }
        _ => match tar_of(&outputs) {
            Ok(tar) => ok(tar, "application/x-tar"),
            Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, "error", format!("packing /out: {e}")),
        },
    }
}

fn tar_of(outputs: &[(String, Bytes)]) -> std::io::Result<Bytes> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in outputs {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        builder.append_data(&mut header, name, &body[..])?;
    }
    builder.into_inner().map(Bytes::from)
}

/// Azure Functions custom handlers: the host POSTs `/<function>` with `{"Data": {...},
/// "Metadata": {...}}` and reads back `{"Outputs": {"res": ...}, "Logs": [...],
/// "ReturnValue": ...}`.
mod azure {
    use super::Answer;
    use bytes::Bytes;
    use hyper::StatusCode;
    use serde_json::{json, Value};

    pub struct Envelope {
        /// The trigger's data: an HTTP trigger's body, or a queue message.
        pub input: Bytes,
    }

    impl Envelope {
        /// The envelope, when the body is one (an object with `Data` and `Metadata`).
        pub fn read(body: &[u8]) -> Option<Envelope> {
            let value: Value = serde_json::from_slice(body).ok()?;
            let data = value.get("Data")?.as_object()?;
            value.get("Metadata")?;
            // The trigger's binding: an HTTP request (with its Body), else the first (a message).
            let first =
                data.values().find(|v| v.get("Body").is_some() || v.get("Method").is_some()).or(data.values().next());
            let input = match first {
                Some(Value::Object(request)) => match request.get("Body") {
                    Some(Value::String(text)) => Bytes::from(text.clone()),
                    Some(other) if !other.is_null() => Bytes::from(other.to_string()),
                    _ => Bytes::new(),
                },
                Some(Value::String(text)) => Bytes::from(text.clone()),
                Some(other) => Bytes::from(other.to_string()),
                None => Bytes::new(),
            };
            Some(Envelope { input })
        }
    }

    /// The answer as the host wants it: HTTP 200 to the host, the function's own status and
    /// body in the `res` output (text as is; anything else base64, said in a header).
    pub fn wrap(answer: Answer) -> Answer {
        let (body, encoding) = match std::str::from_utf8(&answer.body) {
            Ok(text) => (text.to_string(), None),
            Err(_) => (base64(&answer.body), Some("base64")),
        };
        let mut headers = json!({"Content-Type": answer.content_type});
        if let Some(encoding) = encoding {
            headers["Content-Transfer-Encoding"] = encoding.into();
        }
        let logs: Vec<String> = match answer.status.is_success() {
            true => Vec::new(),
            false => vec![format!("fanout: the function ended {}", answer.outcome)],
        };
        let wrapped = json!({
            "Outputs": {"res": {"statusCode": answer.status.as_u16(), "body": body, "headers": headers}},
            "Logs": logs,
            "ReturnValue": null,
        });
        Answer::json(StatusCode::OK, wrapped, &answer.outcome)
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn base64_is_the_standard_alphabet_with_padding() {
            assert_eq!(base64(b""), "");
            assert_eq!(base64(b"f"), "Zg==");
            assert_eq!(base64(b"fo"), "Zm8=");
            assert_eq!(base64(b"foo"), "Zm9v");
            assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
        }

        #[test]
        fn an_http_triggers_body_is_the_input() {
            let body =
                br#"{"Data": {"req": {"Url": "http://x/api/f", "Method": "POST", "Body": "hello"}}, "Metadata": {}}"#;
            assert_eq!(&Envelope::read(body).unwrap().input[..], b"hello");
            let queue = br#"{"Data": {"msg": "a message"}, "Metadata": {"DequeueCount": 1}}"#;
            assert_eq!(&Envelope::read(queue).unwrap().input[..], b"a message");
            assert!(Envelope::read(br#"{"Data": {}}"#).is_none(), "no Metadata: a plain JSON body");
            assert!(Envelope::read(b"[1, 2]").is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_plain_segment() {
        assert_eq!(name_of("/photo.jpg").unwrap(), "photo.jpg");
        assert_eq!(name_of("/IMG%201.jpg").unwrap(), "IMG 1.jpg");
        for bad in ["/", "/a/b", "/..", "/.", "/%2e%2e", "/a%2fb", "/%00", "/%zz", "/a%5Cb", "/-rf", "/%2Dx"] {
            assert!(name_of(bad).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn the_platforms_port_variables_are_read_in_order() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(default_address(vars(&[])).unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(default_address(vars(&[("PORT", "9000")])).unwrap().port(), 9000);
        let both = vars(&[("PORT", "9000"), ("FUNCTIONS_CUSTOMHANDLER_PORT", "7071")]);
        assert_eq!(default_address(both).unwrap().port(), 7071);
        assert!(default_address(vars(&[("PORT", "http")])).unwrap_err().contains("$PORT"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq("s3cret", "s3cret"));
        assert!(!constant_time_eq("s3cre", "s3cret"));
        assert!(!constant_time_eq("s3creT", "s3cret"));
    }
}
