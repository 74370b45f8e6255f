//! [`Catalog`]: the models Tidewatch monitors and the reference profile of
//! each model version, compiled for the hot path.

use rustc_hash::FxHashMap;

use crate::reference::CompiledReference;
use crate::spec::ModelSpec;
use crate::Error;

/// The models Tidewatch monitors and their current reference profiles.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: FxHashMap<String, ModelSpec>,
    references: FxHashMap<String, FxHashMap<String, CompiledReference>>,
}

impl Catalog {
    /// A catalog of the given models, with no references yet.
    pub fn new(models: impl IntoIterator<Item = ModelSpec>) -> Self {
        Self {
            models: models
                .into_iter()
                .map(|m| (m.name().to_owned(), m))
                .collect(),
            references: FxHashMap::default(),
        }
    }

    /// The spec of a model.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.get(name)
    }

    /// Installs (or replaces) the reference of a model version.
    pub fn set_reference(&mut self, profile: crate::ReferenceProfile) -> Result<(), Error> {
        let spec = self.models.get(&profile.model).ok_or_else(|| {
            Error::InvalidReference(format!("model `{}` is not configured", profile.model))
        })?;
        let model = profile.model.clone();
        let version = profile.model_version.clone();
        let compiled = CompiledReference::new(spec, profile)?;
        self.references
            .entry(model)
            .or_default()
            .insert(version, compiled);
        Ok(())
    }

    /// The reference of a model version.
    pub fn reference(&self, model: &str, version: &str) -> Option<&CompiledReference> {
        self.references.get(model)?.get(version)
    }
}
