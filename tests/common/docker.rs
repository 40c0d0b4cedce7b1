//! Docker as tests look at it.

use std::process::Command;

use super::kit::docker_ps;

pub fn docker_names(filter: &str) -> Vec<String> {
    let mut v = docker_ps(filter, "{{.Names}}");
    v.sort();
    v
}

pub fn docker_ids(filter: &str) -> Vec<String> {
    docker_ps(filter, "{{.ID}}")
}

/// A member container as a security review checks it: `docker inspect` shows a
/// non-root user, every capability dropped and no-new-privileges; `ps` inside
/// shows PostgreSQL and Patroni running and no process of root at all.
pub fn assert_least_privilege(container: &str) {
    let fmt = "{{.Config.User}}|{{json .HostConfig.CapDrop}}|{{json .HostConfig.SecurityOpt}}";
    let out = Command::new("docker").args(["inspect", "-f", fmt, container]).output().unwrap();
    assert!(out.status.success(), "docker inspect {container}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<&str> = text.split('|').collect();
    let user = parts[0];
    assert!(
        !user.is_empty() && user != "root" && user != "0" && !user.starts_with("0:") && !user.starts_with("root:"),
        "{container} runs as {user:?}: {text}"
    );
    assert_eq!(parts[1], r#"["ALL"]"#, "{container} keeps capabilities: {text}");
    assert!(parts[2].contains("no-new-privileges"), "{container} may gain privileges: {text}");
    let ps = Command::new("docker").args(["exec", container, "ps", "-e", "-o", "user=,comm="]).output().unwrap();
    assert!(ps.status.success(), "ps in {container}: {}", String::from_utf8_lossy(&ps.stderr));
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    let rows: Vec<(&str, &str)> = ps.lines().filter_map(|l| l.split_once(char::is_whitespace)).collect();
    assert!(rows.iter().any(|(_, c)| c.trim() == "postgres"), "no postgres process in {container}:\n{ps}");
    assert!(rows.iter().any(|(_, c)| c.trim() == "patroni"), "no patroni process in {container}:\n{ps}");
    assert!(rows.iter().all(|(u, _)| *u != "root"), "a root process in {container}:\n{ps}");
}

/// A container paused (`docker pause`) until this is dropped, even by a failing
/// test: left frozen, any `docker exec` into it (a cell agent's backup) hangs
/// and with it every later Docker call on that container, cleanup included.
/// Such a stuck exec can hang `docker unpause` itself (seen twice); the drop then
/// thaws the cgroup freezer directly, which frees both.
pub struct Paused {
    name: String,
    id: String,
}

impl Paused {
    pub fn new(container: &str) -> Self {
        let id = Command::new("docker").args(["inspect", "-f", "{{.Id}}", container]).output().unwrap();
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let out = Command::new("docker").args(["pause", container]).output().unwrap();
        assert!(out.status.success(), "docker pause {container}: {}", String::from_utf8_lossy(&out.stderr));
        Self { name: container.to_string(), id }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let unpause = |secs: &str| {
            Command::new("timeout")
                .args([secs, "docker", "unpause", &self.name])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if unpause("20") || self.id.is_empty() {
            return;
        }
        // cgroup v1 (this machine) and v2 (systemd driver) places of the container's freezer.
        let v1 = format!("/sys/fs/cgroup/freezer/docker/{}/freezer.state", self.id);
        let v2 = format!("/sys/fs/cgroup/system.slice/docker-{}.scope/cgroup.freeze", self.id);
        let freeze = |on: bool| {
            std::fs::write(&v1, if on { "FROZEN" } else { "THAWED" })
                .or_else(|_| std::fs::write(&v2, if on { "1" } else { "0" }))
        };
        // Thawed, the stuck exec ends; Docker still records the container as paused
        // (and refuses every exec into it) until its own unpause, which needs a frozen cgroup.
        let thawed = freeze(false);
        std::thread::sleep(std::time::Duration::from_secs(2));
        let refrozen = freeze(true);
        let unpaused = unpause("20");
        eprintln!("docker unpause {} hung; thawed {thawed:?}, refrozen {refrozen:?}, unpaused {unpaused}", self.name);
    }
}
