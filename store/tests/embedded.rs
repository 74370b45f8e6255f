//! The conformance suite against the embedded SQLite store.

mod common;

use store::{embedded::EmbeddedStore, Store};

fn store() -> Store {
    Store::in_memory().unwrap()
}

#[tokio::test]
async fn partials_keep_the_latest_range_end() {
    common::partials_keep_the_latest_range_end(&store()).await;
}

#[tokio::test]
async fn window_results_round_trip() {
    common::window_results_round_trip(&store()).await;
}

#[tokio::test]
async fn references_round_trip() {
    common::references_round_trip(&store()).await;
}

#[tokio::test]
async fn file_store_survives_reopening() {
    let directory = std::env::temp_dir().join(format!("tidewatch-store-{}", std::process::id()));
    let path = directory.join("tidewatch.db");
    let _ = std::fs::remove_file(&path);
    {
        let store = Store::new(EmbeddedStore::open(&path).await.unwrap());
        common::references_round_trip(&store).await;
    }
    let reopened = Store::new(EmbeddedStore::open(&path).await.unwrap());
    assert!(reopened.reference("churn", "3").await.unwrap().is_some());
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_opened_at_once_on_a_new_file_wait_for_each_other() {
    let directory =
        std::env::temp_dir().join(format!("tidewatch-concurrent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let path = directory.join("shared.db");
    for round in 0..5 {
        let _ = std::fs::remove_file(&path);
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { EmbeddedStore::open(&path).await })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            stores.push(Store::new(
                open.await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}")),
            ));
        }
        // Writers on every handle at once, then every handle reads.
        let writes: Vec<_> = stores
            .iter()
            .cloned()
            .map(|store| tokio::spawn(async move { common::references_round_trip(&store).await }))
            .collect();
        for write in writes {
            write.await.unwrap();
        }
        for store in &stores {
            assert!(store.reference("churn", "3").await.unwrap().is_some());
        }
    }
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn an_older_file_gains_the_new_metrics_columns() {
    let directory = std::env::temp_dir().join(format!("tidewatch-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("old.db");
    let _ = std::fs::remove_file(&path);
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE window_metrics (
                    model TEXT NOT NULL, model_version TEXT NOT NULL, segment TEXT NOT NULL, feature TEXT NOT NULL,
                    kind TEXT NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
                    count INTEGER NOT NULL, missing INTEGER NOT NULL, type_mismatch INTEGER NOT NULL,
                    missing_rate REAL, mean REAL, std_dev REAL, min REAL, max REAL,
                    p05 REAL, p25 REAL, p50 REAL, p75 REAL, p95 REAL,
                    distinct_categories INTEGER, unseen_categories INTEGER,
                    psi REAL, ks_statistic REAL, ks_p_value REAL, chi_square REAL, chi_square_p_value REAL,
                    psi_threshold REAL NOT NULL, drifted INTEGER, reference_source TEXT NOT NULL,
                    computed_at INTEGER NOT NULL,
                    PRIMARY KEY (model, model_version, segment, feature, window_start));",
            )
            .unwrap();
    }
    let store = Store::new(EmbeddedStore::open(&path).await.unwrap());
    common::window_results_round_trip(&store).await;
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn alert_outbox_round_trip() {
    common::alert_outbox_round_trip(&store()).await;
}

#[tokio::test]
async fn alert_notification_lookup() {
    common::alert_notification_lookup(&store()).await;
}

#[tokio::test]
async fn pipeline_stats_round_trip() {
    common::pipeline_stats_round_trip(&store()).await;
}

#[tokio::test]
async fn alert_progress_moves_forward_only() {
    common::alert_progress_moves_forward_only(&store()).await;
}

#[tokio::test]
async fn join_state_round_trip() {
    common::join_state_round_trip(&store()).await;
}

#[tokio::test]
async fn source_progress_round_trip() {
    common::source_progress_round_trip(&store()).await;
}

#[tokio::test]
async fn range_fingerprints_round_trip() {
    common::range_fingerprints_round_trip(&store()).await;
}

#[tokio::test]
async fn version_events_round_trip() {
    common::version_events_round_trip(&store()).await;
}

#[tokio::test]
async fn samples_round_trip() {
    common::samples_round_trip(&store()).await;
}
