//! AWS configuration that more than one client needs (S3 for storage, Lambda for the
//! executor), read the way the AWS SDKs define it. Owns no client and does no I/O.

/// The endpoint set for `service_id` ("S3", "Lambda"), found as the AWS SDKs find it:
/// `AWS_ENDPOINT_URL_<SERVICE>` (or the profile's services section), else
/// `AWS_ENDPOINT_URL` (or the profile's `endpoint_url`). `None` means AWS itself.
pub(crate) fn configured_endpoint(shared: &aws_config::SdkConfig, service_id: &str) -> Option<String> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id(service_id)
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .expect("every part of the key is set");
    shared
        .service_config()
        .and_then(|config| config.load_config(key))
        .or_else(|| shared.endpoint_url().map(str::to_string))
}
