//! The conformance suite against the embedded SQLite store.

mod common;

use store::{embedded::EmbeddedStore, Store};

fn store() -> Store {
    Store::Embedded(EmbeddedStore::in_memory().unwrap())
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
        let store = Store::Embedded(EmbeddedStore::open(&path).await.unwrap());
        common::references_round_trip(&store).await;
    }
    let reopened = Store::Embedded(EmbeddedStore::open(&path).await.unwrap());
    assert!(reopened.reference("churn", "3").await.unwrap().is_some());
    let _ = std::fs::remove_dir_all(&directory);
}
