//! Each member's PostgreSQL server certificate: issued by the fleet CA when
//! the cell writes the member's Patroni configuration, checked periodically
//! and issued again before it expires or when the names clients use changed
//! (a router came or went); then PostgreSQL reloads its configuration, which
//! takes the new certificate for new connections and leaves open ones alone.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::member::CellDeps;
use crate::etcd::{keys, store};
use crate::patroni::ssl::{CA_CERT, SERVER_CERT, SERVER_KEY};
use crate::tls::certs::inspect;
use crate::tls::renew::{Renewal, decide, server_names};

/// One writer of certificate files at a time (the periodic check and a
/// member start may want the same member's files at once).
static WRITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The names this cell's members' certificates carry now.
pub async fn wanted_names(deps: &CellDeps) -> anyhow::Result<BTreeSet<String>> {
    let routers: Vec<store::RouterRecord> = store::list_json(&mut deps.etcd.clone(), &keys::routers()).await?;
    Ok(server_names(
        &deps.cfg.advertise_host,
        routers.iter().map(|r| r.advertise_host.as_str()),
        &deps.cfg.tls.extra_names,
    ))
}

/// Writes `data` to `path` atomically with `mode`, owned like `owner` (when known).
fn write_owned(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> anyhow::Result<std::path::PathBuf> {
    // `.server.key.new`: `with_extension` would give the key and the certificate the same name.
    let name = path.file_name().and_then(|n| n.to_str()).context("a file name")?;
    let tmp = path.with_file_name(format!(".{name}.new"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    std::io::Write::write_all(&mut f, data)?;
    if let Some((uid, gid)) = owner {
        // PostgreSQL refuses a key not owned by its own user (or root).
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to uid {uid}", tmp.display()))?;
    }
    Ok(tmp)
}

/// Makes the member's certificate files current; returns why they were
/// (re)issued, or `Keep`. The files are owned by the owner of `pgdata`: the
/// container's postgres (a new member has no `pgdata` yet: its entrypoint
/// hands the files over at start).
pub async fn ensure_member_certs(deps: &CellDeps, member: &str) -> anyhow::Result<Renewal> {
    let tls = &deps.cfg.tls;
    let ca = crate::etcd::ca::fleet_ca(&mut deps.etcd.clone(), tls).await?;
    let wanted = wanted_names(deps).await?;
    let dir = deps.member_dir(member);
    let _writing = WRITING.lock().await;
    let current = match (std::fs::read_to_string(dir.join(SERVER_CERT)), dir.join(SERVER_KEY).exists()) {
        (Ok(pem), true) => inspect(&pem, &ca.cert_pem).ok(),
        _ => None,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ca_file_current = std::fs::read_to_string(dir.join(CA_CERT)).is_ok_and(|c| c == ca.cert_pem);
    let why = match decide(current.as_ref(), &wanted, now, tls.renew_before()) {
        Renewal::Keep if !ca_file_current => Renewal::OtherCa,
        why => why,
    };
    if why == Renewal::Keep {
        return Ok(why);
    }
    let issued = ca.issue_server(&wanted, tls.lifetime_secs())?;
    let owner = std::fs::metadata(dir.join("pgdata")).ok().map(|m| (m.uid(), m.gid()));
    // Both files first, then the renames back to back: PostgreSQL never reads a
    // key with another certificate for longer than that.
    let files = [
        (dir.join(CA_CERT), write_owned(&dir.join(CA_CERT), ca.cert_pem.as_bytes(), 0o644, owner)?),
        (dir.join(SERVER_KEY), write_owned(&dir.join(SERVER_KEY), issued.key_pem.as_bytes(), 0o600, owner)?),
        (dir.join(SERVER_CERT), write_owned(&dir.join(SERVER_CERT), issued.cert_pem.as_bytes(), 0o644, owner)?),
    ];
    for (path, tmp) in files {
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(member, reason = ?why, names = ?wanted, "issued the member's server certificate");
    Ok(why)
}

/// Asks the member's PostgreSQL to reload its configuration (and so its
/// certificate) over the local socket: no restart, sessions stay.
async fn reload(deps: &CellDeps, p: &store::Placement) -> anyhow::Result<()> {
    let port = p.pg_port.to_string();
    let cmd = ["psql", "-X", "-q", "-At", "-h", "/var/run/postgresql", "-p", &port, "-d", "postgres"];
    let cmd = [&cmd[..], &["-c", "SELECT pg_reload_conf()"]].concat();
    crate::docker::exec::exec(&deps.docker, &crate::names::container(&p.member), "postgres", &cmd)
        .await?
        .check("pg_reload_conf")?;
    Ok(())
}

/// One pass over this cell's members: renews what needs it and reloads those
/// members. Members without a directory yet get theirs when they start.
pub async fn check_all(deps: &CellDeps) -> anyhow::Result<usize> {
    let placements: Vec<store::Placement> =
        store::list_json(&mut deps.etcd.clone(), &keys::cell_placements(&deps.cfg.name)).await?;
    let mut renewed = 0;
    for p in placements.iter().filter(|p| !p.purge && deps.member_dir(&p.member).join("patroni.yml").exists()) {
        match ensure_member_certs(deps, &p.member).await {
            Ok(Renewal::Keep) => {}
            Ok(_) => {
                renewed += 1;
                // A stopped container reads the new files when it starts.
                if let Err(e) = reload(deps, p).await {
                    tracing::warn!(member = %p.member, error = %format!("{e:#}"), "cannot reload after renewing the certificate");
                }
            }
            Err(e) => {
                tracing::warn!(member = %p.member, error = %format!("{e:#}"), "cannot check the member's certificate")
            }
        }
    }
    Ok(renewed)
}

/// The periodic check, for as long as the agent runs.
pub async fn run(deps: CellDeps) {
    let every = Duration::from_secs(deps.cfg.tls.check_every_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = check_all(&deps).await {
            tracing::warn!(error = %format!("{e:#}"), "certificate check failed; retrying at the next one");
        }
    }
}
