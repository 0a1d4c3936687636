//! Kafka topics as a source (`kafka://HOST:PORT[,HOST:PORT...]/TOPIC`). Owns the client
//! settings (the job's librdkafka settings, credentials from the environment), checking the
//! brokers and the topic before anything runs, the offsets a job reads (fixed when it starts),
//! cutting partitions into offset-range shards (`cut`, for `run` and `watch`), reading a range
//! back for staging (`topic`), the one partition reader these three read with (`partition`:
//! which records, when a range is read, when a read has stalled), and moving the consumer
//! group's offsets behind the manifest (`offsets`). It never writes to DEST, and never decides what is done: the manifest does,
//! and the group's offsets only follow it.

mod client;
mod cut;
mod offsets;
mod partition;
mod topic;
mod watch;

pub(crate) use client::{output_key, KafkaSourceError};
pub(crate) use cut::{read_partitions, Cut};
pub(crate) use offsets::GroupOffsets;
pub(crate) use topic::KafkaTopic;
pub(crate) use watch::follow;
