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
//! caller to publish as `io.tidewatch.serving.route.updated`. Readers take
//! a snapshot (`Arc`) per request, so a change never tears a request.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::model::ServedModel;
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

struct Route {
    model: Arc<ServedModel>,
    aliases: RwLock<Arc<Aliases>>,
}

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
            let route = Route {
                model: Arc::new(model),
                aliases: RwLock::new(Arc::new(aliases)),
            };
            if routes.insert(name.clone(), route).is_some() {
                return Err(Error::InvalidSetting(format!(
                    "model `{name}` is served twice"
                )));
            }
        }
        Ok(Self { routes })
    }

    /// The served models' names.
    pub fn models(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.routes.values().map(|route| &route.model)
    }

    /// Model `name` and its aliases now.
    pub fn get(&self, name: &str) -> Result<(Arc<ServedModel>, Arc<Aliases>), Error> {
        let route = self
            .routes
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no model named `{name}`")))?;
        let aliases = route
            .aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok((route.model.clone(), aliases))
    }

    /// Moves the aliases of `model`; the change to publish.
    pub fn set_aliases(&self, model: &str, aliases: Aliases) -> Result<RouteUpdated, Error> {
        let route = self
            .routes
            .get(model)
            .ok_or_else(|| Error::NotFound(format!("no model named `{model}`")))?;
        check(&route.model, &aliases)?;
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
}
