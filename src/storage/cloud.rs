//! Azure Blob (`az://container/prefix/`) and Google Cloud Storage (`gs://bucket/prefix/`)
//! through the `object_store` crate (Apache Arrow's): one client for both clouds, with their
//! signing, token exchanges, retries and multipart uploads. Owns finding each cloud's
//! credentials the way its own tools do, the mapping of the crate's errors to
//! [`StorageError`], and streaming objects to and from local files. S3 stays on the AWS SDK
//! (`s3`), whose path is tuned for S3-compatible servers and measured.
//!
//! Credentials, never from a job file:
//! - Azure: `AZURE_STORAGE_CONNECTION_STRING` (account and key or SAS, endpoint; Azurite's
//!   `BlobEndpoint=` included), else `AZURE_STORAGE_ACCOUNT_NAME` (or the CLI's
//!   `AZURE_STORAGE_ACCOUNT`) with `AZURE_STORAGE_ACCOUNT_KEY` (`AZURE_STORAGE_KEY`) or
//!   `AZURE_STORAGE_SAS_TOKEN`, a service principal or workload identity (`AZURE_CLIENT_ID`,
//!   `AZURE_TENANT_ID`, ...), else the managed identity of the machine.
//! - Google: `STORAGE_EMULATOR_HOST` (an emulator, unauthenticated, as Google's client
//!   libraries do), else `GOOGLE_APPLICATION_CREDENTIALS` or gcloud's application-default
//!   file, else the metadata server of the machine.

use super::contract::{Conditional, ObjectMeta, Precondition, Storage, StorageError, StorageResult, Version};
use crate::location::Location;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path as KeyPath;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Files at least this large go up in blocks (Azure) or parts (GCS), never whole in memory.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// The size of each block or part.
const PART_SIZE: usize = 16 << 20;
/// Blocks or parts of one object in flight at once.
const PART_CONCURRENCY: usize = 4;
/// Bytes gathered from the network before one write to a local file.
const WRITE_BATCH: usize = 1 << 20;
/// Attempts after the first for a request that failed in transit or with a 5xx.
const RETRIES: usize = 4;
/// `check` proves the address quickly: one retry, a short deadline.
const CHECK_RETRIES: usize = 1;
const CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// Which cloud a [`CloudStorage`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloud {
    Azure,
    Gcs,
}

impl Cloud {
    /// The store's name in "cannot reach the ... endpoint".
    fn service(self) -> &'static str {
        match self {
            Cloud::Azure => "Azure Blob",
            Cloud::Gcs => "Google Cloud Storage",
        }
    }

    /// Whose credentials, in "no usable ... credentials".
    fn vendor(self) -> &'static str {
        match self {
            Cloud::Azure => "Azure",
            Cloud::Gcs => "Google Cloud",
        }
    }

    /// What the first part of the address is called.
    fn bucket_word(self) -> &'static str {
        match self {
            Cloud::Azure => "container",
            Cloud::Gcs => "bucket",
        }
    }

    /// Where credentials are looked for, for the message when none work.
    fn credential_hint(self) -> &'static str {
        match self {
            Cloud::Azure => {
                "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY \
                 or AZURE_STORAGE_SAS_TOKEN, or run where a managed identity is assigned"
            }
            Cloud::Gcs => {
                "set GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth application-default login`), or run \
                 where the metadata server answers; STORAGE_EMULATOR_HOST names an emulator"
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloudStorage {
    cloud: Cloud,
    /// For every operation: retried as [`RETRIES`] says.
    store: Arc<dyn ObjectStore>,
    /// For `check`: retried once, within [`CHECK_DEADLINE`].
    probe: Arc<dyn ObjectStore>,
    bucket: String,
    /// Empty or ending in `/`.
    prefix: String,
    location: Location,
    /// The service endpoint, for messages.
    endpoint: String,
}

/// How requests are retried and timed: `quick` for `check`, which must fail in seconds.
fn retries(quick: bool) -> RetryConfig {
    let (max_retries, retry_timeout) =
        if quick { (CHECK_RETRIES, CHECK_DEADLINE) } else { (RETRIES, Duration::from_secs(60)) };
    RetryConfig { backoff: BackoffConfig::default(), max_retries, retry_timeout }
}

/// Client settings both clouds share: a short connect timeout, and no whole-request deadline
/// short enough to cut a large download (a body that stalls for a minute fails instead).
fn client_settings(quick: bool) -> [(ClientConfigKey, String); 3] {
    let connect = if quick { "3s" } else { "5s" };
    [
        (ClientConfigKey::ConnectTimeout, connect.to_string()),
        (ClientConfigKey::Timeout, "1h".to_string()),
        (ClientConfigKey::ReadTimeout, "60s".to_string()),
    ]
}

/// The parts of an Azure connection string fanout uses (`Key=Value;...`; values may hold
/// `=`, as base64 keys do).
#[derive(Debug, Default, PartialEq)]
struct ConnectionString {
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    blob_endpoint: Option<String>,
}

impl ConnectionString {
    fn parse(text: &str) -> Result<ConnectionString, String> {
        let mut parsed = ConnectionString::default();
        let (mut protocol, mut suffix, mut development) = ("https".to_string(), None, false);
        for part in text.split(';').map(str::trim).filter(|part| !part.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| format!("\"{part}\" is not Name=Value"))?;
            let value = value.to_string();
            match name {
                "AccountName" => parsed.account = Some(value),
                "AccountKey" => parsed.key = Some(value),
                "SharedAccessSignature" => parsed.sas = Some(value),
                "BlobEndpoint" => parsed.blob_endpoint = Some(value.trim_end_matches('/').to_string()),
                "DefaultEndpointsProtocol" => protocol = value,
                "EndpointSuffix" => suffix = Some(value),
                "UseDevelopmentStorage" => development = value.eq_ignore_ascii_case("true"),
                // Queue, table and file endpoints and the rest are other services'.
                _ => {}
            }
        }
        if development {
            // Azurite's defaults, as Azure's SDKs read `UseDevelopmentStorage=true`.
            parsed.account.get_or_insert_with(|| "devstoreaccount1".to_string());
            parsed.key.get_or_insert_with(|| AZURITE_KEY.to_string());
            let account = parsed.account.clone().unwrap_or_default();
            parsed.blob_endpoint.get_or_insert_with(|| format!("http://127.0.0.1:10000/{account}"));
        }
        if parsed.blob_endpoint.is_none() {
            if let Some(account) = &parsed.account {
                let suffix = suffix.unwrap_or_else(|| "core.windows.net".to_string());
                parsed.blob_endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
            }
        }
        if parsed.account.is_none() {
            return Err("it names no AccountName".into());
        }
        Ok(parsed)
    }
}

/// Azurite's published development account key (not a secret: the emulator's default).
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

impl CloudStorage {
    /// A client for `az://container/prefix/`, from the environment (see the module's map).
    /// Nothing is sent until the first call; `check` proves the container is usable.
    pub fn azure(container: &str, prefix: &str) -> StorageResult<Self> {
        use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
        let location = Location::Azure { container: container.to_string(), prefix: normalized(prefix) };
        let credentials =
            |message: String| StorageError::Credentials { location: location.to_string(), cloud: "Azure", message };
        let build = |quick: bool| -> StorageResult<(Arc<dyn ObjectStore>, String)> {
            let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(container);
            // The Azure CLI's names for the same settings.
            if let Some(account) = env("AZURE_STORAGE_ACCOUNT").filter(|_| env("AZURE_STORAGE_ACCOUNT_NAME").is_none())
            {
                builder = builder.with_account(account);
            }
            if let Some(key) = env("AZURE_STORAGE_KEY").filter(|_| env("AZURE_STORAGE_ACCOUNT_KEY").is_none()) {
                builder = builder.with_access_key(key);
            }
            if let Some(text) = env("AZURE_STORAGE_CONNECTION_STRING") {
                let parsed = ConnectionString::parse(&text)
                    .map_err(|why| credentials(format!("AZURE_STORAGE_CONNECTION_STRING: {why}")))?;
                builder = builder.with_account(parsed.account.clone().unwrap_or_default());
                if let Some(key) = parsed.key {
                    builder = builder.with_access_key(key);
                }
                if let Some(sas) = parsed.sas {
                    builder = builder.with_config(AzureConfigKey::SasKey, sas);
                }
                if let Some(endpoint) = parsed.blob_endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
            }
            let account = builder.get_config_value(&AzureConfigKey::AccountName);
            let endpoint = builder
                .get_config_value(&AzureConfigKey::Endpoint)
                .or_else(|| account.as_ref().map(|account| format!("https://{account}.blob.core.windows.net")))
                .unwrap_or_else(|| "Azure Blob".to_string());
            if account.is_none() {
                return Err(credentials(format!("no storage account is named; {}", Cloud::Azure.credential_hint())));
            }
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
            for (key, value) in client_settings(quick) {
                builder = builder.with_config(AzureConfigKey::Client(key), value);
            }
            let store: Arc<dyn ObjectStore> =
                Arc::new(builder.with_retry(retries(quick)).build().map_err(|e| credentials(error_chain(&e)))?);
            Ok((store, endpoint))
        };
        let (store, endpoint) = build(false)?;
        let (probe, _) = build(true)?;
        Ok(CloudStorage::new(Cloud::Azure, container, prefix, store, probe, endpoint))
    }

    /// A client for `gs://bucket/prefix/`, from the environment (see the module's map).
    /// Nothing is sent until the first call; `check` proves the bucket is usable.
    pub fn gcs(bucket: &str, prefix: &str) -> StorageResult<Self> {
        use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder, GoogleConfigKey};
        let location = Location::Gcs { bucket: bucket.to_string(), prefix: normalized(prefix) };
        let build = |quick: bool| -> StorageResult<(Arc<dyn ObjectStore>, String)> {
            let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            let endpoint = if let Some(host) = env("STORAGE_EMULATOR_HOST") {
                // Google's client libraries take `host:port` or a URL, and send no credentials.
                let url = if host.contains("://") { host } else { format!("http://{host}") };
                let url = url.trim_end_matches('/').to_string();
                builder = builder.with_base_url(&url).with_credentials(Arc::new(
                    object_store::StaticCredentialProvider::new(GcpCredential { bearer: String::new() }),
                ));
                if url.starts_with("http://") {
                    builder = builder.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
                }
                url
            } else {
                builder
                    .get_config_value(&GoogleConfigKey::BaseUrl)
                    .unwrap_or_else(|| "https://storage.googleapis.com".into())
            };
            for (key, value) in client_settings(quick) {
                builder = builder.with_config(GoogleConfigKey::Client(key), value);
            }
            let store = builder.with_retry(retries(quick)).build().map_err(|e| StorageError::Credentials {
                location: location.to_string(),
                cloud: "Google Cloud",
                message: format!("{}; {}", error_chain(&e), Cloud::Gcs.credential_hint()),
            })?;
            let store: Arc<dyn ObjectStore> = Arc::new(store);
            Ok((store, endpoint))
        };
        let (store, endpoint) = build(false)?;
        let (probe, _) = build(true)?;
        Ok(CloudStorage::new(Cloud::Gcs, bucket, prefix, store, probe, endpoint))
    }

    fn new(
        cloud: Cloud,
        bucket: &str,
        prefix: &str,
        store: Arc<dyn ObjectStore>,
        probe: Arc<dyn ObjectStore>,
        endpoint: String,
    ) -> Self {
        let prefix = normalized(prefix);
        let location = match cloud {
            Cloud::Azure => Location::Azure { container: bucket.to_string(), prefix: prefix.clone() },
            Cloud::Gcs => Location::Gcs { bucket: bucket.to_string(), prefix: prefix.clone() },
        };
        CloudStorage { cloud, store, probe, bucket: bucket.to_string(), prefix, location, endpoint }
    }

    fn url(&self, key: &str) -> String {
        format!("{}{key}", self.location)
    }

    /// The object's name in the store, refused as S3's would be, and where `object_store`
    /// would change it (control characters): a name is stored as given or not at all.
    fn path(&self, key: &str) -> StorageResult<KeyPath> {
        super::contract::validate_key(key)?;
        KeyPath::parse(format!("{}{key}", self.prefix))
            .map_err(|_| StorageError::InvalidKey { key: key.to_string(), reason: "it contains a control character" })
    }

    /// The folder `prefix` (empty or ending in `/`) below the root, as a listing prefix.
    fn folder(&self, prefix: &str) -> StorageResult<Option<KeyPath>> {
        let full = format!("{}{prefix}", self.prefix);
        if full.is_empty() {
            return Ok(None);
        }
        KeyPath::parse(&full)
            .map(Some)
            .map_err(|_| StorageError::InvalidKey { key: prefix.to_string(), reason: "it is not a folder prefix" })
    }

    /// Maps an `object_store` error to one the user can act on, naming the object's URL.
    fn classify(&self, operation: &'static str, key: &str, error: object_store::Error) -> StorageError {
        let location = self.url(key);
        let text = error_chain(&error);
        // The clouds' own codes: Azure's ContainerNotFound, the XML API's NoSuchBucket.
        if text.contains("ContainerNotFound") || text.contains("NoSuchBucket") {
            return StorageError::NoSuchBucket {
                location,
                what: self.cloud.bucket_word(),
                bucket: self.bucket.clone(),
            };
        }
        if is_credential_failure(&text) {
            return StorageError::Credentials {
                location,
                cloud: self.cloud.vendor(),
                message: format!("{}; {}", last_cause(&text), self.cloud.credential_hint()),
            };
        }
        let status = http_status(&text);
        match (&error, status) {
            (object_store::Error::NotFound { .. }, _) | (_, Some(404)) => return StorageError::NotFound { location },
            (object_store::Error::InvalidPath { .. }, _) => {
                return StorageError::InvalidKey { key: key.to_string(), reason: "the store refuses it" };
            }
            (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }, _)
            | (_, Some(401 | 403)) => {
                return StorageError::AccessDenied { location, message: service_message(&text, status) };
            }
            _ => {}
        }
        if let Some(kind) = transport_failure(&error) {
            return StorageError::Unreachable {
                location,
                service: self.cloud.service(),
                endpoint: self.endpoint.clone(),
                message: format!("{kind}: {}", last_cause(&text)),
            };
        }
        StorageError::Service { location, operation, message: service_message(&text, status) }
    }

    /// Opens a GET of the whole object or of `range` (`None` when the range starts at or past
    /// the end: no bytes, as the other backends answer).
    async fn open_read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> StorageResult<Option<BoxStream<'static, object_store::Result<Bytes>>>> {
        let path = self.path(key)?;
        let range = match range {
            Some(range) if range.start >= range.end => return Ok(None),
            // From the start to the end is the whole object: a plain GET, which an empty object
            // answers too (Azurite's range answer for one is "bytes 0--1/0").
            Some(range) if range.start == 0 && range.end == u64::MAX => None,
            Some(range) if range.end == u64::MAX => Some(GetRange::Offset(range.start)),
            Some(range) => Some(GetRange::Bounded(range)),
            None => None,
        };
        let ranged = range.is_some();
        match self.store.get_opts(&path, GetOptions::new().with_range(range)).await {
            Ok(result) => Ok(Some(result.into_stream())),
            Err(e) => {
                let text = error_chain(&e);
                // 416: the range starts at or past the end (an empty object has no byte 0).
                // object_store's own check of a range against the size it was told: the same.
                let past_end = http_status(&text) == Some(416)
                    || text.contains("StartTooLarge")
                    || text.contains("Wanted range starting at");
                if ranged && past_end {
                    // ...but only of an object that exists.
                    return match self.head(key).await? {
                        Some(_) => Ok(None),
                        None => Err(StorageError::NotFound { location: self.url(key) }),
                    };
                }
                Err(self.classify("GetObject", key, e))
            }
        }
    }

    /// Writes a body into `file` from `offset` as it arrives, about 1 MiB a write; returns
    /// the bytes written. A failed write names both the file and the object.
    async fn stream_into(
        &self,
        key: &str,
        mut body: BoxStream<'static, object_store::Result<Bytes>>,
        file: &Arc<std::fs::File>,
        target: &Path,
        offset: u64,
    ) -> StorageResult<u64> {
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0usize;
        let mut written = 0u64;
        loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => Some(chunk),
                Some(Err(e)) => return Err(self.classify("GetObject", key, e)),
                None => None,
            };
            let done = chunk.is_none();
            if let Some(chunk) = chunk.filter(|chunk| !chunk.is_empty()) {
                pending_len += chunk.len();
                pending.push(chunk);
            }
            if pending_len >= WRITE_BATCH || (done && pending_len > 0) {
                super::s3::write_chunks_at(file.clone(), std::mem::take(&mut pending), offset + written)
                    .await
                    .map_err(|e| StorageError::Io {
                        location: format!("{} (downloading {})", target.display(), self.url(key)),
                        source: e,
                    })?;
                written += std::mem::take(&mut pending_len) as u64;
            }
            if done {
                return Ok(written);
            }
        }
    }

    /// Lists `prefix`, only keys after `after` when one is given.
    fn list_from(&self, prefix: &str, after: Option<&str>) -> BoxStream<'static, StorageResult<ObjectMeta>> {
        let folder = match self.folder(prefix) {
            Ok(folder) => folder,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let full_after = after.map(|after| format!("{}{after}", self.prefix));
        let listed = match full_after.as_deref().map(KeyPath::parse) {
            Some(Ok(offset)) => self.store.list_with_offset(folder.as_ref(), &offset),
            _ => self.store.list(folder.as_ref()),
        };
        let this = self.clone();
        let prefix = prefix.to_string();
        listed
            .filter_map(move |listed| {
                let result = match listed {
                    Err(e) => Some(Err(this.classify("List", &prefix, e))),
                    Ok(meta) => {
                        let name: &str = meta.location.as_ref();
                        // The offset is filtered here too: Azurite and fake-gcs-server ignore it.
                        let later = full_after.as_deref().is_none_or(|after| name > after);
                        name.strip_prefix(&this.prefix).filter(|key| later && !key.is_empty()).map(|key| {
                            Ok(ObjectMeta {
                                key: key.to_string(),
                                size: meta.size,
                                version: meta.e_tag.as_deref().map(|tag| tag.trim_matches('"').to_string()),
                            })
                        })
                    }
                };
                futures::future::ready(result)
            })
            .boxed()
    }

    async fn upload_in_parts(&self, key: &str, path: &Path, size: u64) -> StorageResult<()> {
        use tokio::io::AsyncReadExt;
        let target = self.path(key)?;
        let io_error = |e: std::io::Error| StorageError::Io {
            location: format!("{} (uploading to {})", path.display(), self.url(key)),
            source: e,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
        let upload = self.store.put_multipart(&target).await.map_err(|e| self.classify("PutMultipart", key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut sent = 0u64;
        let result: StorageResult<()> = async {
            loop {
                let mut buffer = bytes::BytesMut::with_capacity(WRITE_BATCH);
                while buffer.len() < WRITE_BATCH {
                    if file.read_buf(&mut buffer).await.map_err(io_error)? == 0 {
                        break;
                    }
                }
                if buffer.is_empty() {
                    break;
                }
                sent += buffer.len() as u64;
                writer.wait_for_capacity(PART_CONCURRENCY).await.map_err(|e| self.classify("PutPart", key, e))?;
                writer.put(buffer.freeze());
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = writer.abort().await;
            return Err(e);
        }
        if sent != size {
            let _ = writer.abort().await;
            return Err(io_error(std::io::Error::other(format!(
                "the file changed while it was read ({sent} of {size} bytes)"
            ))));
        }
        writer.finish().await.map_err(|e| self.classify("CompleteMultipart", key, e))?;
        Ok(())
    }
}

/// Azure compares ETags, Google Cloud Storage generations: a version carries both.
fn version_of(e_tag: Option<String>, version: Option<String>) -> Version {
    Version(format!("{}\n{}", e_tag.unwrap_or_default(), version.unwrap_or_default()))
}

fn update_version(version: &Version) -> UpdateVersion {
    let (e_tag, generation) = version.0.split_once('\n').unwrap_or((&version.0, ""));
    let some = |text: &str| Some(text.to_string()).filter(|text| !text.is_empty());
    UpdateVersion { e_tag: some(e_tag), version: some(generation) }
}

fn normalized(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// An error and its causes, joined as `object_store` displays them, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The HTTP status a failed request got, from `object_store`'s message ("... status code:
/// 404 Not Found: ...").
fn http_status(text: &str) -> Option<u16> {
    let after = text.split("status code: ").nth(1)?;
    after.get(..3)?.parse().ok()
}

/// A token could not be had, or the credentials given could not be read or used.
fn is_credential_failure(text: &str) -> bool {
    [
        "token request",
        "token response",
        "service account file",
        "Invalid Access Key",
        "az account get-access-token",
        "federated token file",
        "GCP credential error",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// The request never got an answer: the kind of transport failure, if that is what it was.
fn transport_failure(error: &object_store::Error) -> Option<&'static str> {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(inner) = cause {
        if let Some(http) = inner.downcast_ref::<HttpError>() {
            return match http.kind() {
                HttpErrorKind::Connect => Some("connection failed"),
                HttpErrorKind::Timeout => Some("timed out"),
                HttpErrorKind::Request | HttpErrorKind::Interrupted => Some("the connection broke"),
                _ => None,
            };
        }
        cause = inner.source();
    }
    None
}

/// The innermost cause, which says what went wrong ("Connection refused (os error 111)").
fn last_cause(text: &str) -> String {
    let cause = text.rsplit(": ").next().unwrap_or(text);
    cause.chars().take(300).collect()
}

/// A service's answer in a few words: its status and error code (from the XML body) when
/// there is one, else the message.
fn service_message(text: &str, status: Option<u16>) -> String {
    let code = text.split("<Code>").nth(1).and_then(|rest| rest.split("</Code>").next());
    let message = text.split("<Message>").nth(1).and_then(|rest| rest.split("</Message>").next());
    match (status, code) {
        (Some(status), Some(code)) => {
            let message = message.map(|m| format!(": {}", m.lines().next().unwrap_or(m))).unwrap_or_default();
            format!("{code}{message} (HTTP {status})")
        }
        _ => text.chars().take(300).collect(),
    }
}

#[async_trait]
impl Storage for CloudStorage {
    fn root(&self) -> &Location {
        &self.location
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, StorageResult<ObjectMeta>> {
        self.list_from(prefix, None)
    }

    fn list_after(&self, prefix: &str, after: &str) -> BoxStream<'static, StorageResult<ObjectMeta>> {
        self.list_from(prefix, Some(after))
    }

    async fn list_dirs(&self, prefix: &str) -> StorageResult<Vec<String>> {
        let folder = self.folder(prefix)?;
        let full_prefix = format!("{}{prefix}", self.prefix);
        let listed =
            self.store.list_with_delimiter(folder.as_ref()).await.map_err(|e| self.classify("List", prefix, e))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|dir| {
                let name: &str = dir.as_ref();
                name.strip_prefix(&full_prefix).map(|name| name.trim_end_matches('/').to_string())
            })
            .filter(|name| !name.is_empty())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn head(&self, key: &str) -> StorageResult<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: meta.size,
                version: meta.e_tag.as_deref().map(|tag| tag.trim_matches('"').to_string()),
            })),
            Err(e) => match self.classify("HeadObject", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str) -> StorageResult<Bytes> {
        let path = self.path(key)?;
        let result = self.store.get(&path).await.map_err(|e| self.classify("GetObject", key, e))?;
        result.bytes().await.map_err(|e| self.classify("GetObject", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        use futures::TryStreamExt;
        let Some(body) = self.open_read(key, Some(range)).await? else { return Ok(Bytes::new()) };
        let chunks: Vec<Bytes> = body.try_collect().await.map_err(|e| self.classify("GetObject", key, e))?;
        Ok(match chunks.len() {
            1 => chunks.into_iter().next().expect("one chunk"),
            _ => Bytes::from(chunks.concat()),
        })
    }

    async fn download(&self, key: &str, target: &Path) -> StorageResult<u64> {
        let body = self.open_read(key, None).await?.expect("a whole object is always read");
        let write_error = |e: std::io::Error| StorageError::Io {
            location: format!("{} (downloading {})", target.display(), self.url(key)),
            source: e,
        };
        // A file already at `target` is overwritten in place, then cut to the object's size
        // (see the trait: staging's spares keep their cached pages).
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(target);
        let file = Arc::new(file.map_err(write_error)?);
        let written = self.stream_into(key, body, &file, target, 0).await?;
        file.set_len(written).map_err(write_error)?;
        Ok(written)
    }

    async fn append_range(&self, key: &str, range: Range<u64>, target: &Path) -> StorageResult<u64> {
        let Some(body) = self.open_read(key, Some(range)).await? else { return Ok(0) };
        let write_error = |e: std::io::Error| StorageError::Io {
            location: format!("{} (downloading {})", target.display(), self.url(key)),
            source: e,
        };
        let file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(target);
        let file = Arc::new(file.map_err(write_error)?);
        let end = file.metadata().map_err(write_error)?.len();
        self.stream_into(key, body, &file, target, end).await
    }

    async fn put(&self, key: &str, data: Bytes) -> StorageResult<()> {
        let path = self.path(key)?;
        self.store.put(&path, PutPayload::from(data)).await.map(|_| ()).map_err(|e| self.classify("PutObject", key, e))
    }

    async fn upload(&self, key: &str, path: &Path) -> StorageResult<u64> {
        let io_error = |e: std::io::Error| StorageError::Io {
            location: format!("{} (uploading to {})", path.display(), self.url(key)),
            source: e,
        };
        let size = tokio::fs::metadata(path).await.map_err(io_error)?.len();
        if size >= MULTIPART_THRESHOLD {
            self.upload_in_parts(key, path, size).await?;
            return Ok(size);
        }
        // Under the threshold: read whole in one blocking call and sent in one request.
        let owned = path.to_path_buf();
        let data = tokio::task::spawn_blocking(move || std::fs::read(owned))
            .await
            .expect("a blocking read does not panic")
            .map_err(io_error)?;
        self.put(key, Bytes::from(data)).await?;
        Ok(size)
    }

    async fn copy(&self, from: &str, to: &str) -> StorageResult<u64> {
        let (source, target) = (self.path(from)?, self.path(to)?);
        let size = self.head(from).await?.ok_or_else(|| StorageError::NotFound { location: self.url(from) })?.size;
        // Server-side: Azure's Copy Blob (synchronous within an account), GCS's copy.
        self.store.copy(&source, &target).await.map_err(|e| self.classify("CopyObject", from, e))?;
        Ok(size)
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) => match self.classify("DeleteObject", key, e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn get_versioned(&self, key: &str) -> StorageResult<Option<(Bytes, Version)>> {
        let path = self.path(key)?;
        let result = match self.store.get(&path).await {
            Ok(result) => result,
            Err(e) => {
                return match self.classify("GetObject", key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                }
            }
        };
        let version = version_of(result.meta.e_tag.clone(), result.meta.version.clone());
        let data = result.bytes().await.map_err(|e| self.classify("GetObject", key, e))?;
        Ok(Some((data, version)))
    }

    async fn put_if(&self, key: &str, data: Bytes, precondition: Precondition) -> StorageResult<Conditional> {
        let path = self.path(key)?;
        let mode = match precondition {
            Precondition::Absent => PutMode::Create,
            Precondition::Current(version) => PutMode::Update(update_version(&version)),
        };
        let options = PutOptions { mode, ..PutOptions::default() };
        match self.store.put_opts(&path, PutPayload::from(data), options).await {
            Ok(written) => Ok(Conditional::Written(version_of(written.e_tag, written.version))),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Conditional::Refused)
            }
            Err(e) => match self.classify("PutObject", key, e) {
                // Replacing a version of an object that is gone.
                StorageError::NotFound { .. } => Ok(Conditional::Refused),
                other => Err(other),
            },
        }
    }

    async fn check(&self, _for_writing: bool) -> StorageResult<()> {
        // The first page of a listing proves the endpoint, the credentials and the container
        // or bucket at once, with one retry, so that a wrong address fails in seconds.
        let folder = self.folder("")?;
        match self.probe.list(folder.as_ref()).next().await {
            Some(Err(e)) => Err(self.classify("List", "", e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_as_azure_writes_them() {
        let azurite = ConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        ))
        .unwrap();
        assert_eq!(azurite.account.as_deref(), Some("devstoreaccount1"));
        assert_eq!(azurite.key.as_deref(), Some(AZURITE_KEY), "a key's trailing '=' is kept");
        assert_eq!(azurite.blob_endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));

        let cloud = ConnectionString::parse(
            "DefaultEndpointsProtocol=https;AccountName=acme;SharedAccessSignature=sv=2022&sig=a%3D;EndpointSuffix=core.chinacloudapi.cn",
        )
        .unwrap();
        assert_eq!(cloud.sas.as_deref(), Some("sv=2022&sig=a%3D"));
        assert_eq!(cloud.blob_endpoint.as_deref(), Some("https://acme.blob.core.chinacloudapi.cn"));

        let development = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(development.blob_endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
        assert!(ConnectionString::parse("AccountKey=abc").is_err(), "no account");
        assert!(ConnectionString::parse("garbage").is_err());
    }

    #[test]
    fn statuses_codes_and_causes_are_read_from_the_crates_messages() {
        let text = "Generic MicrosoftAzure error: Error performing list request: Server returned non-2xx status \
                    code: 404 Not Found: <?xml version=\"1.0\"?><Error><Code>ContainerNotFound</Code><Message>The \
                    specified container does not exist.</Message></Error>";
        assert_eq!(http_status(text), Some(404));
        assert_eq!(
            service_message(text, Some(404)),
            "ContainerNotFound: The specified container does not exist. (HTTP 404)"
        );
        assert_eq!(last_cause("a: b: Connection refused (os error 111)"), "Connection refused (os error 111)");
        assert!(is_credential_failure("Generic GCS error: Error performing token request: x"));
        assert!(!is_credential_failure(text));
    }
}
