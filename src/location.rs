//! Where data lives: `s3://bucket/prefix/`, `az://container/prefix/` (Azure Blob),
//! `gs://bucket/prefix/` (Google Cloud Storage), `file:///abs/path/`, a plain path, or (as a
//! source only) `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`. Owns the parsing and printing of
//! those addresses; it opens nothing (see `storage::open` and
//! `source::kafka::KafkaTopic::connect`).

use std::fmt;
use std::path::{Path, PathBuf};

/// A folder-like place: a local directory, or a bucket (container) and key prefix in S3,
/// Azure Blob or Google Cloud Storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Location {
    /// An absolute local path (a directory, or one file for single-object sources).
    Local(PathBuf),
    /// A bucket and a key prefix; the prefix is empty or ends in `/`, unless it names one object.
    S3 { bucket: String, prefix: String },
    /// An Azure Blob container and a blob-name prefix (the account comes from the
    /// environment, as Azure's own tools find it); the prefix as for S3.
    Azure { container: String, prefix: String },
    /// A Google Cloud Storage bucket and an object-name prefix; the prefix as for S3.
    Gcs { bucket: String, prefix: String },
    /// A Kafka topic: its bootstrap brokers (`host:port`, comma-separated) and its name.
    Kafka { brokers: String, topic: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LocationError {
    #[error(
        "\"{0}\": unknown URL scheme \"{1}\" (use s3://bucket/prefix/, az://container/prefix/, gs://bucket/prefix/, file:///abs/path/ or a plain path)"
    )]
    UnknownScheme(String, String),
    #[error("\"{0}\": an {1}:// URL needs a {2} name ({1}://{2}/prefix/)")]
    NoBucket(String, &'static str, &'static str),
    #[error("\"{0}\": a file:// URL needs an absolute path (file:///abs/path/)")]
    RelativeFileUrl(String),
    #[error("\"{0}\": a kafka:// URL is kafka://HOST:PORT[,HOST:PORT...]/TOPIC ({1})")]
    BadKafka(String, &'static str),
    #[error("an empty string is not a location")]
    Empty,
}

impl Location {
    /// Parses a location; relative plain paths are taken from the current directory.
    pub fn parse(text: &str) -> Result<Self, LocationError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Self::parse_relative_to(text, &cwd)
    }

    pub fn parse_relative_to(text: &str, base: &Path) -> Result<Self, LocationError> {
        if text.is_empty() {
            return Err(LocationError::Empty);
        }
        for (scheme, what) in [("s3", "bucket"), ("az", "container"), ("gs", "bucket")] {
            let Some(rest) = text.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("://")) else { continue };
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(LocationError::NoBucket(text.to_string(), scheme, what));
            }
            let (bucket, prefix) = (bucket.to_string(), prefix.to_string());
            return Ok(match scheme {
                "s3" => Location::S3 { bucket, prefix },
                "az" => Location::Azure { container: bucket, prefix },
                _ => Location::Gcs { bucket, prefix },
            });
        }
        if let Some(rest) = text.strip_prefix("kafka://") {
            return parse_kafka(text, rest);
        }
        if let Some(rest) = text.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(LocationError::RelativeFileUrl(text.to_string()));
            }
            return Ok(Location::Local(normalize(Path::new(rest))));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                return Err(LocationError::UnknownScheme(text.to_string(), scheme.to_string()));
            }
        }
        Ok(Location::Local(normalize(&base.join(text))))
    }

    /// The location of `key` below this one (a folder-like join with `/`).
    pub fn join(&self, key: &str) -> Location {
        match self {
            Location::Local(path) => Location::Local(path.join(key)),
            Location::S3 { .. } | Location::Azure { .. } | Location::Gcs { .. } => {
                let (_, prefix) = self.bucket_and_prefix().expect("an object store");
                let mut joined = prefix.to_string();
                if !joined.is_empty() && !joined.ends_with('/') {
                    joined.push('/');
                }
                joined.push_str(key);
                self.with_prefix(joined)
            }
            // A topic has no keys below it; nothing joins onto one (it is never a DEST).
            Location::Kafka { .. } => self.clone(),
        }
    }

    /// True when `other` is this location or lies inside it.
    pub fn contains(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::Local(a), Location::Local(b)) => b.starts_with(a),
            (a, b) if a.scheme() == b.scheme() => match (a.bucket_and_prefix(), b.bucket_and_prefix()) {
                (Some((ba, pa)), Some((bb, pb))) => {
                    let folder = if pa.is_empty() || pa.ends_with('/') { pa.to_string() } else { format!("{pa}/") };
                    ba == bb && (pb == pa || pb.starts_with(&folder))
                }
                _ => false,
            },
            _ => false,
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Location::S3 { .. })
    }

    /// True for a remote object store (S3, Azure Blob, Google Cloud Storage): a place every
    /// machine reaches by its address, unlike a local path or a Kafka topic.
    pub fn is_object_store(&self) -> bool {
        self.bucket_and_prefix().is_some()
    }

    /// The URL scheme as users write it (`s3`, `az`, `gs`, `file`, `kafka`).
    pub fn scheme(&self) -> &'static str {
        match self {
            Location::Local(_) => "file",
            Location::S3 { .. } => "s3",
            Location::Azure { .. } => "az",
            Location::Gcs { .. } => "gs",
            Location::Kafka { .. } => "kafka",
        }
    }

    /// An object store's bucket (or container) and key prefix; `None` for the others.
    pub fn bucket_and_prefix(&self) -> Option<(&str, &str)> {
        match self {
            Location::S3 { bucket, prefix } | Location::Gcs { bucket, prefix } => Some((bucket, prefix)),
            Location::Azure { container, prefix } => Some((container, prefix)),
            Location::Local(_) | Location::Kafka { .. } => None,
        }
    }

    /// The same bucket (or container) of the same store with another prefix. A local path
    /// or a topic has no prefix: it is returned unchanged.
    pub fn with_prefix(&self, prefix: String) -> Location {
        match self {
            Location::S3 { bucket, .. } => Location::S3 { bucket: bucket.clone(), prefix },
            Location::Azure { container, .. } => Location::Azure { container: container.clone(), prefix },
            Location::Gcs { bucket, .. } => Location::Gcs { bucket: bucket.clone(), prefix },
            Location::Local(_) | Location::Kafka { .. } => self.clone(),
        }
    }

    pub fn is_kafka(&self) -> bool {
        matches!(self, Location::Kafka { .. })
    }
}

/// `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`: every broker names its port (Kafka has no
/// default a user could rely on), and the topic is a legal Kafka topic name.
fn parse_kafka(text: &str, rest: &str) -> Result<Location, LocationError> {
    let bad = |why| LocationError::BadKafka(text.to_string(), why);
    let (brokers, topic) = rest.split_once('/').ok_or_else(|| bad("no topic"))?;
    if brokers.is_empty() {
        return Err(bad("no broker"));
    }
    for broker in brokers.split(',') {
        let (host, port) = broker.rsplit_once(':').ok_or_else(|| bad("each broker needs a :PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad("each broker is HOST:PORT"));
        }
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
        return Err(bad("a topic name is 1 to 249 letters, digits, '.', '_' or '-'"));
    }
    Ok(Location::Kafka { brokers: brokers.to_string(), topic: topic.to_string() })
}

/// Removes `.` and resolves `..` lexically, so that `DEST inside the input` checks and
/// the names printed to users are stable without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Azure { container, prefix } => write!(f, "az://{container}/{prefix}"),
            Location::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
            Location::Kafka { brokers, topic } => write!(f, "kafka://{brokers}/{topic}"),
        }
    }
}

impl TryFrom<String> for Location {
    type Error = LocationError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Location::parse(&text)
    }
}

impl From<Location> for String {
    fn from(location: Location) -> String {
        location.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let base = Path::new("/work");
        assert_eq!(
            Location::parse_relative_to("s3://photos/raw/", base).unwrap(),
            Location::S3 { bucket: "photos".into(), prefix: "raw/".into() }
        );
        assert_eq!(Location::parse_relative_to("file:///data/in/", base).unwrap(), Location::Local("/data/in".into()));
        assert_eq!(Location::parse_relative_to("out/../x", base).unwrap(), Location::Local("/work/x".into()));
        assert!(matches!(
            Location::parse_relative_to("http://host/x", base),
            Err(LocationError::UnknownScheme(_, s)) if s == "http"
        ));
        assert!(matches!(Location::parse_relative_to("s3:///x", base), Err(LocationError::NoBucket(..))));
        assert!(matches!(Location::parse_relative_to("file://rel", base), Err(LocationError::RelativeFileUrl(_))));
    }

    #[test]
    fn kafka_topics() {
        let base = Path::new("/");
        let topic = Location::parse_relative_to("kafka://a:9092,b:9093/events.v1", base).unwrap();
        assert_eq!(topic, Location::Kafka { brokers: "a:9092,b:9093".into(), topic: "events.v1".into() });
        assert_eq!(topic.to_string(), "kafka://a:9092,b:9093/events.v1");
        for bad in ["kafka://a:9092", "kafka://a/events", "kafka://:9092/e", "kafka://a:9092/", "kafka://a:9092/x y"] {
            assert!(matches!(Location::parse_relative_to(bad, base), Err(LocationError::BadKafka(..))), "{bad}");
        }
    }

    #[test]
    fn containment() {
        let base = Path::new("/");
        let input = Location::parse_relative_to("/data", base).unwrap();
        assert!(input.contains(&Location::parse_relative_to("/data/out", base).unwrap()));
        assert!(!input.contains(&Location::parse_relative_to("/data2", base).unwrap()));
        let s3 = Location::parse_relative_to("s3://b/raw", base).unwrap();
        assert!(s3.contains(&Location::parse_relative_to("s3://b/raw/out/", base).unwrap()));
        assert!(!s3.contains(&Location::parse_relative_to("s3://b/rawer/", base).unwrap()));
    }

    #[test]
    fn azure_and_gcs_parse_and_print_back_the_same() {
        let base = Path::new("/");
        let azure = Location::parse_relative_to("az://photos/raw/2026/", base).unwrap();
        assert_eq!(azure, Location::Azure { container: "photos".into(), prefix: "raw/2026/".into() });
        assert_eq!(azure.to_string(), "az://photos/raw/2026/");
        let gcs = Location::parse_relative_to("gs://bucket/out/", base).unwrap();
        assert_eq!(gcs, Location::Gcs { bucket: "bucket".into(), prefix: "out/".into() });
        assert_eq!(gcs.to_string(), "gs://bucket/out/");
        assert_eq!(Location::parse_relative_to("gs://bucket", base).unwrap().to_string(), "gs://bucket/");
        for text in ["az://c/", "gs://b/one.csv", "az://c/deep/er/"] {
            assert_eq!(Location::parse_relative_to(text, base).unwrap().to_string(), text);
        }
        assert!(azure.is_object_store() && gcs.is_object_store() && !azure.is_s3() && !gcs.is_s3());
        let error = Location::parse_relative_to("az:///raw/", base).unwrap_err();
        assert_eq!(error, LocationError::NoBucket("az:///raw/".into(), "az", "container"));
        assert!(error.to_string().contains("az://container/prefix/"), "{error}");
        assert!(matches!(Location::parse_relative_to("gs:///x", base), Err(LocationError::NoBucket(_, "gs", _))));
        // Serialized (job.json) as the URL, read back the same.
        let json = serde_json::to_string(&azure).unwrap();
        assert_eq!(json, "\"az://photos/raw/2026/\"");
        assert_eq!(serde_json::from_str::<Location>(&json).unwrap(), azure);
    }

    #[test]
    fn joins_and_containment_stay_in_one_store() {
        let base = Path::new("/");
        let azure = Location::parse_relative_to("az://c/raw", base).unwrap();
        assert_eq!(azure.join("a/b.txt").to_string(), "az://c/raw/a/b.txt");
        assert!(azure.contains(&Location::parse_relative_to("az://c/raw/out/", base).unwrap()));
        assert!(!azure.contains(&Location::parse_relative_to("az://c/rawer/", base).unwrap()));
        // The same names in another store are another place.
        assert!(!azure.contains(&Location::parse_relative_to("gs://c/raw/out/", base).unwrap()));
        assert!(!azure.contains(&Location::parse_relative_to("s3://c/raw/out/", base).unwrap()));
        let gcs = Location::parse_relative_to("gs://b/", base).unwrap();
        assert!(gcs.contains(&Location::parse_relative_to("gs://b/x/", base).unwrap()));
        assert_eq!(gcs.join("k").to_string(), "gs://b/k");
    }
}
