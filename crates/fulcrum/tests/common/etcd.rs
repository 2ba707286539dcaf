//! A 3-member etcd cluster on loopback (Debian `etcd-server`), started by a test: the
//! fleet control plane's tests (cluster.rs, register.rs).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, temp_dir};

/// One etcd member: its ports, data directory and process.
pub struct EtcdMember {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

/// A 3-member etcd cluster on loopback; every member is killed (by PID) when dropped.
pub struct Etcd {
    pub members: Vec<EtcdMember>,
    token: String,
    base: PathBuf,
}

impl Etcd {
    /// Three members started.
    pub fn start() -> Self {
        let mut e = Self::new();
        e.spawn_all();
        e
    }

    /// Ports and directories, nothing started.
    pub fn new() -> Self {
        let base = temp_dir("etcd");
        let members: Vec<EtcdMember> = (0..3)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client: free_port(),
                peer: free_port(),
                dir: base.join(format!("e{i}")),
                child: None,
            })
            .collect();
        Self {
            members,
            token: format!("fulcrum-test-{}", std::process::id()),
            base,
        }
    }

    pub fn spawn_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
    }

    pub fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{}.log", m.dir.display()))
            .unwrap();
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.dir)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Waits until a write through every live member's endpoint succeeds.
    pub async fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let ep = vec![format!("http://127.0.0.1:{}", m.client)];
            loop {
                let ok = async {
                    let mut c = fulcrum_cluster::connect(&ep).await.ok()?;
                    c.put("/fulcrum-test/health", "ok", None).await.ok()
                }
                .await
                .is_some();
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} not healthy within {limit:?}",
                    m.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // The data directories and logs stay for a look when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}
