//! Links that can be cut: a TCP proxy between one client and etcd.

use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// A TCP proxy to etcd (socat, in its own process group), so one client or
/// one cell alone can be cut off from etcd and reconnected.
pub struct EtcdLink {
    pub port: u16,
    target: String,
    child: Option<std::process::Child>,
}

impl EtcdLink {
    pub fn new(target: &str) -> Self {
        let mut link = Self { port: free_port(), target: target.into(), child: None };
        link.up();
        link
    }

    pub fn up(&mut self) {
        let child = Command::new("setsid")
            .args([
                "socat",
                &format!("TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork", self.port),
                &format!("TCP:{}", self.target),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat (scripts/setup.sh installs it)");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(5), "socat did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts every connection through the link, and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).output();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdLink {
    fn drop(&mut self) {
        self.cut();
    }
}
