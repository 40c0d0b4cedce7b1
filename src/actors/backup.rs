//! `BackupActor`: every `refresh_secs`, runs [`backup::run::tick`] for each
//! member of this cell that leads its cluster. A thin shell: it only keeps
//! one tick per instance running at a time (a backup may take long; the
//! other instances' refreshes go on meanwhile).

use std::collections::BTreeSet;
use std::time::Duration;

use actix::prelude::*;

use super::supervise::Lifeline;
use crate::backup;
use crate::cell::member::CellDeps;

pub struct BackupActor {
    deps: CellDeps,
    busy: BTreeSet<String>,
    expiring: bool,
    /// Tells the daemon when this actor ends (it is a root: the agent exits).
    _lifeline: Lifeline,
}

impl BackupActor {
    pub fn new(deps: CellDeps, lifeline: Lifeline) -> Self {
        Self { deps, busy: BTreeSet::new(), expiring: false, _lifeline: lifeline }
    }

    fn pass(&mut self, ctx: &mut Context<Self>) {
        self.expire(ctx);
        let deps = self.deps.clone();
        ctx.spawn(async move { backup::run::leaders_here(&deps).await }.into_actor(self).map(|res, act, ctx| {
            let leaders = match res {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "backup pass: cannot list this cell's leaders");
                    return;
                }
            };
            for p in leaders {
                if !act.busy.insert(p.instance_id.clone()) {
                    continue;
                }
                let deps = act.deps.clone();
                let id = p.instance_id.clone();
                ctx.spawn(async move { backup::run::tick(&deps, &p).await }.into_actor(act).map(move |res, act, _| {
                    act.busy.remove(&id);
                    if let Err(e) = res {
                        tracing::warn!(instance = %id, error = %format!("{e:#}"), "backup pass failed; next pass retries");
                    }
                }));
            }
        }));
    }
}

impl BackupActor {
    /// Deprovisioned instances whose backups have had their time (one at a time).
    fn expire(&mut self, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.expiring, true) {
            return;
        }
        let deps = self.deps.clone();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        ctx.spawn(async move { backup::expire::expire_deleted(&deps, now).await }.into_actor(self).map(|res, act, _| {
            act.expiring = false;
            if let Err(e) = res {
                tracing::warn!(error = %format!("{e:#}"), "expiring deprovisioned instances' backups failed; next pass retries");
            }
        }));
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_secs(self.deps.cfg.backup.refresh_secs.max(1));
        ctx.run_interval(every, |act, ctx| act.pass(ctx));
    }
}
