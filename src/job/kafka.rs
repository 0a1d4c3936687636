//! `[input.kafka]` and the `--kafka-*` flags resolved into [`KafkaInput`], and the rules a
//! job over a topic keeps (a shard rule of rows or bytes, no include globs, no secrets in the
//! job file). Owns only those checks; connecting to the brokers is `crate::source::kafka`'s work.

use super::error::{JobError, JobText};
use super::model::{KafkaInput, KafkaStart, RecordFormat, ShardRule};
use super::schema::{Given, InputTable};
use std::collections::BTreeMap;

/// Records a Kafka shard holds when the job names no rule.
pub(crate) const DEFAULT_ROWS: u64 = 10_000;

/// librdkafka settings that hold a secret: never read from a job file (it is copied into
/// job.json and shared), only from the environment (see `crate::source::kafka::client_config`).
const SECRET_SETTINGS: &[&str] = &[
    "sasl.password",
    "sasl.username",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

/// Settings fanout sets itself: a job that changed them would break its guarantees.
const OWN_SETTINGS: &[&str] = &["bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store"];

/// The environment variable a secret librdkafka setting is read from: `sasl.password` is
/// `FANOUT_KAFKA_SASL_PASSWORD`.
pub(crate) fn secret_variable(setting: &str) -> String {
    format!("FANOUT_KAFKA_{}", setting.to_ascii_uppercase().replace('.', "_"))
}

pub(crate) fn secret_settings() -> &'static [&'static str] {
    SECRET_SETTINGS
}

/// The Kafka part of `[input]`, or `None` for other sources (where it is an error to give it).
pub(crate) fn resolve_kafka(
    table: &InputTable,
    is_kafka: bool,
    job_name: &str,
    text: &JobText,
) -> Result<Option<KafkaInput>, JobError> {
    let flags = [&table.kafka_group, &table.kafka_start, &table.kafka_format];
    if !is_kafka {
        if let Some(given) = &table.kafka {
            return Err(given.error("[input.kafka] goes with a kafka:// source"));
        }
        if let Some(given) = flags.into_iter().flatten().next() {
            return Err(given.error("this flag goes with a kafka:// source"));
        }
        return Ok(None);
    }
    if let Some(first) = table.include.first() {
        return Err(first.error("a Kafka topic has no keys to match: remove input.include"));
    }
    let file = table.kafka.as_ref().map(|given| given.value.clone()).unwrap_or_default();
    let at = |span: std::ops::Range<usize>, member: &str, message: String| JobError::Field {
        origin: text.origin_at(span.start),
        field: format!("input.kafka.{member}"),
        message,
    };
    let group = match (&table.kafka_group, &file.group) {
        (Some(flag), _) => checked_group(&flag.value).map_err(|m| flag.error(m))?,
        (None, Some(spanned)) => checked_group(spanned.get_ref()).map_err(|m| at(spanned.span(), "group", m))?,
        (None, None) => job_name.to_string(),
    };
    let start = match (&table.kafka_start, &file.start) {
        (Some(flag), _) => parse_start(&toml::Value::String(flag.value.clone())).map_err(|m| flag.error(m))?,
        (None, Some(spanned)) => parse_start(spanned.get_ref()).map_err(|m| at(spanned.span(), "start", m))?,
        (None, None) => KafkaStart::Committed,
    };
    let format = match (&table.kafka_format, &file.format) {
        (Some(flag), _) => parse_format(&flag.value).map_err(|m| flag.error(m))?,
        (None, Some(spanned)) => parse_format(spanned.get_ref()).map_err(|m| at(spanned.span(), "format", m))?,
        (None, None) => RecordFormat::Lines,
    };
    let mut settings = BTreeMap::new();
    for (key, value) in &file.settings {
        let member = format!("settings.\"{key}\"");
        if SECRET_SETTINGS.contains(&key.as_str()) {
            let variable = secret_variable(key);
            return Err(at(
                value.span(),
                &member,
                format!("credentials never go in a job file: set {variable} in the environment instead"),
            ));
        }
        if OWN_SETTINGS.contains(&key.as_str()) {
            return Err(at(
                value.span(),
                &member,
                "fanout sets this itself (from input.source and input.kafka.group)".into(),
            ));
        }
        settings.insert(key.clone(), value.get_ref().clone());
    }
    Ok(Some(KafkaInput { group, start, format, settings, bounds: None }))
}

/// A topic is cut by records or by payload bytes; the default is [`DEFAULT_ROWS`] records.
pub(crate) fn kafka_shard_rule(given: Option<(&Given<impl Sized>, ShardRule)>) -> Result<ShardRule, JobError> {
    match given {
        None => Ok(ShardRule::Rows { rows: DEFAULT_ROWS }),
        Some((_, rule @ (ShardRule::Rows { .. } | ShardRule::Bytes { .. }))) => Ok(rule),
        Some((given, rule)) => {
            Err(given.error(format!("a Kafka topic is cut by rows = N or bytes = SIZE, not by {rule}")))
        }
    }
}

fn checked_group(group: &str) -> Result<String, String> {
    if group.trim().is_empty() || group.len() > 249 {
        return Err(format!("{group:?} is not a consumer group name (1 to 249 characters)"));
    }
    Ok(group.to_string())
}

/// `committed`, `earliest`, `latest`, an RFC 3339 time (a TOML date-time or a string), or
/// milliseconds since the Unix epoch.
fn parse_start(value: &toml::Value) -> Result<KafkaStart, String> {
    const KNOWN: &str = "use committed, earliest, latest, or a time such as 2026-11-30T12:00:00Z";
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        toml::Value::Integer(ms) if *ms >= 0 => return Ok(KafkaStart::Timestamp { ms: *ms }),
        other => return Err(format!("{other} is not a start position ({KNOWN})")),
    };
    match text.as_str() {
        "committed" => Ok(KafkaStart::Committed),
        "earliest" => Ok(KafkaStart::Earliest),
        "latest" => Ok(KafkaStart::Latest),
        _ => {
            let time =
                humantime::parse_rfc3339_weak(&text).map_err(|_| format!("\"{text}\" is not known ({KNOWN})"))?;
            let ms = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("\"{text}\" is before 1970"))?;
            Ok(KafkaStart::Timestamp { ms: ms.as_millis() as i64 })
        }
    }
}

fn parse_format(text: &str) -> Result<RecordFormat, String> {
    match text {
        "lines" => Ok(RecordFormat::Lines),
        "length-prefixed" => Ok(RecordFormat::LengthPrefixed),
        other => Err(format!("\"{other}\" is not a record format (use \"lines\" or \"length-prefixed\")")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        assert_eq!(parse_start(&toml::Value::String("latest".into())), Ok(KafkaStart::Latest));
        assert_eq!(
            parse_start(&toml::Value::String("2026-11-30T00:00:00Z".into())),
            Ok(KafkaStart::Timestamp { ms: 1_795_996_800_000 })
        );
        assert!(parse_start(&toml::Value::String("soon".into())).is_err());
        assert_eq!(secret_variable("sasl.password"), "FANOUT_KAFKA_SASL_PASSWORD");
    }
}
