//! Tells the integration tests whether an S3 test server (and a Lambda emulator, a Slurm
//! cluster, kubernetes-validate, a Kafka broker) is configured (`scripts/test` starts them and sets these variables). Without one, the S3 tests are compiled as
//! ignored, so the test runner counts them as skipped instead of passing them unrun.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fanout_s3_server)");
    println!("cargo::rustc-check-cfg=cfg(fanout_lambda_server)");
    println!("cargo::rustc-check-cfg=cfg(fanout_slurm_cluster)");
    println!("cargo::rustc-check-cfg=cfg(fanout_k8s_validate)");
    println!("cargo::rustc-check-cfg=cfg(fanout_kafka_broker)");
    println!("cargo::rerun-if-env-changed=FANOUT_TEST_KAFKA");
    println!("cargo::rerun-if-env-changed=FANOUT_TEST_K8S_VALIDATE");
    println!("cargo::rerun-if-env-changed=FANOUT_TEST_SLURM_DIR");
    println!("cargo::rerun-if-env-changed=FANOUT_TEST_LAMBDA_ENDPOINT");
    println!("cargo::rerun-if-env-changed=FANOUT_TEST_BUCKET");
    println!("cargo::rerun-if-env-changed=AWS_ENDPOINT_URL");
    println!("cargo::rerun-if-changed=build.rs");
    // The Kafka tests need the broker (`scripts/test-kafka`); the one writing to S3 also S3.
    if std::env::var_os("FANOUT_TEST_KAFKA").is_some() {
        println!("cargo::rustc-cfg=fanout_kafka_broker");
    }
    if std::env::var_os("FANOUT_TEST_BUCKET").is_some() && std::env::var_os("AWS_ENDPOINT_URL").is_some() {
        println!("cargo::rustc-cfg=fanout_s3_server");
        // The Lambda tests need both: the emulator (`scripts/test-lambda`) and S3.
        if std::env::var_os("FANOUT_TEST_LAMBDA_ENDPOINT").is_some() {
            println!("cargo::rustc-cfg=fanout_lambda_server");
        }
        // The Slurm tests need both: the cluster (`scripts/test-slurm`) and S3.
        if std::env::var_os("FANOUT_TEST_SLURM_DIR").is_some() {
            println!("cargo::rustc-cfg=fanout_slurm_cluster");
        }
        // The Kubernetes tests need both: kubernetes-validate (the API's schemas) and S3.
        if std::env::var_os("FANOUT_TEST_K8S_VALIDATE").is_some() {
            println!("cargo::rustc-cfg=fanout_k8s_validate");
        }
    }
}
