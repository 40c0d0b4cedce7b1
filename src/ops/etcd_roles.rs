//! `pgcell etcd-roles`: creates or updates the etcd roles and users of the
//! broker, the routers and each cell (`etcd::roles`), then turns etcd's
//! authentication on. Runs with the root credentials (`PGCELL_ETCD_USERNAME`,
//! `PGCELL_ETCD_PASSWORD`); the daemons' passwords come from the environment,
//! never from the command line (which `ps` shows).

use anyhow::Context;

use crate::config::EtcdAccess;
use crate::etcd::roles::{self, Grant};

pub const BROKER_PASSWORD_ENV: &str = "PGCELL_ETCD_BROKER_PASSWORD";
pub const ROUTER_PASSWORD_ENV: &str = "PGCELL_ETCD_ROUTER_PASSWORD";

/// `PGCELL_ETCD_CELL_PASSWORD_<NAME>`, the name upper-cased with `-` as `_`.
pub fn cell_password_env(cell: &str) -> String {
    format!("PGCELL_ETCD_CELL_PASSWORD_{}", cell.to_ascii_uppercase().replace('-', "_"))
}

/// Every user to set up: (user, password, grants).
pub fn plan(
    cells: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<(String, String, Vec<Grant>)>> {
    let need = |var: &str| {
        env(var).filter(|p| !p.is_empty()).with_context(|| format!("{var} is not set (the user's etcd password)"))
    };
    let mut users = vec![
        (roles::BROKER_USER.to_string(), need(BROKER_PASSWORD_ENV)?, roles::broker()),
        (roles::ROUTER_USER.to_string(), need(ROUTER_PASSWORD_ENV)?, roles::router()),
    ];
    for cell in cells {
        anyhow::ensure!(crate::names::is_safe(cell), "{cell:?} is not a cell name");
        users.push((roles::cell_user(cell), need(&cell_password_env(cell))?, roles::cell(cell)));
    }
    Ok(users)
}

/// Applies `users` to the etcd at `endpoints`, as `access`'s user (root).
/// On an etcd whose authentication is still off: creates `root` with
/// `access`'s password first, then turns authentication on.
pub async fn apply(
    endpoints: &[String],
    access: &EtcdAccess,
    users: &[(String, String, Vec<Grant>)],
) -> anyhow::Result<()> {
    let (user, password) = access.user().context("set PGCELL_ETCD_USERNAME=root and PGCELL_ETCD_PASSWORD")?;
    let (mut client, auth_was_on) = match crate::etcd::connect(endpoints, access).await {
        Ok(c) => (c, true),
        Err(e) if format!("{e:#}").contains("authentication is not enabled") => {
            let open = EtcdAccess { username: None, password: None, ..access.clone() };
            (crate::etcd::connect(endpoints, &open).await?, false)
        }
        Err(e) => return Err(e),
    };
    if !auth_was_on {
        anyhow::ensure!(user == "root", "authentication is off: the first user must be root (PGCELL_ETCD_USERNAME)");
        let existing = client.user_list().await.context("etcd user list")?;
        if !existing.users().iter().any(|u| u == "root") {
            client.user_add("root", password, None).await.context("etcd user add root")?;
        }
        client.user_grant_role("root", "root").await.context("etcd user grant-role root root")?;
    }
    for (name, password, grants) in users {
        roles::apply(&mut client, name, password, grants).await?;
        super::say(format_args!("{name}: {} grants", grants.len()));
    }
    let existing = client.user_list().await.context("etcd user list")?;
    let wanted: Vec<&str> = users.iter().map(|(u, _, _)| u.as_str()).collect();
    let roles = client.role_list().await.context("etcd role list")?;
    for name in stale_cell_users(existing.users(), &wanted) {
        client.user_delete(name.as_str()).await.with_context(|| format!("etcd user delete {name}"))?;
        if roles.roles().contains(&name) {
            client.role_delete(name.as_str()).await.with_context(|| format!("etcd role delete {name}"))?;
        }
        super::say(format_args!("{name}: removed (its cell is not in --cell)"));
    }
    if !auth_was_on {
        client.auth_enable().await.context("etcd auth enable")?;
        super::say(format_args!("authentication enabled"));
    }
    Ok(())
}

/// Cell users etcd has that the list does not: a cell taken out of the fleet
/// keeps no access. Users pgcell did not make are never touched.
fn stale_cell_users(existing: &[String], wanted: &[&str]) -> Vec<String> {
    let prefix = roles::cell_user("");
    existing.iter().filter(|u| u.starts_with(&prefix) && !wanted.contains(&u.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_password_comes_from_its_variable() {
        let env = |k: &str| match k {
            "PGCELL_ETCD_BROKER_PASSWORD" => Some("b".to_string()),
            "PGCELL_ETCD_ROUTER_PASSWORD" => Some("r".to_string()),
            "PGCELL_ETCD_CELL_PASSWORD_CELL_A" => Some("a".to_string()),
            _ => None,
        };
        let users = plan(&["cell-a".into()], &env).unwrap();
        let names: Vec<(&str, &str)> = users.iter().map(|(u, p, _)| (u.as_str(), p.as_str())).collect();
        assert_eq!(names, [("pgcell-broker", "b"), ("pgcell-router", "r"), ("pgcell-cell-cell-a", "a")]);
        let err = plan(&["cell-b".into()], &env).unwrap_err().to_string();
        assert!(err.contains("PGCELL_ETCD_CELL_PASSWORD_CELL_B is not set"), "{err}");
        assert!(plan(&["a/b".into()], &env).is_err());
    }

    #[test]
    fn only_cell_users_missing_from_the_list_are_stale() {
        let existing: Vec<String> = ["root", "pgcell-broker", "pgcell-router", "pgcell-cell-a", "pgcell-cell-b", "ops"]
            .map(String::from)
            .into();
        let wanted = ["pgcell-broker", "pgcell-router", "pgcell-cell-a"];
        assert_eq!(stale_cell_users(&existing, &wanted), ["pgcell-cell-b"]);
        assert!(stale_cell_users(&existing, &["pgcell-cell-a", "pgcell-cell-b"]).is_empty());
    }
}
