//! Which version answers: the route table of champion and challenger
//! aliases.
//!
//! Each model has a `champion`, which answers, and optionally a
//! `challenger` that either
//! - takes a share of the traffic (**canary**), sticky by request id: the
//!   same id always goes to the same version, so a client retrying gets the
//!   same model; or
//! - runs in **shadow**: called with the same request after the champion
//!   answered, its answer logged and never returned, its latency never
//!   added to the caller's.
//!
//! The table is replaced at run time with [`RouteTable::set_aliases`] (the
//! registry moves aliases); every change returns a [`RouteUpdated`] for the
//! caller to publish as `io.tidewatch.serving.route.updated`. Versions the
//! registry names are added with [`RouteTable::add_version`] (at most
//! [`MAX_ADDED_VERSIONS`] per model: the oldest added that no alias routes
//! to makes room, and when every one is routed the new one is refused).
//! Readers take a snapshot (`Arc`) per request, so a change never tears a
//! request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::load::LoadContext;
use crate::model::{ServedModel, ServedVersion};
use crate::Error;

/// CloudEvents type of a route change.
pub const ROUTE_UPDATED: &str = "io.tidewatch.serving.route.updated";

/// How a challenger takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ChallengerMode {
    /// Called beside the champion; its answer is logged, not returned.
    Shadow,
    /// Answers this share of requests (parts per million), sticky by id.
    Canary { per_million: u32 },
}

/// A model's aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Aliases {
    /// The version that answers.
    pub champion: String,
    /// The version tried beside it, and how.
    pub challenger: Option<(String, ChallengerMode)>,
}

/// The role a version answered a call in (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Champion,
    Canary,
    Shadow,
    /// A version asked for by URL (`/versions/{v}`).
    Pinned,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Canary => "canary",
            Role::Shadow => "shadow",
            Role::Pinned => "pinned",
        }
    }
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The version whose answer is returned, and its role.
    pub answer: (String, Role),
    /// A version to call in shadow.
    pub shadow: Option<String>,
}

/// A route change, published as [`ROUTE_UPDATED`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteUpdated {
    pub model: String,
    pub champion: String,
    pub challenger: Option<String>,
    pub challenger_mode: Option<ChallengerMode>,
    pub previous_champion: String,
}

impl RouteUpdated {
    /// The CloudEvents 1.0 document (structured JSON) of the change, with
    /// `id` and `time_ms` (ms since the epoch).
    pub fn cloud_event(&self, id: &str, time_ms: i64) -> serde_json::Value {
        registry::events::cloud_event(
            ROUTE_UPDATED,
            "tidewatch/serving",
            id,
            time_ms,
            &self.model,
            serde_json::to_value(self).expect("a route change serializes"),
        )
    }
}

struct Route {
    /// Taken before `aliases` wherever both are.
    model: RwLock<Arc<ServedModel>>,
    aliases: RwLock<Arc<Aliases>>,
    /// How a challenger named by the registry's `challenger` alias takes
    /// part.
    challenger_policy: RwLock<ChallengerMode>,
    /// How a version the registry names is loaded (configured models).
    loader: RwLock<Option<LoadContext>>,
    /// Versions added at run time, oldest first.
    added: Mutex<VecDeque<String>>,
}

/// Versions of one model added at run time (from the registry) at most.
pub const MAX_ADDED_VERSIONS: usize = 8;

/// The registry aliases that route: the rest (`staging`, `candidate`, …)
/// name versions without sending them traffic.
pub const CHAMPION_ALIAS: &str = "champion";
/// A challenger taking part as the model's challenger policy says.
pub const CHALLENGER_ALIAS: &str = "challenger";
/// A challenger in shadow, whatever the policy.
pub const SHADOW_ALIAS: &str = "shadow";

/// Every served model and its aliases.
pub struct RouteTable {
    routes: BTreeMap<String, Route>,
}

impl RouteTable {
    /// A table of `models`, each with its aliases (checked).
    pub fn new(models: Vec<(ServedModel, Aliases)>) -> Result<Self, Error> {
        let mut routes = BTreeMap::new();
        for (model, aliases) in models {
            check(&model, &aliases)?;
            let name = model.name.clone();
            let policy = aliases
                .challenger
                .as_ref()
                .map_or(ChallengerMode::Shadow, |(_, mode)| *mode);
            let route = Route {
                model: RwLock::new(Arc::new(model)),
                aliases: RwLock::new(Arc::new(aliases)),
                challenger_policy: RwLock::new(policy),
                loader: RwLock::new(None),
                added: Mutex::new(VecDeque::new()),
            };
            if routes.insert(name.clone(), route).is_some() {
                return Err(Error::InvalidSetting(format!(
                    "model `{name}` is served twice"
                )));
            }
        }
        Ok(Self { routes })
    }

    /// The served models, as they are now.
    pub fn models(&self) -> Vec<Arc<ServedModel>> {
        self.routes
            .values()
            .map(|route| {
                route
                    .model
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .collect()
    }

    fn route(&self, name: &str) -> Result<&Route, Error> {
        self.routes
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no model named `{name}`")))
    }

    /// Model `name` and its aliases now.
    pub fn get(&self, name: &str) -> Result<(Arc<ServedModel>, Arc<Aliases>), Error> {
        let route = self.route(name)?;
        let model = route
            .model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let aliases = route
            .aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok((model, aliases))
    }

    /// Sets how versions of `model` the registry names are loaded.
    pub fn set_loader(&self, model: &str, context: LoadContext) -> Result<(), Error> {
        *self
            .route(model)?
            .loader
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(context);
        Ok(())
    }

    /// How versions of `model` the registry names are loaded, if it is
    /// served and configured with a loader.
    pub fn loader(&self, model: &str) -> Option<LoadContext> {
        self.routes
            .get(model)?
            .loader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `model` is served with `version`.
    pub fn serves(&self, model: &str, version: &str) -> bool {
        self.get(model)
            .is_ok_and(|(model, _)| model.versions.contains_key(version))
    }

    /// Adds `version` of `model` (loaded from the registry); see the
    /// module docs for the bound. A version already served stays as it is.
    pub fn add_version(
        &self,
        model: &str,
        version: &str,
        served: ServedVersion,
    ) -> Result<(), Error> {
        let route = self.route(model)?;
        let mut added = route.added.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = route.model.write().unwrap_or_else(|e| e.into_inner());
        if current.versions.contains_key(version) {
            return Ok(());
        }
        let aliases = route
            .aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let routed = |candidate: &str| {
            aliases.champion == candidate
                || aliases
                    .challenger
                    .as_ref()
                    .is_some_and(|(challenger, _)| challenger == candidate)
        };
        let mut versions = current.versions.clone();
        while added.len() >= MAX_ADDED_VERSIONS {
            let Some(at) = added.iter().position(|old| !routed(old)) else {
                return Err(Error::Overloaded(format!(
                    "model `{model}` already serves {MAX_ADDED_VERSIONS} versions from the registry, all routed"
                )));
            };
            let evicted = added.remove(at).expect("a position in the queue");
            versions.remove(&evicted);
            tracing::info!(model, version = %evicted, "an unrouted version from the registry unloaded to make room");
        }
        versions.insert(version.to_owned(), Arc::new(served));
        added.push_back(version.to_owned());
        *current = Arc::new(ServedModel {
            name: current.name.clone(),
            features: current.features.clone(),
            layout: current.layout.clone(),
            versions,
        });
        tracing::info!(model, version, "version loaded from the registry");
        Ok(())
    }

    /// Sets how a challenger named by the `challenger` alias takes part in
    /// `model`'s traffic (default: as the configured challenger, else in
    /// shadow).
    pub fn set_challenger_policy(&self, model: &str, mode: ChallengerMode) -> Result<(), Error> {
        let route = self.route(model)?;
        *route
            .challenger_policy
            .write()
            .unwrap_or_else(|e| e.into_inner()) = mode;
        Ok(())
    }

    /// Applies a registry alias of `model` (`version`: where it points now,
    /// `None` when deleted): `champion` moves the answering version (a
    /// challenger promoted to champion stops being the challenger);
    /// `challenger` sets or clears the challenger, taking part as the
    /// model's policy says; `shadow` sets or clears a shadow challenger.
    /// Deleting `champion` keeps the last one (a model always answers), and
    /// other aliases do not route. `Ok(None)`: the route did not change
    /// (another alias, another model, or where it already was).
    pub fn apply_alias(
        &self,
        model: &str,
        alias: &str,
        version: Option<&str>,
    ) -> Result<Option<RouteUpdated>, Error> {
        let Some(route) = self.routes.get(model) else {
            return Ok(None);
        };
        let current = route
            .aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let policy = *route
            .challenger_policy
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = (*current).clone();
        match (alias, version) {
            (CHAMPION_ALIAS, Some(version)) => {
                next.champion = version.to_owned();
                if next
                    .challenger
                    .as_ref()
                    .is_some_and(|(challenger, _)| challenger == version)
                {
                    next.challenger = None;
                }
            }
            (CHAMPION_ALIAS, None) => {
                tracing::warn!(model, champion = %current.champion, "the champion alias was deleted; the last champion keeps answering");
                return Ok(None);
            }
            (CHALLENGER_ALIAS | SHADOW_ALIAS, Some(version)) => {
                let mode = if alias == SHADOW_ALIAS {
                    ChallengerMode::Shadow
                } else {
                    policy
                };
                next.challenger = (version != next.champion).then(|| (version.to_owned(), mode));
            }
            (CHALLENGER_ALIAS, None) => {
                if !matches!(&next.challenger, Some((_, mode)) if *mode == policy) {
                    return Ok(None);
                }
                next.challenger = None;
            }
            (SHADOW_ALIAS, None) => {
                if !matches!(&next.challenger, Some((_, ChallengerMode::Shadow))) {
                    return Ok(None);
                }
                next.challenger = None;
            }
            _ => return Ok(None),
        }
        if next == *current {
            return Ok(None);
        }
        self.set_aliases(model, next).map(Some)
    }

    /// Moves the aliases of `model`; the change to publish.
    pub fn set_aliases(&self, model: &str, aliases: Aliases) -> Result<RouteUpdated, Error> {
        let route = self.route(model)?;
        // Held until the aliases are set: no version is unloaded between
        // the check and the change.
        let served = route.model.read().unwrap_or_else(|e| e.into_inner());
        check(&served, &aliases)?;
        let mut current = route.aliases.write().unwrap_or_else(|e| e.into_inner());
        let previous_champion = current.champion.clone();
        let update = RouteUpdated {
            model: model.to_owned(),
            champion: aliases.champion.clone(),
            challenger: aliases
                .challenger
                .as_ref()
                .map(|(version, _)| version.clone()),
            challenger_mode: aliases.challenger.as_ref().map(|(_, mode)| *mode),
            previous_champion,
        };
        *current = Arc::new(aliases);
        tracing::info!(model, champion = %update.champion, challenger = ?update.challenger, "route updated");
        Ok(update)
    }
}

fn check(model: &ServedModel, aliases: &Aliases) -> Result<(), Error> {
    model.version(&aliases.champion)?;
    if let Some((challenger, mode)) = &aliases.challenger {
        model.version(challenger)?;
        if *challenger == aliases.champion {
            return Err(Error::InvalidSetting(format!(
                "model `{}`: the challenger is the champion ({challenger})",
                model.name
            )));
        }
        if let ChallengerMode::Canary { per_million } = mode {
            if *per_million > 1_000_000 {
                return Err(Error::InvalidSetting(
                    "a canary share is at most 100 %".into(),
                ));
            }
        }
    }
    Ok(())
}

impl Aliases {
    /// Where the request with `request_id` goes.
    pub fn decide(&self, request_id: &str) -> Decision {
        match &self.challenger {
            Some((challenger, ChallengerMode::Canary { per_million })) => {
                if bucket(request_id) < *per_million {
                    Decision {
                        answer: (challenger.clone(), Role::Canary),
                        shadow: None,
                    }
                } else {
                    Decision {
                        answer: (self.champion.clone(), Role::Champion),
                        shadow: None,
                    }
                }
            }
            Some((challenger, ChallengerMode::Shadow)) => Decision {
                answer: (self.champion.clone(), Role::Champion),
                shadow: Some(challenger.clone()),
            },
            None => Decision {
                answer: (self.champion.clone(), Role::Champion),
                shadow: None,
            },
        }
    }
}

/// A request id's bucket in [0, 1,000,000), uniform and stable.
fn bucket(request_id: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(request_id.as_bytes()) % 1_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_is_sticky_by_id_and_takes_its_share() {
        let aliases = Aliases {
            champion: "1".into(),
            challenger: Some((
                "2".into(),
                ChallengerMode::Canary {
                    per_million: 100_000,
                },
            )),
        };
        let mut canary = 0;
        for i in 0..100_000 {
            let id = format!("request-{i}");
            let first = aliases.decide(&id);
            assert_eq!(first, aliases.decide(&id), "sticky");
            assert_eq!(first.shadow, None);
            if first.answer.1 == Role::Canary {
                assert_eq!(first.answer.0, "2");
                canary += 1;
            }
        }
        // 10 % of 100,000: within 5 standard deviations (σ ≈ 95).
        assert!((canary as i64 - 10_000).abs() < 475, "{canary}");
    }

    fn table() -> RouteTable {
        use crate::features::InputLayout;
        use crate::linear::LinearModel;
        use crate::model::{Runtime, ServedVersion};
        use crate::outputs::OutputMapping;
        let versions = ["1", "2", "3"]
            .into_iter()
            .map(|v| {
                let model = LinearModel::regression(vec!["a".into()], vec![1.0], 0.0).unwrap();
                let served = ServedVersion {
                    runtime: Runtime::Linear(model),
                    outputs: OutputMapping {
                        task: detectors::spec::Task::Regression,
                        probabilities: None,
                        label: Some("prediction".into()),
                        classes: Vec::new(),
                    },
                };
                (v.to_owned(), Arc::new(served))
            })
            .collect();
        let model = ServedModel {
            name: "m".into(),
            features: vec!["a".into()],
            layout: InputLayout::PerFeature,
            versions,
        };
        RouteTable::new(vec![(
            model,
            Aliases {
                champion: "1".into(),
                challenger: None,
            },
        )])
        .unwrap()
    }

    #[test]
    fn registry_aliases_move_routes_and_a_promotion_clears_the_challenger() {
        let table = table();
        table
            .set_challenger_policy(
                "m",
                ChallengerMode::Canary {
                    per_million: 50_000,
                },
            )
            .unwrap();
        let update = table
            .apply_alias("m", "challenger", Some("2"))
            .unwrap()
            .unwrap();
        assert_eq!(update.challenger.as_deref(), Some("2"));
        assert_eq!(
            update.challenger_mode,
            Some(ChallengerMode::Canary {
                per_million: 50_000
            })
        );
        // The same alias again, another model, another alias: no change.
        assert_eq!(
            table.apply_alias("m", "challenger", Some("2")).unwrap(),
            None
        );
        assert_eq!(
            table.apply_alias("other", "champion", Some("2")).unwrap(),
            None
        );
        assert_eq!(table.apply_alias("m", "staging", Some("3")).unwrap(), None);
        // Promotion: the challenger becomes champion and stops challenging.
        let update = table
            .apply_alias("m", "champion", Some("2"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (update.previous_champion.as_str(), update.champion.as_str()),
            ("1", "2")
        );
        assert_eq!(update.challenger, None);
        // A shadow, then its alias deleted.
        table
            .apply_alias("m", "shadow", Some("3"))
            .unwrap()
            .unwrap();
        assert_eq!(
            table.get("m").unwrap().1.challenger,
            Some(("3".into(), ChallengerMode::Shadow))
        );
        assert_eq!(
            table.apply_alias("m", "challenger", None).unwrap(),
            None,
            "not the policy's"
        );
        table.apply_alias("m", "shadow", None).unwrap().unwrap();
        assert_eq!(table.get("m").unwrap().1.challenger, None);
        // Deleting the champion keeps the last one; an unknown version is refused.
        assert_eq!(table.apply_alias("m", "champion", None).unwrap(), None);
        assert_eq!(table.get("m").unwrap().1.champion, "2");
        assert!(table.apply_alias("m", "champion", Some("9")).is_err());
        assert_eq!(table.get("m").unwrap().1.champion, "2");
    }

    #[test]
    fn shadow_calls_the_challenger_beside_the_champion() {
        let aliases = Aliases {
            champion: "1".into(),
            challenger: Some(("2".into(), ChallengerMode::Shadow)),
        };
        assert_eq!(
            aliases.decide("x"),
            Decision {
                answer: ("1".into(), Role::Champion),
                shadow: Some("2".into())
            }
        );
    }

    fn regression(coefficient: f64) -> ServedVersion {
        use crate::linear::LinearModel;
        use crate::model::Runtime;
        use crate::outputs::OutputMapping;
        ServedVersion {
            runtime: Runtime::Linear(
                LinearModel::regression(vec!["a".into()], vec![coefficient], 0.0).unwrap(),
            ),
            outputs: OutputMapping {
                task: detectors::spec::Task::Regression,
                probabilities: None,
                label: Some("prediction".into()),
                classes: Vec::new(),
            },
        }
    }

    #[test]
    fn versions_added_at_run_time_are_bounded_and_routed_ones_stay() {
        let table = table();
        let (before, _) = table.get("m").unwrap();
        table.add_version("m", "10", regression(2.0)).unwrap();
        assert!(table.serves("m", "10"));
        assert!(
            !before.versions.contains_key("10"),
            "snapshots do not change"
        );
        table
            .apply_alias("m", "champion", Some("10"))
            .unwrap()
            .unwrap();
        table
            .apply_alias("m", "shadow", Some("3"))
            .unwrap()
            .unwrap();
        // Fill the bound: the oldest unrouted added versions make room,
        // the champion (10) stays.
        for version in 11..11 + MAX_ADDED_VERSIONS {
            table
                .add_version("m", &version.to_string(), regression(1.0))
                .unwrap();
        }
        assert!(table.serves("m", "10"), "routed: kept");
        assert!(!table.serves("m", "11"), "the oldest unrouted one left");
        assert!(
            table.serves("m", "1") && table.serves("m", "3"),
            "configured ones stay"
        );
        let added = (10..11 + MAX_ADDED_VERSIONS)
            .filter(|v| table.serves("m", &v.to_string()))
            .count();
        assert_eq!(added, MAX_ADDED_VERSIONS);
        // Adding a served version changes nothing.
        table.add_version("m", "10", regression(5.0)).unwrap();
        let (model, _) = table.get("m").unwrap();
        assert_eq!(model.versions.len(), 3 + MAX_ADDED_VERSIONS);

        // A model not served takes no version.
        let table = RouteTable::new(vec![]).unwrap();
        assert!(matches!(
            table.add_version("m", "1", regression(1.0)),
            Err(Error::NotFound(_))
        ));
        let table = self::table();
        for version in 0..MAX_ADDED_VERSIONS {
            let version = format!("r{version}");
            table.add_version("m", &version, regression(1.0)).unwrap();
            let alias = if version == "r0" { "champion" } else { "other" };
            table.apply_alias("m", alias, Some(&version)).unwrap();
        }
        // Only r0 routes; the others are unrouted and make room in turn.
        table.add_version("m", "next", regression(1.0)).unwrap();
        assert!(table.serves("m", "r0") && !table.serves("m", "r1"));
    }
}
