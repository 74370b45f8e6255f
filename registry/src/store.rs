//! The registry's state in SQLite: one transaction per change, the change's
//! events written to the outbox in the same transaction.
//!
//! Version numbers come from a per-model counter updated inside a
//! `BEGIN IMMEDIATE` transaction (the database's single writer lock), so
//! concurrent creates — from tasks of one process or from processes sharing
//! the file — get distinct increasing numbers, and a number is never reused
//! after its version is deleted (as in MLflow). Renames and deletes cascade
//! to versions, tags and aliases through foreign keys.
//!
//! Every call runs on tokio's blocking pool behind one connection mutex;
//! the registry is small (models × versions, not events), so searches load
//! the candidate rows and filter, sort and page them in memory.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::entities::{Alias, ModelVersion, RegisteredModel, Stage, Tag};
use crate::events::{Change, ChangeKind, RegistryEvent};
use crate::filter::{Filter, Subject};
use crate::{names, Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registered_models (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS registered_model_tags (
    name TEXT NOT NULL REFERENCES registered_models(name) ON UPDATE CASCADE ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL REFERENCES registered_models(name) ON UPDATE CASCADE ON DELETE CASCADE,
    version INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    run_id TEXT NOT NULL DEFAULT '',
    run_link TEXT NOT NULL DEFAULT '',
    stage TEXT NOT NULL DEFAULT 'None',
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS model_version_tags (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, version, key),
    FOREIGN KEY (name, version) REFERENCES model_versions(name, version)
        ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES model_versions(name, version)
        ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS outbox (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT,
    data TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (published, sequence);
CREATE TABLE IF NOT EXISTS bridge_deliveries (
    id TEXT PRIMARY KEY,
    received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bridge_mirror (
    url TEXT PRIMARY KEY,
    mirror BLOB NOT NULL
);
";

/// The version tag naming its training data (a path or `file://` URI of a
/// CSV, Parquet, Arrow or JSON-lines file): Tidewatch builds the version's
/// reference profile from it.
pub const REFERENCE_TAG: &str = "tidewatch.reference";
/// Set by Tidewatch: the source of the attached reference profile.
pub const REFERENCE_ATTACHED_TAG: &str = "tidewatch.reference.attached";
/// Set by Tidewatch: `<source>: <why>` when building it failed.
pub const REFERENCE_ERROR_TAG: &str = "tidewatch.reference.error";

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Default and largest page of `search_registered_models` (MLflow's).
pub const MODELS_PAGE: (usize, usize) = (100, 1_000);
/// Default and largest page of `search_model_versions` (MLflow's).
pub const VERSIONS_PAGE: (usize, usize) = (10_000, 200_000);

/// A new version's fields.
#[derive(Debug, Clone, Default)]
pub struct NewVersion {
    pub name: String,
    pub source: String,
    pub run_id: String,
    pub run_link: String,
    pub description: String,
    pub tags: Vec<(String, String)>,
}

/// A search: its filter, page size, ordering and page token.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub filter: String,
    pub max_results: Option<i64>,
    pub order_by: Vec<String>,
    pub page_token: Option<String>,
}

/// One page of results and the token of the next, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// Published events kept in the outbox (the newest; older ones are
/// deleted as new ones are published).
pub const PUBLISHED_KEPT: i64 = 10_000;

/// The registry.
#[derive(Clone)]
pub struct Registry {
    connection: Arc<Mutex<Connection>>,
    /// Counts committed changes that wrote events; tasks following the
    /// registry (the outbox publisher, the reference attacher) wait on it.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

fn prepare(connection: &Connection) -> Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.execute_batch(SCHEMA)?;
    Ok(())
}

impl Registry {
    /// Opens (creating if needed) the registry database at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        let connection = tokio::task::spawn_blocking(move || -> Result<Connection> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Error::InvalidParameter(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let connection = Connection::open(&path)?;
            connection.busy_timeout(BUSY_TIMEOUT)?;
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            prepare(&connection)?;
            Ok(connection)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// A registry in memory (tests, the demo without a file).
    pub fn in_memory() -> Result<Self> {
        let connection = Connection::open_in_memory()?;
        prepare(&connection)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// A receiver that sees every committed change that wrote events
    /// (`changed().await` resolves once per batch of them, none missed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .map_err(|_| Error::Task("registry mutex poisoned".into()))?;
            work(&mut guard)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Runs `work` in an immediate transaction and writes the changes it
    /// reports to the outbox before committing.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>, i64, &mut Vec<Change>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let changes = Arc::clone(&self.changes);
        let result = self.with(move |connection| {
            let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let mut changes = Vec::new();
            let result = work(&transaction, now, &mut changes)?;
            for change in &changes {
                transaction.execute(
                    "INSERT INTO outbox (time_ms, kind, model, version, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        now,
                        change.kind.event_type(),
                        change.model,
                        change.version,
                        change.data.to_string()
                    ],
                )?;
            }
            transaction.commit()?;
            Ok((result, !changes.is_empty()))
        })
        .await;
        let (result, wrote_events) = result?;
        if wrote_events {
            changes.send_modify(|count| *count += 1);
        }
        Ok(result)
    }

    // --- registered models -------------------------------------------------

    /// Creates a registered model.
    pub async fn create_model(
        &self,
        name: String,
        tags: Vec<(String, String)>,
        description: String,
    ) -> Result<RegisteredModel> {
        names::model_name(&name)?;
        names::text("description", &description)?;
        for (key, value) in &tags {
            names::tag(key, value)?;
        }
        self.write(move |tx, now, changes| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO registered_models (name, description, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)",
                params![name, description, now],
            )?;
            if inserted == 0 {
                return Err(Error::AlreadyExists(format!(
                    "Registered Model (name={name}) already exists."
                )));
            }
            for (key, value) in &tags {
                tx.execute(
                    "INSERT OR REPLACE INTO registered_model_tags (name, key, value) VALUES (?1, ?2, ?3)",
                    params![name, key, value],
                )?;
            }
            changes.push(Change::model_created(&name, &tags, &description));
            load_model(tx, &name)
        })
        .await
    }

    /// A registered model with its tags, aliases and latest versions.
    pub async fn get_model(&self, name: String) -> Result<RegisteredModel> {
        self.with(move |connection| load_model(connection, &name))
            .await
    }

    /// Searches registered models.
    pub async fn search_models(&self, search: Search) -> Result<Page<RegisteredModel>> {
        let filter = Filter::parse(&search.filter, Subject::RegisteredModels)?;
        let order = Ordering::parse(&search.order_by, Subject::RegisteredModels)?;
        let (offset, limit) = paging(&search, MODELS_PAGE)?;
        self.with(move |connection| {
            let names: Vec<String> = match filter.exact_name() {
                Some(name) => vec![name.to_owned()],
                None => connection
                    .prepare("SELECT name FROM registered_models")?
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?,
            };
            let mut models = Vec::new();
            for name in names {
                match load_model(connection, &name) {
                    Ok(model) if filter.matches_model(&model) => models.push(model),
                    Ok(_) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            models.sort_by(|a, b| order.compare_models(a, b));
            Ok(page(models, offset, limit))
        })
        .await
    }

    /// Sets a registered model's description.
    pub async fn update_model(&self, name: String, description: String) -> Result<RegisteredModel> {
        names::text("description", &description)?;
        self.write(move |tx, now, _| {
            let updated = tx.execute(
                "UPDATE registered_models SET description = ?2, updated_ms = ?3 WHERE name = ?1",
                params![name, description, now],
            )?;
            if updated == 0 {
                return Err(model_not_found(&name));
            }
            load_model(tx, &name)
        })
        .await
    }

    /// Renames a registered model (its versions, tags and aliases follow).
    pub async fn rename_model(&self, name: String, new_name: String) -> Result<RegisteredModel> {
        names::model_name(&new_name)?;
        self.write(move |tx, now, _| {
            require_model(tx, &name)?;
            if model_exists(tx, &new_name)? {
                return Err(Error::AlreadyExists(format!(
                    "Registered Model (name={new_name}) already exists."
                )));
            }
            tx.execute(
                "UPDATE registered_models SET name = ?2, updated_ms = ?3 WHERE name = ?1",
                params![name, new_name, now],
            )?;
            load_model(tx, &new_name)
        })
        .await
    }

    /// Deletes a registered model with its versions; each alias it had is
    /// reported deleted.
    pub async fn delete_model(&self, name: String) -> Result<()> {
        self.write(move |tx, _, changes| {
            require_model(tx, &name)?;
            for alias in aliases_of_model(tx, &name)? {
                changes.push(Change::alias_deleted(&name, &alias.alias));
            }
            tx.execute(
                "DELETE FROM registered_models WHERE name = ?1",
                params![name],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets a tag of a registered model.
    pub async fn set_model_tag(&self, name: String, key: String, value: String) -> Result<()> {
        names::tag(&key, &value)?;
        self.write(move |tx, now, _| {
            require_model(tx, &name)?;
            tx.execute(
                "INSERT OR REPLACE INTO registered_model_tags (name, key, value) VALUES (?1, ?2, ?3)",
                params![name, key, value],
            )?;
            touch_model(tx, &name, now)
        })
        .await
    }

    /// Deletes a tag of a registered model.
    pub async fn delete_model_tag(&self, name: String, key: String) -> Result<()> {
        self.write(move |tx, now, _| {
            require_model(tx, &name)?;
            let deleted = tx.execute(
                "DELETE FROM registered_model_tags WHERE name = ?1 AND key = ?2",
                params![name, key],
            )?;
            if deleted == 0 {
                return Err(Error::NotFound(format!(
                    "No tag with name: {key} in registered model {name}."
                )));
            }
            touch_model(tx, &name, now)
        })
        .await
    }

    /// The latest version in each of `stages` (every stage when empty).
    pub async fn latest_versions(
        &self,
        name: String,
        stages: Vec<String>,
    ) -> Result<Vec<ModelVersion>> {
        let stages = stages
            .iter()
            .map(|stage| {
                Stage::parse(stage).ok_or_else(|| {
                    Error::InvalidParameter(format!(
                        "Invalid Model Version stage: {stage}. Value must be one of None, Staging, Production, Archived."
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.with(move |connection| {
            require_model(connection, &name)?;
            latest_per_stage(connection, &name, &stages)
        })
        .await
    }

    // --- versions ----------------------------------------------------------

    /// Registers a new version: the model's next number.
    pub async fn create_version(&self, new: NewVersion) -> Result<ModelVersion> {
        names::model_name(&new.name)?;
        if new.source.is_empty() {
            return Err(Error::InvalidParameter(
                "Missing value for parameter 'source'.".into(),
            ));
        }
        for (field, value) in [
            ("source", &new.source),
            ("run_id", &new.run_id),
            ("run_link", &new.run_link),
            ("description", &new.description),
        ] {
            names::text(field, value)?;
        }
        for (key, value) in &new.tags {
            names::tag(key, value)?;
        }
        self.write(move |tx, now, changes| {
            let number: i64 = tx
                .query_row(
                    "SELECT next_version FROM registered_models WHERE name = ?1",
                    params![new.name],
                    |row| row.get(0),
                )
                .optional()?
                .ok_or_else(|| model_not_found(&new.name))?;
            tx.execute(
                "UPDATE registered_models SET next_version = ?2, updated_ms = ?3 WHERE name = ?1",
                params![new.name, number + 1, now],
            )?;
            tx.execute(
                "INSERT INTO model_versions (name, version, created_ms, updated_ms, description, source, run_id, run_link)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7)",
                params![new.name, number, now, new.description, new.source, new.run_id, new.run_link],
            )?;
            for (key, value) in &new.tags {
                tx.execute(
                    "INSERT OR REPLACE INTO model_version_tags (name, version, key, value) VALUES (?1, ?2, ?3, ?4)",
                    params![new.name, number, key, value],
                )?;
            }
            changes.push(Change::version_created(
                &new.name,
                number,
                &new.source,
                &new.run_id,
                &new.tags,
                &new.description,
            ));
            load_version(tx, &new.name, number)
        })
        .await
    }

    /// A version with its tags and aliases.
    pub async fn get_version(&self, name: String, version: String) -> Result<ModelVersion> {
        let number = names::version(&version)?;
        self.with(move |connection| load_version(connection, &name, number))
            .await
    }

    /// Searches versions.
    pub async fn search_versions(&self, search: Search) -> Result<Page<ModelVersion>> {
        let filter = Filter::parse(&search.filter, Subject::ModelVersions)?;
        let order = Ordering::parse(&search.order_by, Subject::ModelVersions)?;
        let (offset, limit) = paging(&search, VERSIONS_PAGE)?;
        self.with(move |connection| {
            let keys: Vec<(String, i64)> = match filter.exact_name() {
                Some(name) => connection
                    .prepare("SELECT name, version FROM model_versions WHERE name = ?1")?
                    .query_map(params![name], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?,
                None => connection
                    .prepare("SELECT name, version FROM model_versions")?
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?,
            };
            let mut versions = Vec::new();
            for (name, number) in keys {
                let version = load_version(connection, &name, number)?;
                if filter.matches_version(&version) {
                    versions.push(version);
                }
            }
            versions.sort_by(|a, b| order.compare_versions(a, b));
            Ok(page(versions, offset, limit))
        })
        .await
    }

    /// Sets a version's description.
    pub async fn update_version(
        &self,
        name: String,
        version: String,
        description: String,
    ) -> Result<ModelVersion> {
        let number = names::version(&version)?;
        names::text("description", &description)?;
        self.write(move |tx, now, _| {
            let updated = tx.execute(
                "UPDATE model_versions SET description = ?3, updated_ms = ?4 WHERE name = ?1 AND version = ?2",
                params![name, number, description, now],
            )?;
            if updated == 0 {
                return Err(version_not_found(&name, number));
            }
            load_version(tx, &name, number)
        })
        .await
    }

    /// Deletes a version; its aliases are reported deleted. Its number is
    /// not reused.
    pub async fn delete_version(&self, name: String, version: String) -> Result<()> {
        let number = names::version(&version)?;
        self.write(move |tx, now, changes| {
            require_version(tx, &name, number)?;
            for alias in aliases_of_model(tx, &name)? {
                if alias.version == number.to_string() {
                    changes.push(Change::alias_deleted(&name, &alias.alias));
                }
            }
            tx.execute(
                "DELETE FROM model_versions WHERE name = ?1 AND version = ?2",
                params![name, number],
            )?;
            touch_model(tx, &name, now)
        })
        .await
    }

    /// Sets a tag of a version.
    pub async fn set_version_tag(
        &self,
        name: String,
        version: String,
        key: String,
        value: String,
    ) -> Result<()> {
        let number = names::version(&version)?;
        names::tag(&key, &value)?;
        self.write(move |tx, now, changes| {
            require_version(tx, &name, number)?;
            tx.execute(
                "INSERT OR REPLACE INTO model_version_tags (name, version, key, value) VALUES (?1, ?2, ?3, ?4)",
                params![name, number, key, value],
            )?;
            touch_version(tx, &name, number, now)?;
            changes.push(Change::tag_set(&name, number, &key, &value));
            Ok(())
        })
        .await
    }

    /// Deletes a tag of a version.
    pub async fn delete_version_tag(
        &self,
        name: String,
        version: String,
        key: String,
    ) -> Result<()> {
        let number = names::version(&version)?;
        self.write(move |tx, now, changes| {
            require_version(tx, &name, number)?;
            let deleted = tx.execute(
                "DELETE FROM model_version_tags WHERE name = ?1 AND version = ?2 AND key = ?3",
                params![name, number, key],
            )?;
            if deleted == 0 {
                return Err(Error::NotFound(format!(
                    "No tag with name: {key} in model {name} version {number}."
                )));
            }
            touch_version(tx, &name, number, now)?;
            changes.push(Change::tag_deleted(&name, number, &key));
            Ok(())
        })
        .await
    }

    /// Moves a version to `stage`; with `archive_existing`, the other
    /// versions in that stage (Staging or Production) go to Archived.
    pub async fn transition_stage(
        &self,
        name: String,
        version: String,
        stage: String,
        archive_existing: bool,
    ) -> Result<ModelVersion> {
        let number = names::version(&version)?;
        let stage = Stage::parse(&stage).ok_or_else(|| {
            Error::InvalidParameter(format!(
                "Invalid Model Version stage: {stage}. Value must be one of None, Staging, Production, Archived."
            ))
        })?;
        self.write(move |tx, now, _| {
            require_version(tx, &name, number)?;
            if archive_existing && matches!(stage, Stage::Staging | Stage::Production) {
                tx.execute(
                    "UPDATE model_versions SET stage = 'Archived', updated_ms = ?3
                     WHERE name = ?1 AND stage = ?2 AND version != ?4",
                    params![name, stage.as_str(), now, number],
                )?;
            }
            tx.execute(
                "UPDATE model_versions SET stage = ?3, updated_ms = ?4 WHERE name = ?1 AND version = ?2",
                params![name, number, stage.as_str(), now],
            )?;
            load_version(tx, &name, number)
        })
        .await
    }

    // --- aliases -----------------------------------------------------------

    /// Points `alias` at `version` (moving it if it named another).
    pub async fn set_alias(&self, name: String, alias: String, version: String) -> Result<()> {
        names::alias(&alias)?;
        let number = names::version(&version)?;
        self.write(move |tx, now, changes| {
            require_version(tx, &name, number)?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT version FROM aliases WHERE name = ?1 AND alias = ?2",
                    params![name, alias],
                    |row| row.get(0),
                )
                .optional()?;
            if current == Some(number) {
                return Ok(());
            }
            tx.execute(
                "INSERT OR REPLACE INTO aliases (name, alias, version) VALUES (?1, ?2, ?3)",
                params![name, alias, number],
            )?;
            touch_model(tx, &name, now)?;
            changes.push(Change::alias_created(&name, &alias, number));
            Ok(())
        })
        .await
    }

    /// Removes `alias`.
    pub async fn delete_alias(&self, name: String, alias: String) -> Result<()> {
        self.write(move |tx, now, changes| {
            require_model(tx, &name)?;
            let deleted = tx.execute(
                "DELETE FROM aliases WHERE name = ?1 AND alias = ?2",
                params![name, alias],
            )?;
            if deleted == 0 {
                return Err(Error::NotFound(format!(
                    "Registered model alias {alias} not found."
                )));
            }
            touch_model(tx, &name, now)?;
            changes.push(Change::alias_deleted(&name, &alias));
            Ok(())
        })
        .await
    }

    /// The version `alias` names.
    pub async fn version_by_alias(&self, name: String, alias: String) -> Result<ModelVersion> {
        self.with(move |connection| {
            require_model(connection, &name)?;
            let number: i64 = connection
                .query_row(
                    "SELECT version FROM aliases WHERE name = ?1 AND alias = ?2",
                    params![name, alias],
                    |row| row.get(0),
                )
                .optional()?
                .ok_or_else(|| {
                    Error::NotFound(format!("Registered model alias {alias} not found."))
                })?;
            load_version(connection, &name, number)
        })
        .await
    }

    /// Versions whose [`REFERENCE_TAG`] names training data not attached
    /// yet (nor failed for that same source): (name, version, source).
    pub async fn references_to_attach(&self) -> Result<Vec<(String, String, String)>> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT r.name, r.version, r.value,
                        (SELECT value FROM model_version_tags a
                          WHERE a.name = r.name AND a.version = r.version AND a.key = ?2),
                        (SELECT value FROM model_version_tags e
                          WHERE e.name = r.name AND e.version = r.version AND e.key = ?3)
                 FROM model_version_tags r WHERE r.key = ?1 ORDER BY r.name, r.version",
            )?;
            let rows = statement.query_map(
                params![REFERENCE_TAG, REFERENCE_ATTACHED_TAG, REFERENCE_ERROR_TAG],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                    ))
                },
            )?;
            let mut todo = Vec::new();
            for row in rows {
                let (name, number, source, attached, error) = row?;
                let done = attached.as_deref() == Some(source.as_str());
                let failed = error
                    .as_deref()
                    .is_some_and(|error| error.starts_with(&format!("{source}: ")));
                if !done && !failed {
                    todo.push((name, number.to_string(), source));
                }
            }
            Ok(todo)
        })
        .await
    }

    /// Records a reference profile stored for a version by other means (an
    /// upload to Tidewatch's reference endpoint): the
    /// `reference_profile.attached` event, when the version is registered
    /// (`Ok(false)` when it is not).
    pub async fn reference_uploaded(
        &self,
        name: String,
        version: String,
        source: String,
        rows: u64,
    ) -> Result<bool> {
        let Ok(number) = names::version(&version) else {
            return Ok(false);
        };
        self.write(move |tx, _, changes| {
            if require_version(tx, &name, number).is_err() {
                return Ok(false);
            }
            changes.push(Change::reference_attached(&name, number, &source, rows));
            Ok(true)
        })
        .await
    }

    /// Records the outcome of building a version's reference profile from
    /// `source` (`Ok(rows)`: attached, with a `reference_profile.attached`
    /// event; `Err`: why not, in [`REFERENCE_ERROR_TAG`]). Nothing happens
    /// if the version is gone or its [`REFERENCE_TAG`] moved on meanwhile.
    /// These tags are Tidewatch's bookkeeping: setting them emits no
    /// `model_version_tag.set`.
    pub async fn record_reference(
        &self,
        name: String,
        version: String,
        source: String,
        outcome: std::result::Result<u64, String>,
    ) -> Result<()> {
        let number = names::version(&version)?;
        self.write(move |tx, now, changes| {
            let current: Option<String> = tx
                .query_row(
                    "SELECT value FROM model_version_tags WHERE name = ?1 AND version = ?2 AND key = ?3",
                    params![name, number, REFERENCE_TAG],
                    |row| row.get(0),
                )
                .optional()?;
            if current.as_deref() != Some(source.as_str()) {
                return Ok(());
            }
            let set = |key: &str, value: &str| {
                tx.execute(
                    "INSERT OR REPLACE INTO model_version_tags (name, version, key, value) VALUES (?1, ?2, ?3, ?4)",
                    params![name, number, key, value],
                )
            };
            match &outcome {
                Ok(rows) => {
                    set(REFERENCE_ATTACHED_TAG, &source)?;
                    tx.execute(
                        "DELETE FROM model_version_tags WHERE name = ?1 AND version = ?2 AND key = ?3",
                        params![name, number, REFERENCE_ERROR_TAG],
                    )?;
                    changes.push(Change::reference_attached(&name, number, &source, *rows));
                }
                Err(error) => {
                    let message: String = format!("{source}: {error}")
                        .chars()
                        .take(names::MAX_TAG_VALUE_CHARS)
                        .collect();
                    set(REFERENCE_ERROR_TAG, &message)?;
                }
            }
            touch_version(tx, &name, number, now)
        })
        .await
    }

    // --- the MLflow bridge -------------------------------------------------

    /// Writes a change an MLflow webhook reported, once per delivery id
    /// (`Ok(false)`: seen before, nothing written). Ids older than
    /// [`crate::bridge::DELIVERY_IDS_KEPT`] are forgotten.
    pub async fn record_bridged(&self, delivery_id: String, change: Change) -> Result<bool> {
        self.write(move |tx, now, changes| {
            let kept = crate::bridge::DELIVERY_IDS_KEPT.as_millis() as i64;
            tx.execute(
                "DELETE FROM bridge_deliveries WHERE received_ms < ?1",
                params![now - kept],
            )?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO bridge_deliveries (id, received_ms) VALUES (?1, ?2)",
                params![delivery_id, now],
            )?;
            if inserted == 0 {
                return Ok(false);
            }
            changes.push(change);
            Ok(true)
        })
        .await
    }

    /// Compares `mirror` (an MLflow server's registry, read at `url`) with
    /// the one stored for `url` and writes the differences as events and
    /// `mirror` as the new one, in one transaction; how many events.
    pub async fn apply_mirror(&self, url: String, mirror: crate::bridge::Mirror) -> Result<usize> {
        self.write(move |tx, _, changes| {
            let stored: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT mirror FROM bridge_mirror WHERE url = ?1",
                    params![url],
                    |row| row.get(0),
                )
                .optional()?;
            let before = match stored {
                Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
                    Error::Task(format!("the stored MLflow mirror is unreadable: {e}"))
                })?,
                None => crate::bridge::Mirror::default(),
            };
            let found = crate::bridge::diff(&before, &mirror);
            let count = found.len();
            changes.extend(found);
            let bytes = postcard::to_allocvec(&mirror)
                .map_err(|e| Error::Task(format!("encoding the MLflow mirror: {e}")))?;
            tx.execute(
                "INSERT OR REPLACE INTO bridge_mirror (url, mirror) VALUES (?1, ?2)",
                params![url, bytes],
            )?;
            Ok(count)
        })
        .await
    }

    // --- outbox ------------------------------------------------------------

    /// Up to `limit` events not yet published, oldest first.
    pub async fn pending_events(&self, limit: usize) -> Result<Vec<RegistryEvent>> {
        self.with(move |connection| {
            outbox_events(
                connection,
                "SELECT sequence, time_ms, kind, model, version, data FROM outbox
                 WHERE published = 0 ORDER BY sequence LIMIT ?1",
                limit,
            )
        })
        .await
    }

    /// The newest `limit` events the outbox holds, published or not (the
    /// newest [`PUBLISHED_KEPT`] published ones are kept), oldest first.
    pub async fn recent_events(&self, limit: usize) -> Result<Vec<RegistryEvent>> {
        self.with(move |connection| {
            let mut events = outbox_events(
                connection,
                "SELECT sequence, time_ms, kind, model, version, data FROM outbox
                 ORDER BY sequence DESC LIMIT ?1",
                limit,
            )?;
            events.reverse();
            Ok(events)
        })
        .await
    }

    /// Marks every event up to `sequence` published, and deletes published
    /// events beyond the newest [`PUBLISHED_KEPT`].
    pub async fn mark_published(&self, sequence: i64) -> Result<()> {
        self.with(move |connection| {
            connection.execute(
                "UPDATE outbox SET published = 1 WHERE published = 0 AND sequence <= ?1",
                params![sequence],
            )?;
            connection.execute(
                "DELETE FROM outbox WHERE published = 1 AND sequence <= ?1 - ?2",
                params![sequence, PUBLISHED_KEPT],
            )?;
            Ok(())
        })
        .await
    }

    /// Events written and not yet published.
    pub async fn pending_count(&self) -> Result<u64> {
        self.with(|connection| {
            Ok(connection.query_row(
                "SELECT COUNT(*) FROM outbox WHERE published = 0",
                [],
                |row| row.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }
}

// --- reading rows ------------------------------------------------------------

/// The outbox rows `sql` selects (sequence, time, kind, model, version,
/// data; `?1` bound to `limit`) as events.
fn outbox_events(
    connection: &rusqlite::Connection,
    sql: &str,
    limit: usize,
) -> Result<Vec<RegistryEvent>> {
    let mut statement = connection.prepare(sql)?;
    let rows = statement.query_map(params![limit as i64], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, Option<String>>(4)?,
            row.get::<_, String>(5)?,
        ))
    })?;
    let mut events = Vec::new();
    for row in rows {
        let (sequence, time_ms, kind, model, version, data) = row?;
        let kind = ChangeKind::from_event_type(&kind).ok_or_else(|| {
            Error::Task(format!("outbox row {sequence} has an unknown kind {kind}"))
        })?;
        let data = serde_json::from_str(&data)
            .map_err(|e| Error::Task(format!("outbox row {sequence}: {e}")))?;
        events.push(RegistryEvent {
            sequence,
            time_ms,
            change: Change {
                kind,
                model,
                version,
                data,
            },
        });
    }
    Ok(events)
}

fn model_not_found(name: &str) -> Error {
    Error::NotFound(format!("Registered Model with name={name} not found"))
}

fn version_not_found(name: &str, number: i64) -> Error {
    Error::NotFound(format!(
        "Model Version (name={name}, version={number}) not found"
    ))
}

fn model_exists(connection: &Connection, name: &str) -> Result<bool> {
    Ok(connection
        .query_row(
            "SELECT 1 FROM registered_models WHERE name = ?1",
            params![name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn require_model(connection: &Connection, name: &str) -> Result<()> {
    if model_exists(connection, name)? {
        Ok(())
    } else {
        Err(model_not_found(name))
    }
}

fn require_version(connection: &Connection, name: &str, number: i64) -> Result<()> {
    let found = connection
        .query_row(
            "SELECT 1 FROM model_versions WHERE name = ?1 AND version = ?2",
            params![name, number],
            |_| Ok(()),
        )
        .optional()?;
    found.ok_or_else(|| version_not_found(name, number))
}

fn touch_model(connection: &Connection, name: &str, now: i64) -> Result<()> {
    connection.execute(
        "UPDATE registered_models SET updated_ms = ?2 WHERE name = ?1",
        params![name, now],
    )?;
    Ok(())
}

fn touch_version(connection: &Connection, name: &str, number: i64, now: i64) -> Result<()> {
    connection.execute(
        "UPDATE model_versions SET updated_ms = ?3 WHERE name = ?1 AND version = ?2",
        params![name, number, now],
    )?;
    Ok(())
}

fn tags(connection: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Tag>> {
    Ok(connection
        .prepare(sql)?
        .query_map(params, |row| {
            Ok(Tag {
                key: row.get(0)?,
                value: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

fn aliases_of_model(connection: &Connection, name: &str) -> Result<Vec<Alias>> {
    Ok(connection
        .prepare("SELECT alias, version FROM aliases WHERE name = ?1 ORDER BY alias")?
        .query_map(params![name], |row| {
            Ok(Alias {
                alias: row.get(0)?,
                version: row.get::<_, i64>(1)?.to_string(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

fn load_version(connection: &Connection, name: &str, number: i64) -> Result<ModelVersion> {
    let mut version = connection
        .query_row(
            "SELECT created_ms, updated_ms, description, source, run_id, run_link, stage
             FROM model_versions WHERE name = ?1 AND version = ?2",
            params![name, number],
            |row| {
                Ok(ModelVersion {
                    name: name.to_owned(),
                    version: number.to_string(),
                    creation_timestamp: row.get(0)?,
                    last_updated_timestamp: row.get(1)?,
                    user_id: String::new(),
                    current_stage: row.get(6)?,
                    description: row.get(2)?,
                    source: row.get(3)?,
                    run_id: row.get(4)?,
                    status: "READY".into(),
                    run_link: row.get(5)?,
                    tags: Vec::new(),
                    aliases: Vec::new(),
                })
            },
        )
        .optional()?
        .ok_or_else(|| version_not_found(name, number))?;
    version.tags = tags(
        connection,
        "SELECT key, value FROM model_version_tags WHERE name = ?1 AND version = ?2 ORDER BY key",
        params![name, number],
    )?;
    version.aliases = connection
        .prepare("SELECT alias FROM aliases WHERE name = ?1 AND version = ?2 ORDER BY alias")?
        .query_map(params![name, number], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(version)
}

fn latest_per_stage(
    connection: &Connection,
    name: &str,
    stages: &[Stage],
) -> Result<Vec<ModelVersion>> {
    let stages: Vec<Stage> = if stages.is_empty() {
        Stage::ALL.to_vec()
    } else {
        stages.to_vec()
    };
    let mut latest = Vec::new();
    for stage in stages {
        let number: Option<i64> = connection.query_row(
            "SELECT MAX(version) FROM model_versions WHERE name = ?1 AND stage = ?2",
            params![name, stage.as_str()],
            |row| row.get(0),
        )?;
        if let Some(number) = number {
            latest.push(load_version(connection, name, number)?);
        }
    }
    Ok(latest)
}

fn load_model(connection: &Connection, name: &str) -> Result<RegisteredModel> {
    let mut model = connection
        .query_row(
            "SELECT created_ms, updated_ms, description FROM registered_models WHERE name = ?1",
            params![name],
            |row| {
                Ok(RegisteredModel {
                    name: name.to_owned(),
                    creation_timestamp: row.get(0)?,
                    last_updated_timestamp: row.get(1)?,
                    description: row.get(2)?,
                    latest_versions: Vec::new(),
                    tags: Vec::new(),
                    aliases: Vec::new(),
                })
            },
        )
        .optional()?
        .ok_or_else(|| model_not_found(name))?;
    model.tags = tags(
        connection,
        "SELECT key, value FROM registered_model_tags WHERE name = ?1 ORDER BY key",
        params![name],
    )?;
    model.aliases = aliases_of_model(connection, name)?;
    model.latest_versions = latest_per_stage(connection, name, &[])?;
    Ok(model)
}

// --- ordering and paging -------------------------------------------------------

/// A sort key of a search.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SortKey {
    Name,
    Created,
    Updated,
    VersionNumber,
}

/// `order_by` parsed: keys with their direction (true: ascending).
#[derive(Debug, Clone)]
struct Ordering {
    keys: Vec<(SortKey, bool)>,
}

impl Ordering {
    fn parse(order_by: &[String], subject: Subject) -> Result<Self> {
        let mut keys = Vec::new();
        for clause in order_by {
            let mut words = clause.split_whitespace();
            let key = words.next().unwrap_or_default().trim_matches('`');
            let ascending = match words.next().map(str::to_ascii_uppercase).as_deref() {
                None | Some("ASC") => true,
                Some("DESC") => false,
                Some(_) => {
                    return Err(Error::InvalidParameter(format!(
                        "Invalid order_by clause '{clause}': ASC or DESC expected."
                    )))
                }
            };
            if words.next().is_some() {
                return Err(Error::InvalidParameter(format!(
                    "Invalid order_by clause '{clause}'."
                )));
            }
            let key = match (key, subject) {
                ("name", _) => SortKey::Name,
                ("timestamp" | "creation_timestamp", _) => SortKey::Created,
                ("last_updated_timestamp", _) => SortKey::Updated,
                ("version_number", Subject::ModelVersions) => SortKey::VersionNumber,
                _ => {
                    return Err(Error::InvalidParameter(format!(
                        "Invalid order_by clause '{clause}': not a sortable attribute."
                    )))
                }
            };
            keys.push((key, ascending));
        }
        // MLflow's natural orders as tie-breakers (and the default).
        let defaults: &[(SortKey, bool)] = match subject {
            Subject::RegisteredModels => &[(SortKey::Name, true)],
            Subject::ModelVersions if order_by.is_empty() => &[
                (SortKey::Updated, false),
                (SortKey::Name, true),
                (SortKey::VersionNumber, false),
            ],
            Subject::ModelVersions => &[(SortKey::Name, true), (SortKey::VersionNumber, true)],
        };
        for (key, ascending) in defaults {
            if !keys.iter().any(|(k, _)| k == key) {
                keys.push((*key, *ascending));
            }
        }
        Ok(Self { keys })
    }

    fn compare(
        &self,
        get: impl Fn(SortKey) -> (String, i64),
        other: impl Fn(SortKey) -> (String, i64),
    ) -> std::cmp::Ordering {
        for (key, ascending) in &self.keys {
            let (a, b) = (get(*key), other(*key));
            let ordering = match key {
                SortKey::Name => a.0.cmp(&b.0),
                _ => a.1.cmp(&b.1),
            };
            let ordering = if *ascending {
                ordering
            } else {
                ordering.reverse()
            };
            if ordering.is_ne() {
                return ordering;
            }
        }
        std::cmp::Ordering::Equal
    }

    fn compare_models(&self, a: &RegisteredModel, b: &RegisteredModel) -> std::cmp::Ordering {
        let key = |model: &RegisteredModel| {
            let model = model.clone();
            move |key: SortKey| match key {
                SortKey::Name => (model.name.clone(), 0),
                SortKey::Created => (String::new(), model.creation_timestamp),
                SortKey::Updated => (String::new(), model.last_updated_timestamp),
                SortKey::VersionNumber => (String::new(), 0),
            }
        };
        self.compare(key(a), key(b))
    }

    fn compare_versions(&self, a: &ModelVersion, b: &ModelVersion) -> std::cmp::Ordering {
        let key = |version: &ModelVersion| {
            let (name, created, updated, number) = (
                version.name.clone(),
                version.creation_timestamp,
                version.last_updated_timestamp,
                version.number(),
            );
            move |key: SortKey| match key {
                SortKey::Name => (name.clone(), 0),
                SortKey::Created => (String::new(), created),
                SortKey::Updated => (String::new(), updated),
                SortKey::VersionNumber => (String::new(), number),
            }
        };
        self.compare(key(a), key(b))
    }
}

/// (offset, page size) of a search; the page token is the offset.
fn paging(search: &Search, (default, largest): (usize, usize)) -> Result<(usize, usize)> {
    let limit = match search.max_results {
        None | Some(0) => default,
        Some(n) if n < 0 || n as usize > largest => {
            return Err(Error::InvalidParameter(format!(
                "Invalid value for max_results: it must be between 1 and {largest}, got {n}."
            )))
        }
        Some(n) => n as usize,
    };
    let offset = match search.page_token.as_deref().filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => token
            .parse()
            .map_err(|_| Error::InvalidParameter(format!("Invalid page token '{token}'.")))?,
    };
    Ok((offset, limit))
}

fn page<T>(items: Vec<T>, offset: usize, limit: usize) -> Page<T> {
    let total = items.len();
    let items: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let end = offset + items.len();
    Page {
        items,
        next_page_token: (end < total).then(|| end.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, source: &str, run_id: &str) -> NewVersion {
        NewVersion {
            name: name.into(),
            source: source.into(),
            run_id: run_id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn versions_number_up_and_changes_reach_the_outbox_in_order() {
        let registry = Registry::in_memory().unwrap();
        registry
            .create_model(
                "churn".into(),
                vec![("team".into(), "growth".into())],
                "".into(),
            )
            .await
            .unwrap();
        let first = registry
            .create_version(version("churn", "s3://m/1", "run1"))
            .await
            .unwrap();
        let second = registry
            .create_version(version("churn", "s3://m/2", "run2"))
            .await
            .unwrap();
        assert_eq!(
            (first.version.as_str(), second.version.as_str()),
            ("1", "2")
        );
        registry
            .set_alias("churn".into(), "champion".into(), "1".into())
            .await
            .unwrap();
        registry
            .set_alias("churn".into(), "champion".into(), "2".into())
            .await
            .unwrap();
        // Setting it again where it is changes nothing and emits nothing.
        registry
            .set_alias("churn".into(), "champion".into(), "2".into())
            .await
            .unwrap();
        registry
            .delete_version("churn".into(), "2".into())
            .await
            .unwrap();
        let third = registry
            .create_version(version("churn", "s3://m/3", ""))
            .await
            .unwrap();
        assert_eq!(
            third.version, "3",
            "a deleted version's number is not reused"
        );
        let model = registry.get_model("churn".into()).await.unwrap();
        assert!(model.aliases.is_empty(), "the alias went with its version");
        assert_eq!(model.latest_versions.len(), 1);
        assert_eq!(model.latest_versions[0].version, "3");

        let events = registry.pending_events(100).await.unwrap();
        let kinds: Vec<(ChangeKind, Option<&str>)> = events
            .iter()
            .map(|e| (e.change.kind, e.change.version.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::RegisteredModelCreated, None),
                (ChangeKind::ModelVersionCreated, Some("1")),
                (ChangeKind::ModelVersionCreated, Some("2")),
                (ChangeKind::ModelVersionAliasCreated, Some("1")),
                (ChangeKind::ModelVersionAliasCreated, Some("2")),
                (ChangeKind::ModelVersionAliasDeleted, None),
                (ChangeKind::ModelVersionCreated, Some("3")),
            ]
        );
        assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
        assert_eq!(events[0].change.data["tags"]["team"], "growth");
        registry.mark_published(events[3].sequence).await.unwrap();
        let rest = registry.pending_events(100).await.unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].sequence, events[4].sequence);
    }

    #[tokio::test]
    async fn references_to_attach_follow_the_tag_and_its_outcome() {
        let registry = Registry::in_memory().unwrap();
        registry
            .create_model("m".into(), vec![], "".into())
            .await
            .unwrap();
        let mut new = version("m", "s3://x", "");
        new.tags = vec![(REFERENCE_TAG.into(), "/data/a.csv".into())];
        registry.create_version(new).await.unwrap();
        registry
            .create_version(version("m", "s3://y", ""))
            .await
            .unwrap();
        assert_eq!(
            registry.references_to_attach().await.unwrap(),
            [("m".to_owned(), "1".to_owned(), "/data/a.csv".to_owned())]
        );
        // A failure is not retried for the same source…
        registry
            .record_reference(
                "m".into(),
                "1".into(),
                "/data/a.csv".into(),
                Err("no such file".into()),
            )
            .await
            .unwrap();
        assert!(registry.references_to_attach().await.unwrap().is_empty());
        let tags = registry
            .get_version("m".into(), "1".into())
            .await
            .unwrap()
            .tags;
        assert!(tags
            .iter()
            .any(|t| t.key == REFERENCE_ERROR_TAG && t.value == "/data/a.csv: no such file"));
        // …a new source is tried, and an outcome for a stale source is ignored.
        registry
            .set_version_tag(
                "m".into(),
                "1".into(),
                REFERENCE_TAG.into(),
                "/data/b.csv".into(),
            )
            .await
            .unwrap();
        registry
            .record_reference("m".into(), "1".into(), "/data/a.csv".into(), Ok(10))
            .await
            .unwrap();
        assert_eq!(registry.references_to_attach().await.unwrap().len(), 1);
        registry
            .record_reference("m".into(), "1".into(), "/data/b.csv".into(), Ok(500))
            .await
            .unwrap();
        assert!(registry.references_to_attach().await.unwrap().is_empty());
        let tags = registry
            .get_version("m".into(), "1".into())
            .await
            .unwrap()
            .tags;
        assert!(tags
            .iter()
            .any(|t| t.key == REFERENCE_ATTACHED_TAG && t.value == "/data/b.csv"));
        assert!(!tags.iter().any(|t| t.key == REFERENCE_ERROR_TAG));
        let events = registry.pending_events(100).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.change.kind, ChangeKind::ReferenceProfileAttached);
        assert_eq!(last.change.data["rows"], 500);
        assert_eq!(last.change.data["source"], "/data/b.csv");
        let tag_events = events
            .iter()
            .filter(|e| e.change.kind == ChangeKind::ModelVersionTagSet)
            .count();
        assert_eq!(tag_events, 1, "only the user's tag change is an event");

        // An upload to the reference endpoint: an event for a registered
        // version only.
        assert!(registry
            .reference_uploaded("m".into(), "2".into(), "upload:train.csv".into(), 42)
            .await
            .unwrap());
        assert!(!registry
            .reference_uploaded("m".into(), "9".into(), "upload".into(), 1)
            .await
            .unwrap());
        assert!(!registry
            .reference_uploaded("absent".into(), "1".into(), "upload".into(), 1)
            .await
            .unwrap());
        let events = registry.pending_events(100).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.change.kind, ChangeKind::ReferenceProfileAttached);
        assert_eq!(last.change.subject(), "m/2");
    }

    #[tokio::test]
    async fn a_failed_change_writes_no_event() {
        let registry = Registry::in_memory().unwrap();
        registry
            .create_model("a".into(), vec![], "".into())
            .await
            .unwrap();
        let error = registry
            .create_model("a".into(), vec![], "".into())
            .await
            .unwrap_err();
        assert_eq!(error.code(), "RESOURCE_ALREADY_EXISTS");
        let error = registry
            .set_alias("a".into(), "champion".into(), "1".into())
            .await
            .unwrap_err();
        assert_eq!(error.code(), "RESOURCE_DOES_NOT_EXIST");
        let error = registry
            .create_version(version("absent", "s3://x", ""))
            .await
            .unwrap_err();
        assert_eq!(error.status(), 404);
        assert_eq!(registry.pending_events(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_creates_get_distinct_numbers_across_connections() {
        let path = std::env::temp_dir().join(format!(
            "tidewatch-registry-concurrent-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        // Two registries on the same file: two connections, as two
        // processes would have.
        let one = Registry::open(&path).await.unwrap();
        let two = Registry::open(&path).await.unwrap();
        one.create_model("m".into(), vec![], "".into())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let registry = if i % 2 == 0 { one.clone() } else { two.clone() };
            tasks.push(tokio::spawn(async move {
                registry
                    .create_version(version("m", &format!("s3://m/{i}"), ""))
                    .await
                    .unwrap()
                    .number()
            }));
        }
        let mut numbers = Vec::new();
        for task in tasks {
            numbers.push(task.await.unwrap());
        }
        numbers.sort();
        assert_eq!(numbers, (1..=40).collect::<Vec<_>>());
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn rename_carries_versions_tags_and_aliases_and_search_pages() {
        let registry = Registry::in_memory().unwrap();
        for name in ["b-model", "a-model", "c-other"] {
            registry
                .create_model(name.into(), vec![], "".into())
                .await
                .unwrap();
            registry
                .create_version(version(name, "s3://x", "r"))
                .await
                .unwrap();
        }
        registry
            .set_version_tag("a-model".into(), "1".into(), "k".into(), "v".into())
            .await
            .unwrap();
        registry
            .set_alias("a-model".into(), "champion".into(), "1".into())
            .await
            .unwrap();
        let renamed = registry
            .rename_model("a-model".into(), "z-model".into())
            .await
            .unwrap();
        assert_eq!(renamed.aliases[0].alias, "champion");
        let moved = registry
            .version_by_alias("z-model".into(), "champion".into())
            .await
            .unwrap();
        assert_eq!(moved.tags[0].key, "k");
        assert_eq!(
            registry
                .get_model("a-model".into())
                .await
                .unwrap_err()
                .code(),
            "RESOURCE_DOES_NOT_EXIST"
        );

        let first = registry
            .search_models(Search {
                filter: "name LIKE '%model'".into(),
                max_results: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(first.items[0].name, "b-model");
        let second = registry
            .search_models(Search {
                filter: "name LIKE '%model'".into(),
                max_results: Some(1),
                page_token: first.next_page_token,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(second.items[0].name, "z-model");
        assert_eq!(second.next_page_token, None);
        let versions = registry
            .search_versions(Search {
                filter: "tags.k = 'v'".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(versions.items.len(), 1);
        assert_eq!(versions.items[0].name, "z-model");
        let by_name = registry
            .search_versions(Search {
                order_by: vec!["name DESC".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let names: Vec<&str> = by_name.items.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["z-model", "c-other", "b-model"]);
    }

    #[tokio::test]
    async fn stages_transition_and_archive_the_previous_production_version() {
        let registry = Registry::in_memory().unwrap();
        registry
            .create_model("m".into(), vec![], "".into())
            .await
            .unwrap();
        for _ in 0..2 {
            registry
                .create_version(version("m", "s3://x", ""))
                .await
                .unwrap();
        }
        registry
            .transition_stage("m".into(), "1".into(), "production".into(), false)
            .await
            .unwrap();
        let second = registry
            .transition_stage("m".into(), "2".into(), "Production".into(), true)
            .await
            .unwrap();
        assert_eq!(second.current_stage, "Production");
        let first = registry.get_version("m".into(), "1".into()).await.unwrap();
        assert_eq!(first.current_stage, "Archived");
        let latest = registry
            .latest_versions("m".into(), vec!["Production".into()])
            .await
            .unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].version, "2");
        assert!(registry
            .transition_stage("m".into(), "1".into(), "Live".into(), false)
            .await
            .is_err());
    }
}
