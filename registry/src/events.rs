//! The registry's changes as CloudEvents 1.0 (structured JSON, the
//! envelope of Tidewatch's retrain events): type
//! `io.tidewatch.registry.<change>`, source `tidewatch/registry`, subject
//! `<model>` or `<model>/<version>`, and `data` shaped like MLflow's webhook
//! payload of the same change, so a consumer written for MLflow's webhooks
//! reads them unchanged.
//!
//! Each event is written to the outbox in the transaction of its change;
//! its `id` is its outbox sequence number, so a re-published event keeps
//! its id and consumers deduplicate by it.

use serde_json::{json, Map, Value};

/// The `source` of every registry event.
pub const SOURCE: &str = "tidewatch/registry";

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    RegisteredModelCreated,
    ModelVersionCreated,
    ModelVersionTagSet,
    ModelVersionTagDeleted,
    ModelVersionAliasCreated,
    ModelVersionAliasDeleted,
    ReferenceProfileAttached,
}

impl ChangeKind {
    /// Every kind.
    pub const ALL: [ChangeKind; 7] = [
        ChangeKind::RegisteredModelCreated,
        ChangeKind::ModelVersionCreated,
        ChangeKind::ModelVersionTagSet,
        ChangeKind::ModelVersionTagDeleted,
        ChangeKind::ModelVersionAliasCreated,
        ChangeKind::ModelVersionAliasDeleted,
        ChangeKind::ReferenceProfileAttached,
    ];

    /// The CloudEvent `type`.
    pub fn event_type(self) -> &'static str {
        match self {
            ChangeKind::RegisteredModelCreated => "io.tidewatch.registry.registered_model.created",
            ChangeKind::ModelVersionCreated => "io.tidewatch.registry.model_version.created",
            ChangeKind::ModelVersionTagSet => "io.tidewatch.registry.model_version_tag.set",
            ChangeKind::ModelVersionTagDeleted => "io.tidewatch.registry.model_version_tag.deleted",
            ChangeKind::ModelVersionAliasCreated => {
                "io.tidewatch.registry.model_version_alias.created"
            }
            ChangeKind::ModelVersionAliasDeleted => {
                "io.tidewatch.registry.model_version_alias.deleted"
            }
            ChangeKind::ReferenceProfileAttached => {
                "io.tidewatch.registry.reference_profile.attached"
            }
        }
    }

    /// The kind of a CloudEvent `type`.
    pub fn from_event_type(event_type: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.event_type() == event_type)
    }
}

/// A change, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// The model it concerns (the message key on the bus: one model's
    /// events stay in order).
    pub model: String,
    /// The version, when it concerns one.
    pub version: Option<String>,
    /// MLflow's webhook payload of the change.
    pub data: Value,
}

impl Change {
    /// `registered_model.created`: name, tags (a map), description (a
    /// string, empty when none: as MLflow sends it).
    pub fn model_created(name: &str, tags: &[(String, String)], description: &str) -> Self {
        Self {
            kind: ChangeKind::RegisteredModelCreated,
            model: name.into(),
            version: None,
            data: json!({"name": name, "tags": tag_map(tags), "description": description}),
        }
    }

    /// `model_version.created`: name, version, source, run_id, tags,
    /// description (`run_id` and `description` null when empty: as MLflow
    /// sends them).
    pub fn version_created(
        name: &str,
        version: i64,
        source: &str,
        run_id: &str,
        tags: &[(String, String)],
        description: &str,
    ) -> Self {
        Self {
            kind: ChangeKind::ModelVersionCreated,
            model: name.into(),
            version: Some(version.to_string()),
            data: json!({
                "name": name, "version": version.to_string(), "source": source,
                "run_id": optional(run_id), "tags": tag_map(tags),
                "description": optional(description),
            }),
        }
    }

    /// `model_version_tag.set`.
    pub fn tag_set(name: &str, version: i64, key: &str, value: &str) -> Self {
        Self {
            kind: ChangeKind::ModelVersionTagSet,
            model: name.into(),
            version: Some(version.to_string()),
            data: json!({"name": name, "version": version.to_string(), "key": key, "value": value}),
        }
    }

    /// `model_version_tag.deleted`.
    pub fn tag_deleted(name: &str, version: i64, key: &str) -> Self {
        Self {
            kind: ChangeKind::ModelVersionTagDeleted,
            model: name.into(),
            version: Some(version.to_string()),
            data: json!({"name": name, "version": version.to_string(), "key": key}),
        }
    }

    /// `model_version_alias.created` (also when an alias moves).
    pub fn alias_created(name: &str, alias: &str, version: i64) -> Self {
        Self {
            kind: ChangeKind::ModelVersionAliasCreated,
            model: name.into(),
            version: Some(version.to_string()),
            data: json!({"name": name, "alias": alias, "version": version.to_string()}),
        }
    }

    /// `model_version_alias.deleted` (also when its version or model is
    /// deleted).
    pub fn alias_deleted(name: &str, alias: &str) -> Self {
        Self {
            kind: ChangeKind::ModelVersionAliasDeleted,
            model: name.into(),
            version: None,
            data: json!({"name": name, "alias": alias}),
        }
    }

    /// `reference_profile.attached`: the version's reference profile was
    /// built from `source` (`rows` rows).
    pub fn reference_attached(name: &str, version: i64, source: &str, rows: u64) -> Self {
        Self {
            kind: ChangeKind::ReferenceProfileAttached,
            model: name.into(),
            version: Some(version.to_string()),
            data: json!({"name": name, "version": version.to_string(), "source": source, "rows": rows}),
        }
    }

    /// The subject: `model` or `model/version`.
    pub fn subject(&self) -> String {
        match &self.version {
            Some(version) => format!("{}/{version}", self.model),
            None => self.model.clone(),
        }
    }
}

/// A change with its outbox id and time: a CloudEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryEvent {
    /// The outbox sequence number (the CloudEvent id).
    pub sequence: i64,
    /// When the change was made, ms since the epoch.
    pub time_ms: i64,
    pub change: Change,
}

impl RegistryEvent {
    /// The CloudEvents 1.0 document (structured JSON).
    pub fn cloud_event(&self) -> Value {
        cloud_event(
            self.change.kind.event_type(),
            SOURCE,
            &self.sequence.to_string(),
            self.time_ms,
            &self.change.subject(),
            self.change.data.clone(),
        )
    }

    /// Reads a registry CloudEvent back (the gateway's and the monitor's
    /// consumers); `None` for another type or a malformed document.
    pub fn from_cloud_event(document: &Value) -> Option<Self> {
        let kind = ChangeKind::from_event_type(document.get("type")?.as_str()?)?;
        let sequence = document.get("id")?.as_str()?.parse().ok()?;
        let time_ms = chrono::DateTime::parse_from_rfc3339(document.get("time")?.as_str()?)
            .ok()?
            .timestamp_millis();
        let data = document.get("data")?.clone();
        let model = data.get("name")?.as_str()?.to_owned();
        let version = data
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(Self {
            sequence,
            time_ms,
            change: Change {
                kind,
                model,
                version,
                data,
            },
        })
    }
}

/// A CloudEvents 1.0 document in structured JSON mode, the envelope of
/// every event Tidewatch's attached modules put on the bus (`time_ms`: ms
/// since the epoch, written as RFC 3339 with milliseconds).
pub fn cloud_event(
    event_type: &str,
    source: &str,
    id: &str,
    time_ms: i64,
    subject: &str,
    data: Value,
) -> Value {
    let time = chrono::DateTime::from_timestamp_millis(time_ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    json!({
        "specversion": "1.0",
        "type": event_type,
        "source": source,
        "id": id,
        "time": time,
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    })
}

fn tag_map(tags: &[(String, String)]) -> Value {
    Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

fn optional(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_cloud_event() {
        let event = RegistryEvent {
            sequence: 42,
            time_ms: 1_767_225_600_123,
            change: Change::alias_created("churn", "champion", 3),
        };
        let document = event.cloud_event();
        assert_eq!(
            document["type"],
            "io.tidewatch.registry.model_version_alias.created"
        );
        assert_eq!(document["id"], "42");
        assert_eq!(document["subject"], "churn/3");
        assert_eq!(document["time"], "2026-01-01T00:00:00.123Z");
        assert_eq!(
            document["data"],
            json!({"name": "churn", "alias": "champion", "version": "3"})
        );
        assert_eq!(RegistryEvent::from_cloud_event(&document), Some(event));
        for kind in ChangeKind::ALL {
            assert_eq!(ChangeKind::from_event_type(kind.event_type()), Some(kind));
        }
    }
}
