//! The conformance suite against a real ClickHouse server.
//!
//! Needs `TIDEWATCH_TEST_CLICKHOUSE_URL` (set by `scripts/test.sh`, which
//! starts the server). Without it the tests fail and say so: an integration
//! suite that silently skips proves nothing.

mod common;

use store::{clickhouse_store::ClickHouseStore, Store};

async fn store(test: &str) -> Store {
    let url = std::env::var("TIDEWATCH_TEST_CLICKHOUSE_URL").expect(
        "TIDEWATCH_TEST_CLICKHOUSE_URL is not set: run the integration suite through scripts/test.sh, \
         which installs and starts ClickHouse",
    );
    let database = format!("tidewatch_test_{test}_{}", std::process::id());
    let store = ClickHouseStore::connect(&url, &database, None, None)
        .await
        .unwrap_or_else(|error| panic!("cannot reach ClickHouse at {url}: {error}"));
    // The migrations are idempotent: running them twice must succeed.
    ClickHouseStore::connect(&url, &database, None, None)
        .await
        .unwrap();
    Store::new(store)
}

#[tokio::test]
async fn partials_keep_the_latest_range_end() {
    common::partials_keep_the_latest_range_end(&store("partials").await).await;
}

#[tokio::test]
async fn window_results_round_trip() {
    common::window_results_round_trip(&store("results").await).await;
}

#[tokio::test]
async fn references_round_trip() {
    common::references_round_trip(&store("references").await).await;
}

#[tokio::test]
async fn an_older_table_gains_the_new_metrics_columns() {
    let url = std::env::var("TIDEWATCH_TEST_CLICKHOUSE_URL")
        .expect("TIDEWATCH_TEST_CLICKHOUSE_URL is not set");
    let database = format!("tidewatch_test_migrate_{}", std::process::id());
    let client = clickhouse::Client::default().with_url(&url);
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await
        .unwrap();
    client
        .query(&format!(
            "CREATE TABLE {database}.window_metrics (
                model String, model_version String, segment String, feature String, kind String,
                window_start DateTime, window_end DateTime,
                count UInt64, missing UInt64, type_mismatch UInt64,
                missing_rate Nullable(Float64),
                mean Nullable(Float64), std_dev Nullable(Float64), min Nullable(Float64), max Nullable(Float64),
                p05 Nullable(Float64), p25 Nullable(Float64), p50 Nullable(Float64), p75 Nullable(Float64), p95 Nullable(Float64),
                distinct_categories Nullable(UInt64), unseen_categories Nullable(UInt64),
                psi Nullable(Float64), ks_statistic Nullable(Float64), ks_p_value Nullable(Float64),
                chi_square Nullable(Float64), chi_square_p_value Nullable(Float64),
                psi_threshold Float64, drifted Nullable(UInt8),
                reference_source String, computed_at UInt64
            ) ENGINE = ReplacingMergeTree(computed_at)
            PARTITION BY toYYYYMMDD(window_start)
            ORDER BY (model, model_version, segment, feature, window_start)"
        ))
        .execute()
        .await
        .unwrap();
    let store = Store::new(
        ClickHouseStore::connect(&url, &database, None, None)
            .await
            .unwrap(),
    );
    common::window_results_round_trip(&store).await;
}

#[tokio::test]
async fn alert_outbox_round_trip() {
    common::alert_outbox_round_trip(&store("outbox").await).await;
}

#[tokio::test]
async fn alert_notification_lookup() {
    common::alert_notification_lookup(&store("lookup").await).await;
}

#[tokio::test]
async fn pipeline_stats_round_trip() {
    common::pipeline_stats_round_trip(&store("stats").await).await;
}

#[tokio::test]
async fn alert_progress_moves_forward_only() {
    common::alert_progress_moves_forward_only(&store("progress").await).await;
}

#[tokio::test]
async fn join_state_round_trip() {
    common::join_state_round_trip(&store("join_state").await).await;
}

#[tokio::test]
async fn source_progress_round_trip() {
    common::source_progress_round_trip(&store("source_progress").await).await;
}

#[tokio::test]
async fn range_fingerprints_round_trip() {
    common::range_fingerprints_round_trip(&store("fingerprints").await).await;
}

/// Both backends hold the same tables with the same columns, in the order
/// the row structs declare them: a column added to one and not the other
/// fails here.
#[tokio::test]
async fn both_backends_have_the_declared_columns() {
    let clickhouse = store("columns").await;
    let embedded = Store::in_memory().unwrap();
    assert_eq!(store::tables().len(), 16);
    for table in store::tables() {
        let declared: Vec<&str> = table.columns.iter().map(|column| column.name).collect();
        let in_clickhouse = clickhouse.stored_columns(table.spec.name).await.unwrap();
        let in_sqlite = embedded.stored_columns(table.spec.name).await.unwrap();
        assert_eq!(in_clickhouse, declared, "ClickHouse `{}`", table.spec.name);
        assert_eq!(in_sqlite, declared, "SQLite `{}`", table.spec.name);
    }
}

#[tokio::test]
async fn version_events_round_trip() {
    common::version_events_round_trip(&store("version_events").await).await;
}

#[tokio::test]
async fn samples_round_trip() {
    common::samples_round_trip(&store("samples").await).await;
}
