//! etcd for tests and examples (the local demo includes this file too): one
//! member, or a cluster whose members can be stopped, frozen and restarted one
//! at a time. Stopped on drop. `Etcd::cluster_tls` serves TLS only, with
//! client certificates (made here with the openssl CLI); `enable_auth` then
//! sets up pgcell's roles with `pgcell etcd-roles apply`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One etcd member: its process, ports and data directory.
struct EtcdMember {
    name: String,
    child: Option<Child>,
    endpoint: String,
    peer_url: String,
}

/// etcd for a test: one member by default, or a cluster (`Etcd::cluster(3)`).
/// `stop`/`resume`/`signal` act on every member; `*_member` on one.
pub struct Etcd {
    members: Vec<EtcdMember>,
    /// The first member's client address.
    pub endpoint: String,
    dir: tempfile::TempDir,
    /// TLS material, for a `cluster_tls` etcd.
    pub tls: Option<EtcdTls>,
    /// etcd users and their passwords, once `enable_auth` ran (`root` among them).
    pub passwords: HashMap<String, String>,
}

/// A test CA, etcd's server certificate (127.0.0.1, localhost) and one client
/// certificate without a CN: etcd's HTTP gateway (Patroni's way in) refuses a
/// client certificate with a CN when `--client-cert-auth` is on, and with no
/// CN the certificate names no user, so it alone opens nothing.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl EtcdTls {
    /// P-256 keys: quick to make, understood by etcd (Go), rustls and Patroni (Python ssl).
    pub fn generate(dir: &Path) -> Self {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pgcell-test-etcd-ca"],
            ]
            .concat(),
        );
        let sign = |name: &str, subject: &str, ext: &str| {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
            openssl(dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", subject]].concat());
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        };
        sign(
            "server",
            "/CN=etcd",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        sign("client", "/O=pgcell-test-client", "extendedKeyUsage=clientAuth\n");
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// Where etcd's data goes: tmpfs (`/dev/shm`) unless `PGCELL_TEST_ETCD_DIR`
/// names another folder. Production etcd gets a disk of its own (its operations
/// guide asks for one); here the only disk is shared with cargo and every
/// PostgreSQL, and under that load etcd's WAL fsyncs took 1–2 s, which held
/// lease expiry (and so failover) back by seconds (docs/decisions.md, #15).
fn data_parent() -> PathBuf {
    match std::env::var_os("PGCELL_TEST_ETCD_DIR") {
        Some(d) => PathBuf::from(d),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    }
}

impl Etcd {
    pub fn start() -> Self {
        Self::cluster(1)
    }

    /// `n` members on loopback, with short raft timings so that losing the
    /// raft leader costs well under Patroni's per-request timeout (1 s with 3
    /// endpoints and retry_timeout 3).
    pub fn cluster(n: usize) -> Self {
        Self::build(n, false)
    }

    /// Like `cluster`, serving TLS only and asking every client for a certificate signed by the test CA.
    pub fn cluster_tls(n: usize) -> Self {
        Self::build(n, true)
    }

    fn build(n: usize, tls: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("pgcell-etcd").tempdir_in(data_parent()).unwrap();
        let tls = tls.then(|| EtcdTls::generate(dir.path()));
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                child: None,
                endpoint: format!("127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
            })
            .collect();
        let endpoint = members[0].endpoint.clone();
        let mut etcd = Self { members, endpoint, dir, tls, passwords: HashMap::new() };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_listening(i);
        }
        etcd
    }

    /// Every member's client address, comma-separated (as `PGCELL_ETCD_ENDPOINTS` takes them).
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.endpoint.as_str()).collect::<Vec<_>>().join(",")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn member_endpoint(&self, i: usize) -> String {
        self.members[i].endpoint.clone()
    }

    /// Sends a signal to every member (`STOP` freezes, `CONT` thaws).
    pub fn signal(&self, sig: &str) {
        for i in 0..self.members.len() {
            self.signal_member(i, sig);
        }
    }

    pub fn signal_member(&self, i: usize, sig: &str) {
        let pid = self.members[i].child.as_ref().expect("etcd running").id().to_string();
        assert!(Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
    }

    /// Stops every member (SIGKILL); data stays for `resume`.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }

    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts every member again on the same ports and data.
    pub fn resume(&mut self) {
        for i in 0..self.members.len() {
            self.resume_member(i);
        }
    }

    pub fn resume_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none());
        self.spawn(i);
        self.wait_listening(i);
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{}", m.endpoint);
        let data = self.dir.path().join(format!("data-{}", m.name));
        let log = self.dir.path().join(format!("etcd-{}.log", m.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name, "--data-dir", &data.display().to_string()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"]);
        if self.members.len() > 1 {
            cmd.args(["--heartbeat-interval", "100", "--election-timeout", "500"]);
        }
        if let Some(t) = &self.tls {
            cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&t.ca);
            cmd.arg("--cert-file").arg(&t.server_cert).arg("--key-file").arg(&t.server_key);
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (scripts/setup.sh)");
        self.members[i].child = Some(child);
    }

    fn wait_listening(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.members[i].endpoint).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client with every right: root once authentication is on.
    pub async fn client(&self) -> etcd_client::Client {
        let endpoints: Vec<String> = self.members.iter().map(|m| m.endpoint.clone()).collect();
        if self.tls.is_none() && self.passwords.is_empty() {
            return etcd_client::Client::connect(endpoints, None).await.unwrap();
        }
        let root = self.passwords.contains_key("root").then_some("root");
        pgcell::etcd::connect(&endpoints, &self.access(root)).await.unwrap()
    }

    /// How `user` (with its password from `enable_auth`) reaches this etcd; `None`: no user.
    pub fn access(&self, user: Option<&str>) -> pgcell::config::EtcdAccess {
        pgcell::config::EtcdAccess {
            ca_file: self.tls.as_ref().map(|t| t.ca.clone()),
            cert_file: self.tls.as_ref().map(|t| t.client_cert.clone()),
            key_file: self.tls.as_ref().map(|t| t.client_key.clone()),
            username: user.map(String::from),
            password: user.map(|u| self.passwords.get(u).cloned().unwrap_or_else(|| panic!("no etcd user {u}"))),
        }
    }

    /// The `PGCELL_ETCD_*` variables of `user`; nothing for an open etcd.
    pub fn access_env(&self, user: &str) -> Vec<(&'static str, String)> {
        let user = self.passwords.contains_key(user).then_some(user);
        let a = self.access(user);
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
        [
            ("PGCELL_ETCD_CA_FILE", path(a.ca_file)),
            ("PGCELL_ETCD_CERT_FILE", path(a.cert_file)),
            ("PGCELL_ETCD_KEY_FILE", path(a.key_file)),
            ("PGCELL_ETCD_USERNAME", a.username),
            ("PGCELL_ETCD_PASSWORD", a.password),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// Sets up the broker's, the routers' and `cells`' roles and users with
    /// `pgcell etcd-roles apply` (the operator's command, binary `pgcell`) and
    /// turns authentication on; `client()` is root from then on.
    pub fn enable_auth(&mut self, pgcell: &str, cells: &[String]) {
        let password = |u: &str| format!("{u}-pw-{}", free_port());
        let mut users = vec!["root".to_string(), "pgcell-broker".into(), "pgcell-router".into()];
        users.extend(cells.iter().map(|c| format!("pgcell-cell-{c}")));
        // A second run (fewer cells) keeps the passwords it set.
        let passwords: HashMap<String, String> =
            users.iter().map(|u| (u.clone(), self.passwords.get(u).cloned().unwrap_or_else(|| password(u)))).collect();
        let mut cmd = Command::new(pgcell);
        cmd.args(["etcd-roles", "apply"]).env("PGCELL_ETCD_ENDPOINTS", self.endpoints());
        for c in cells {
            cmd.args(["--cell", c]);
            let var = format!("PGCELL_ETCD_CELL_PASSWORD_{}", c.to_ascii_uppercase().replace('-', "_"));
            cmd.env(var, &passwords[&format!("pgcell-cell-{c}")]);
        }
        cmd.env("PGCELL_ETCD_BROKER_PASSWORD", &passwords["pgcell-broker"]);
        cmd.env("PGCELL_ETCD_ROUTER_PASSWORD", &passwords["pgcell-router"]);
        let root_password = passwords["root"].clone();
        self.passwords.insert("root".to_string(), root_password);
        cmd.envs(self.access_env("root"));
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "pgcell etcd-roles apply: {}", String::from_utf8_lossy(&out.stderr));
        self.passwords = passwords;
    }

    /// The real `etcdctl` (v3 API) against this etcd as `user` (`None`: no user),
    /// with the test client certificate or without; returns (success, stdout + stderr).
    pub fn etcdctl(&self, user: Option<&str>, with_cert: bool, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.access(None).urls(std::slice::from_ref(&self.endpoint))[0]));
        cmd.arg("--dial-timeout=3s").arg("--command-timeout=5s");
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()));
            if with_cert {
                cmd.arg(format!("--cert={}", t.client_cert.display())).arg(format!("--key={}", t.client_key.display()));
            }
        }
        if let Some(u) = user {
            cmd.arg(format!("--user={u}:{}", self.passwords[u]));
        }
        let out = cmd.args(args).output().expect("etcdctl is installed (scripts/setup.sh)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Every key and value under `/` (for "nothing changed" checks).
    pub async fn dump(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c = self.client().await;
        let resp = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
        resp.kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap_or("").to_string()))
            .collect()
    }
}

impl Etcd {
    /// Each member's log so far, as (member, line).
    pub fn log_lines(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for m in &self.members {
            let text =
                std::fs::read_to_string(self.dir.path().join(format!("etcd-{}.log", m.name))).unwrap_or_default();
            out.extend(text.lines().map(|l| (m.name.clone(), l.to_string())));
        }
        out
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
