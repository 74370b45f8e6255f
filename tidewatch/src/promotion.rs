//! The promotion policy: a challenger becomes the champion when it beats
//! it on the same requests and labels, or is rejected.
//!
//! ```text
//!  window of model M finalized (tidewatch run) ─▶ evaluate M (its own task,
//!     off the consume path; a bounded queue, a model already queued is not
//!     queued twice)
//!  registry: champion C, challenger K (alias `challenger` or `shadow`)
//!  K's finalized windows ≥ min_windows?            no ─▶ wait
//!  evidence from the training sample, K's windows: the requests both C
//!  and K answered and that have a label (pairs; K in shadow)
//!    classification: accuracy of each; McNemar's exact test
//!    regression: MAE of each; paired t-test of the absolute errors
//!  no request answered by both (K as a canary): each version's own
//!  labelled requests (pairs = the smaller count)
//!    classification: two-proportion z-test; regression: Welch's t-test
//!  K's own drift: every input series of its latest window has a verdict
//!    against K's reference and none drifted (no reference: not clean)
//!  promote  ⇐ pairs ≥ min_pairs, gain ≥ margin, p < alpha, drift clean
//!             ─▶ alias champion → K, challenger alias deleted
//!  reject   ⇐ otherwise once K has max_windows windows
//!             ─▶ challenger alias deleted
//!  each decision ─▶ io.tidewatch.promotion.decided (the evidence) on
//!                   [promotion] topic
//! ```
//!
//! Before labels arrive nothing is decided (label-free estimates, when
//! they exist, are not evidence here). A decision's event id is
//! `<model>/<challenger>/<decision>`, so a decision published twice (a
//! restart between the alias change and the event) is one for consumers.
//! Rollback is one alias change in the registry.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detectors::paired;
use detectors::spec::{FeatureKind, ModelSpec, Task};
use registry::client::MlflowClient;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::Store;

/// Wait between two attempts to publish a decision.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// CloudEvents type of a decision.
pub const DECIDED: &str = "io.tidewatch.promotion.decided";

/// One model's policy as written (every field optional: the section's
/// defaults apply).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub min_windows: Option<u64>,
    pub max_windows: Option<u64>,
    pub min_pairs: Option<u64>,
    pub margin: Option<f64>,
    pub alpha: Option<f64>,
}

/// `[promotion]` as written.
///
/// ```toml
/// [promotion]
/// registry_url = "http://127.0.0.1:8080"   # the registry whose aliases it moves
/// token_env = "TIDEWATCH_API_TOKEN"
/// topic = "tidewatch.promotions"           # decisions (with [kafka]); optional
/// min_windows = 3                          # the challenger's finalized windows before a decision
/// max_windows = 24                         # rejected when not better by then
/// min_pairs = 200                          # labelled requests both versions answered
/// margin = 0.0                             # accuracy gain (or MAE reduction) needed
/// alpha = 0.05                             # one-sided significance of the paired test
/// [promotion.models.churn]                 # per model: any of the five above
/// min_windows = 6
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPromotion {
    pub registry_url: String,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    pub min_windows: Option<u64>,
    pub max_windows: Option<u64>,
    pub min_pairs: Option<u64>,
    pub margin: Option<f64>,
    pub alpha: Option<f64>,
    #[serde(default)]
    pub models: BTreeMap<String, RawPolicy>,
}

/// A model's validated policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Policy {
    pub min_windows: u64,
    pub max_windows: u64,
    pub min_pairs: u64,
    pub margin: f64,
    pub alpha: f64,
}

/// Validated `[promotion]`.
#[derive(Debug, Clone)]
pub struct PromotionConfig {
    pub registry: MlflowClient,
    pub topic: Option<String>,
    default: Policy,
    models: BTreeMap<String, Policy>,
}

impl PromotionConfig {
    /// The policy of `model`.
    pub fn policy(&self, model: &str) -> Policy {
        self.models.get(model).copied().unwrap_or(self.default)
    }
}

/// A `[promotion]` setting that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    pub key: String,
    pub message: String,
}

impl RawPolicy {
    fn over(&self, base: Policy, key: &str) -> Result<Policy, InvalidSetting> {
        let policy = Policy {
            min_windows: self.min_windows.unwrap_or(base.min_windows),
            max_windows: self.max_windows.unwrap_or(base.max_windows),
            min_pairs: self.min_pairs.unwrap_or(base.min_pairs),
            margin: self.margin.unwrap_or(base.margin),
            alpha: self.alpha.unwrap_or(base.alpha),
        };
        let invalid = |field: &str, message: &str| InvalidSetting {
            key: format!("{key}{field}"),
            message: message.into(),
        };
        if policy.min_windows == 0 {
            return Err(invalid("min_windows", "at least 1"));
        }
        if policy.max_windows < policy.min_windows {
            return Err(invalid("max_windows", "at least min_windows"));
        }
        if !(policy.alpha > 0.0 && policy.alpha < 1.0) {
            return Err(invalid("alpha", "in (0, 1)"));
        }
        if !policy.margin.is_finite() || policy.margin < 0.0 {
            return Err(invalid("margin", "a finite number ≥ 0"));
        }
        Ok(policy)
    }
}

impl RawPromotion {
    /// Validates the section; `models`: the configured model names.
    pub fn validate(self, models: &[ModelSpec]) -> Result<PromotionConfig, InvalidSetting> {
        let registry = MlflowClient::from_settings(&self.registry_url, self.token_env.as_deref())
            .map_err(|(key, message)| InvalidSetting {
            key: key.into(),
            message,
        })?;
        let base = Policy {
            min_windows: 3,
            max_windows: 24,
            min_pairs: 200,
            margin: 0.0,
            alpha: 0.05,
        };
        let defaults = RawPolicy {
            min_windows: self.min_windows,
            max_windows: self.max_windows,
            min_pairs: self.min_pairs,
            margin: self.margin,
            alpha: self.alpha,
        };
        let default = defaults.over(base, "")?;
        let mut policies = BTreeMap::new();
        for (name, raw) in &self.models {
            if !models.iter().any(|spec| spec.name() == name) {
                return Err(InvalidSetting {
                    key: format!("models.{name}"),
                    message: "not a [[models]] entry".into(),
                });
            }
            policies.insert(name.clone(), raw.over(default, &format!("models.{name}."))?);
        }
        Ok(PromotionConfig {
            registry,
            topic: self.topic,
            default,
            models: policies,
        })
    }
}

/// The evidence on the shared requests (shadow), or on each version's own
/// requests when they share none (canary).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Labelled requests both versions answered; for a canary, the smaller
    /// of the two versions' labelled request counts.
    pub pairs: u64,
    /// `accuracy` (classification) or `mae` (regression).
    pub metric: &'static str,
    pub champion: f64,
    pub challenger: f64,
    /// `mcnemar_exact` or `paired_t` (shadow), `two_proportion_z` or
    /// `welch_t` (canary).
    pub test: &'static str,
    pub p_value: f64,
    /// McNemar: pairs only the champion / only the challenger got right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_champion: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_challenger: Option<u64>,
    /// Canary: the labelled requests each version answered alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub champion_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenger_requests: Option<u64>,
}

impl Evidence {
    /// How much better the challenger is (accuracy gained, MAE saved).
    pub fn gain(&self) -> f64 {
        match self.metric {
            "mae" => self.champion - self.challenger,
            _ => self.challenger - self.champion,
        }
    }
}

/// What the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Promote,
    Reject,
    Wait,
}

/// The policy's rule (see the module docs). `windows`: the challenger's
/// finalized windows; `drift_clean`: no drifted input in its latest.
pub fn decide(
    policy: &Policy,
    windows: u64,
    evidence: Option<&Evidence>,
    drift_clean: bool,
) -> Verdict {
    if windows < policy.min_windows {
        return Verdict::Wait;
    }
    let wins = evidence.is_some_and(|e| {
        e.pairs >= policy.min_pairs && e.gain() >= policy.margin && e.p_value < policy.alpha
    });
    if wins && drift_clean {
        Verdict::Promote
    } else if windows >= policy.max_windows {
        Verdict::Reject
    } else {
        Verdict::Wait
    }
}

/// The evidence of `challenger` against `champion` over `[from_ms,
/// to_ms)` from the training sample; `None` without a labelled pair.
pub async fn evidence(
    store: &Store,
    spec: &ModelSpec,
    champion: &str,
    challenger: &str,
    from_ms: i64,
    to_ms: i64,
) -> store::Result<Option<Evidence>> {
    const MAX_ROWS: u64 = 1_000_000;
    let champions: BTreeMap<String, store::SampledPrediction> = store
        .sampled_predictions(spec.name(), Some(champion), from_ms, to_ms, MAX_ROWS)
        .await?
        .into_iter()
        .map(|p| (p.prediction_id.clone(), p))
        .collect();
    let challengers = store
        .sampled_predictions(spec.name(), Some(challenger), from_ms, to_ms, MAX_ROWS)
        .await?;
    let shared: Vec<(store::SampledPrediction, store::SampledPrediction)> = challengers
        .iter()
        .filter_map(|p| Some((champions.get(&p.prediction_id)?.clone(), p.clone())))
        .collect();
    if shared.is_empty() {
        return canary_evidence(store, spec, champions.into_values().collect(), challengers).await;
    }
    let ids: Vec<String> = shared
        .iter()
        .map(|(_, p)| p.prediction_id.clone())
        .collect();
    let labels = labels_of(store, spec.name(), &ids).await?;
    match spec.task() {
        Task::Classification => {
            let (mut pairs, mut right_champion, mut right_challenger) = (0u64, 0u64, 0u64);
            let (mut only_champion, mut only_challenger) = (0u64, 0u64);
            for (a, b) in &shared {
                let Some(label) = labels.get(&a.prediction_id) else {
                    continue;
                };
                let (ra, rb) = (a.class == label.label, b.class == label.label);
                pairs += 1;
                right_champion += u64::from(ra);
                right_challenger += u64::from(rb);
                only_champion += u64::from(ra && !rb);
                only_challenger += u64::from(rb && !ra);
            }
            if pairs == 0 {
                return Ok(None);
            }
            let test = paired::mcnemar(only_champion, only_challenger);
            Ok(Some(Evidence {
                pairs,
                metric: "accuracy",
                champion: right_champion as f64 / pairs as f64,
                challenger: right_challenger as f64 / pairs as f64,
                test: "mcnemar_exact",
                p_value: test.p_value,
                only_champion: Some(only_champion),
                only_challenger: Some(only_challenger),
                champion_requests: None,
                challenger_requests: None,
            }))
        }
        Task::Regression => {
            let (mut errors_champion, mut errors_challenger) = (Vec::new(), Vec::new());
            for (a, b) in &shared {
                let Some(value) = labels
                    .get(&a.prediction_id)
                    .and_then(|l| l.value.or_else(|| l.label.parse().ok()))
                else {
                    continue;
                };
                let (Some(sa), Some(sb)) = (a.score, b.score) else {
                    continue;
                };
                errors_champion.push((sa - value).abs());
                errors_challenger.push((sb - value).abs());
            }
            let n = errors_champion.len();
            if n == 0 {
                return Ok(None);
            }
            let p_value =
                paired::paired_t(&errors_champion, &errors_challenger).map_or(1.0, |t| t.p_value);
            Ok(Some(Evidence {
                pairs: n as u64,
                metric: "mae",
                champion: errors_champion.iter().sum::<f64>() / n as f64,
                challenger: errors_challenger.iter().sum::<f64>() / n as f64,
                test: "paired_t",
                p_value,
                only_champion: None,
                only_challenger: None,
                champion_requests: None,
                challenger_requests: None,
            }))
        }
    }
}

/// The sampled labels of `ids`, by id.
async fn labels_of(
    store: &Store,
    model: &str,
    ids: &[String],
) -> store::Result<BTreeMap<String, store::SampledLabel>> {
    Ok(store
        .sampled_labels(model, ids)
        .await?
        .into_iter()
        .map(|l| (l.prediction_id.clone(), l))
        .collect())
}

/// The evidence of a canary: each version on its own labelled requests.
async fn canary_evidence(
    store: &Store,
    spec: &ModelSpec,
    champions: Vec<store::SampledPrediction>,
    challengers: Vec<store::SampledPrediction>,
) -> store::Result<Option<Evidence>> {
    let ids: Vec<String> = champions
        .iter()
        .chain(&challengers)
        .map(|p| p.prediction_id.clone())
        .collect();
    let labels = labels_of(store, spec.name(), &ids).await?;
    match spec.task() {
        Task::Classification => {
            let outcomes = |predictions: &[store::SampledPrediction]| {
                predictions
                    .iter()
                    .filter_map(|p| Some(p.class == labels.get(&p.prediction_id)?.label))
                    .fold((0u64, 0u64), |(right, n), ok| {
                        (right + u64::from(ok), n + 1)
                    })
            };
            let ((right_a, n_a), (right_b, n_b)) = (outcomes(&champions), outcomes(&challengers));
            if n_a == 0 || n_b == 0 {
                return Ok(None);
            }
            let p_value = paired::two_proportions(right_a, n_a, right_b, n_b)
                .map_or(1.0, |test| test.p_value);
            Ok(Some(Evidence {
                pairs: n_a.min(n_b),
                metric: "accuracy",
                champion: right_a as f64 / n_a as f64,
                challenger: right_b as f64 / n_b as f64,
                test: "two_proportion_z",
                p_value,
                only_champion: None,
                only_challenger: None,
                champion_requests: Some(n_a),
                challenger_requests: Some(n_b),
            }))
        }
        Task::Regression => {
            let errors = |predictions: &[store::SampledPrediction]| -> Vec<f64> {
                predictions
                    .iter()
                    .filter_map(|p| {
                        let label = labels.get(&p.prediction_id)?;
                        let value = label.value.or_else(|| label.label.parse().ok())?;
                        Some((p.score? - value).abs())
                    })
                    .collect()
            };
            let (a, b) = (errors(&champions), errors(&challengers));
            if a.is_empty() || b.is_empty() {
                return Ok(None);
            }
            let p_value = paired::welch_t(&a, &b).map_or(1.0, |test| test.p_value);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            Ok(Some(Evidence {
                pairs: a.len().min(b.len()) as u64,
                metric: "mae",
                champion: mean(&a),
                challenger: mean(&b),
                test: "welch_t",
                p_value,
                only_champion: None,
                only_challenger: None,
                champion_requests: Some(a.len() as u64),
                challenger_requests: Some(b.len() as u64),
            }))
        }
    }
}

/// Models waiting to be evaluated: bounded by the number of models (a
/// model already queued is not queued again), so the consumer never
/// waits on it.
#[derive(Clone, Default)]
pub struct Queue {
    inner: Arc<(Mutex<VecDeque<String>>, tokio::sync::Notify)>,
    /// Models taken from the queue whose evaluation has not finished.
    evaluating: Arc<std::sync::atomic::AtomicUsize>,
}

impl Queue {
    /// Queues `model` unless it is queued already.
    pub fn push(&self, model: &str) {
        let (queue, notify) = &*self.inner;
        let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
        if !queue.iter().any(|queued| queued == model) {
            queue.push_back(model.to_owned());
            notify.notify_one();
        }
    }

    /// The next model; counted as being evaluated until [`Queue::done`].
    async fn pop(&self) -> String {
        loop {
            let (queue, notify) = &*self.inner;
            let notified = notify.notified();
            {
                let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(model) = queue.pop_front() {
                    self.evaluating
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return model;
                }
            }
            notified.await;
        }
    }

    /// The evaluation of a popped model finished.
    fn done(&self) {
        self.evaluating
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether nothing is queued or being evaluated (a simulation waits for
    /// this before moving its clock on).
    pub fn is_idle(&self) -> bool {
        let queue = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        queue.is_empty() && self.evaluating.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// Marks a popped model's evaluation finished when dropped.
struct Evaluating<'a>(&'a Queue);

impl Drop for Evaluating<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// A decision and what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub model: String,
    pub champion: String,
    pub challenger: String,
    pub verdict: Verdict,
    pub windows: u64,
    pub evidence: Option<Evidence>,
    pub drift_clean: bool,
    pub policy: Policy,
}

impl Decision {
    /// `io.tidewatch.promotion.decided`.
    pub fn cloud_event(&self, time_ms: i64) -> Value {
        registry::events::cloud_event(
            DECIDED,
            "tidewatch/promotion",
            &format!(
                "{}/{}/{}",
                self.model,
                self.challenger,
                serde_json::to_value(self.verdict)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
            time_ms,
            &format!("{}/{}", self.model, self.challenger),
            serde_json::to_value(self).unwrap_or(Value::Null),
        )
    }
}

/// Evaluates `model` now: `None` when it has no challenger or the
/// registry does not know it; the decision otherwise (a `wait` included),
/// its alias changes made.
pub async fn evaluate(
    config: &PromotionConfig,
    store: &Store,
    spec: &ModelSpec,
    window_ms: i64,
) -> Result<Option<Decision>, String> {
    let registry = &config.registry;
    let Some(aliases) = registry
        .aliases(spec.name())
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let aliases: BTreeMap<String, String> = aliases.into_iter().collect();
    let Some(champion) = aliases.get("champion").cloned() else {
        return Ok(None);
    };
    let Some((alias, challenger)) = ["challenger", "shadow"]
        .into_iter()
        .find_map(|alias| Some((alias, aliases.get(alias)?.clone())))
        .filter(|(_, challenger)| *challenger != champion)
    else {
        return Ok(None);
    };
    let versions = store.model_versions().await.map_err(|e| e.to_string())?;
    let Some(summary) = versions
        .iter()
        .find(|v| v.model == spec.name() && v.model_version == challenger)
    else {
        return Ok(Some(Decision {
            model: spec.name().to_owned(),
            champion,
            challenger,
            verdict: Verdict::Wait,
            windows: 0,
            evidence: None,
            drift_clean: true,
            policy: config.policy(spec.name()),
        }));
    };
    let policy = config.policy(spec.name());
    let (from, to) = (summary.first_window, summary.last_window + window_ms);
    let evidence = evidence(store, spec, &champion, &challenger, from, to)
        .await
        .map_err(|e| e.to_string())?;
    let latest = store
        .window_metrics(store::MetricsQuery {
            model: Some(spec.name().to_owned()),
            model_version: Some(challenger.clone()),
            segment: Some("all".into()),
            from_ms: Some(summary.last_input_window.unwrap_or(summary.last_window)),
            to_ms: Some(summary.last_input_window.unwrap_or(summary.last_window) + 1),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let inputs: Vec<&str> = spec
        .series()
        .take(spec.configured_feature_count())
        .filter(|f| matches!(f.kind, FeatureKind::Numeric | FeatureKind::Categorical))
        .map(|f| f.name.as_str())
        .collect();
    // Clean: every input has a verdict against the challenger's own
    // reference and none drifted. Without a reference (or with windows too
    // small for a verdict) nothing says it is clean.
    let verdicts: Vec<bool> = latest
        .iter()
        .filter(|m| inputs.contains(&m.key.feature.as_str()))
        .map(|m| m.metrics.drifted)
        .collect::<Option<Vec<bool>>>()
        .unwrap_or_default();
    let drift_clean = !verdicts.is_empty() && !verdicts.contains(&true);
    let verdict = decide(&policy, summary.windows, evidence.as_ref(), drift_clean);
    let decision = Decision {
        model: spec.name().to_owned(),
        champion,
        challenger,
        verdict,
        windows: summary.windows,
        evidence,
        drift_clean,
        policy,
    };
    let name = spec.name();
    match verdict {
        Verdict::Promote => {
            registry
                .post_ok(
                    "registered-models/alias",
                    &json!({"name": name, "alias": "champion", "version": decision.challenger}),
                )
                .await
                .map_err(|e| e.to_string())?;
            delete_alias(registry, name, alias).await?;
        }
        Verdict::Reject => delete_alias(registry, name, alias).await?,
        Verdict::Wait => {}
    }
    Ok(Some(decision))
}

async fn delete_alias(registry: &MlflowClient, model: &str, alias: &str) -> Result<(), String> {
    let (status, answer) = registry
        .delete(
            "registered-models/alias",
            &json!({"name": model, "alias": alias}),
        )
        .await
        .map_err(|e| e.to_string())?;
    if (200..300).contains(&status) || status == 404 {
        Ok(())
    } else {
        Err(format!("registry: deleting {alias}: {status}: {answer}"))
    }
}

/// Evaluates the models `queue` names, one at a time, until `shutdown`;
/// decisions other than `wait` are published on the bus (when both are
/// configured) and logged.
pub async fn run(
    config: PromotionConfig,
    store: Store,
    models: Vec<ModelSpec>,
    window_ms: i64,
    bus: Option<Arc<dyn alerting::delivery::Bus>>,
    queue: Queue,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let model = tokio::select! {
            () = &mut shutdown => return,
            model = queue.pop() => model,
        };
        let _evaluating = Evaluating(&queue);
        let Some(spec) = models.iter().find(|spec| spec.name() == model) else {
            continue;
        };
        match evaluate(&config, &store, spec, window_ms).await {
            Ok(Some(decision)) if decision.verdict != Verdict::Wait => {
                tracing::warn!(model, champion = %decision.champion, challenger = %decision.challenger, verdict = ?decision.verdict, evidence = ?decision.evidence, "promotion decided");
                let now = ingest::finalize::now_millis() as i64;
                let event = decision.cloud_event(now);
                let recorded = crate::lifecycle::record_decision(
                    &store,
                    store::VersionEventKind::PromotionDecided,
                    &model,
                    &decision.challenger,
                    event["id"].as_str().unwrap_or_default(),
                    now,
                    &event["data"],
                )
                .await;
                if let Err(error) = recorded {
                    tracing::warn!(%error, "the decision was not recorded in the timeline");
                }
                if let (Some(bus), Some(topic)) = (&bus, &config.topic) {
                    // The aliases moved already: the event is retried until
                    // the broker takes it (or the process stops).
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = alerting::delivery::publish_until_sent(
                            bus.as_ref(), topic, &model, &event, PUBLISH_RETRY,
                        ) => {}
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, model, "promotion not evaluated; retried at the next window")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(pairs: u64, champion: f64, challenger: f64, p_value: f64) -> Evidence {
        Evidence {
            pairs,
            metric: "accuracy",
            champion,
            challenger,
            test: "mcnemar_exact",
            p_value,
            only_champion: None,
            only_challenger: None,
            champion_requests: None,
            challenger_requests: None,
        }
    }

    #[tokio::test]
    async fn a_canary_is_judged_on_each_versions_own_requests() {
        let store = Store::in_memory().unwrap();
        let spec = ModelSpec::new(
            "m",
            Task::Classification,
            vec![detectors::spec::FeatureSpec {
                name: "x".into(),
                kind: FeatureKind::Numeric,
            }],
            Vec::new(),
            10,
            10,
        )
        .unwrap();
        let (mut predictions, mut labels) = (Vec::new(), Vec::new());
        // v1 right on 70 % of its 400 requests, v2 on 85 % of its 100
        // (different requests: a canary share).
        for (version, count, right) in [("1", 400u64, 280u64), ("2", 100, 85)] {
            for i in 0..count {
                let id = format!("{version}-{i}");
                predictions.push(store::SampledPrediction {
                    model: "m".into(),
                    model_version: version.into(),
                    prediction_id: id.clone(),
                    window_start: 0,
                    time_ms: 1_000,
                    features: "{}".into(),
                    score: None,
                    class: if i < right { "yes" } else { "no" }.into(),
                });
                labels.push(store::SampledLabel {
                    model: "m".into(),
                    prediction_id: id,
                    time_ms: 2_000,
                    label: "yes".into(),
                    value: None,
                });
            }
        }
        store.write_samples(predictions, labels).await.unwrap();
        let evidence = super::evidence(&store, &spec, "1", "2", 0, 3_600_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(evidence.test, "two_proportion_z");
        assert_eq!(
            (evidence.champion_requests, evidence.challenger_requests),
            (Some(400), Some(100))
        );
        assert_eq!(evidence.pairs, 100);
        assert!(
            (evidence.champion - 0.70).abs() < 1e-12 && (evidence.challenger - 0.85).abs() < 1e-12
        );
        let expected = detectors::paired::two_proportions(280, 400, 85, 100)
            .unwrap()
            .p_value;
        assert_eq!(evidence.p_value, expected);
        assert!(evidence.p_value < 0.01, "{}", evidence.p_value);
    }

    #[test]
    fn the_rule_promotes_only_a_significant_clean_win_and_rejects_at_the_end() {
        let policy = Policy {
            min_windows: 3,
            max_windows: 6,
            min_pairs: 100,
            margin: 0.02,
            alpha: 0.05,
        };
        let win = evidence(500, 0.80, 0.86, 0.001);
        assert_eq!(
            decide(&policy, 2, Some(&win), true),
            Verdict::Wait,
            "too early"
        );
        assert_eq!(decide(&policy, 3, Some(&win), true), Verdict::Promote);
        assert_eq!(
            decide(&policy, 3, Some(&win), false),
            Verdict::Wait,
            "its own drift"
        );
        assert_eq!(decide(&policy, 6, Some(&win), false), Verdict::Reject);
        let few = evidence(50, 0.80, 0.90, 0.001);
        assert_eq!(decide(&policy, 4, Some(&few), true), Verdict::Wait);
        let small = evidence(500, 0.80, 0.81, 0.01);
        assert_eq!(
            decide(&policy, 4, Some(&small), true),
            Verdict::Wait,
            "margin"
        );
        let noisy = evidence(500, 0.80, 0.85, 0.2);
        assert_eq!(
            decide(&policy, 4, Some(&noisy), true),
            Verdict::Wait,
            "p-value"
        );
        assert_eq!(decide(&policy, 6, Some(&noisy), true), Verdict::Reject);
        assert_eq!(decide(&policy, 6, None, true), Verdict::Reject);
        let regression = Evidence {
            metric: "mae",
            ..evidence(500, 2.0, 1.5, 0.001)
        };
        assert!((regression.gain() - 0.5).abs() < 1e-12);
        assert_eq!(
            decide(&policy, 3, Some(&regression), true),
            Verdict::Promote
        );
    }

    #[test]
    fn per_model_policies_override_the_section() {
        let spec = ModelSpec::new(
            "churn",
            Task::Classification,
            vec![detectors::spec::FeatureSpec {
                name: "usage".into(),
                kind: FeatureKind::Numeric,
            }],
            vec![],
            10,
            10,
        )
        .unwrap();
        let raw: RawPromotion = toml::from_str(
            "registry_url = \"http://127.0.0.1:8080\"\nmin_windows = 4\n[models.churn]\nmargin = 0.05\n",
        )
        .unwrap();
        let config = raw.validate(std::slice::from_ref(&spec)).unwrap();
        let churn = config.policy("churn");
        assert_eq!((churn.min_windows, churn.margin), (4, 0.05));
        assert_eq!(config.policy("other").margin, 0.0);
        for (text, key) in [
            ("registry_url = \"https://x\"", "registry_url"),
            ("registry_url = \"http://x:1\"\nalpha = 1.5", "alpha"),
            (
                "registry_url = \"http://x:1\"\nmax_windows = 1",
                "max_windows",
            ),
            (
                "registry_url = \"http://x:1\"\n[models.fraud]\nmargin = 0.1",
                "models.fraud",
            ),
        ] {
            let raw: RawPromotion = toml::from_str(text).unwrap();
            let error = raw.validate(std::slice::from_ref(&spec)).unwrap_err();
            assert_eq!(error.key, key, "{text}");
        }
    }
}
