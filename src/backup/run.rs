//! The cell of an instance's leader backs it up: every `refresh_secs` it
//! reads the archiver and the stanza, commits a heartbeat, decides
//! ([`super::state::decide`]) and runs pgBackRest by `docker exec` in the
//! leader's container, then publishes the state in etcd. The leader moves,
//! the work moves with it: whichever cell holds the leader does it.

use anyhow::Context;

use super::state::{self, Action, BackupState, Heartbeat, Request, Run};
use crate::cell::member::CellDeps;
use crate::docker::exec::exec;
use crate::etcd::keys;
use crate::etcd::store::{self, Placement};
use crate::pgbackrest::info;

/// Members of this cell that lead their cluster now.
pub async fn leaders_here(deps: &CellDeps) -> anyhow::Result<Vec<Placement>> {
    let mut etcd = deps.etcd.clone();
    let placements: Vec<Placement> = store::list_json(&mut etcd, &keys::cell_placements(&deps.cfg.name)).await?;
    let mut out = vec![];
    for p in placements.into_iter().filter(|p| !p.purge) {
        let key = format!("{}leader", keys::patroni_scope(&p.scope));
        let resp = etcd.get(key, None).await.context("etcd get leader")?;
        if resp.kvs().first().is_some_and(|kv| kv.value() == p.member.as_bytes()) {
            out.push(p);
        }
    }
    Ok(out)
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// One pass for one leader: probe, decide, back up if due, publish.
pub async fn tick(deps: &CellDeps, p: &Placement) -> anyhow::Result<BackupState> {
    let mut etcd = deps.etcd.clone();
    let id = &p.instance_id;
    let container = crate::names::container(&p.member);
    let mut s: BackupState =
        store::get_json(&mut etcd, &keys::backup_state(id)).await?.map(|(s, _)| s).unwrap_or_default();
    s.instance = id.clone();
    s.member = p.member.clone();
    if let Err(e) = probe(deps, &container, p.pg_port, &mut s).await {
        tracing::debug!(instance = %id, error = %format!("{e:#}"), "archiver probe failed");
    }
    let dropped_before = s.wal_dropped;
    s.wal_dropped = dropped_wal(deps, &p.member);
    if s.wal_dropped > dropped_before {
        tracing::warn!(
            instance = %id,
            dropped = s.wal_dropped - dropped_before,
            "pgBackRest dropped WAL (archive queue over archive-push-queue-max, repository unreachable?): \
             the primary keeps its disk, the archive has a gap; a new full backup is due"
        );
    }
    match stanza_info(deps, &container, id).await {
        Ok(info) => {
            s.info = info;
            s.repo_error = None;
        }
        Err(e) => {
            // The repository is unreachable: say so, keep what was known, try again next pass.
            tracing::warn!(instance = %id, error = %format!("{e:#}"), "backup repository unreachable");
            s.repo_error = Some(format!("{e:#}"));
            publish(deps, &mut s).await?;
            return Ok(s);
        }
    }
    let request: Option<Request> = store::get_json(&mut etcd, &keys::backup_request(id)).await?.map(|(r, _)| r);
    let action = state::decide(&s, request.as_ref(), &deps.cfg.backup, now() as i64);
    if let Some(action) = action {
        publish(deps, &mut s).await?;
        run(deps, &container, id, action, &mut s).await;
        if let Ok(info) = stanza_info(deps, &container, id).await {
            s.info = info;
        }
    }
    publish(deps, &mut s).await?;
    Ok(s)
}

async fn publish(deps: &CellDeps, s: &mut BackupState) -> anyhow::Result<()> {
    s.updated_at = now() as i64;
    let mut etcd = deps.etcd.clone();
    // A deprovision may have marked it meanwhile (the broker writes only that).
    if let Some((cur, _)) = store::get_json::<BackupState>(&mut etcd, &keys::backup_state(&s.instance)).await? {
        s.deleted_at = s.deleted_at.or(cur.deleted_at);
    }
    etcd.put(keys::backup_state(&s.instance), serde_json::to_vec(s)?, None).await.context("etcd put backup state")?;
    Ok(())
}

async fn run(deps: &CellDeps, container: &str, id: &str, action: Action, s: &mut BackupState) {
    let started = now();
    let stanza = format!("--stanza={id}");
    let (kind, request, why) = match action {
        Action::CreateStanza => {
            tracing::info!(instance = %id, "creating the instance's stanza");
            match exec(&deps.docker, container, "postgres", &["pgbackrest", &stanza, "stanza-create"]).await {
                Ok(out) if out.ok() => {}
                Ok(out) => {
                    let e = out.check("pgbackrest stanza-create").err().map(|e| format!("{e:#}"));
                    tracing::warn!(instance = %id, error = ?e, "stanza-create failed");
                    s.last_run = Some(Run {
                        kind: "stanza-create".into(),
                        started: started as i64,
                        secs: now() - started,
                        ok: false,
                        error: e,
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %format!("{e:#}"), "stanza-create failed");
                    return;
                }
            }
            ("full", None, "first backup")
        }
        Action::Backup { kind, request, why } => (kind, request, why),
        Action::Check { label } => {
            s.last_check = Some(check(deps, id, &label).await);
            return;
        }
    };
    tracing::info!(instance = %id, kind, why, "backup starting");
    let dropped_before = s.wal_dropped;
    let ty = format!("--type={kind}");
    let res = exec(&deps.docker, container, "postgres", &["pgbackrest", &stanza, &ty, "backup"]).await;
    let res = res.and_then(|o| o.check("pgbackrest backup"));
    let secs = now() - started;
    let ok = res.is_ok();
    let error = res.err().map(|e| format!("{e:#}"));
    match &error {
        None => tracing::info!(instance = %id, kind, secs, "backup done"),
        Some(e) => tracing::warn!(instance = %id, kind, error = %e, "backup failed"),
    }
    if ok && kind == "full" {
        s.wal_dropped_at_full = dropped_before;
    }
    // A request is answered once, whether the backup worked or not (its result is in last_run).
    if request.is_some() {
        s.done_request = request;
    }
    s.last_run = Some(Run { kind: kind.into(), started: started as i64, secs, ok, error });
}

/// `pgbackrest info` of the instance's stanza.
async fn stanza_info(deps: &CellDeps, container: &str, id: &str) -> anyhow::Result<info::StanzaInfo> {
    let out =
        exec(&deps.docker, container, "postgres", &["pgbackrest", &format!("--stanza={id}"), "--output=json", "info"])
            .await?
            .check("pgbackrest info")?;
    info::parse(&out.stdout)
}

/// Commits a heartbeat and reads `pg_stat_archiver` on the leader.
async fn probe(deps: &CellDeps, container: &str, port: u16, s: &mut BackupState) -> anyhow::Result<()> {
    let port = port.to_string();
    let archiver = "SELECT pg_current_wal_lsn(), pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, ''), \
        coalesce(extract(epoch from last_archived_time), 0), failed_count, coalesce(extract(epoch from last_failed_time), 0) \
        FROM pg_stat_archiver";
    let cmd = [
        "psql",
        "-X",
        "-At",
        "-h",
        "/var/run/postgresql",
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        "postgres",
        // Three requests, three transactions: the time is read before the
        // heartbeat commits, the WAL position after it.
        "-c",
        "SELECT extract(epoch from clock_timestamp())",
        "-c",
        "SELECT txid_current()",
        "-c",
        archiver,
    ];
    let out = exec(&deps.docker, container, "postgres", &cmd).await?.check("psql")?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    let [at, _, row] = lines[..] else { anyhow::bail!("unexpected psql output {:?}", out.stdout) };
    let f: Vec<&str> = row.split('|').collect();
    let [lsn, walfile, archived, archived_at, failed, failed_at] = f[..] else {
        anyhow::bail!("unexpected row {row:?}")
    };
    let num = |v: &str| v.parse::<f64>().ok().filter(|x| *x > 0.0);
    state::push_heartbeat(&mut s.heartbeats, Heartbeat { at: at.parse()?, lsn: lsn.into(), walfile: walfile.into() });
    // Only a WAL segment (or the partial one archived at a promotion) says how
    // far the archive reaches: a `.backup` or `.history` file is archived
    // before the segment it names.
    if is_segment(archived) {
        s.last_archived_wal = Some(archived.to_string());
    }
    s.last_archived_at = num(archived_at);
    s.archive_failed_count = failed.parse().unwrap_or_default();
    s.last_failed_at = num(failed_at);
    Ok(())
}

fn is_segment(name: &str) -> bool {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit())
}

/// WAL segments pgBackRest dropped because the queue was full (its async log says so).
fn dropped_wal(deps: &CellDeps, member: &str) -> u64 {
    let dir = deps.member_dir(member).join("pgbackrest-log");
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("archive-push"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.matches("dropped WAL file").count() as u64)
        .sum()
}

/// Restores backup `label` of the instance into a scratch container (to the
/// backup's consistent point), starts PostgreSQL there, runs a query, and runs
/// `pgbackrest verify` over the stanza: the backup is proven restorable.
async fn check(deps: &CellDeps, id: &str, label: &str) -> state::Check {
    let started = now();
    tracing::info!(instance = %id, backup = %label, "restore check starting");
    let script = check_script(id, label);
    let member = crate::names::member(id, &deps.cfg.name);
    let conf = deps.member_dir(&member).join(crate::pgbackrest::CONF_FILE);
    // The member's name: unique in the fleet (and across test deployments on one host).
    let name = format!("pgcell-check-{member}");
    let res = async {
        let scratch = crate::docker::scratch::Scratch {
            name: &name,
            image: &deps.cfg.image,
            labels: [
                (crate::docker::LABEL_DEPLOYMENT.to_string(), deps.cfg.deployment.clone()),
                ("org.pgcell.check".to_string(), id.to_string()),
            ]
            .into(),
            binds: crate::pgbackrest::repo_binds(&deps.cfg.backup)
                .into_iter()
                .chain([format!("{}:/etc/pgcell-check/pgbackrest.conf:ro", conf.display())])
                .collect(),
            network: crate::pgbackrest::repo_network(&deps.cfg.backup),
            memory_mb: 512,
            script: &script,
            user: deps.member_owner().await?,
        };
        crate::docker::scratch::run(&deps.docker, &scratch).await
    }
    .await;
    let res = res.and_then(|o| {
        anyhow::ensure!(
            o.stdout.contains("PGCELL-CHECK-OK"),
            "{:#}",
            o.clone().check("restore check").err().map_or("no OK line".into(), |e| format!("{e:#}"))
        );
        Ok(o)
    });
    let secs = now() - started;
    match &res {
        Ok(_) => tracing::info!(instance = %id, backup = %label, secs, "restore check passed"),
        Err(e) => tracing::warn!(instance = %id, backup = %label, error = %format!("{e:#}"), "restore check FAILED"),
    }
    state::Check {
        at: started as i64,
        label: label.into(),
        ok: res.is_ok(),
        secs,
        error: res.err().map(|e| format!("{e:#}")),
    }
}

/// The scratch container's script: the data directory at the member's path,
/// so the restored configuration's file paths hold.
fn check_script(id: &str, label: &str) -> String {
    format!(
        r#"set -e
# On failure, say why: pgBackRest's and PostgreSQL's logs end up in the result.
# ssl=off: the restored configuration names the member's certificate files, absent here (socket only).
trap 'rc=$?; if [ $rc != 0 ]; then tail -n 12 /var/lib/pgcell/pgbackrest-log/*.log /tmp/pg.log 2>/dev/null; fi; exit $rc' EXIT
d={pgdata}
mkdir -p "$d" /var/lib/pgcell/spool /var/lib/pgcell/pgbackrest-log
cp /etc/pgcell-check/pgbackrest.conf /var/lib/pgcell/pgbackrest.conf
chmod 0700 "$d"
pgbackrest --stanza={id} --set={label} --type=immediate --target-action=promote restore
pg_ctl -D "$d" -l /tmp/pg.log -w -t 600 \
  -o "-c listen_addresses='' -c port=5432 -c unix_socket_directories=/tmp -c archive_mode=off -c ssl=off" start \
  || {{ tail -n 20 /tmp/pg.log; exit 1; }}
psql -X -At -h /tmp -p 5432 -d postgres -c "select count(*) from pg_database"
pg_ctl -D "$d" -m fast stop
pgbackrest --stanza={id} verify
echo PGCELL-CHECK-OK
"#,
        pgdata = crate::pgbackrest::PGDATA
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_segments_move_the_archive_mark() {
        assert!(super::is_segment("00000001000000000000003C"));
        assert!(super::is_segment("00000002000000000000003C.partial"));
        assert!(!super::is_segment("00000001000000000000003C.000000D8.backup"));
        assert!(!super::is_segment("00000002.history"));
        assert!(!super::is_segment(""));
    }
}
