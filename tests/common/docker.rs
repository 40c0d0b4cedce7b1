//! Docker as tests look at it.

use std::process::Command;

fn docker_ps(filter: &str, format: &str) -> Vec<String> {
    let out = Command::new("docker").args(["ps", "-a", "--filter", filter, "--format", format]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

pub fn docker_names(filter: &str) -> Vec<String> {
    let mut v = docker_ps(filter, "{{.Names}}");
    v.sort();
    v
}

pub fn docker_ids(filter: &str) -> Vec<String> {
    docker_ps(filter, "{{.ID}}")
}
