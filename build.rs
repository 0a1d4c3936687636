//! Tells the integration tests whether an S3 test server (and a Lambda emulator, a Slurm
//! cluster, kubernetes-validate, a Kafka broker, Azurite, fake-gcs-server) is configured: `scripts/test` starts them
//! and names them in `FANOUT_TEST_SERVERS`; by hand, the variables each server's script
//! prints say it. Without one, its tests are compiled as ignored, so the test runner counts
//! them as skipped instead of passing them unrun; with one, they run and fail if it is gone.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fanout_s3_server)");
    println!("cargo::rustc-check-cfg=cfg(fanout_lambda_server)");
    println!("cargo::rustc-check-cfg=cfg(fanout_slurm_cluster)");
    println!("cargo::rustc-check-cfg=cfg(fanout_k8s_validate)");
    println!("cargo::rustc-check-cfg=cfg(fanout_kafka_broker)");
    println!("cargo::rustc-check-cfg=cfg(fanout_azure_server)");
    println!("cargo::rustc-check-cfg=cfg(fanout_gcs_server)");
    println!("cargo::rerun-if-changed=build.rs");
    // `scripts/test` names the servers it started in one variable that keeps its value from
    // run to run, so that a new port for the same server does not rebuild the crate.
    let servers = std::env::var("FANOUT_TEST_SERVERS").ok();
    let has = |variable: &str| match &servers {
        Some(named) => named.split(',').any(|name| Some(name.trim()) == server_of(variable)),
        None => std::env::var_os(variable).is_some(),
    };
    println!("cargo::rerun-if-env-changed=FANOUT_TEST_SERVERS");
    if servers.is_none() {
        for variable in VARIABLES {
            println!("cargo::rerun-if-env-changed={variable}");
        }
    }
    // The Kafka tests need the broker (`scripts/test-kafka`); the one writing to S3 also S3.
    if has("FANOUT_TEST_KAFKA") {
        println!("cargo::rustc-cfg=fanout_kafka_broker");
    }
    // Azure Blob (`scripts/test-azure`) and Google Cloud Storage (`scripts/test-gcs`) emulators.
    if has("FANOUT_TEST_AZURE_CONTAINER") && has("AZURE_STORAGE_CONNECTION_STRING") {
        println!("cargo::rustc-cfg=fanout_azure_server");
    }
    if has("FANOUT_TEST_GCS_BUCKET") && has("STORAGE_EMULATOR_HOST") {
        println!("cargo::rustc-cfg=fanout_gcs_server");
    }
    if has("FANOUT_TEST_BUCKET") && has("AWS_ENDPOINT_URL") {
        println!("cargo::rustc-cfg=fanout_s3_server");
        // The Lambda tests need both: the emulator (`scripts/test-lambda`) and S3.
        if has("FANOUT_TEST_LAMBDA_ENDPOINT") {
            println!("cargo::rustc-cfg=fanout_lambda_server");
        }
        // The Slurm tests need both: the cluster (`scripts/test-slurm`) and S3.
        if has("FANOUT_TEST_SLURM_DIR") {
            println!("cargo::rustc-cfg=fanout_slurm_cluster");
        }
        // The Kubernetes tests need both: kubernetes-validate (the API's schemas) and S3.
        if has("FANOUT_TEST_K8S_VALIDATE") {
            println!("cargo::rustc-cfg=fanout_k8s_validate");
        }
    }
}

/// The variables a test server's script sets, by the server's name in `FANOUT_TEST_SERVERS`.
const VARIABLES: [&str; 10] = [
    "FANOUT_TEST_KAFKA",
    "FANOUT_TEST_K8S_VALIDATE",
    "FANOUT_TEST_SLURM_DIR",
    "FANOUT_TEST_LAMBDA_ENDPOINT",
    "FANOUT_TEST_BUCKET",
    "AWS_ENDPOINT_URL",
    "FANOUT_TEST_AZURE_CONTAINER",
    "AZURE_STORAGE_CONNECTION_STRING",
    "FANOUT_TEST_GCS_BUCKET",
    "STORAGE_EMULATOR_HOST",
];

fn server_of(variable: &str) -> Option<&'static str> {
    Some(match variable {
        "FANOUT_TEST_KAFKA" => "kafka",
        "FANOUT_TEST_K8S_VALIDATE" => "k8s",
        "FANOUT_TEST_SLURM_DIR" => "slurm",
        "FANOUT_TEST_LAMBDA_ENDPOINT" => "lambda",
        "FANOUT_TEST_BUCKET" | "AWS_ENDPOINT_URL" => "s3",
        "FANOUT_TEST_AZURE_CONTAINER" | "AZURE_STORAGE_CONNECTION_STRING" => "azure",
        "FANOUT_TEST_GCS_BUCKET" | "STORAGE_EMULATOR_HOST" => "gcs",
        _ => return None,
    })
}
