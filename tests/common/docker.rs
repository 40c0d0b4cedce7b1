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
