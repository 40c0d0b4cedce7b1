//! A cell agent process of a test deployment.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub struct Cell {
    pub name: String,
    pub api: String,
    pub ports: (u16, u16),
    pub data_root: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) env: Vec<(String, String)>,
    pub(super) log: PathBuf,
}

impl Cell {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub(super) fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(pgcell_bin())
            .arg("cell")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent process only (SIGKILL); its containers keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Loses the whole cell at once: the agent and every container, SIGKILL.
    pub fn kill_cell(&mut self) {
        self.kill_agent();
        docker_kill_cell(&self.name);
    }

    /// SIGTERM to the agent (a planned stop); waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "agent did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the agent again (after a kill or a stop).
    /// Waits for the agent to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn start_agent(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        self.spawn();
    }

    pub fn restart_agent(&mut self) {
        self.kill_agent();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
