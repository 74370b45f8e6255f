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
    Store::ClickHouse(Box::new(store))
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
