//! Test harness: real etcd, real cell agents (the `pgcell` binary), real Docker.
//! Everything a test starts is stopped and removed in `Drop`, even when it fails:
//! processes by PID, containers by their deployment label, data in a temp dir.
#![allow(dead_code, unused_imports)]

pub mod backup;
mod cell;
mod deployment;
mod docker;
pub mod etcd;
pub mod http;
pub mod inproc;
pub mod kit;
pub mod lease;
mod link;
mod pg;
pub mod tls;

pub use cell::*;
pub use deployment::*;
pub use docker::*;
pub use etcd::Etcd;
pub use kit::{CellEnv, docker_kill_cell, docker_logs, docker_remove_deployment, psql, seed_body};
pub use link::*;
pub use pg::*;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const SEED_SERVICE: &str = "0f5c1670-6dc3-11e5-bc08-6c4008a663f0";
pub const SEED_PLAN: &str = "1545e30e-6dc3-11e5-826a-6c4008a663f0";

pub fn pgcell_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgcell")
}

/// The member image of this checkout's recipe (built if missing): tests run
/// against the image their own tree describes, not whatever `:latest` is.
pub fn image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/image/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("deploy/image/build.sh runs");
        assert!(out.status.success(), "the member image could not be built");
        String::from_utf8_lossy(&out.stdout).lines().last().expect("build.sh prints the tag").trim().to_string()
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
