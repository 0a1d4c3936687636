//! `fanout serve`: the function as an HTTP endpoint, driven over real sockets by an HTTP
//! client that is not fanout's: every byte back under load, hostile guests answered with
//! the right status and nothing leaked, bad requests refused, the worker cap and its queue,
//! workers gone when idle, the platforms' port variables and Azure's envelope, and a SIGTERM
//! with requests in flight (all of them answered).

use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `fanout serve`, killed when dropped.
struct Serving {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Serving {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Serving {
        let mut command = fanout();
        command.env_remove("PORT").env_remove("FUNCTIONS_CUSTOMHANDLER_PORT");
        command.current_dir(repo()).arg("serve").args(args).envs(env.iter().copied());
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("fanout serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split_once(" on http://").map(|(_, rest)| rest) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("fanout serve did not start: {:?}", log.lock().unwrap())
        });
        Serving { child, url: format!("http://{address}"), log }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, signal: &str) {
        std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

async fn post(url: &str, name: &str, body: impl Into<reqwest::Body>) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
    let response = client().post(format!("{url}/{name}")).body(body).send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, response.bytes().await.unwrap().to_vec(), headers)
}

async fn health(url: &str) -> Value {
    client().get(format!("{url}/healthz")).send().await.unwrap().json().await.unwrap()
}

fn wasm(name: &str) -> String {
    function(name).to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_under_load_gives_every_byte_back() {
    let server = Serving::start(&["--function", &wasm("copy"), "--listen", "127.0.0.1:0"], &[]);
    let url = server.url.clone();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bodies = Vec::new();
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let size = (state % (64 << 10)) as usize;
        bodies.push((0..size).map(|i| (state >> (i % 56)) as u8 ^ i as u8).collect::<Vec<u8>>());
    }
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let (url, semaphore) = (url.clone(), semaphore.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            let (status, back, _) = post(&url, &format!("body-{i}.bin"), body.clone()).await;
            (status, back == body, body.len())
        }));
    }
    let mut bytes = 0;
    for task in tasks {
        let (status, same, size) = task.await.unwrap();
        assert_eq!(status, 200);
        assert!(same, "a body of {size} bytes came back changed");
        bytes += size;
    }
    eprintln!("2000 echoes ({} MB) in {:.2}s", bytes / 1_000_000, started.elapsed().as_secs_f64());
    let health = health(&url).await;
    assert_eq!(health["served"], 2000, "{health}");
    assert_eq!((health["in_flight"].as_u64(), health["queued"].as_u64()), (Some(0), Some(0)), "{health}");
    let logged = server.log().iter().filter(|line| line.starts_with("POST /body-") && line.contains(" 200 ")).count();
    assert_eq!(logged, 2000, "one log line per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thumbnail_job_answers_as_the_local_run_writes() {
    let images = repo().join("examples/data/images");
    let local = tempfile::tempdir().unwrap();
    run_in(
        &repo(),
        &[
            "run",
            "jobs/thumbnails.toml",
            "--input",
            images.to_str().unwrap(),
            "--output",
            local.path().to_str().unwrap(),
        ],
    )
    .assert_code(0);
    let expected = tree(local.path());
    let server = Serving::start(&["jobs/thumbnails.toml", "--listen", "127.0.0.1:0"], &[]);
    let mut answered = 0;
    for entry in std::fs::read_dir(&images).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let (status, body, headers) = post(&server.url, &name, std::fs::read(&path).unwrap()).await;
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        // The one file the function wrote, the same bytes the batch job published.
        let (key, written) =
            expected.iter().find(|(key, _)| key.starts_with(path.file_stem().unwrap().to_str().unwrap())).unwrap();
        assert_eq!(&body, written, "{name} differs from {key} of the local run");
        let content_type = headers["content-type"].to_str().unwrap();
        let format = image::guess_format(&body).unwrap();
        assert_eq!(Some(content_type), format.to_mime_type().into(), "{name}");
        let decoded = image::load_from_memory(&body).unwrap();
        assert!(decoded.width() <= 256 && decoded.height() <= 256, "{name}: {}x{}", decoded.width(), decoded.height());
        answered += 1;
    }
    assert!(answered >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_get_their_status_and_the_server_goes_on() {
    let server = Serving::start(
        &["--function", &wasm("misbehave"), "--listen", "127.0.0.1:0", "--timeout", "2s", "--memory", "64MiB"],
        &[("FANOUT_HOST_SECRET", "do-not-leak"), ("HOME", "/root")],
    );
    let failure = |body: &[u8]| -> Value { serde_json::from_slice(body).unwrap() };
    let (status, body, _) = post(&server.url, "t", "trap").await;
    assert_eq!((status, failure(&body)["outcome"].as_str()), (500, Some("trap")));
    let (status, body, _) = post(&server.url, "l", "loop").await;
    assert_eq!((status, failure(&body)["outcome"].as_str()), (504, Some("timeout")));
    let (status, body, _) = post(&server.url, "a", "alloc").await;
    assert_eq!((status, failure(&body)["outcome"].as_str()), (500, Some("oom")));
    let (status, body, _) = post(&server.url, "e", "exit 7").await;
    let said = failure(&body);
    assert_eq!((status, said["outcome"].as_str()), (500, Some("exit")), "{said}");
    assert!(said["detail"].as_str().unwrap().contains('7'), "{said}");
    // A link planted in /out is refused, not followed.
    let (status, body, _) = post(&server.url, "s", "symlink").await;
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    assert!(failure(&body)["detail"].as_str().unwrap().contains("symbolic link"));
    // Probes of the host exit non-zero when denied and write to /out (a 200) only when they
    // broke out; what they saw, in the stderr of the answer, holds nothing of the host's.
    for probe in ["passwd", "dotdot", "env FANOUT_HOST_SECRET", "env HOME"] {
        let (status, body, _) = post(&server.url, "p", probe).await;
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("do-not-leak") && !text.contains("root:x"), "{probe} leaked: {text}");
        assert_eq!((status, failure(&body)["outcome"].as_str()), (500, Some("exit")), "{probe}: {text}");
    }
    let (status, _, _) = post(&server.url, "ok", "ok").await;
    assert_eq!(status, 200, "the server still answers");
    let health = health(&server.url).await;
    assert_eq!(health["in_flight"], 0, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_their_status() {
    let server = Serving::start(
        &["--function", &wasm("copy"), "--listen", "127.0.0.1:0", "--max-body", "1KiB", "--token-env", "SERVE_TOKEN"],
        &[("SERVE_TOKEN", "s3cret")],
    );
    let url = &server.url;
    let http = client();
    let send = |request: reqwest::RequestBuilder| async move { request.send().await.unwrap().status().as_u16() };
    assert_eq!(send(http.post(format!("{url}/a.txt")).body("x")).await, 401, "no token");
    assert_eq!(send(http.post(format!("{url}/a.txt")).bearer_auth("wrong").body("x")).await, 401);
    let with_token = |request: reqwest::RequestBuilder| request.bearer_auth("s3cret");
    assert_eq!(send(with_token(http.post(format!("{url}/a.txt")).body("x"))).await, 200);
    let lowercase = http.post(format!("{url}/a.txt")).header("authorization", "bearer s3cret").body("x");
    assert_eq!(send(lowercase).await, 200, "the scheme's name is case-insensitive");
    assert_eq!(send(with_token(http.put(format!("{url}/a.txt")).body("x"))).await, 405);
    assert_eq!(send(with_token(http.get(format!("{url}/a.txt")))).await, 405);
    assert_eq!(send(with_token(http.post(format!("{url}/a.txt")).body(vec![0u8; 1025]))).await, 413);
    assert_eq!(send(with_token(http.post(format!("{url}/a.txt")).body(vec![0u8; 1024]))).await, 200);
    for path in ["/..%2Fetc%2Fpasswd", "/a/b", "/%2e%2e", "/"] {
        assert_eq!(send(with_token(http.post(format!("{url}{path}")).body("x"))).await, 400, "{path}");
    }
    // A body streamed without a length is cut off at the limit just the same.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![1u8; 400])).collect();
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    assert_eq!(send(with_token(http.post(format!("{url}/s.bin")).body(streamed))).await, 413);
    // Platforms' health checks carry no token.
    assert_eq!(send(http.get(format!("{url}/healthz"))).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_max_workers_run_the_rest_wait_in_order_or_are_turned_away_and_workers_go_when_idle() {
    let server = Serving::start(
        &[
            "--function",
            &wasm("misbehave"),
            "--listen",
            "127.0.0.1:0",
            "--max-workers",
            "1",
            "--queue",
            "2",
            "--idle",
            "300ms",
        ],
        &[],
    );
    let url = server.url.clone();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (status, _, headers) = post(&url, &format!("n{i}"), "nap 400").await;
            (i, status, headers.get("retry-after").map(|v| v.to_str().unwrap().to_string()), Instant::now())
        }));
        // Arrival order is the order they were sent.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let busy = health(&url).await;
    assert_eq!((busy["workers"].as_u64(), busy["in_flight"].as_u64()), (Some(1), Some(1)), "{busy}");
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let refused: Vec<_> = done.iter().filter(|(_, status, _, _)| *status == 503).collect();
    assert_eq!(refused.len(), 1, "one running, two waiting, the fourth turned away: {done:?}");
    assert_eq!(refused[0].0, 3);
    assert_eq!(refused[0].2.as_deref(), Some("1"), "503 says when to come back");
    let served: Vec<_> = done.iter().filter(|(_, status, _, _)| *status == 200).collect();
    assert!(served.windows(2).all(|w| w[0].3 <= w[1].3), "answered in arrival order: {served:?}");
    eventually("no workers after --idle", Duration::from_secs(10), Duration::from_millis(100), || {
        let health: Value = futures::executor::block_on(async {
            reqwest::get(format!("{url}/healthz")).await.unwrap().json().await.unwrap()
        });
        health["workers"] == 0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platforms_port_variables_and_azures_envelope() {
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port = free_port().to_string();
    let server = Serving::start(&["--function", &wasm("copy")], &[("PORT", &port)]);
    assert!(server.url.ends_with(&format!(":{port}")), "{} on $PORT", server.url);
    drop(server);
    let (port, azure) = (free_port().to_string(), free_port().to_string());
    let server =
        Serving::start(&["--function", &wasm("copy")], &[("PORT", &port), ("FUNCTIONS_CUSTOMHANDLER_PORT", &azure)]);
    assert!(server.url.ends_with(&format!(":{azure}")), "{}: Azure's variable first", server.url);
    let url = format!("http://127.0.0.1:{azure}");
    let envelope = serde_json::json!({
        "Data": {"req": {"Url": "http://localhost:7071/api/echo", "Method": "POST", "Query": {}, "Headers": {}, "Params": {}, "Body": "hello azure"}},
        "Metadata": {"sys": {"MethodName": "echo"}}
    });
    let response = client().post(format!("{url}/echo")).json(&envelope).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["Outputs"]["res"]["statusCode"], 200, "{answer}");
    assert_eq!(answer["Outputs"]["res"]["body"], "hello azure", "{answer}");
    assert!(answer["Logs"].is_array() && answer.get("ReturnValue").is_some(), "{answer}");
}

#[test]
fn sigterm_answers_every_request_in_flight_then_exits() {
    let server =
        Serving::start(&["--function", &wasm("misbehave"), "--listen", "127.0.0.1:0", "--max-workers", "2"], &[]);
    let url = server.url.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            runtime.spawn(async move { post(&url, &format!("n{i}"), "nap 700").await.0 })
        })
        .collect();
    // Two run, two wait; then the platform stops the instance.
    eventually("4 requests taken", Duration::from_secs(10), Duration::from_millis(20), || {
        let health: Value = runtime.block_on(health(&url));
        health["in_flight"].as_u64().unwrap_or(0) + health["queued"].as_u64().unwrap_or(0) == 4
    });
    server.signal("-TERM");
    let statuses: Vec<u16> = tasks.into_iter().map(|task| runtime.block_on(task).unwrap()).collect();
    assert_eq!(statuses, vec![200; 4], "every request taken was answered");
    let mut server = server;
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}: {:?}", server.log());
    assert!(server.log().iter().any(|line| line.contains("stopped serving")), "{:?}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_function_and_a_native_command_are_served_the_same_way() {
    // A Python script (built into WebAssembly once, at start): the bytes host CPython gives.
    let server = Serving::start(&["jobs/python-wordfreq.toml", "--listen", "127.0.0.1:0"], &[]);
    let text = "The cat and the hat. The END, the end; a cat's hat!\n".repeat(50);
    let (status, body, _) = post(&server.url, "book.txt", text.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("book.txt"), &text).unwrap();
    let host = std::process::Command::new("python3")
        .arg(repo().join("jobs/fn/wordfreq.py"))
        .args(["--top", "10"])
        .arg(dir.path().join("book.txt"))
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(host.status.success(), "{}", String::from_utf8_lossy(&host.stderr));
    assert_eq!(body, std::fs::read(dir.path().join("out/book.txt.tsv")).unwrap(), "not what host CPython wrote");
    drop(server);

    // A native command in bubblewrap's sandbox: the body on stdin, its stdout the answer.
    let server = Serving::start(&["--command", "sha256sum", "--listen", "127.0.0.1:0"], &[]);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, body, _) = post(&server.url, "data.bin", data.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    use sha2::Digest;
    let expected = format!("{:x}  -\n", sha2::Sha256::digest(&data));
    assert_eq!(String::from_utf8_lossy(&body), expected);
}
