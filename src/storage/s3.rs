//! S3 and S3-compatible servers (AWS, MinIO, Garage, Ceph) through aws-sdk-s3. Owns client
//! set-up from the AWS default chain (environment, profile, web identity), the endpoint
//! override with path-style addressing, the checksum setting that older servers need,
//! multipart uploads from files, and the mapping of SDK errors to [`StorageError`].
//!
//! Checksums: since 2025 the SDK signs streaming uploads with a CRC32 trailer
//! (`aws-chunked`), which several S3-compatible servers (Garage among them) reject. When an
//! endpoint is overridden and `AWS_REQUEST_CHECKSUM_CALCULATION` is unset, fanout asks for
//! checksums only when an operation requires them; against AWS itself the default stays.

use super::contract::{
    Conditional, ObjectMeta, Precondition, Storage, StorageError, StorageOptions, StorageResult, Version,
};
use crate::location::Location;
use async_trait::async_trait;
use aws_sdk_s3::config::{RequestChecksumCalculation, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

/// Files at least this large go up in parts, so no upload holds a whole object in memory.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// The size of each part (S3 allows 5 MiB to 5 GiB, at most 10,000 parts).
pub const PART_SIZE: u64 = 16 << 20;
/// The size of each ranged read of a download: a larger object is fetched in parallel parts.
pub const RANGE_SIZE: u64 = 16 << 20;
/// CopyObject copies at most 5 GiB; larger objects are copied in parts of this size.
const COPY_LIMIT: u64 = 5 << 30;
const COPY_PART_SIZE: u64 = 1 << 30;
/// S3's smallest part (all but the last part of a multipart upload).
const MIN_PART: u64 = 5 << 20;
/// Parts of one object in flight at once.
const PART_CONCURRENCY: usize = 4;
/// Writes `chunks` back to back from `offset` of a shared file, on the blocking pool, in
/// vectored writes: the network's buffers go to the page cache without being gathered first.
pub(super) async fn write_chunks_at(
    file: std::sync::Arc<std::fs::File>,
    mut chunks: Vec<Bytes>,
    mut offset: u64,
) -> std::io::Result<()> {
    use bytes::Buf;
    use std::os::fd::AsRawFd;
    tokio::task::spawn_blocking(move || {
        let mut first = 0;
        while first < chunks.len() {
            let slices: Vec<libc::iovec> = chunks[first..]
                .iter()
                .take(1024)
                .map(|c| libc::iovec { iov_base: c.as_ptr() as *mut libc::c_void, iov_len: c.len() })
                .collect();
            // SAFETY: every iovec points into a live `Bytes` of `chunks`, unchanged during the call.
            let written = unsafe {
                libc::pwritev(file.as_raw_fd(), slices.as_ptr(), slices.len() as libc::c_int, offset as libc::off_t)
            };
            if written < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            offset += written as u64;
            let mut left = written as usize;
            while left > 0 {
                let step = left.min(chunks[first].len());
                chunks[first].advance(step);
                left -= step;
                if chunks[first].is_empty() {
                    first += 1;
                }
            }
        }
        Ok(())
    })
    .await
    .expect("a blocking write does not panic")
}

#[derive(Debug, Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// Empty or ending in `/`.
    prefix: String,
    location: Location,
    endpoint: String,
}

/// The S3 endpoint set by the user: `--endpoint-url`, else as the AWS SDKs find it
/// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile). `None` means AWS itself.
fn configured_endpoint(shared: &aws_config::SdkConfig, flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string).or_else(|| crate::aws::configured_endpoint(shared, "S3"))
}

impl S3Storage {
    /// Lists `prefix`, from the first key after `start_after` when one is given.
    fn list_from(&self, prefix: &str, start_after: Option<&str>) -> BoxStream<'static, StorageResult<ObjectMeta>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<StorageResult<Vec<ObjectMeta>>>(4);
        let this = self.clone();
        let full_prefix = format!("{}{prefix}", self.prefix);
        let start_after = start_after.map(|after| format!("{}{after}", self.prefix));
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut pages = this
                .client
                .list_objects_v2()
                .bucket(&this.bucket)
                .prefix(&full_prefix)
                .set_start_after(start_after)
                .into_paginator()
                .send();

            while let Some(page) = pages.next().await {
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(this.classify("ListObjectsV2", &prefix, e))).await;
                        return;
                    }
                };
                let objects = page
                    .contents()
                    .iter()
                    .filter_map(|object| {
                        let key = object.key()?.strip_prefix(&this.prefix)?;
                        // "folder markers" some tools create are not data
                        (!key.is_empty() && !key.ends_with('/')).then(|| ObjectMeta {
                            key: key.to_string(),
                            size: object.size().unwrap_or(0).max(0) as u64,
                            version: object.e_tag().map(|tag| tag.trim_matches('"').to_string()),
                        })
                    })
                    .collect();
                if tx.send(Ok(objects)).await.is_err() {
                    return;
                }
            }
        });
        super::local::pages_to_stream(rx)
    }

    /// Builds a client from the AWS default chain. Nothing is sent until the first call;
    /// `check` proves the bucket is usable.
    pub async fn connect(bucket: &str, prefix: &str, options: &StorageOptions) -> StorageResult<Self> {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let configured = configured_endpoint(&shared, options.endpoint_url.as_deref());
        let endpoint = configured.clone().unwrap_or_else(|| "AWS S3".to_string());
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).build(),
            )
            // fanout reads bodies at the pace of its staging writes; a busy disk must not
            // be mistaken for a stalled server.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(url) = configured {
            config = config.endpoint_url(url).force_path_style(true);
            if std::env::var_os("AWS_REQUEST_CHECKSUM_CALCULATION").is_none() {
                config = config.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
            }
        }
        if shared.region().is_none() {
            config = config.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        let prefix = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        Ok(S3Storage {
            client: Client::from_conf(config.build()),
            location: Location::S3 { bucket: bucket.to_string(), prefix: prefix.clone() },
            bucket: bucket.to_string(),
            prefix,
            endpoint,
        })
    }

    /// A ranged GET of `start..start+length`, not yet read, and the object's total size.
    async fn get_part(
        &self,
        key: &str,
        full_key: &str,
        start: u64,
        length: u64,
    ) -> StorageResult<(aws_sdk_s3::operation::get_object::GetObjectOutput, u64)> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full_key)
            .range(format!("bytes={start}-{}", start + length - 1))
            .send()
            .await
            .map_err(|e| self.classify("GetObject", key, e))?;
        // "bytes 0-16777215/67108864"; a server that ignores ranges sends the whole object.
        let total = object
            .content_range()
            .and_then(|range| range.rsplit('/').next())
            .and_then(|total| total.parse::<u64>().ok())
            .or(object.content_length().map(|n| n.max(0) as u64))
            .unwrap_or(0);
        Ok((object, total))
    }

    /// Writes a response body into `file` (at `target`) from `offset` as it arrives, about
    /// 1 MiB per write, stopping after `limit` bytes; returns the bytes written. A failed
    /// write names both the file and the object.
    async fn stream_into(
        &self,
        key: &str,
        mut body: ByteStream,
        (file, target): (&std::sync::Arc<std::fs::File>, &Path),
        offset: u64,
        limit: u64,
    ) -> StorageResult<u64> {
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0u64;
        let mut written = 0u64;
        loop {
            let chunk = body.try_next().await.map_err(|e| StorageError::Service {
                location: self.url(key),
                operation: "GetObject",
                message: e.to_string(),
            })?;
            let done = chunk.is_none();
            if let Some(mut chunk) = chunk {
                chunk.truncate((limit - written - pending_len).min(chunk.len() as u64) as usize);
                pending_len += chunk.len() as u64;
                if !chunk.is_empty() {
                    pending.push(chunk);
                }
            }
            let full = written + pending_len >= limit;
            if pending_len >= (1 << 20) || ((done || full) && pending_len > 0) {
                write_chunks_at(file.clone(), std::mem::take(&mut pending), offset + written).await.map_err(|e| {
                    StorageError::Io {
                        location: format!("{} (downloading {})", target.display(), self.url(key)),
                        source: e,
                    }
                })?;
                written += std::mem::take(&mut pending_len);
            }
            if done || full {
                return Ok(written);
            }
        }
    }

    /// A single-request PUT of `data` at `full_key`, ready to send (or to customize first).
    fn put_request(
        &self,
        full_key: &str,
        data: Bytes,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full_key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
    }

    fn full_key(&self, key: &str) -> StorageResult<String> {
        super::contract::validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }

    /// Maps an SDK error to one the user can act on.
    fn classify<E>(
        &self,
        operation: &'static str,
        key: &str,
        error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let location = self.url(key);
        let text = DisplayErrorContext(&error).to_string();
        match &error {
            SdkError::DispatchFailure(failure) => {
                if text.contains("no credentials found") || text.contains("CredentialsNotLoaded") {
                    StorageError::Credentials {
                        location,
                        cloud: "AWS",
                        message: "none found in the environment (AWS_ACCESS_KEY_ID...), the shared config \
                                  and credentials files (AWS_PROFILE), web identity, ECS or instance metadata"
                            .into(),
                    }
                } else if text.contains("credential") {
                    StorageError::Credentials { location, cloud: "AWS", message: credentials_message(&text) }
                } else if failure.is_io() || failure.is_timeout() {
                    StorageError::Unreachable {
                        location,
                        service: "S3",
                        endpoint: self.endpoint.clone(),
                        message: connector_message(&text),
                    }
                } else {
                    StorageError::Service { location, operation, message: first_line(without_debug_dump(&text)) }
                }
            }
            SdkError::TimeoutError(_) => StorageError::Unreachable {
                location,
                service: "S3",
                endpoint: self.endpoint.clone(),
                message: "timed out".into(),
            },
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or_default().to_string();
                let message = service.err().message().unwrap_or_default().to_string();
                let described =
                    if message.is_empty() { format!("{code} (HTTP {status})") } else { format!("{code}: {message}") };
                match code.as_str() {
                    "NoSuchBucket" => {
                        StorageError::NoSuchBucket { location, what: "bucket", bucket: self.bucket.clone() }
                    }
                    "NoSuchKey" | "NotFound" => StorageError::NotFound { location },
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken" => StorageError::AccessDenied { location, message: described },
                    _ if status == 404 => StorageError::NotFound { location },
                    _ if status == 403 => StorageError::AccessDenied { location, message: described },
                    _ => StorageError::Service { location, operation, message: described },
                }
            }
            _ if text.contains("credential") => {
                StorageError::Credentials { location, cloud: "AWS", message: credentials_message(&text) }
            }
            _ => StorageError::Service { location, operation, message: first_line(without_debug_dump(&text)) },
        }
    }

    /// The parts of a concatenation: large stretches copied server-side (UploadPartCopy),
    /// small ones gathered in memory until they make a part of the minimum size.
    async fn concat_parts(
        &self,
        parts: &[ObjectMeta],
        to: &str,
        full_to: &str,
        upload_id: &str,
    ) -> StorageResult<Vec<CompletedPart>> {
        let mut completed = Vec::new();
        let mut buffer: Vec<u8> = Vec::new();
        let mut number = 1;
        for part in parts {
            let mut offset = 0;
            if !buffer.is_empty() {
                let take = (MIN_PART - buffer.len() as u64).min(part.size);
                buffer.extend_from_slice(&self.get_range(&part.key, 0..take).await?);
                offset = take;
                if buffer.len() as u64 >= MIN_PART {
                    completed.push(self.put_part(to, full_to, upload_id, number, std::mem::take(&mut buffer)).await?);
                    number += 1;
                }
            }
            let rest = part.size - offset;
            if rest == 0 {
                continue;
            }
            if rest < MIN_PART {
                buffer.extend_from_slice(&self.get_range(&part.key, offset..part.size).await?);
                if buffer.len() as u64 >= MIN_PART {
                    completed.push(self.put_part(to, full_to, upload_id, number, std::mem::take(&mut buffer)).await?);
                    number += 1;
                }
                continue;
            }
            let copy_source = format!("{}/{}", self.bucket, percent_encode_key(&self.full_key(&part.key)?));
            // Pieces of at most COPY_PART_SIZE; a short tail joins the piece before it.
            let mut start = offset;
            while start < part.size {
                let mut end = (start + COPY_PART_SIZE).min(part.size);
                if part.size - end < MIN_PART {
                    end = part.size;
                }
                completed.push(self.copy_part(to, full_to, upload_id, number, &copy_source, start..end).await?);
                number += 1;
                start = end;
            }
        }
        if !buffer.is_empty() || completed.is_empty() {
            completed.push(self.put_part(to, full_to, upload_id, number, buffer).await?);
        }
        Ok(completed)
    }

    /// Bytes `range` of `copy_source` as part `number` of an upload, copied server-side.
    async fn copy_part(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        number: i32,
        copy_source: &str,
        range: std::ops::Range<u64>,
    ) -> StorageResult<CompletedPart> {
        let copied = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source)
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| self.classify("UploadPartCopy", key, e))?;
        let etag = copied.copy_part_result().and_then(|r| r.e_tag()).unwrap_or_default().to_string();
        Ok(CompletedPart::builder().part_number(number).e_tag(etag).build())
    }

    async fn put_part(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        number: i32,
        data: Vec<u8>,
    ) -> StorageResult<CompletedPart> {
        let length = data.len() as i64;
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(length)
            .body(aws_sdk_s3::primitives::ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.classify("UploadPart", key, e))?;
        Ok(CompletedPart::builder().part_number(number).set_e_tag(uploaded.e_tag().map(str::to_string)).build())
    }

    /// A new multipart upload to `full_key`: its id.
    async fn start_multipart(&self, key: &str, full_key: &str) -> StorageResult<String> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .send()
            .await
            .map_err(|e| self.classify("CreateMultipartUpload", key, e))?;
        Ok(created.upload_id().unwrap_or_default().to_string())
    }

    async fn upload_multipart(&self, key: &str, full_key: &str, path: &Path, size: u64) -> StorageResult<()> {
        let upload_id = self.start_multipart(key, full_key).await?;
        let parts = self.upload_parts(key, full_key, path, size, &upload_id).await;
        self.finish_multipart(key, full_key, &upload_id, parts).await
    }

    /// Completes a multipart upload whose parts all arrived, or aborts it (no parts are left
    /// behind to be billed) and reports the first error.
    async fn finish_multipart(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        parts: StorageResult<Vec<CompletedPart>>,
    ) -> StorageResult<()> {
        match parts {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.classify("CompleteMultipartUpload", key, e)),
            Err(error) => {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full_key)
                    .upload_id(upload_id)
                    .send()
                    .await;
                Err(error)
            }
        }
    }

    /// A server-side copy of an object over 5 GiB: UploadPartCopy in ranges, completed only
    /// when every part is copied (so the target appears whole or not at all).
    async fn copy_multipart(&self, key: &str, full_key: &str, copy_source: &str, size: u64) -> StorageResult<()> {
        let upload_id = self.start_multipart(key, full_key).await?;
        let ranges: Vec<(i32, u64, u64)> = (0..size.div_ceil(COPY_PART_SIZE))
            .map(|i| (i as i32 + 1, i * COPY_PART_SIZE, ((i + 1) * COPY_PART_SIZE).min(size) - 1))
            .collect();
        use futures::{StreamExt, TryStreamExt};
        let parts: StorageResult<Vec<CompletedPart>> = futures::stream::iter(ranges)
            .map(|(number, first, last)| {
                let upload_id = upload_id.clone();
                async move { self.copy_part(key, full_key, &upload_id, number, copy_source, first..last + 1).await }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await;
        self.finish_multipart(key, full_key, &upload_id, parts).await
    }

    async fn upload_parts(
        &self,
        key: &str,
        full_key: &str,
        path: &Path,
        size: u64,
        upload_id: &str,
    ) -> StorageResult<Vec<CompletedPart>> {
        use futures::{StreamExt, TryStreamExt};
        let part_count = size.div_ceil(PART_SIZE);
        let mut parts: Vec<CompletedPart> = futures::stream::iter(0..part_count)
            .map(|index| async move {
                let offset = index * PART_SIZE;
                let length = PART_SIZE.min(size - offset);
                // A file body, streamed in 1 MiB reads: the part is never in memory whole,
                // and the SDK signs it without hashing the payload (see `upload`).
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(Length::Exact(length))
                    .buffer_size(1 << 20)
                    .build()
                    .await
                    .map_err(|e| StorageError::Io {
                        location: format!("{} (uploading to {})", path.display(), self.url(key)),
                        source: std::io::Error::other(e),
                    })?;
                let part_number = index as i32 + 1;
                let uploaded = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full_key)
                    .upload_id(upload_id)
                    .part_number(part_number)
                    .content_length(length as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| self.classify("UploadPart", key, e))?;
                Ok::<_, StorageError>(
                    CompletedPart::builder()
                        .part_number(part_number)
                        .set_e_tag(uploaded.e_tag().map(str::to_string))
                        .build(),
                )
            })
            .buffer_unordered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }
}

/// A key as CopyObject's `x-amz-copy-source` needs it: percent-encoded, `/` kept.
fn percent_encode_key(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().chars().take(300).collect()
}

/// The SDK's display chain without the debug dump it appends in parentheses
/// ("... (DispatchFailure(DispatchFailure { source: ConnectorError ...").
fn without_debug_dump(text: &str) -> &str {
    let dumps = [" (DispatchFailure", " (ConstructionFailure", " (ResponseError", " (TimeoutError", " (ServiceError"];
    let end = dumps.iter().filter_map(|dump| text.find(dump)).min().unwrap_or(text.len());
    &text[..end]
}

/// Why the credentials found could not be used, and what to set instead.
fn credentials_message(text: &str) -> String {
    let why = without_debug_dump(text).rsplit(": ").next().map(first_line).unwrap_or_default();
    format!("{why}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with its config files")
}

/// The innermost cause of a connection failure ("Connection refused (os error 111)"): the
/// last link of the display chain, before the debug dump the SDK appends in parentheses.
fn connector_message(text: &str) -> String {
    let display = without_debug_dump(text);
    display.rsplit(": ").next().map(first_line).unwrap_or_else(|| first_line(display))
}

#[async_trait]
impl Storage for S3Storage {
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
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut names = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("ListObjectsV2", prefix, e))?;
            for common in page.common_prefixes() {
                if let Some(name) = common.prefix().and_then(|p| p.strip_prefix(&full_prefix)) {
                    names.push(name.trim_end_matches('/').to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    async fn head(&self, key: &str) -> StorageResult<Option<ObjectMeta>> {
        let full_key = self.full_key(key)?;
        match self.client.head_object().bucket(&self.bucket).key(&full_key).send().await {
            Ok(head) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: head.content_length().unwrap_or(0).max(0) as u64,
                version: head.e_tag().map(|tag| tag.trim_matches('"').to_string()),
            })),
            Err(e) => match self.classify("HeadObject", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str) -> StorageResult<Bytes> {
        let full_key = self.full_key(key)?;
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|e| self.classify("GetObject", key, e))?;
        let body = object.body.collect().await.map_err(|e| StorageError::Service {
            location: self.url(key),
            operation: "GetObject",
            message: e.to_string(),
        })?;
        Ok(body.into_bytes())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let full_key = self.full_key(key)?;
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        let object = match result {
            Ok(object) => object,
            // A range that starts at or past the end is "not satisfiable": that is no bytes.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 416 => return Ok(Bytes::new()),
            Err(e) => return Err(self.classify("GetObject", key, e)),
        };
        let body = object.body.collect().await.map_err(|e| StorageError::Service {
            location: self.url(key),
            operation: "GetObject",
            message: e.to_string(),
        })?;
        Ok(body.into_bytes())
    }

    async fn download(&self, key: &str, target: &Path) -> StorageResult<u64> {
        use futures::{StreamExt, TryStreamExt};
        let full_key = self.full_key(key)?;
        let write_error = |e: std::io::Error| StorageError::Io {
            location: format!("{} (downloading {})", target.display(), self.url(key)),
            source: e,
        };
        let read_error = |e: &dyn std::fmt::Display| StorageError::Service {
            location: self.url(key),
            operation: "GetObject",
            message: e.to_string(),
        };
        // The first part comes with the object's size (Content-Range). An object no larger
        // than one part is then gathered and written at once; a larger one streams into the
        // file while the other parts are fetched in parallel, each written at its offset.
        let (first, total) = match self.get_part(key, &full_key, 0, RANGE_SIZE).await {
            Ok(part) => part,
            // An empty object has no byte 0 to ask for.
            Err(StorageError::Service { message, .. })
                if message.contains("InvalidRange") || message.contains("416") =>
            {
                let target_path = target.to_path_buf();
                tokio::task::spawn_blocking(move || std::fs::write(&target_path, b""))
                    .await
                    .expect("a blocking write does not panic")
                    .map_err(write_error)?;
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        // A file already at `target` is overwritten in place, not truncated first: its
        // cached pages are cheaper to write than new ones (see stage's spares).
        let open = |target: &Path| std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(target);
        if total <= RANGE_SIZE {
            let data = first.body.collect().await.map_err(|e| read_error(&e))?.into_bytes();
            let length = data.len() as u64;
            let target_path = target.to_path_buf();
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let file = open(&target_path)?;
                file.write_all_at(&data, 0)?;
                file.set_len(length)
            })
            .await
            .expect("a blocking write does not panic")
            .map_err(write_error)?;
            return Ok(length);
        }
        let file = std::sync::Arc::new(open(target).map_err(write_error)?);
        file.set_len(total).map_err(write_error)?;
        let first_part = self.stream_into(key, first.body, (&file, target), 0, RANGE_SIZE);
        let parts = total.div_ceil(RANGE_SIZE);
        let rest = futures::stream::iter(1..parts)
            .map(|index| {
                let (file, full_key) = (file.clone(), full_key.clone());
                async move {
                    let start = index * RANGE_SIZE;
                    let expected = RANGE_SIZE.min(total - start);
                    let (part, _) = self.get_part(key, &full_key, start, expected).await?;
                    let written = self.stream_into(key, part.body, (&file, target), start, expected).await?;
                    if written != expected {
                        return Err(StorageError::Service {
                            location: self.url(key),
                            operation: "GetObject",
                            message: format!("the object changed while it was read ({written} of {expected} bytes)"),
                        });
                    }
                    Ok::<u64, StorageError>(written)
                }
            })
            .buffer_unordered(PART_CONCURRENCY)
            .try_collect::<Vec<u64>>();
        let (first_written, rest) = futures::try_join!(first_part, rest)?;
        Ok(first_written + rest.iter().sum::<u64>())
    }

    async fn append_range(&self, key: &str, range: Range<u64>, target: &Path) -> StorageResult<u64> {
        if range.start >= range.end {
            return Ok(0);
        }
        let full_key = self.full_key(key)?;
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        let object = match result {
            Ok(object) => object,
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 416 => return Ok(0),
            Err(e) => return Err(self.classify("GetObject", key, e)),
        };
        let write_error = |e: std::io::Error| StorageError::Io {
            location: format!("{} (downloading {})", target.display(), self.url(key)),
            source: e,
        };
        // Not O_APPEND: positioned writes at the end, so the same streaming code serves both.
        let file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(target);
        let file = std::sync::Arc::new(file.map_err(write_error)?);
        let end = file.metadata().map_err(write_error)?.len();
        self.stream_into(key, object.body, (&file, target), end, range.end - range.start).await
    }

    async fn put(&self, key: &str, data: Bytes) -> StorageResult<()> {
        let full_key = self.full_key(key)?;
        self.put_request(&full_key, data).send().await.map(|_| ()).map_err(|e| self.classify("PutObject", key, e))
    }

    async fn upload(&self, key: &str, path: &Path) -> StorageResult<u64> {
        let full_key = self.full_key(key)?;
        let io_error = |e: std::io::Error| StorageError::Io {
            location: format!("{} (uploading to {})", path.display(), self.url(key)),
            source: e,
        };
        let size = tokio::fs::metadata(path).await.map_err(io_error)?.len();
        if size >= MULTIPART_THRESHOLD {
            self.upload_multipart(key, &full_key, path, size).await?;
            return Ok(size);
        }
        // Read whole in one blocking call (an object under the multipart threshold), and sent
        // without a payload hash in the signature: the length and the transport protect it
        // (TLS on https), as the AWS CLI does, and neither end spends CPU on SHA-256.
        let owned = path.to_path_buf();
        let data = tokio::task::spawn_blocking(move || std::fs::read(owned))
            .await
            .expect("a blocking read does not panic")
            .map_err(io_error)?;
        self.put_request(&full_key, Bytes::from(data))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.classify("PutObject", key, e))?;
        Ok(size)
    }

    async fn concat(&self, parts: &[ObjectMeta], to: &str, _scratch: &Path) -> StorageResult<u64> {
        // A multipart upload needs one part with a body: an empty result is one PUT.
        if parts.iter().all(|part| part.size == 0) {
            self.put(to, Bytes::new()).await?;
            return Ok(0);
        }
        let full_to = self.full_key(to)?;
        let upload_id = self.start_multipart(to, &full_to).await?;
        let completed = self.concat_parts(parts, to, &full_to, &upload_id).await;
        self.finish_multipart(to, &full_to, &upload_id, completed).await?;
        Ok(parts.iter().map(|p| p.size).sum())
    }

    async fn copy(&self, from: &str, to: &str) -> StorageResult<u64> {
        let (full_from, full_to) = (self.full_key(from)?, self.full_key(to)?);
        let size = self.head(from).await?.ok_or_else(|| StorageError::NotFound { location: self.url(from) })?.size;
        let copy_source = format!("{}/{}", self.bucket, percent_encode_key(&full_from));
        if size > COPY_LIMIT {
            self.copy_multipart(to, &full_to, &copy_source, size).await?;
            return Ok(size);
        }
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(&full_to)
            .copy_source(copy_source)
            .send()
            .await
            .map_err(|e| self.classify("CopyObject", to, e))?;
        Ok(size)
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        let full_key = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("DeleteObject", key, e))
    }

    async fn get_versioned(&self, key: &str) -> StorageResult<Option<(Bytes, Version)>> {
        let full_key = self.full_key(key)?;
        let object = match self.client.get_object().bucket(&self.bucket).key(&full_key).send().await {
            Ok(object) => object,
            Err(e) => {
                return match self.classify("GetObject", key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                }
            }
        };
        let version = Version(object.e_tag().unwrap_or_default().to_string());
        let body = object.body.collect().await.map_err(|e| StorageError::Service {
            location: self.url(key),
            operation: "GetObject",
            message: e.to_string(),
        })?;
        Ok(Some((body.into_bytes(), version)))
    }

    async fn put_if(&self, key: &str, data: Bytes, precondition: Precondition) -> StorageResult<Conditional> {
        let full_key = self.full_key(key)?;
        let request = match &precondition {
            Precondition::Absent => self.put_request(&full_key, data).if_none_match("*"),
            Precondition::Current(Version(e_tag)) => self.put_request(&full_key, data).if_match(e_tag),
        };
        match request.send().await {
            Ok(written) => Ok(Conditional::Written(Version(written.e_tag().unwrap_or_default().to_string()))),
            // 412: the condition failed; 409: another conditional write of the key is in
            // flight (AWS), which one of the two wins.
            Err(SdkError::ServiceError(e)) if matches!(e.raw().status().as_u16(), 412 | 409) => {
                Ok(Conditional::Refused)
            }
            // If-Match on a key that is gone.
            Err(e) => match self.classify("PutObject", key, e) {
                StorageError::NotFound { .. } => Ok(Conditional::Refused),
                other => Err(other),
            },
        }
    }

    async fn check(&self, _for_writing: bool) -> StorageResult<()> {
        // One signed request proves the endpoint, the credentials and the bucket at once; it
        // is retried once only, so that a wrong address fails in seconds, not a minute.
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(1)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::new()
                    .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2)),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("ListObjectsV2", "", e))
    }
}

#[cfg(test)]
mod tests {
    use super::{connector_message, credentials_message};

    #[test]
    fn sdk_errors_read_as_one_line_without_the_debug_dump() {
        let text = "dispatch failure: other: the credential provider was not enabled: no providers in chain \
                    provided credentials (DispatchFailure(DispatchFailure { source: ConnectorError { kind: \
                    Other(None), source: CredentialsNotLoaded(CredentialsNotLoaded { source: Some(\"x\") }) } }))";
        let said = credentials_message(text);
        assert!(said.starts_with("no providers in chain provided credentials; set AWS_ACCESS_KEY_ID"), "{said}");
        assert!(!said.contains("DispatchFailure") && !said.contains('{'), "{said}");
        let refused = "dispatch failure: io error: error trying to connect: tcp connect error: Connection refused \
                       (os error 111) (DispatchFailure(DispatchFailure { source: ConnectorError { kind: Io } }))";
        assert_eq!(connector_message(refused), "Connection refused (os error 111)");
    }
}
