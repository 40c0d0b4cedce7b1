//! Helpers the examples share (each example includes this module; not every
//! example uses every helper).
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// A loopback port free now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds the `pgcell` binary (same profile as the running example) and returns
/// its path; `PGCELL_BIN` names a binary to use instead. `note` shows progress.
pub fn build_pgcell(note: impl Fn(&str)) -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PGCELL_BIN") {
        return Ok(bin.into());
    }
    let me = std::env::current_exe()?;
    let profile_dir = me.parent().and_then(|p| p.parent()).context("cannot locate the target directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bin", "pgcell"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    } else {
        note("warning: not a release build; run with --release for meaningful figures");
    }
    note("building the pgcell binary");
    ensure!(cmd.status()?.success(), "cargo build --bin pgcell failed");
    Ok(profile_dir.join("pgcell"))
}

/// `f` until it gives a value, trying every `step`, for at most `timeout`.
pub async fn wait_every<T, F, Fut>(what: &str, timeout: Duration, step: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(step).await;
    }
}

/// Until `url` answers 2xx, for at most `timeout`.
pub async fn wait_http(url: &str, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let up = || async { reqwest::get(url).await.ok().filter(|r| r.status().is_success()).map(|_| ()) };
    wait_every(what, timeout, Duration::from_millis(150), up).await.with_context(|| format!("{what} did not come up"))
}
