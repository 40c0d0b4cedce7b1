//! etcd for tests and examples (the local demo includes this file too): one
//! member, or a cluster whose members can be stopped, frozen and restarted one
//! at a time. Stopped on drop.
#![allow(dead_code)]

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
}

impl Etcd {
    pub fn start() -> Self {
        Self::cluster(1)
    }

    /// `n` members on loopback, with short raft timings so that losing the
    /// raft leader costs well under Patroni's per-request timeout (1 s with 3
    /// endpoints and retry_timeout 3).
    pub fn cluster(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                child: None,
                endpoint: format!("127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
            })
            .collect();
        let endpoint = members[0].endpoint.clone();
        let mut etcd = Self { members, endpoint, dir };
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
        let client_url = format!("http://{}", m.endpoint);
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

    pub async fn client(&self) -> etcd_client::Client {
        let endpoints: Vec<&str> = self.members.iter().map(|m| m.endpoint.as_str()).collect();
        etcd_client::Client::connect(endpoints, None).await.unwrap()
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

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
