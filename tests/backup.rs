//! Backups with real pgBackRest and PostgreSQL: the first backup after
//! provisioning, point-in-time restore through the broker, clones, restore of
//! a deprovisioned instance, bad targets.

mod common;

use std::time::{Duration, Instant};

use common::backup::*;
use common::http::osb;
use common::*;
use pgcell::broker::catalog::SERVICE_ID;
use serde_json::json;

#[tokio::test]
async fn first_backup_after_provisioning_and_on_demand() {
    let mut d = Deployment::start(0).await;
    let name = format!("{}-c0", d.id);
    // Restore checks soon after the first backup (daily by default).
    d.add_cell_with_env(&name, &[("PGCELL_BACKUP_CHECK_EVERY_SECS", "20".into())]).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    let t0 = Instant::now();
    assert_eq!(provision(&broker, "f1", "single", json!({})).await.status, 202);
    let (state, desc) = wait_operation(&broker, "f1", Duration::from_secs(120)).await;
    assert_eq!(state, "succeeded", "{desc}");
    let provisioned = t0.elapsed().as_secs_f64();
    let s = wait_backups(&d, "f1", 1, Duration::from_secs(120)).await;
    eprintln!(
        "provisioned in {provisioned:.1} s; first backup done {:.1} s after the request",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(s["info"]["backups"][0]["kind"], "full");
    // The WAL archive moves (archive_timeout 10 s in tests, heartbeats commit).
    wait_for("WAL archived", Duration::from_secs(60), || async {
        backup_state(&d, "f1").await.filter(|s| s["last_archived_wal"].is_string())
    })
    .await;
    let out = d.pgcell(&["backups", "f1"]);
    eprintln!("{out}");
    assert!(out.starts_with("f1: recoverable from "), "{out}");
    assert!(out.contains(" full "), "{out}");

    // On demand, through the CLI (waits for it) and through the broker's update.
    let out = d.pgcell(&["backup", "f1", "--type", "diff"]);
    assert!(out.contains("done: diff"), "{out}");
    let upd = json!({"service_id": SERVICE_ID, "parameters": {"backup": "full"}}).to_string();
    let r = osb("PATCH", &format!("{broker}/v2/service_instances/f1?accepts_incomplete=true"), Some(&upd)).await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    let s = wait_backups(&d, "f1", 3, Duration::from_secs(120)).await;
    let kinds: Vec<&str> =
        s["info"]["backups"].as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "diff", "full"]);
    // Proven restorable: the latest backup restored in a scratch container, queried, verified.
    let s = wait_for("a restore check", Duration::from_secs(240), || async {
        backup_state(&d, "f1").await.filter(|s| s["last_check"].is_object())
    })
    .await;
    assert_eq!(s["last_check"]["ok"], true, "{}", s["last_check"]);
    eprintln!("restore check of {} in {:.1} s", s["last_check"]["label"], s["last_check"]["secs"].as_f64().unwrap());
    assert_eq!(metric(&d, "pgcell_backup_check_ok", "f1").await, Some(1));
    assert!(d.pgcell(&["backups", "f1"]).contains("restore check: ok"));
    let bad = json!({"service_id": SERVICE_ID, "parameters": {"backup": "yesterday"}}).to_string();
    let r = osb("PATCH", &format!("{broker}/v2/service_instances/f1?accepts_incomplete=true"), Some(&bad)).await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn point_in_time_restore_is_exact_and_bad_targets_are_refused() {
    let mut d = Deployment::start(1).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    assert_eq!(provision(&broker, "src", "single", json!({"archive_timeout": 15})).await.status, 202);
    assert_eq!(wait_operation(&broker, "src", Duration::from_secs(120)).await.0, "succeeded");
    // A binding on the source: its role must not come along into restores.
    let bind_body = json!({"service_id": SERVICE_ID, "plan_id": plan_id("single")}).to_string();
    let b = osb("PUT", &format!("{broker}/v2/service_instances/src/service_bindings/k1"), Some(&bind_body)).await;
    assert_eq!(b.status, 201, "{}", b.text);
    let src = app_url(&d, "src").await;
    psql(&src, "create table t(x int, at timestamptz default clock_timestamp())").unwrap();
    wait_backups(&d, "src", 1, Duration::from_secs(120)).await;
    // Its own bound (15 s): PostgreSQL switches a fifth earlier, so the push lands within it.
    assert_eq!(psql(&src, "show archive_timeout").unwrap(), "12s", "the instance's own archive timeout");

    psql(&src, "insert into t(x) select generate_series(1, 5)").unwrap();
    let noted = psql(&src, "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        .unwrap();
    let lsn = psql(&src, "select pg_current_wal_lsn()").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    psql(&src, "insert into t(x) select generate_series(6, 12)").unwrap();
    psql(&src, "select pg_switch_wal()").unwrap();
    eprintln!("noted {noted} at LSN {lsn}; 5 rows before, 12 after");

    // Bad targets: 400, with the window, and nothing created.
    let bad = [
        (json!({"from": "src", "target_time": noted.trim_end_matches('Z')}), "with a zone"),
        (json!({"from": "src", "target_time": "2001-01-01T00:00:00Z"}), "before the first backup"),
        (json!({"from": "src", "target_time": "2999-01-01T00:00:00+02:00"}), "after the last archived WAL"),
        (json!({"from": "src", "target_lsn": "FFFF/0"}), "after the last archived WAL"),
        (json!({"from": "nosuch"}), "unknown source"),
        (json!({"from": "bad", "when": 1}), "unknown restore field"),
    ];
    for (restore, why) in bad {
        let r = provision(&broker, "bad", "single", json!({"restore": restore})).await;
        assert_eq!(r.status, 400, "{restore}: {}", r.text);
        assert!(r.text.contains(why), "{restore}: {}", r.text);
        if why.contains("first backup") || why.contains("archived") {
            assert!(r.text.contains("recoverable window: from "), "{}", r.text);
        }
    }
    assert_eq!(osb("GET", &format!("{broker}/v2/service_instances/bad"), None).await.status, 404);
    assert!(d.etcd.dump("/pgcell/instances/bad/").await.is_empty());

    // To the noted time, to the LSN, and to the latest: exactly the rows committed before.
    let r = provision_restore(&broker, "at-time", json!({"from": "src", "target_time": noted})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = provision_restore(&broker, "at-lsn", json!({"from": "src", "target_lsn": lsn})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = provision_restore(&broker, "latest", json!({"from": "src"})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    for id in ["at-time", "at-lsn", "latest"] {
        let (state, desc) = wait_operation(&broker, id, Duration::from_secs(180)).await;
        assert_eq!(state, "succeeded", "{id}: {desc}\n{}", d.logs());
    }
    assert_eq!(count(&app_url(&d, "at-time").await), "5");
    assert_eq!(count(&app_url(&d, "at-lsn").await), "5");
    assert_eq!(count(&app_url(&d, "latest").await), "12");
    let clone = app_url(&d, "at-time").await;
    assert_eq!(
        psql(&clone, "select count(*) from pg_roles where rolname like 'b\\_%'").unwrap(),
        "0",
        "binding roles left"
    );
    assert!(psql(&clone, "show archive_command").unwrap().contains("--stanza=at-time "));
    // It is backed up into its own stanza, from its first minute.
    let s = wait_backups(&d, "at-time", 1, Duration::from_secs(120)).await;
    assert_eq!(s["instance"], "at-time");
    psql(&clone, "insert into t(x) values (100)").unwrap();
    assert_eq!(count(&src), "12", "the source is untouched");
}

#[tokio::test]
async fn restore_of_a_deprovisioned_instance_and_clone_of_a_live_one_under_writes() {
    let mut d = Deployment::start(1).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    for id in ["gone", "live"] {
        assert_eq!(provision(&broker, id, "single", json!({})).await.status, 202);
    }
    for id in ["gone", "live"] {
        assert_eq!(wait_operation(&broker, id, Duration::from_secs(120)).await.0, "succeeded");
        psql(&app_url(&d, id).await, "create table t(x int)").unwrap();
        wait_backups(&d, id, 1, Duration::from_secs(120)).await;
    }
    let gone = app_url(&d, "gone").await;
    psql(&gone, "insert into t select generate_series(1, 42)").unwrap();
    let switched = psql(&gone, "select pg_walfile_name(pg_switch_wal())").unwrap();
    // Until that WAL is in the repository, the latest restore would miss rows.
    wait_for("gone's WAL archived", Duration::from_secs(60), || async {
        let s = backup_state(&d, "gone").await?;
        (s["last_archived_wal"].as_str()? >= switched.as_str()).then_some(())
    })
    .await;
    let q = format!("service_id={SERVICE_ID}&plan_id={}", plan_id("single"));
    let r = osb("DELETE", &format!("{broker}/v2/service_instances/gone?accepts_incomplete=true&{q}"), None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(wait_operation(&broker, "gone", Duration::from_secs(120)).await.0, "gone");
    let listed = d.pgcell(&["backups", "gone"]);
    assert!(listed.starts_with("gone (deprovisioned "), "{listed}");

    // A writer on the live instance while it is cloned.
    let live = app_url(&d, "live").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (live.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if psql(&url, "insert into t values (1)").is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let r = provision(&broker, "back", "single", json!({"restore": {"from": "gone"}})).await;
    assert_eq!(r.status, 202, "restore of a deprovisioned instance: {}", r.text);
    let r = provision(&broker, "twin", "single", json!({"restore": {"from": "live"}})).await;
    assert_eq!(r.status, 202, "clone of a live instance: {}", r.text);
    for id in ["back", "twin"] {
        let (state, desc) = wait_operation(&broker, id, Duration::from_secs(180)).await;
        assert_eq!(state, "succeeded", "{id}: {desc}\n{}", d.logs());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert_eq!(count(&app_url(&d, "back").await), "42");
    let twin: u64 = count(&app_url(&d, "twin").await).parse().unwrap();
    let now: u64 = count(&live).parse().unwrap();
    eprintln!("live took {written} writes; the clone has {twin} of {now} rows");
    assert!(now >= twin, "the clone has no rows the source lacks");
    psql(&app_url(&d, "twin").await, "insert into t values (2)").unwrap();
    assert_eq!(count(&live), now.to_string(), "writes to the clone stay in the clone");
}

#[tokio::test]
async fn repository_unreachable_primary_serves_disk_bounded_then_catches_up() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Deployment::start(0).await;
    let name = format!("{}-c0", d.id);
    d.add_cell_with_env(&name, &[("PGCELL_ARCHIVE_PUSH_QUEUE_MAX", "64MiB".into())]).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    assert_eq!(provision(&broker, "q", "single", json!({})).await.status, 202);
    assert_eq!(wait_operation(&broker, "q", Duration::from_secs(120)).await.0, "succeeded");
    wait_backups(&d, "q", 1, Duration::from_secs(120)).await;
    let url = app_url(&d, "q").await;
    psql(&url, "create table filler(x text)").unwrap();
    let root = d.superuser_url("q", d.router_port("q").await).await;

    // The repository goes away (for the containers' postgres user).
    let repo = d.tmp.path().join("backups");
    let mode = std::fs::metadata(&repo).unwrap().permissions().mode();
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o000)).unwrap();
    let t0 = Instant::now();
    for _ in 0..8 {
        psql(&url, "insert into filler select repeat(md5(g::text), 30) from generate_series(1, 50000) g").unwrap();
    }
    eprintln!("wrote about 8 x 50 MB with the repository down in {:.1} s", t0.elapsed().as_secs_f64());
    let s = wait_for("WAL dropped past the queue bound", Duration::from_secs(180), || async {
        psql(&root, "checkpoint").ok()?;
        backup_state(&d, "q").await.filter(|s| s["wal_dropped"].as_u64() > Some(0))
    })
    .await;
    eprintln!("dropped {} WAL file(s); repository error: {}", s["wal_dropped"], s["repo_error"]);
    assert!(s["repo_error"].is_string(), "the state says the repository is unreachable");
    // Without the bound, pg_wal would keep every segment until the repository is back.
    let t1 = Instant::now();
    let wal_mb = wait_for("pg_wal back under 300 MB", Duration::from_secs(180), || async {
        psql(&root, "checkpoint").ok()?;
        let mb: u64 = psql(&root, "select (sum(size) / 1000000)::bigint from pg_ls_waldir()").ok()?.parse().ok()?;
        (mb < 300).then_some(mb)
    })
    .await;
    eprintln!(
        "pg_wal holds {wal_mb} MB {:.1} s after writing ~450 MB (wal_keep_size 128 MB, queue 64 MiB)",
        t1.elapsed().as_secs_f64()
    );
    psql(&url, "insert into filler values ('still serving')").unwrap();
    assert!(metric(&d, "pgcell_backup_wal_dropped_total", "q").await.unwrap_or(0) > 0);
    assert_eq!(metric(&d, "pgcell_backup_needs_full", "q").await, Some(1));
    assert_eq!(metric(&d, "pgcell_backup_repository_ok", "q").await, Some(0));
    assert!(d.pgcell(&["backups", "q"]).contains("REPOSITORY UNREACHABLE"));

    // Back: the archive catches up, a new full backup closes the gap.
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(mode)).unwrap();
    let back = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let s = wait_for("a new full backup after the gap", Duration::from_secs(180), || async {
        backup_state(&d, "q").await.filter(|s| {
            s["repo_error"].is_null()
                && s["wal_dropped_at_full"] == s["wal_dropped"]
                && s["last_archived_at"].as_f64().is_some_and(|t| t > back)
        })
    })
    .await;
    let kinds: Vec<&str> =
        s["info"]["backups"].as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap()).collect();
    // Another full follows each batch of dropped WAL; the last one closes the gap.
    assert!(kinds.len() >= 2 && kinds.iter().all(|k| *k == "full"), "{kinds:?}");
    assert_eq!(metric(&d, "pgcell_backup_needs_full", "q").await, Some(0));
    assert_eq!(metric(&d, "pgcell_backup_repository_ok", "q").await, Some(1));
}

#[tokio::test]
async fn new_replicas_come_from_the_repository_once_a_backup_exists() {
    let mut d = Deployment::start(2).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    assert_eq!(provision(&broker, "rep", "single", json!({})).await.status, 202);
    assert_eq!(wait_operation(&broker, "rep", Duration::from_secs(120)).await.0, "succeeded");
    let url = app_url(&d, "rep").await;
    psql(&url, "create table t(x int); insert into t select generate_series(1, 7)").unwrap();
    wait_backups(&d, "rep", 1, Duration::from_secs(120)).await;
    let upd = json!({"service_id": SERVICE_ID, "plan_id": plan_id("ha-2")}).to_string();
    let r = osb("PATCH", &format!("{broker}/v2/service_instances/rep?accepts_incomplete=true"), Some(&upd)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (state, desc) = wait_operation(&broker, "rep", Duration::from_secs(180)).await;
    assert_eq!(state, "succeeded", "{desc}");
    let leader = d.leader("rep").await.unwrap();
    let replica_cell = 1 - d.cell_of("rep", &leader);
    let container = format!("pgcell-cf-rep-{}", d.cells[replica_cell].name);
    let log = docker_logs(&container, &[]);
    assert!(
        log.contains("replica has been created using pgbackrest"),
        "the replica did not come from the repository:\n{log}"
    );
    let replica = d.superuser_url("rep", d.member_port("rep", replica_cell).await).await;
    let replica = format!("{}/app", replica.strip_suffix("/postgres").unwrap());
    assert_eq!(psql(&replica, "select count(*) from t").unwrap(), "7");
    assert_eq!(psql(&replica, "select pg_is_in_recovery()").unwrap(), "t");

    // The leader moves; backups follow it (taken by the new leader's cell).
    let old_cell = d.cell_of("rep", &leader);
    d.pgcell(&["drain", &d.cells[old_cell].name]);
    let new_leader =
        wait_for("a new leader", Duration::from_secs(60), || async { d.leader("rep").await.filter(|l| *l != leader) })
            .await;
    let out = d.pgcell(&["backup", "rep", "--type", "incr"]);
    assert!(out.contains("done: incr"), "{out}");
    let s = backup_state(&d, "rep").await.unwrap();
    assert_eq!(s["member"].as_str(), Some(new_leader.as_str()), "published by the new leader's cell");
    assert_eq!(s["info"]["backups"].as_array().unwrap().last().unwrap()["kind"], "incr");
}

#[tokio::test]
async fn a_deprovisioned_instance_backups_are_deleted_after_their_time() {
    let mut d = Deployment::start(0).await;
    let name = format!("{}-c0", d.id);
    d.add_cell_with_env(&name, &[("PGCELL_BACKUP_DELETED_KEEP_SECS", "20".into())]).await;
    d.start_router("r1", 8000).await;
    let broker = d.start_broker("b1").await;
    assert_eq!(provision(&broker, "old", "single", json!({})).await.status, 202);
    assert_eq!(wait_operation(&broker, "old", Duration::from_secs(120)).await.0, "succeeded");
    wait_backups(&d, "old", 1, Duration::from_secs(120)).await;
    let repo = d.tmp.path().join("backups");
    assert!(repo.join("backup/old").is_dir() && repo.join("archive/old").is_dir());
    let q = format!("service_id={SERVICE_ID}&plan_id={}", plan_id("single"));
    let r = osb("DELETE", &format!("{broker}/v2/service_instances/old?accepts_incomplete=true&{q}"), None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(wait_operation(&broker, "old", Duration::from_secs(120)).await.0, "gone");
    // Restorable while kept.
    assert!(backup_state(&d, "old").await.is_some_and(|s| s["deleted_at"].is_i64()));
    wait_for("the deleted instance's backups gone", Duration::from_secs(120), || async {
        backup_state(&d, "old").await.is_none().then_some(())
    })
    .await;
    assert!(!repo.join("backup/old").exists() && !repo.join("archive/old").exists(), "stanza left in the repository");
    let r = provision(&broker, "new", "single", json!({"restore": {"from": "old"}})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("unknown source"), "{}", r.text);
}
