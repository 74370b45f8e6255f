//! A TCP proxy on 127.0.0.1 in front of a server, which a test can cut (every
//! open connection is dropped and new ones are closed at once, as when the
//! server dies) and restore.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy's handle.
pub struct Proxy {
    /// `127.0.0.1:PORT` clients connect to.
    pub address: String,
    up: watch::Sender<bool>,
}

impl Proxy {
    /// Starts forwarding connections on a free port to `target`.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (up, watcher) = watch::channel(true);
        let target: Arc<str> = target.into();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*watcher.borrow() {
                    drop(client);
                    continue;
                }
                let target = Arc::clone(&target);
                let mut watcher = watcher.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&*target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watcher.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { address, up }
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    /// Forwards again.
    pub fn restore(&self) {
        let _ = self.up.send(true);
    }
}
