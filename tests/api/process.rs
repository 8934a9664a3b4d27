//! The real `chatgate serve` binary as a child process, for tests of signals and exit codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::TEST_SECRET;

/// `chatgate serve` in `dir` with a valid secret, port 0, SQLite file `serve.db` there, `info`
/// logs on a piped stderr and no config file; callers add or override environment on top.
pub fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.arg("serve")
        .current_dir(dir)
        .env_remove("CHATGATE_CONFIG")
        .env("CHATGATE_JWT_SECRET", TEST_SECRET)
        .env("CHATGATE_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", dir.join("serve.db"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    /// Every line it logged so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `serve` in `dir` (SQLite file `serve.db` there) with `env` on top of a valid
    /// secret and port 0, and returns once it logged its address.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = serve_command(dir);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            // Keeps draining the log so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server logged its address");
        ServerProcess { child, addr, log }
    }

    /// The lines it logged so far (stderr, `RUST_LOG=info` unless the caller changed it).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        wait_exit(&mut self.child, deadline)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for the process to exit (polling with a deadline, never a fixed sleep).
pub fn wait_exit(child: &mut Child, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
