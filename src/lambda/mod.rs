//! AWS Lambda as an executor. `invoke` is the coordinator's side (an [`Executor`] that
//! batches attempts into invocations), `worker` the function's side (`fanout lambda
//! worker`, the deployment's bootstrap), `protocol` what they say to each other, `deploy`
//! the control plane. The rule they keep: workers only stage attempts (outputs under a
//! prefix of their own); the coordinator publishes one attempt per shard and commits it.
//!
//! [`Executor`]: crate::executor::Executor

pub mod deploy;
pub mod invoke;
pub mod protocol;
pub mod worker;
