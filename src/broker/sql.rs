//! The SQL the broker runs on an instance's primary (through the router):
//! the owner role and database, extensions, and one role per binding.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

/// The database every binding uses.
pub const DATABASE: &str = "app";
/// The role that owns the database and every object bindings create.
pub const OWNER: &str = "app_owner";

pub async fn connect(host: &str, port: u16, password: &str, dbname: &str) -> anyhow::Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host).port(port).user("postgres").password(password).dbname(dbname);
    cfg.connect_timeout(Duration::from_secs(5)).application_name("pgcell-broker");
    let (client, conn) =
        cfg.connect(NoTls).await.with_context(|| format!("cannot connect to {host}:{port}/{dbname}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "broker SQL connection ended");
        }
    });
    Ok(client)
}

/// Quotes an identifier (names are checked by the caller; quoting is belt and braces).
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Owner role, database and extensions; idempotent.
pub async fn setup_instance(host: &str, port: u16, password: &str, extensions: &[String]) -> anyhow::Result<()> {
    let c = connect(host, port, password, "postgres").await?;
    c.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') THEN CREATE ROLE {OWNER} NOLOGIN; END IF; END $$"
    ))
    .await
    .context("create owner role")?;
    let exists = c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE]).await?.is_some();
    if !exists {
        c.batch_execute(&format!("CREATE DATABASE {DATABASE} OWNER {OWNER}")).await.context("create database")?;
    }
    c.batch_execute(&lock_down_sql()).await.context("restrict databases and the owner role")?;
    let app = connect(host, port, password, DATABASE).await?;
    for e in extensions {
        app.batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {}", ident(e)))
            .await
            .with_context(|| format!("create extension {e}"))?;
    }
    Ok(())
}

/// What no binding (nor the owner role it acts as) may do: be or become a
/// superuser, replicate, create roles or databases, bypass row security; and
/// where it may connect: only its instance's database. `postgres` and
/// `template1` are open to PUBLIC by default, so a binding could otherwise log
/// into `postgres` and create objects outside `app`. Patroni's rewind role
/// still needs `postgres` (pg_rewind's source connection); the superuser and
/// replication connections are not subject to CONNECT. Idempotent.
fn lock_down_sql() -> String {
    format!(
        "ALTER ROLE {OWNER} NOLOGIN {ROLE_LIMITS}; \
         REVOKE ALL ON DATABASE postgres FROM PUBLIC; \
         REVOKE ALL ON DATABASE template1 FROM PUBLIC; \
         REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC; \
         GRANT CONNECT, TEMPORARY ON DATABASE {DATABASE} TO {OWNER}; \
         DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{REWIND_ROLE}') THEN \
         GRANT CONNECT ON DATABASE postgres TO {REWIND_ROLE}; END IF; END $$"
    )
}

/// Role attributes a binding and its owner role never have (the defaults,
/// stated so that a role created otherwise is corrected).
const ROLE_LIMITS: &str = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";
/// Patroni's rewind user (`patroni::config`'s authentication section).
const REWIND_ROLE: &str = "rewinder";

/// A login role for a binding, member of the owner role, acting as the owner so
/// that whatever it creates belongs to the owner (and so to every binding).
pub async fn create_binding_role(
    host: &str,
    port: u16,
    password: &str,
    user: &str,
    user_password: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(user_password.bytes().all(|b| b.is_ascii_alphanumeric()), "generated password is not alphanumeric");
    let c = connect(host, port, password, "postgres").await?;
    let u = ident(user);
    let sql = format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN \
         CREATE ROLE {u} LOGIN PASSWORD '{user_password}' {ROLE_LIMITS} IN ROLE {OWNER}; END IF; END $$; \
         ALTER ROLE {u} {ROLE_LIMITS}; \
         ALTER ROLE {u} SET role = '{OWNER}'"
    );
    c.batch_execute(&sql).await.context("create binding role")?;
    Ok(())
}

/// Ends the binding's sessions and drops its role; what it created stays, owned by the owner.
pub async fn drop_binding_role(host: &str, port: u16, password: &str, user: &str) -> anyhow::Result<()> {
    let c = connect(host, port, password, "postgres").await?;
    if c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user]).await?.is_none() {
        return Ok(());
    }
    let u = ident(user);
    // No new sessions, then end the open ones.
    c.batch_execute(&format!("ALTER ROLE {u} NOLOGIN")).await?;
    c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&user]).await?;
    for db in [DATABASE, "postgres"] {
        let d = connect(host, port, password, db).await?;
        d.batch_execute(&format!("REASSIGN OWNED BY {u} TO {OWNER}; DROP OWNED BY {u}"))
            .await
            .with_context(|| format!("reassign in {db}"))?;
    }
    c.batch_execute(&format!("DROP ROLE IF EXISTS {u}")).await.context("drop binding role")?;
    Ok(())
}

/// After a restore: the source's binding roles (`b_*`) came along with its
/// data; they are not this instance's bindings, so they go (what they owned
/// is already the owner role's).
pub async fn drop_restored_binding_roles(host: &str, port: u16, password: &str) -> anyhow::Result<usize> {
    let c = connect(host, port, password, "postgres").await?;
    let rows = c.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'b\\_%'", &[]).await?;
    let roles: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for r in &roles {
        drop_binding_role(host, port, password, r).await?;
    }
    Ok(roles.len())
}
