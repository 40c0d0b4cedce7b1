//! The SQL the broker runs on an instance's primary (through the router):
//! the owner role and database, extensions, and one role per binding.
//! Always over TLS, verifying the instance's certificate against the fleet CA
//! and the router's address (libpq's `verify-full`).

use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The database every binding uses.
pub const DATABASE: &str = "app";
/// The role that owns the database and every object bindings create.
pub const OWNER: &str = "app_owner";

/// The fleet CA (PEM) and the TLS connector trusting only it; set once the
/// broker has read the CA (`trust_fleet_ca`), for the life of the process.
static FLEET_CA: RwLock<Option<(String, MakeRustlsConnect)>> = RwLock::new(None);

/// Makes the broker's connections trust `ca_pem` (and nothing else).
pub fn trust_fleet_ca(ca_pem: &str) -> anyhow::Result<()> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    crate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("the fleet CA is not PEM")?).context("the fleet CA certificate is unusable")?;
    }
    anyhow::ensure!(!roots.is_empty(), "the fleet CA holds no certificate");
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    *FLEET_CA.write().unwrap_or_else(|e| e.into_inner()) = Some((ca_pem.to_string(), MakeRustlsConnect::new(config)));
    Ok(())
}

/// The fleet CA's certificate (PEM) the broker trusts: what bindings hand out.
pub fn fleet_ca_pem() -> Option<String> {
    FLEET_CA.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(pem, _)| pem.clone())
}

pub async fn connect(host: &str, port: u16, password: &str, dbname: &str) -> anyhow::Result<Client> {
    let tls = FLEET_CA.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, tls)| tls.clone());
    let tls = tls.context("the broker has not loaded the fleet CA: no TLS connection to instances")?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host).port(port).user("postgres").password(password).dbname(dbname);
    cfg.connect_timeout(Duration::from_secs(5)).application_name("pgcell-broker");
    // verify-full: TLS or nothing, the certificate from the fleet CA and naming `host`.
    cfg.ssl_mode(SslMode::Require);
    let (client, conn) = cfg.connect(tls).await.with_context(|| format!("cannot connect to {host}:{port}/{dbname}"))?;
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
