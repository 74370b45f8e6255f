//! The MLflow bridge: an existing MLflow server's registry changes become
//! the same `io.tidewatch.registry.*` events, through the same outbox, as
//! Tidewatch's own registry writes — for teams that keep MLflow.
//!
//! Two ways in, either or both:
//!
//! - **Webhooks** (MLflow ≥ 3.3, SQL backends): MLflow POSTs
//!   `{"entity", "action", "timestamp", "data"}` with `X-MLflow-Delivery-Id`,
//!   `X-MLflow-Timestamp` (Unix seconds) and `X-MLflow-Signature:
//!   v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`. A delivery
//!   is refused (401) unless its signature verifies and its timestamp is
//!   within [`WEBHOOK_TOLERANCE`] of now; a delivery id seen before is
//!   acknowledged and not emitted again (ids are kept for
//!   [`DELIVERY_IDS_KEPT`]). MLflow's `data` is already the payload the
//!   events carry.
//! - **Polling** (any MLflow server, file store included): every interval
//!   the bridge reads `registered-models/search` and
//!   `model-versions/search` (paged to the end) and compares them with the
//!   mirror of the previous poll kept in the registry database; the
//!   differences are the events (model created; version created; version
//!   tags set and deleted; aliases created, moved and deleted). The mirror
//!   and the events are written in one transaction, so a crash between two
//!   polls neither loses nor repeats a change. The first poll of an empty
//!   mirror reports everything as created.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::client::MlflowClient;
use crate::events::{Change, ChangeKind};
use crate::{Registry, Result};

/// How far a webhook's timestamp may be from now.
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
/// How long delivery ids are remembered for deduplication.
pub const DELIVERY_IDS_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Why a webhook delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the timestamp is {0} s away from now (at most {max} s)", max = WEBHOOK_TOLERANCE.as_secs())]
    Stale(u64),
    #[error("not an MLflow webhook payload: {0}")]
    Malformed(String),
}

/// The `X-MLflow-Signature` of a delivery: `v1,<base64 HMAC-SHA256(secret,
/// "{id}.{timestamp}.{body}")>`.
pub fn sign(secret: &[u8], delivery_id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{delivery_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Checks a delivery's signature and timestamp (`now` in Unix seconds).
pub fn verify(
    secret: &[u8],
    delivery_id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: u64,
) -> std::result::Result<(), Refusal> {
    let sent: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refusal::Malformed(format!("timestamp `{timestamp}`")))?;
    let encoded = signature.split(',').map(str::trim).collect::<Vec<_>>();
    // "v1,<sig>" (several space-separated signatures are not sent by MLflow).
    let Some(given) = encoded
        .windows(2)
        .find(|pair| pair[0] == "v1")
        .map(|pair| pair[1])
    else {
        return Err(Refusal::BadSignature);
    };
    let given = base64::engine::general_purpose::STANDARD
        .decode(given)
        .map_err(|_| Refusal::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| Refusal::BadSignature)?;
    let skew = now.abs_diff(sent);
    if skew > WEBHOOK_TOLERANCE.as_secs() {
        return Err(Refusal::Stale(skew));
    }
    Ok(())
}

/// The change an MLflow webhook payload reports; `Ok(None)` for entities
/// the registry does not follow (prompts, …).
pub fn change_of(payload: &Value) -> std::result::Result<Option<Change>, Refusal> {
    let entity = payload["entity"].as_str().unwrap_or_default();
    let action = payload["action"].as_str().unwrap_or_default();
    let kind = match (entity, action) {
        ("registered_model", "created") => ChangeKind::RegisteredModelCreated,
        ("model_version", "created") => ChangeKind::ModelVersionCreated,
        ("model_version_tag", "set") => ChangeKind::ModelVersionTagSet,
        ("model_version_tag", "deleted") => ChangeKind::ModelVersionTagDeleted,
        ("model_version_alias", "created") => ChangeKind::ModelVersionAliasCreated,
        ("model_version_alias", "deleted") => ChangeKind::ModelVersionAliasDeleted,
        ("", _) | (_, "") => return Err(Refusal::Malformed("no entity or action".into())),
        _ => return Ok(None),
    };
    let data = payload["data"].clone();
    let model = data["name"]
        .as_str()
        .ok_or_else(|| Refusal::Malformed("data has no name".into()))?
        .to_owned();
    let version = match &data["version"] {
        Value::String(version) => Some(version.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    Ok(Some(Change {
        kind,
        model,
        version,
        data,
    }))
}

/// Where MLflow's webhooks are received (on Tidewatch's HTTP server; the
/// signature authenticates them, not the API token).
pub const WEBHOOK_PATH: &str = "/api/v1/registry/mlflow-webhook";

/// The webhook receiver: verifies, deduplicates and records deliveries.
pub fn webhook_router(registry: Registry, secret: String) -> axum::Router {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let state = (registry, std::sync::Arc::new(secret.into_bytes()));
    let receive = |State((registry, secret)): State<(Registry, std::sync::Arc<Vec<u8>>)>,
                   headers: HeaderMap,
                   body: Bytes| async move {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or(Refusal::MissingHeader(name))
        };
        let refuse = |refusal: Refusal| {
            tracing::warn!(%refusal, "an MLflow webhook delivery was refused");
            let status = match refusal {
                Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            (
                status,
                axum::Json(serde_json::json!({"error": refusal.to_string()})),
            )
                .into_response()
        };
        let checked = (|| {
            let id = header("x-mlflow-delivery-id")?;
            let timestamp = header("x-mlflow-timestamp")?;
            let signature = header("x-mlflow-signature")?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            verify(&secret, &id, &timestamp, &body, &signature, now)?;
            let payload: Value =
                serde_json::from_slice(&body).map_err(|e| Refusal::Malformed(e.to_string()))?;
            Ok::<_, Refusal>((id, change_of(&payload)?))
        })();
        let (id, change) = match checked {
            Ok(checked) => checked,
            Err(refusal) => return refuse(refusal),
        };
        let Some(change) = change else {
            return (
                StatusCode::OK,
                axum::Json(serde_json::json!({"ignored": true})),
            )
                .into_response();
        };
        match registry.record_bridged(id, change).await {
            Ok(recorded) => (
                StatusCode::OK,
                axum::Json(serde_json::json!({"recorded": recorded})),
            )
                .into_response(),
            Err(error) => {
                tracing::error!(%error, "recording an MLflow webhook failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"error": error.to_string()})),
                )
                    .into_response()
            }
        }
    };
    axum::Router::new()
        .route(WEBHOOK_PATH, axum::routing::post(receive))
        .with_state(state)
}

/// One version as the mirror keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirroredVersion {
    pub source: String,
    pub run_id: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// What the poller saw of an MLflow registry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mirror {
    /// Model → (description, tags).
    pub models: BTreeMap<String, (String, BTreeMap<String, String>)>,
    /// (model, version) → the version.
    pub versions: BTreeMap<(String, i64), MirroredVersion>,
    /// (model, alias) → version.
    pub aliases: BTreeMap<(String, String), i64>,
}

/// The changes from `before` to `after`, as the events MLflow's webhooks
/// would have sent (in the order: models, versions, tags, aliases).
pub fn diff(before: &Mirror, after: &Mirror) -> Vec<Change> {
    let mut changes = Vec::new();
    let pairs = |tags: &BTreeMap<String, String>| -> Vec<(String, String)> {
        tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    for (name, (description, tags)) in &after.models {
        if !before.models.contains_key(name) {
            changes.push(Change::model_created(name, &pairs(tags), description));
        }
    }
    for ((name, number), version) in &after.versions {
        match before.versions.get(&(name.clone(), *number)) {
            None => changes.push(Change::version_created(
                name,
                *number,
                &version.source,
                &version.run_id,
                &pairs(&version.tags),
                &version.description,
            )),
            Some(previous) => {
                for (key, value) in &version.tags {
                    if previous.tags.get(key) != Some(value) {
                        changes.push(Change::tag_set(name, *number, key, value));
                    }
                }
                for key in previous.tags.keys() {
                    if !version.tags.contains_key(key) {
                        changes.push(Change::tag_deleted(name, *number, key));
                    }
                }
            }
        }
    }
    let mut seen: BTreeSet<&(String, String)> = BTreeSet::new();
    for (key, number) in &after.aliases {
        seen.insert(key);
        if before.aliases.get(key) != Some(number) {
            changes.push(Change::alias_created(&key.0, &key.1, *number));
        }
    }
    for key in before.aliases.keys() {
        if !seen.contains(key) {
            changes.push(Change::alias_deleted(&key.0, &key.1));
        }
    }
    changes
}

/// Every item of a paged MLflow search.
async fn search_all(
    client: &MlflowClient,
    path: &str,
    items: &str,
    max_results: &str,
) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let mut query = vec![("max_results", max_results)];
        if !token.is_empty() {
            query.push(("page_token", token.as_str()));
        }
        let page = client.get_ok(path, &query).await?;
        if let Some(found) = page[items].as_array() {
            all.extend(found.iter().cloned());
        }
        match page["next_page_token"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => return Ok(all),
        }
    }
}

fn tag_map(tags: &Value) -> BTreeMap<String, String> {
    tags.as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|tag| {
                    Some((
                        tag["key"].as_str()?.to_owned(),
                        tag["value"].as_str().unwrap_or_default().to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the whole registry of the MLflow server at `url`.
pub async fn fetch_mirror(url: &str) -> Result<Mirror> {
    let client = MlflowClient::new(url);
    let mut mirror = Mirror::default();
    for model in search_all(
        &client,
        "registered-models/search",
        "registered_models",
        "1000",
    )
    .await?
    {
        let Some(name) = model["name"].as_str() else {
            continue;
        };
        mirror.models.insert(
            name.to_owned(),
            (
                model["description"].as_str().unwrap_or_default().to_owned(),
                tag_map(&model["tags"]),
            ),
        );
        for alias in model["aliases"].as_array().into_iter().flatten() {
            let (Some(alias_name), Some(version)) = (
                alias["alias"].as_str(),
                alias["version"].as_str().and_then(|v| v.parse().ok()),
            ) else {
                continue;
            };
            mirror
                .aliases
                .insert((name.to_owned(), alias_name.to_owned()), version);
        }
    }
    for version in search_all(&client, "model-versions/search", "model_versions", "10000").await? {
        let (Some(name), Some(number)) = (
            version["name"].as_str(),
            version["version"]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok()),
        ) else {
            continue;
        };
        mirror.versions.insert(
            (name.to_owned(), number),
            MirroredVersion {
                source: version["source"].as_str().unwrap_or_default().to_owned(),
                run_id: version["run_id"].as_str().unwrap_or_default().to_owned(),
                description: version["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                tags: tag_map(&version["tags"]),
            },
        );
    }
    Ok(mirror)
}

/// Polls the MLflow server at `url` every `interval` until `shutdown`,
/// writing the differences to `registry`'s outbox.
pub async fn poll(
    registry: Registry,
    url: String,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let outcome = tokio::select! {
            () = &mut shutdown => return,
            mirror = fetch_mirror(&url) => match mirror {
                Ok(mirror) => registry.apply_mirror(url.clone(), mirror).await,
                Err(error) => Err(error),
            },
        };
        match outcome {
            Ok(0) => {}
            Ok(changes) => tracing::info!(changes, url, "MLflow registry changes bridged"),
            Err(error) => tracing::warn!(%error, url, "polling MLflow failed; retrying"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_stale_or_forged_deliveries_are_refused() {
        let body = br#"{"entity":"model_version","action":"created","data":{}}"#;
        let signature = sign(b"s3cret", "d-1", "1767225600", body);
        assert_eq!(
            verify(
                b"s3cret",
                "d-1",
                "1767225600",
                body,
                &signature,
                1_767_225_700
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                b"other",
                "d-1",
                "1767225600",
                body,
                &signature,
                1_767_225_700
            ),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(
                b"s3cret",
                "d-2",
                "1767225600",
                body,
                &signature,
                1_767_225_700
            ),
            Err(Refusal::BadSignature),
            "the id is signed"
        );
        assert_eq!(
            verify(
                b"s3cret",
                "d-1",
                "1767225600",
                b"{}",
                &signature,
                1_767_225_700
            ),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(
                b"s3cret",
                "d-1",
                "1767225600",
                body,
                &signature,
                1_767_226_000
            ),
            Err(Refusal::Stale(400))
        );
        assert_eq!(
            verify(
                b"s3cret",
                "d-1",
                "1767225600",
                body,
                "v1,not base64!",
                1_767_225_600
            ),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn payloads_map_to_changes() {
        let payload = serde_json::json!({
            "entity": "model_version_alias", "action": "created",
            "timestamp": "2026-12-02T10:00:00+00:00",
            "data": {"name": "churn", "alias": "champion", "version": "3"},
        });
        let change = change_of(&payload).unwrap().unwrap();
        assert_eq!(change.kind, ChangeKind::ModelVersionAliasCreated);
        assert_eq!(change.subject(), "churn/3");
        let prompt =
            serde_json::json!({"entity": "prompt", "action": "created", "data": {"name": "p"}});
        assert_eq!(change_of(&prompt).unwrap(), None);
        assert!(change_of(&serde_json::json!({"data": {}})).is_err());
    }

    #[test]
    fn the_diff_of_two_mirrors_is_the_webhooks_mlflow_would_send() {
        let version = |tags: &[(&str, &str)]| MirroredVersion {
            source: "s3://m".into(),
            run_id: "r".into(),
            description: String::new(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut before = Mirror::default();
        before.models.insert("m".into(), Default::default());
        before
            .versions
            .insert(("m".into(), 1), version(&[("a", "1"), ("b", "2")]));
        before.aliases.insert(("m".into(), "champion".into()), 1);
        before.aliases.insert(("m".into(), "old".into()), 1);
        let mut after = before.clone();
        after.models.insert("n".into(), Default::default());
        after
            .versions
            .insert(("m".into(), 1), version(&[("a", "9"), ("c", "3")]));
        after.versions.insert(("m".into(), 2), version(&[]));
        after.aliases.insert(("m".into(), "champion".into()), 2);
        after.aliases.remove(&("m".into(), "old".into()));
        let kinds: Vec<(ChangeKind, String)> = diff(&before, &after)
            .into_iter()
            .map(|c| (c.kind, c.data.to_string()))
            .collect();
        use ChangeKind::*;
        assert_eq!(
            kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [
                RegisteredModelCreated,
                ModelVersionTagSet,
                ModelVersionTagSet,
                ModelVersionTagDeleted,
                ModelVersionCreated,
                ModelVersionAliasCreated,
                ModelVersionAliasDeleted,
            ]
        );
        assert!(kinds[5].1.contains(r#""version":"2""#));
        assert!(diff(&after, &after).is_empty());
    }
}
