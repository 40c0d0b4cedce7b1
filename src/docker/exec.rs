//! Running a command inside a member container (`docker exec`): how the cell
//! agent takes backups and reads a member's archiver state.

use anyhow::Context;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;

/// What a command run in a container printed and how it ended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The output as an error when the command failed (stderr's last lines say why).
    pub fn check(self, what: &str) -> anyhow::Result<Self> {
        if self.ok() {
            return Ok(self);
        }
        let tail: Vec<&str> = self.stderr.lines().chain(self.stdout.lines()).rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!("{what} exited {}: {}", self.code, tail.join(" | "))
    }
}

/// Runs `cmd` in container `name` as `user`, waits for it to end.
pub async fn exec(docker: &Docker, name: &str, user: &str, cmd: &[&str]) -> anyhow::Result<ExecOutput> {
    let opts = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        user: Some(user),
        cmd: Some(cmd.to_vec()),
        ..Default::default()
    };
    let created = docker.create_exec(name, opts).await.with_context(|| format!("docker exec in {name}"))?;
    let mut out = ExecOutput::default();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.with_context(|| format!("docker exec start in {name}"))?
    {
        while let Some(chunk) = output.next().await {
            match chunk.with_context(|| format!("docker exec output in {name}"))? {
                LogOutput::StdOut { message } => out.stdout.push_str(&String::from_utf8_lossy(&message)),
                LogOutput::StdErr { message } => out.stderr.push_str(&String::from_utf8_lossy(&message)),
                _ => {}
            }
        }
    }
    let inspect = docker.inspect_exec(&created.id).await.context("docker exec inspect")?;
    out.code = inspect.exit_code.unwrap_or(-1);
    Ok(out)
}
