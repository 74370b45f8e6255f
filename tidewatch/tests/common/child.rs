//! `tidewatch run` (or `serve`) as a child process: the real binary, killed
//! and restarted the way an operator's supervisor would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a child may take to exit after SIGTERM: its drain (15 s), its
/// consumer close (10 s) and its runtime's shutdown (5 s), with margin.
pub const TERMINATE_DEADLINE: Duration = Duration::from_secs(45);

/// A running `tidewatch run`.
pub struct TidewatchProcess {
    child: Child,
    /// Lines of its log saying a partition was assigned.
    assigned: Arc<AtomicU64>,
    /// Lines of its log so far, in a file.
    pub log: PathBuf,
}

impl TidewatchProcess {
    /// Starts `tidewatch run --config config`, logging (info) to `log`;
    /// `env` adds variables (fault injection).
    pub fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_command("run", config, log, env)
    }

    /// Starts `tidewatch <subcommand> --config config` (`run`, `serve`).
    pub fn start_command(
        subcommand: &str,
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidewatch"));
        command
            .arg(subcommand)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,ingest::incarnation=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting tidewatch {subcommand}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let assigned = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&assigned);
        let log_path = log.to_owned();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("log file");
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("partition assigned") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let _ = writeln!(file, "{line}");
            }
        });
        Self {
            child,
            assigned,
            log: log.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process logged at least one partition assignment.
    pub fn wait_for_assignment(&mut self, timeout: Duration) {
        let started = Instant::now();
        while self.assigned.load(Ordering::SeqCst) == 0 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tidewatch run exited ({status}) before any assignment; see {}",
                    self.log.display()
                );
            }
            assert!(
                started.elapsed() < timeout,
                "no partition assigned within {timeout:?}; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown, no last checkpoint, no commit.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit within [`TERMINATE_DEADLINE`];
    /// true when it exited successfully. Past the deadline it prints the
    /// child's threads' backtraces (gdb, when installed) and its last log
    /// lines, kills it, and answers false.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if let Some(status) = self.wait_exit(TERMINATE_DEADLINE) {
            return status.success();
        }
        eprintln!(
            "tidewatch (pid {}) did not exit within {TERMINATE_DEADLINE:?} of SIGTERM",
            self.child.id()
        );
        self.print_backtraces_and_log();
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// The child's threads' backtraces (when gdb is installed) and the last
    /// 40 lines of its log, on stderr.
    fn print_backtraces_and_log(&self) {
        match Command::new("gdb")
            .args([
                "-p",
                &self.child.id().to_string(),
                "-batch",
                "-ex",
                "thread apply all bt 30",
            ])
            .output()
        {
            Ok(output) => eprintln!("{}", String::from_utf8_lossy(&output.stdout)),
            Err(error) => eprintln!("no backtrace (gdb: {error})"),
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("last lines of {}:", self.log.display());
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
    }

    /// Waits for the process to exit by itself within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Peak resident memory so far (VmHWM), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmHWM:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for TidewatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
