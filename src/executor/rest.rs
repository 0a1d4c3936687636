//! What the engines driven over REST share (Code Engine, Cloud Run): one JSON request with a
//! bearer token, its failure read as the API's own message, one line. Owns no engine's paths
//! or bodies, and no credentials.

use serde_json::Value;
use std::time::Duration;

/// A request to a control plane that takes longer has failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for a control plane.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().map_err(|e| e.to_string())
}

/// Sends `body` (if any) as JSON with the bearer token; the answer's JSON, or "HTTP 404: ..."
/// with the API's message, or "does not answer: ..." when no answer came.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    bearer: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = http.request(method, url).bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| format!("does not answer: {}", one_line(&e)))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("HTTP {}: {}", status.as_u16(), api_message(&body, &text)));
    }
    Ok(body)
}

/// The message in an API's error body: Code Engine's `errors[0].message`, Google's
/// `error.message`, IAM's `errorMessage`, or a plain `message`; else the text itself.
pub fn api_message(body: &Value, text: &str) -> String {
    let said = body["errors"][0]["message"]
        .as_str()
        .or(body["error"]["message"].as_str())
        .or(body["errorMessage"].as_str())
        .or(body["message"].as_str())
        .unwrap_or(text.trim());
    said.lines().next().unwrap_or_default().chars().take(300).collect()
}

/// An error and its causes on one line (a connection refused says so).
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = inner.source();
    }
    text
}
