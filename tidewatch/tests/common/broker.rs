//! A broker of a test's own (the same nisshi binary `scripts/test.sh` built),
//! to stop and start again: its storage is in memory, so a restart comes
//! back empty, as a broker that lost its disk.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private broker.
pub struct PrivateBroker {
    child: Child,
    /// Port it listens on (127.0.0.1).
    pub port: u16,
}

fn nisshi() -> String {
    std::env::var("TIDEWATCH_TEST_NISSHI").expect(
        "TIDEWATCH_TEST_NISSHI is not set: run the integration suite through scripts/test.sh, \
         which builds the broker",
    )
}

impl PrivateBroker {
    /// Starts a broker on 127.0.0.1:`port` that tells clients to reach it
    /// at `advertised` (`host:port`: a proxy's, to cut it off), logging to
    /// `log`; returns once it answers.
    pub fn start(port: u16, advertised: &str, log: &std::path::Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(nisshi())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{advertised}"),
                "--storage-engine",
                "memory://nisshi/",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nisshi");
        let broker = Self { child, port };
        let started = Instant::now();
        loop {
            let listed = Command::new(nisshi())
                .args([
                    "topic",
                    "list",
                    "--broker",
                    &format!("tcp://127.0.0.1:{port}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if listed {
                return broker;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the private broker did not answer"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Kills the broker (its data goes with it).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
