//! `fanout lambda deploy` and `fanout lambda worker`: the command-line side of the Lambda
//! executor (the work is in `crate::lambda`).

use super::args::{LambdaArgs, LambdaCommand};
use super::exit::{failed, usage, Failure, EXIT_OK};
use crate::executor::lambda::deploy::{self, Deployment};
use crate::worker::lambda as worker;
use anyhow::anyhow;

impl LambdaArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        match self.command {
            LambdaCommand::Worker => {
                worker::serve().await.map_err(|e| match e {
                    worker::WorkerError::NotInLambda(_) => usage(anyhow!("{e}")),
                    other => failed(anyhow!("{other}")),
                })?;
                Ok(EXIT_OK)
            }
            LambdaCommand::Deploy(args) => {
                if !(1..=900).contains(&args.timeout) {
                    return Err(usage(anyhow!("--timeout: {} is not between 1 and 900 seconds", args.timeout)));
                }
                if !(128..=10_240).contains(&args.memory) {
                    return Err(usage(anyhow!("--memory: {} is not between 128 and 10240 MB", args.memory)));
                }
                if !(512..=10_240).contains(&args.ephemeral_storage) {
                    return Err(usage(anyhow!(
                        "--ephemeral-storage: {} is not between 512 and 10240 MB",
                        args.ephemeral_storage
                    )));
                }
                let deployment = Deployment {
                    name: args.name,
                    role: args.role,
                    zip: args.zip,
                    bootstrap: args.bootstrap,
                    arm64: args.arm64,
                    memory_mb: args.memory,
                    timeout_s: args.timeout,
                    ephemeral_mb: args.ephemeral_storage,
                };
                let deployed = deploy::deploy(&deployment).await.map_err(|e| match e {
                    deploy::DeployError::Lambda { .. } => failed(anyhow!("{e}")),
                    other => usage(anyhow!("{other}")),
                })?;
                if args.output.json {
                    let json = serde_json::json!({
                        "function": deployment.name, "arn": deployed.arn, "created": deployed.created,
                        "zip_bytes": deployed.zip_bytes, "runtime": deploy::LAMBDA_RUNTIME,
                    });
                    println!("{json}");
                } else if !args.output.quiet {
                    let verb = if deployed.created { "created" } else { "updated" };
                    println!(
                        "fanout: {verb} Lambda function {} ({}, {} zip, {})",
                        deployment.name,
                        deployed.arn,
                        crate::units::format_size(deployed.zip_bytes as u64),
                        deploy::LAMBDA_RUNTIME
                    );
                }
                Ok(EXIT_OK)
            }
        }
    }
}
