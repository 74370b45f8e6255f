//! Model-version lifecycle: the registry's events recorded in the store
//! (`version_events`) and read back as a timeline that says when each
//! version was registered, got its reference, went live and was retired.
//!
//! ```text
//!  registry ─ outbox ─┬─ [kafka]: [registry] topic ─▶ tidewatch run (follow) ─┐
//!                     └─ no broker: drained in process (registry_bus) ─────────┴▶ version_events
//!  version_events ─▶ timeline() ─▶ API /api/v1/models/{model}/timeline, pages, Grafana annotations
//! ```
//!
//! What is stored is what the registry said (registered, reference
//! attached, alias set, alias deleted); *promoted* and *retired* are
//! derived when read: a version is promoted when the `champion` alias moves
//! to it, and retired when the alias moves away from it or is deleted. The
//! stored rows are keyed by (model, time, registry sequence), so an event
//! read twice (a restart reads the topic from its beginning) is one row.
//!
//! The follower reads the registry topic from its beginning at every start
//! (no consumer group offsets: registry events are few, and every
//! `tidewatch run` instance records them all; the writes are idempotent).
//! What the topic's retention deleted before a first start is not
//! recorded. Store failures are retried with the pipeline's backoff; a
//! message that is not a registry event is logged and skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use registry::events::{ChangeKind, RegistryEvent};
use serde::Serialize;
use serde_json::Value;
use serving::routes::CHAMPION_ALIAS;
use store::{Store, VersionEvent, VersionEventKind};

/// Most version events of one model read to draw its timeline.
pub const TIMELINE_EVENTS: u64 = 10_000;

/// The stored form of a registry event, if it concerns a version's
/// lifecycle (model creation and tag changes do not).
pub fn version_event(event: &RegistryEvent) -> Option<VersionEvent> {
    let change = &event.change;
    let alias = || {
        change
            .data
            .get("alias")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (kind, alias) = match change.kind {
        ChangeKind::ModelVersionCreated => (VersionEventKind::Registered, String::new()),
        ChangeKind::ReferenceProfileAttached => {
            (VersionEventKind::ReferenceAttached, String::new())
        }
        ChangeKind::ModelVersionAliasCreated => (VersionEventKind::AliasSet, alias()),
        ChangeKind::ModelVersionAliasDeleted => (VersionEventKind::AliasDeleted, alias()),
        ChangeKind::RegisteredModelCreated
        | ChangeKind::ModelVersionTagSet
        | ChangeKind::ModelVersionTagDeleted => return None,
    };
    Some(VersionEvent {
        model: change.model.clone(),
        model_version: change.version.clone().unwrap_or_default(),
        kind,
        alias,
        time_ms: event.time_ms,
        sequence: u64::try_from(event.sequence).ok()?,
        detail: change.data.to_string(),
    })
}

/// What a timeline entry says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The version was created.
    Registered,
    /// Its reference profile was attached.
    ReferenceAttached,
    /// An alias was set on it.
    AliasSet,
    /// An alias it held was deleted.
    AliasDeleted,
    /// It became the champion (went live).
    Promoted,
    /// It stopped being the champion.
    Retired,
    /// Its alert asked for retraining (the request's data in `detail`).
    RetrainRequested,
    /// The reference trainer registered it, answering a request.
    Trained,
    /// The promotion policy decided on it as challenger (`detail`: the
    /// decision and its evidence).
    PromotionDecided,
}

/// One line of a model's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// When, ms.
    pub time_ms: i64,
    /// What.
    pub kind: EntryKind,
    /// The version concerned; empty for an alias deleted while the
    /// timeline did not know its holder.
    pub version: String,
    /// The alias set or deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// For `alias_set` and `promoted`: the version that held the alias
    /// before; for `retired`: the version that replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_version: Option<String>,
    /// The registry event's data (source, run id, tags, reference source).
    pub detail: Value,
}

/// When a version was the champion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LivePeriod {
    /// Promoted, ms.
    pub from_ms: i64,
    /// Retired, ms; `None` while it is the champion.
    pub until_ms: Option<i64>,
}

/// One version's life, from its timeline entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VersionLife {
    pub version: String,
    /// When it was registered (ms), if the timeline has it.
    pub registered_ms: Option<i64>,
    /// The model's location (`source`) and the run that produced it.
    pub source: Option<String>,
    pub run_id: Option<String>,
    /// When its reference profile was last attached, and from what.
    pub reference_attached_ms: Option<i64>,
    pub reference_source: Option<String>,
    /// The aliases it holds now.
    pub aliases: Vec<String>,
    /// When it was the champion.
    pub live: Vec<LivePeriod>,
}

/// A model's timeline: its entries in order and each version's life.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    pub entries: Vec<Entry>,
    /// By version number (numerically where versions are numbers).
    pub versions: Vec<VersionLife>,
}

/// Derives the timeline of one model from its stored events (oldest
/// first, as [`store::Backend::version_events`] returns them).
pub fn timeline(events: &[VersionEvent]) -> Timeline {
    let mut entries = Vec::with_capacity(events.len());
    let mut holders: BTreeMap<String, String> = BTreeMap::new();
    for event in events {
        let detail: Value = serde_json::from_str(&event.detail).unwrap_or(Value::Null);
        let entry = |kind, version: &str, alias: Option<&str>, other: Option<&String>| Entry {
            time_ms: event.time_ms,
            kind,
            version: version.to_owned(),
            alias: alias.map(str::to_owned),
            other_version: other.cloned(),
            detail: detail.clone(),
        };
        match event.kind {
            VersionEventKind::Registered => entries.push(entry(
                EntryKind::Registered,
                &event.model_version,
                None,
                None,
            )),
            VersionEventKind::ReferenceAttached => entries.push(entry(
                EntryKind::ReferenceAttached,
                &event.model_version,
                None,
                None,
            )),
            VersionEventKind::AliasSet => {
                let version = &event.model_version;
                let previous = holders.insert(event.alias.clone(), version.clone());
                entries.push(entry(
                    EntryKind::AliasSet,
                    version,
                    Some(&event.alias),
                    previous.as_ref(),
                ));
                if event.alias == CHAMPION_ALIAS && previous.as_ref() != Some(version) {
                    entries.push(entry(EntryKind::Promoted, version, None, previous.as_ref()));
                    if let Some(previous) = &previous {
                        entries.push(entry(EntryKind::Retired, previous, None, Some(version)));
                    }
                }
            }
            VersionEventKind::Trained => {
                entries.push(entry(EntryKind::Trained, &event.model_version, None, None))
            }
            VersionEventKind::PromotionDecided => entries.push(entry(
                EntryKind::PromotionDecided,
                &event.model_version,
                None,
                None,
            )),
            VersionEventKind::AliasDeleted => {
                let previous = holders.remove(&event.alias);
                let version = previous.clone().unwrap_or_default();
                entries.push(entry(
                    EntryKind::AliasDeleted,
                    &version,
                    Some(&event.alias),
                    None,
                ));
                if event.alias == CHAMPION_ALIAS {
                    if let Some(previous) = &previous {
                        entries.push(entry(EntryKind::Retired, previous, None, None));
                    }
                }
            }
        }
    }
    let mut lives: BTreeMap<String, VersionLife> = BTreeMap::new();
    for entry in &entries {
        if entry.version.is_empty() {
            continue;
        }
        let life = lives
            .entry(entry.version.clone())
            .or_insert_with(|| VersionLife {
                version: entry.version.clone(),
                ..Default::default()
            });
        let text = |key: &str| {
            entry
                .detail
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match entry.kind {
            EntryKind::Registered => {
                life.registered_ms = Some(entry.time_ms);
                life.source = text("source");
                life.run_id = text("run_id");
            }
            EntryKind::ReferenceAttached => {
                life.reference_attached_ms = Some(entry.time_ms);
                life.reference_source = text("source");
            }
            EntryKind::Promoted => life.live.push(LivePeriod {
                from_ms: entry.time_ms,
                until_ms: None,
            }),
            EntryKind::Retired => {
                if let Some(period) = life.live.last_mut().filter(|p| p.until_ms.is_none()) {
                    period.until_ms = Some(entry.time_ms);
                }
            }
            EntryKind::AliasSet
            | EntryKind::AliasDeleted
            | EntryKind::RetrainRequested
            | EntryKind::Trained
            | EntryKind::PromotionDecided => {}
        }
    }
    for (alias, version) in holders {
        if let Some(life) = lives.get_mut(&version) {
            life.aliases.push(alias);
        }
    }
    let mut versions: Vec<VersionLife> = lives.into_values().collect();
    versions.sort_by(|a, b| version_order(&a.version).cmp(&version_order(&b.version)));
    Timeline { entries, versions }
}

/// Retrain requests of a model read for its timeline at most.
const TIMELINE_REQUESTS: u64 = 1_000;

/// The timeline of `model` as the store has it: its newest
/// [`TIMELINE_EVENTS`] version events and its retrain requests (from the
/// alerts the monitor recorded), in time order; `true` when older events
/// were left out.
pub async fn load(store: &Store, model: &str) -> store::Result<(Timeline, bool)> {
    let events = store.version_events(model, TIMELINE_EVENTS + 1).await?;
    let truncated = events.len() as u64 > TIMELINE_EVENTS;
    let mut timeline = timeline(&events[usize::from(truncated)..]);
    let requests = store.alerts(Some(model), TIMELINE_REQUESTS).await?;
    for request in requests
        .into_iter()
        .filter(|alert| alert.status == store::NotificationStatus::Retrain)
    {
        timeline.entries.push(Entry {
            time_ms: request.created_at as i64,
            kind: EntryKind::RetrainRequested,
            version: request.model_version.clone(),
            alias: None,
            other_version: None,
            detail: serde_json::from_str::<Value>(&request.payload)
                .ok()
                .and_then(|event| event.get("data").cloned())
                .unwrap_or(Value::Null),
        });
    }
    timeline.entries.sort_by_key(|entry| entry.time_ms);
    Ok((timeline, truncated))
}

/// The versions of `model` that are on trial: holding the `challenger` or
/// `shadow` alias and not `champion`, as the recorded lifecycle says
/// (empty when the model has none, or no registry).
pub async fn on_trial(store: &Store, model: &str) -> store::Result<BTreeSet<String>> {
    let events = store.version_events(model, TIMELINE_EVENTS).await?;
    Ok(timeline(&events)
        .versions
        .into_iter()
        .filter(|life| {
            let holds = |alias: &str| life.aliases.iter().any(|a| a == alias);
            (holds("challenger") || holds("shadow")) && !holds("champion")
        })
        .map(|life| life.version)
        .collect())
}

/// Records a training or promotion decision of `model` `version` in the
/// version events (`event_id`: the acknowledgement's or decision's id).
pub async fn record_decision(
    store: &Store,
    kind: VersionEventKind,
    model: &str,
    version: &str,
    event_id: &str,
    time_ms: i64,
    detail: &Value,
) -> store::Result<()> {
    store
        .write_version_events(vec![VersionEvent {
            model: model.to_owned(),
            model_version: version.to_owned(),
            kind,
            alias: String::new(),
            time_ms,
            sequence: VersionEvent::sequence_of(event_id),
            detail: detail.to_string(),
        }])
        .await
}

/// The timeline as text: one line per entry (UTC time, version, what),
/// then each version's live periods.
pub fn render_text(model: &str, timeline: &Timeline, truncated: bool) -> String {
    use std::fmt::Write as _;
    let time = |ms: i64| crate::report::format_time(ms);
    let mut out = format!("Timeline of {model}\n");
    if truncated {
        out.push_str(&format!(
            "(the oldest events left out: more than {TIMELINE_EVENTS})\n"
        ));
    }
    if timeline.entries.is_empty() {
        out.push_str("no event recorded\n");
        return out;
    }
    for entry in &timeline.entries {
        let what = match entry.kind {
            EntryKind::Registered => format!(
                "registered from {}",
                entry.detail["source"].as_str().unwrap_or("?")
            ),
            EntryKind::ReferenceAttached => format!(
                "reference profile attached from {}",
                entry.detail["source"].as_str().unwrap_or("?")
            ),
            EntryKind::AliasSet => match &entry.other_version {
                Some(other) => format!(
                    "alias {} (from v{other})",
                    entry.alias.as_deref().unwrap_or("")
                ),
                None => format!("alias {}", entry.alias.as_deref().unwrap_or("")),
            },
            EntryKind::AliasDeleted => {
                format!("alias {} deleted", entry.alias.as_deref().unwrap_or(""))
            }
            EntryKind::Promoted => match &entry.other_version {
                Some(other) => format!("PROMOTED to champion (replacing v{other})"),
                None => "PROMOTED to champion".into(),
            },
            EntryKind::Retired => match &entry.other_version {
                Some(other) => format!("retired (replaced by v{other})"),
                None => "retired".into(),
            },
            EntryKind::RetrainRequested => format!(
                "retraining requested ({})",
                entry.detail["reason"].as_str().unwrap_or("")
            ),
            EntryKind::Trained => format!(
                "trained on {} labelled rows (request {})",
                entry.detail["rows"],
                entry.detail["request_id"].as_str().unwrap_or("?")
            ),
            EntryKind::PromotionDecided => {
                let evidence = &entry.detail["evidence"];
                format!(
                    "promotion decided: {} against v{} ({} {} vs {} on {} shared requests, {} p = {})",
                    entry.detail["verdict"].as_str().unwrap_or("?"),
                    entry.detail["champion"].as_str().unwrap_or("?"),
                    evidence["metric"].as_str().unwrap_or("?"),
                    evidence["challenger"],
                    evidence["champion"],
                    evidence["pairs"],
                    evidence["test"].as_str().unwrap_or("?"),
                    evidence["p_value"],
                )
            }
        };
        let version = if entry.version.is_empty() {
            "-".to_owned()
        } else {
            format!("v{}", entry.version)
        };
        let _ = writeln!(out, "{} UTC  {version:<6} {what}", time(entry.time_ms));
    }
    for life in &timeline.versions {
        for period in &life.live {
            let _ = writeln!(
                out,
                "v{} live {} → {}",
                life.version,
                time(period.from_ms),
                period.until_ms.map_or_else(|| "now".to_owned(), time)
            );
        }
    }
    out
}

/// Numeric versions in number order, then the others by name.
fn version_order(version: &str) -> (u8, u64, &str) {
    match version.parse::<u64>() {
        Ok(number) => (0, number, version),
        Err(_) => (1, 0, version),
    }
}

/// Registry events read from the topic in one batch at most.
const BATCH: usize = 500;

/// Follows the registry topic (`feed`: on the broker from its beginning,
/// or the in-process bus) and records every lifecycle event in `store`
/// until `shutdown` resolves (see the module docs).
pub async fn follow(
    feed: crate::bus::Feed,
    store: Store,
    telemetry: ingest::telemetry::Telemetry,
    max_delay: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ingest::Error> {
    let topic = feed.describe();
    let on_batch = |payloads: Vec<Vec<u8>>| {
        let events: Vec<VersionEvent> = payloads
            .iter()
            .filter_map(|payload| {
                let parsed = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|document| RegistryEvent::from_cloud_event(&document));
                if parsed.is_none() {
                    tracing::warn!(
                        %topic,
                        "a message on the registry topic is not a registry event; skipped"
                    );
                }
                parsed
            })
            .filter_map(|event| version_event(&event))
            .collect();
        let (store, telemetry) = (store.clone(), telemetry.clone());
        async move { record(&store, &telemetry, max_delay, events).await }
    };
    feed.follow(BATCH, on_batch, shutdown).await
}

/// Writes `events`, retrying while the store is away; an error that no
/// retry fixes is logged and the events are dropped (the next start reads
/// them again).
pub async fn record(
    store: &Store,
    telemetry: &ingest::telemetry::Telemetry,
    max_delay: Duration,
    events: Vec<VersionEvent>,
) {
    if events.is_empty() {
        return;
    }
    let count = events.len();
    let events = &events;
    let written = ingest::driver::retry_store(telemetry, "version_events", max_delay, || async {
        Ok(store.write_version_events(events.clone()).await?)
    })
    .await;
    match written {
        Ok(()) => tracing::debug!(count, "version events recorded"),
        Err(error) => tracing::error!(%error, count, "version events not recorded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::events::Change;

    fn stored(sequence: i64, time_ms: i64, change: Change) -> VersionEvent {
        version_event(&RegistryEvent {
            sequence,
            time_ms,
            change,
        })
        .expect("a lifecycle event")
    }

    #[test]
    fn only_lifecycle_changes_are_recorded() {
        let event = |change| RegistryEvent {
            sequence: 1,
            time_ms: 5,
            change,
        };
        assert!(version_event(&event(Change::model_created("churn", &[], ""))).is_none());
        assert!(version_event(&event(Change::tag_set("churn", 1, "k", "v"))).is_none());
        assert!(version_event(&event(Change::tag_deleted("churn", 1, "k"))).is_none());
        let alias = version_event(&event(Change::alias_created("churn", "shadow", 3))).unwrap();
        assert_eq!(
            (
                alias.kind,
                alias.model_version.as_str(),
                alias.alias.as_str()
            ),
            (VersionEventKind::AliasSet, "3", "shadow")
        );
        let deleted = version_event(&event(Change::alias_deleted("churn", "shadow"))).unwrap();
        assert_eq!(
            (
                deleted.kind,
                deleted.model_version.as_str(),
                deleted.alias.as_str()
            ),
            (VersionEventKind::AliasDeleted, "", "shadow")
        );
    }

    #[tokio::test]
    async fn a_challenger_is_on_trial_until_it_becomes_the_champion() {
        let store = Store::in_memory().unwrap();
        let write = |events: Vec<VersionEvent>| {
            let store = store.clone();
            async move { store.write_version_events(events).await.unwrap() }
        };
        write(vec![
            stored(1, 1_000, Change::alias_created("churn", "champion", 1)),
            stored(2, 2_000, Change::alias_created("churn", "challenger", 2)),
            stored(3, 2_500, Change::alias_created("churn", "shadow", 3)),
        ])
        .await;
        let on_trial = on_trial(&store, "churn").await.unwrap();
        assert_eq!(on_trial, ["2".to_owned(), "3".to_owned()].into());
        write(vec![
            stored(4, 3_000, Change::alias_created("churn", "champion", 2)),
            stored(5, 3_100, Change::alias_deleted("churn", "shadow")),
        ])
        .await;
        // v2 is the champion (its challenger alias not deleted yet).
        assert!(super::on_trial(&store, "churn").await.unwrap().is_empty());
        assert!(super::on_trial(&store, "other").await.unwrap().is_empty());
    }

    #[test]
    fn the_champion_alias_moving_promotes_and_retires() {
        let events = vec![
            stored(
                2,
                1_000,
                Change::version_created("churn", 1, "s3://m/1", "run-a", &[], ""),
            ),
            stored(3, 2_000, Change::alias_created("churn", "champion", 1)),
            stored(
                4,
                3_000,
                Change::version_created("churn", 2, "s3://m/2", "", &[], ""),
            ),
            stored(
                5,
                3_500,
                Change::reference_attached("churn", 2, "/data/train.csv", 900),
            ),
            stored(6, 4_000, Change::alias_created("churn", "challenger", 2)),
            stored(7, 5_000, Change::alias_created("churn", "champion", 2)),
            // Setting it again changes nothing.
            stored(8, 5_500, Change::alias_created("churn", "champion", 2)),
            stored(9, 6_000, Change::alias_deleted("churn", "challenger")),
            stored(10, 7_000, Change::alias_created("churn", "champion", 1)),
            stored(11, 8_000, Change::alias_deleted("churn", "champion")),
        ];
        let timeline = timeline(&events);
        let lines: Vec<(i64, EntryKind, &str, Option<&str>)> = timeline
            .entries
            .iter()
            .map(|e| {
                (
                    e.time_ms,
                    e.kind,
                    e.version.as_str(),
                    e.other_version.as_deref(),
                )
            })
            .collect();
        use EntryKind::*;
        assert_eq!(
            lines,
            [
                (1_000, Registered, "1", None),
                (2_000, AliasSet, "1", None),
                (2_000, Promoted, "1", None),
                (3_000, Registered, "2", None),
                (3_500, ReferenceAttached, "2", None),
                (4_000, AliasSet, "2", None),
                (5_000, AliasSet, "2", Some("1")),
                (5_000, Promoted, "2", Some("1")),
                (5_000, Retired, "1", Some("2")),
                (5_500, AliasSet, "2", Some("2")),
                (6_000, AliasDeleted, "2", None),
                (7_000, AliasSet, "1", Some("2")),
                (7_000, Promoted, "1", Some("2")),
                (7_000, Retired, "2", Some("1")),
                (8_000, AliasDeleted, "1", None),
                (8_000, Retired, "1", None),
            ]
        );
        let one = &timeline.versions[0];
        assert_eq!(one.version, "1");
        assert_eq!(one.source.as_deref(), Some("s3://m/1"));
        assert_eq!(one.run_id.as_deref(), Some("run-a"));
        assert_eq!(
            one.live,
            [
                LivePeriod {
                    from_ms: 2_000,
                    until_ms: Some(5_000)
                },
                LivePeriod {
                    from_ms: 7_000,
                    until_ms: Some(8_000)
                }
            ]
        );
        assert!(one.aliases.is_empty());
        let two = &timeline.versions[1];
        assert_eq!(two.run_id, None, "MLflow sends null for no run");
        assert_eq!(two.reference_attached_ms, Some(3_500));
        assert_eq!(two.reference_source.as_deref(), Some("/data/train.csv"));
        assert_eq!(
            two.live,
            [LivePeriod {
                from_ms: 5_000,
                until_ms: Some(7_000)
            }]
        );
    }

    #[test]
    fn versions_sort_by_number_and_keep_their_current_aliases() {
        let events = vec![
            stored(1, 1, Change::alias_created("churn", "champion", 10)),
            stored(2, 2, Change::alias_created("churn", "shadow", 9)),
            stored(3, 3, Change::alias_created("churn", "challenger", 10)),
        ];
        let timeline = timeline(&events);
        let versions: Vec<(&str, Vec<&str>)> = timeline
            .versions
            .iter()
            .map(|v| {
                (
                    v.version.as_str(),
                    v.aliases.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            versions,
            [
                ("9", vec!["shadow"]),
                ("10", vec!["challenger", "champion"])
            ]
        );
        assert_eq!(timeline.versions[1].live[0].until_ms, None);
    }
}
