//! A real etcd cluster for the tests: Debian's `etcd` (3.4), N members on loopback with random
//! free ports and private data directories, killed and removed when dropped (also when a test
//! panics). Members can be killed (SIGKILL) and started again on the same data. A cluster can
//! serve its clients over TLS with client certificates (a CA and certificates made with
//! openssl(1), [`TlsFiles`]) and have authentication enabled ([`EtcdCluster::enable_auth`]).
//!
//! Data directories live in /dev/shm when it is writable (etcd fsyncs every write; the tests are
//! about protocol, not disk speed), else in the system's temporary directory.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

/// etcd tests share the machine's two cores: run them one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// True when etcd is installed (else the test is skipped, or fails under CI).
pub fn available() -> bool {
    xenplug_testkit::require_program("etcd")
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
    token: String,
    /// Clients are served over TLS with client certificates.
    pub tls: Option<TlsFiles>,
    /// Authentication is enabled: the test's clients log in as this user.
    auth: Option<(String, String)>,
}

/// A CA, the members' certificate (for 127.0.0.1) and a client certificate, made with
/// openssl(1) in a directory of their own.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (tools/deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsFiles {
    /// Make a CA and two certificates it signs in `dir`: `server` (serverAuth and clientAuth,
    /// for IP 127.0.0.1: etcd also dials its peers with it) and `client` (CN `client`).
    pub fn make(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=xenplug test CA"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(dir, &ca);
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let subj = format!("/CN={name}");
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let mut req = vec!["req", "-subj", &subj];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr]);
            openssl(dir, &req);
            let ext = format!("{name}.ext");
            let pem = format!("{name}.pem");
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-days",
                    "2",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-extfile",
                    &ext,
                    "-out",
                    &pem,
                ],
            );
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    fn client_options(&self) -> etcd_client::TlsOptions {
        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
            .identity(etcd_client::Identity::from_pem(
                read(&self.client_cert),
                read(&self.client_key),
            ))
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    // Hold them all at once so that no two are the same.
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn base_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if tempfile::Builder::new().tempdir_in(&shm).is_ok() {
        shm
    } else {
        std::env::temp_dir()
    }
}

impl EtcdCluster {
    /// Start `n` members and wait until the cluster answers.
    pub async fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, false).await
    }

    /// Start `n` members serving their clients over TLS, client certificates required.
    pub async fn start_tls(n: usize) -> EtcdCluster {
        Self::start_with(n, true).await
    }

    async fn start_with(n: usize, tls: bool) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("xpp-etcd-")
            .tempdir_in(base_dir())
            .unwrap();
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "xpp-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let tls = tls.then(|| TlsFiles::make(&dir.path().join("tls")));
        let mut c = EtcdCluster {
            dir,
            members,
            initial,
            token,
            tls,
            auth: None,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30)).await;
        c
    }

    /// Start member `i` (again, on its data).
    pub fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .unwrap();
        let scheme = self.scheme();
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--logger", "zap", "--log-level", "warn"])
            .arg(format!(
                "--listen-client-urls={scheme}://127.0.0.1:{}",
                m.client
            ))
            .arg(format!(
                "--advertise-client-urls={scheme}://127.0.0.1:{}",
                m.client
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer
            ))
            .arg(format!("--initial-cluster={}", self.initial))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours:
        // the member dies with the test process even when it is killed.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every member down.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Every member up again.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.start_member(i);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// `127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The store URL for `prefix` (with its leading slash).
    pub fn url(&self, prefix: &str) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{}{prefix}", self.endpoints().join(","))
    }

    fn options(&self) -> etcd_client::ConnectOptions {
        let mut o = etcd_client::ConnectOptions::new();
        if let Some(t) = &self.tls {
            o = o.with_tls(t.client_options());
        }
        if let Some((u, p)) = &self.auth {
            o = o.with_user(u.clone(), p.clone());
        }
        o
    }

    /// A client of the whole cluster (as root once authentication is enabled).
    pub async fn client(&self) -> Client {
        let eps: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("{}://{e}", self.scheme()))
            .collect();
        Client::connect(eps, Some(self.options())).await.unwrap()
    }

    async fn member_client(&self, i: usize) -> Option<Client> {
        let ep = format!("{}://127.0.0.1:{}", self.scheme(), self.members[i].client);
        let opts = self
            .options()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        Client::connect([ep], Some(opts)).await.ok()
    }

    /// Enable authentication: a root user (password `root_password`), and `user` with
    /// `password` allowed to read and write the keys below `prefix` only. The test's clients
    /// log in as root from then on.
    pub async fn enable_auth(
        &mut self,
        root_password: &str,
        user: &str,
        password: &str,
        prefix: &str,
    ) {
        use etcd_client::Permission;
        let mut c = self.client().await;
        c.user_add("root", root_password, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("fleet").await.unwrap();
        c.role_grant_permission("fleet", Permission::read_write(prefix).with_prefix())
            .await
            .unwrap();
        c.user_add(user, password, None).await.unwrap();
        c.user_grant_role(user, "fleet").await.unwrap();
        c.auth_enable().await.unwrap();
        self.auth = Some(("root".into(), root_password.into()));
    }

    /// Index of the current leader, once there is one among the running members.
    pub async fn leader(&self) -> usize {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            for i in 0..self.members.len() {
                if self.members[i].child.is_none() {
                    continue;
                }
                let Some(mut c) = self.member_client(i).await else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    if s.leader() != 0
                        && s.leader() == s.header().map(|h| h.member_id()).unwrap_or(0)
                    {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < end, "no etcd leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until a linearizable read succeeds.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let ok = async {
                let mut c = self.client().await;
                tokio::time::timeout(Duration::from_secs(2), c.get("health", None))
                    .await
                    .ok()?
                    .ok()
            }
            .await
            .is_some();
            if ok {
                return;
            }
            if Instant::now() > end {
                let logs: String = self
                    .members
                    .iter()
                    .map(|m| {
                        std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                            .unwrap_or_default()
                    })
                    .collect();
                panic!("etcd cluster not healthy after {timeout:?}:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let mut c = self.client().await;
        c.put(key, value, None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
    }

    pub async fn delete(&self, key: &str) {
        let mut c = self.client().await;
        c.delete(key, None).await.unwrap();
    }

    pub async fn get(&self, key: &str) -> Option<serde_json::Value> {
        let mut c = self.client().await;
        let r = c.get(key, None).await.ok()?;
        r.kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok())
    }

    /// Every key and JSON value below `prefix`.
    pub async fn get_prefix(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        let mut c = self.client().await;
        let r = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect()
    }

    /// Compact the history up to the current revision (physically).
    pub async fn compact(&self) -> i64 {
        let mut c = self.client().await;
        let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
        rev
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A TCP relay in front of each member, which a test can cut (existing connections reset, new
/// ones refused) and restore: the daemon loses etcd while the test keeps talking to it.
pub struct Relay {
    pub ports: Vec<u16>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    gen: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub async fn new(upstreams: &[String]) -> Relay {
        use std::sync::atomic::Ordering;
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let gen = std::sync::Arc::new(tx);
        let mut ports = Vec::new();
        let mut tasks = Vec::new();
        for up in upstreams {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(l.local_addr().unwrap().port());
            let up = up.clone();
            let cut = cut.clone();
            let gen = gen.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((mut down, _)) = l.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(down);
                        continue;
                    }
                    let up = up.clone();
                    let mut g = gen.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut u) = tokio::net::TcpStream::connect(&up).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut down, &mut u) => {}
                            _ = g.changed() => {}
                        }
                    });
                }
            }));
        }
        Relay {
            ports,
            cut,
            gen,
            tasks,
        }
    }

    /// The store URL through the relay.
    pub fn url(&self, prefix: &str) -> String {
        let eps: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("etcd://{}{prefix}", eps.join(","))
    }

    /// Drop every relayed connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.gen.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.cut();
    }
}
