//! Per-version reference profiles from the registry: a version tagged
//! `tidewatch.reference` = a training-data file (a path or `file://` URI of
//! a CSV, Parquet, Arrow or JSON-lines file, readable by this process) gets
//! its reference profile built with the code of `tidewatch reference
//! build` and stored for that model version, where `tidewatch run` reads
//! it for the version's windows.
//!
//! A reconciler, not an event handler: it looks for tagged versions whose
//! source is neither attached nor failed (after every registry change, and
//! every [`POLL`]), so a build interrupted by a crash is done after the
//! restart. The outcome goes back into the registry: on success the tag
//! `tidewatch.reference.attached` (= the source) and the event
//! `io.tidewatch.registry.reference_profile.attached`; on failure the tag
//! `tidewatch.reference.error` (`<source>: <why>`), not retried until the
//! tag names another source. The model must be a `[[models]]` entry (its
//! features and task say what to profile). Builds run one at a time on the
//! blocking pool.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use detectors::spec::ModelSpec;
use registry::Registry;
use store::Store;

/// Longest wait between two looks at the registry (changes made by another
/// process on the same file do not wake this one).
pub const POLL: Duration = Duration::from_secs(2);

/// The local file a `tidewatch.reference` tag names.
fn local_path(source: &str) -> Result<PathBuf, String> {
    let path = match source.strip_prefix("file://") {
        Some(rest) => rest,
        None if source.contains("://") => {
            return Err(format!(
                "`{source}`: only local paths and file:// URIs can be read; \
                 upload the data or a profile to /api/v1/models/{{model}}/versions/{{version}}/reference instead"
            ))
        }
        None => source,
    };
    if path.is_empty() {
        return Err("the tag names no file".into());
    }
    Ok(PathBuf::from(path))
}

/// Builds and stores the reference of `model` `version` from `source`;
/// the number of training rows.
pub async fn attach(
    store: &Store,
    models: &[ModelSpec],
    model: &str,
    version: &str,
    source: &str,
) -> Result<u64, String> {
    let spec = models
        .iter()
        .find(|spec| spec.name() == model)
        .cloned()
        .ok_or_else(|| {
            format!(
                "`{model}` is not a [[models]] entry of this Tidewatch: its features are unknown"
            )
        })?;
    let path = local_path(source)?;
    let version_owned = version.to_owned();
    let built = tokio::task::spawn_blocking(move || {
        crate::training::build_reference(&spec, &version_owned, &path)
    })
    .await
    .map_err(|e| format!("the build task failed: {e}"))?
    .map_err(|e| format!("{e:#}"))?;
    let mut profile = built.profile;
    profile.source = source.to_owned();
    let rows = profile.row_count;
    store
        .put_reference(&profile, ingest::finalize::now_millis())
        .await
        .map_err(|e| format!("storing the profile: {e}"))?;
    Ok(rows)
}

/// Attaches the references the registry's tags ask for until `shutdown`.
pub async fn run(
    registry: Registry,
    store: Store,
    models: Vec<ModelSpec>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut changes = registry.subscribe();
    loop {
        match registry.references_to_attach().await {
            Ok(todo) => {
                for (model, version, source) in todo {
                    let outcome = tokio::select! {
                        () = &mut shutdown => return,
                        outcome = attach(&store, &models, &model, &version, &source) => outcome,
                    };
                    match &outcome {
                        Ok(rows) => tracing::info!(
                            model,
                            version,
                            source,
                            rows,
                            "reference profile attached"
                        ),
                        Err(error) => tracing::warn!(
                            model,
                            version,
                            source,
                            error,
                            "reference profile not attached"
                        ),
                    }
                    if let Err(error) = registry
                        .record_reference(model, version, source, outcome)
                        .await
                    {
                        tracing::warn!(%error, "recording a reference outcome failed; retrying later");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "reading the registry failed; retrying"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            _ = changes.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_local_files() {
        assert_eq!(
            local_path("/data/a.csv").unwrap(),
            PathBuf::from("/data/a.csv")
        );
        assert_eq!(
            local_path("file:///data/a.csv").unwrap(),
            PathBuf::from("/data/a.csv")
        );
        assert_eq!(
            local_path("train.parquet").unwrap(),
            PathBuf::from("train.parquet")
        );
        assert!(local_path("s3://bucket/a.csv")
            .unwrap_err()
            .contains("only local paths"));
        assert!(local_path("file://").is_err());
    }
}
