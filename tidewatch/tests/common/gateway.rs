//! The model gateway (`tidewatch serve`'s code) in a task of the test, on a
//! port of its own.

use tidewatch::config::Config;

/// A running gateway.
pub struct Gateway {
    /// Where it listens.
    pub address: std::net::SocketAddr,
    /// Stops it (graceful shutdown).
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// Its metrics once stopped.
    pub handle: tokio::task::JoinHandle<anyhow::Result<serving::telemetry::Telemetry>>,
}

/// Starts the gateway of `config`'s `[serving]` with its `[kafka]`.
pub async fn start(config: &Config) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    let handle = tokio::spawn(async move {
        tidewatch::gateway::run(
            config.serving.as_ref().unwrap(),
            config.kafka.as_ref().unwrap(),
            listener,
            async move {
                let _ = stopped.await;
            },
        )
        .await
    });
    Gateway {
        address,
        stop,
        handle,
    }
}
