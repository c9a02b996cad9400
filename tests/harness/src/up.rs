//! `discovery up` (the whole system in one process) on free loopback ports,
//! as a newcomer runs it, for tests of what calls it from outside: curl,
//! the client packages, the example BFF.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{HarnessError, free_port, start_err};

/// The running process; killed when dropped.
pub struct Up {
    child: Child,
    _log: tempfile::NamedTempFile,
    /// The gateway's loopback port.
    pub gateway: u16,
    /// The development key it printed (partner tier, every scope).
    pub key: String,
    /// The metrics port, which also serves the dashboard.
    pub metrics: u16,
}

impl Up {
    /// Starts `bin up` from the workspace root with `env` on top of free
    /// ports for every service, and waits (up to 60 s) for its key.
    pub fn start(bin: &Path, env: &[(&str, String)]) -> Result<Self, HarnessError> {
        let log = tempfile::NamedTempFile::new().map_err(|e| start_err("discovery up", e))?;
        let out = log.reopen().map_err(|e| start_err("discovery up", e))?;
        let gateway = free_port(false)?;
        let metrics = free_port(false)?;
        let mut cmd = Command::new(bin);
        cmd.arg("up")
            .current_dir(crate::workspace_root())
            .env("RUST_LOG", "warn")
            .env("DISCOVERY_GATEWAY_PORT", gateway.to_string())
            .env("DISCOVERY_METRICS_PORT", metrics.to_string());
        for var in [
            "DISCOVERY_FACE_ANALYSIS_PORT",
            "DISCOVERY_RECOMMENDATION_PORT",
            "DISCOVERY_SYNC_PORT",
            "DISCOVERY_MONITORING_PORT",
        ] {
            cmd.env(var, free_port(false)?.to_string());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| start_err("discovery up", e))?;
        let mut up = Self {
            child,
            _log: log,
            gateway,
            key: String::new(),
            metrics,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let text = std::fs::read_to_string(up._log.path()).unwrap_or_default();
            if let Some(key) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("export DISCOVERY_API_KEY="))
            {
                up.key = key.to_string();
                return Ok(up);
            }
            if let Ok(Some(status)) = up.child.try_wait() {
                return Err(start_err("discovery up", format!("exited: {status}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(start_err("discovery up", "printed no key within 60 s"))
    }

    /// `http://127.0.0.1:<gateway port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway)
    }

    /// Stops it with SIGTERM (it flushes its spans) and waits.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
