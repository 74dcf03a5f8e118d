//! Real servers for tests (feature `testkit`): a `redis-server` of the test's own on a free port,
//! stopped when dropped. Never a fake.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A configuration for an online server of a test's own: the model root and embedded store under
/// `dir` (the store in `dir/<store>`), any free ports, the model polled every 50 ms.
pub fn serving_config(dir: &std::path::Path, store: &str) -> crate::config::Config {
    let mut config = crate::config::Config::default();
    config.model.root = dir.join("models");
    config.store.embedded.path = dir.join(store);
    config.online.listen = "127.0.0.1:0".into();
    config.online.metrics_listen = "127.0.0.1:0".into();
    config.online.model_poll_ms = 50;
    config
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `redis-server` process (no persistence) owned by a test.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

/// A `redis-server` without persistence on 127.0.0.1 with `args` (which name its port), once it
/// listens on `port`.
fn spawn_redis(port: u16, args: &[&str]) -> Child {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt install redis-server)");
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "redis-server did not listen on {port}"
    );
    child
}

impl RedisServer {
    /// Starts one on a free port. Panics with a clear message if `redis-server` is not installed.
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    /// Starts one on `port` (to restart a killed server where clients expect it).
    pub fn start_on(port: u16) -> RedisServer {
        // Tests slow the server down with DEBUG SLEEP.
        let child = spawn_redis(
            port,
            &[
                "--port",
                &port.to_string(),
                "--enable-debug-command",
                "local",
            ],
        );
        RedisServer {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's process id while it runs (to freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`s the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Makes the server unresponsive for `seconds` (`DEBUG SLEEP` from another thread) and
    /// returns once it has stopped answering; join the handle to wait for it to wake.
    pub fn sleep(&self, seconds: f64) -> std::thread::JoinHandle<()> {
        let port = self.port.to_string();
        let sleeper = {
            let port = port.clone();
            std::thread::spawn(move || {
                let out = Command::new("redis-cli")
                    .args(["-p", &port, "DEBUG", "SLEEP", &seconds.to_string()])
                    .output()
                    .expect("redis-cli must be installed");
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains("OK"),
                    "DEBUG SLEEP refused: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ping = Command::new("timeout")
                .args(["0.1", "redis-cli", "-p", &port, "PING"])
                .output()
                .expect("redis-cli must be installed");
            if !ping.status.success() {
                return sleeper;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never went to sleep"
            );
        }
    }
}

/// A CA and, signed by it, a server certificate for `localhost` / 127.0.0.1 and a client
/// certificate, made with the `openssl` command in a directory of the test's own (PEM files).
pub struct TestCertificates {
    pub dir: std::path::PathBuf,
    _keep: Option<tempfile_dir::Dir>,
}

mod tempfile_dir {
    /// A directory removed when dropped (tests only; no `tempfile` dependency in the library).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestCertificates {
    /// Generates fresh certificates (P-256 keys, valid two days).
    pub fn generate() -> TestCertificates {
        let dir = std::env::temp_dir().join(format!(
            "recsys-certs-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a certificate directory");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl must be installed (apt install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-new"][..],
                &key,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=recsys test CA",
                ],
            ]
            .concat(),
        );
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let ext = format!(
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
            );
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let (keyout, csr, pem, extfile, subject) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
                format!("/CN=recsys test {name}"),
            );
            openssl(
                &[
                    &["req", "-new"][..],
                    &key,
                    &["-keyout", &keyout, "-out", &csr, "-subj", &subject],
                ]
                .concat(),
            );
            openssl(&[
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
                &extfile,
            ]);
        }
        TestCertificates {
            dir: dir.clone(),
            _keep: Some(tempfile_dir::Dir(dir)),
        }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// `server-expired.pem`: the server's key certified by the CA until a day before now.
    pub fn expired_server_certificate(&self) -> std::path::PathBuf {
        let out = Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
            ])
            .args([
                "-CAcreateserial",
                "-out",
                "server-expired.pem",
                "-days",
                "-1",
            ])
            .args(["-extfile", "server.ext"])
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.path("server-expired.pem")
    }
}

/// A `redis-server` listening only on TLS, with the ACL user `recsys` / `s3cret-pass` and the
/// default user disabled (every connection must authenticate).
pub struct TlsRedisServer {
    pub port: u16,
    child: Child,
}

impl TlsRedisServer {
    pub const USER: &'static str = "recsys";
    pub const PASSWORD: &'static str = "s3cret-pass";

    pub fn start(certs: &TestCertificates) -> TlsRedisServer {
        let port = free_port();
        let path = |name: &str| certs.path(name).display().to_string();
        let child = spawn_redis(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &path("server.pem"),
                "--tls-key-file",
                &path("server.key"),
                "--tls-ca-cert-file",
                &path("ca.pem"),
                "--tls-auth-clients",
                "optional",
                "--user",
                "default",
                "off",
                "--user",
                Self::USER,
                "on",
                &format!(">{}", Self::PASSWORD),
                "~*",
                "&*",
                "+@all",
            ],
        );
        TlsRedisServer { port, child }
    }

    /// `rediss://` URL naming the host the certificate is for.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}/", self.port)
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of the test's own: `masters` `redis-server`s (no replicas, no persistence) on
/// free ports, the 16,384 slots spread over them by `redis-cli --cluster create`, stopped when
/// dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// Each node's cluster bus port.
    buses: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts it and waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "recsys-redis-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's node files");
        let mut nodes: Vec<RedisServer> = Vec::new();
        let mut buses: Vec<u16> = Vec::new();
        while nodes.len() < masters {
            let (node, bus) = Self::start_node(&dir, &nodes, &buses);
            nodes.push(node);
            buses.push(bus);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, buses, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|n| cluster.state_ok(n.port)) {
            assert!(
                Instant::now() < deadline,
                "the cluster never reported cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// A node on fresh ports (client and bus) that no other node uses. Free ports are only free
    /// when asked: a test running alongside may take one before the node binds it, and the node
    /// then exits at once while the port answers for someone else — so a node counts as started
    /// only when it still runs after its port answers, and is tried again on other ports if not.
    fn start_node(
        dir: &std::path::Path,
        nodes: &[RedisServer],
        buses: &[u16],
    ) -> (RedisServer, u16) {
        for _ in 0..10 {
            let (port, bus) = (free_port(), free_port());
            let used = |p: u16| p == port || p == bus;
            if port == bus || nodes.iter().any(|n| used(n.port)) || buses.iter().any(|&b| used(b)) {
                continue;
            }
            let Ok(mut child) = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(Self::node_args(dir, port, bus))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                panic!("redis-server must be installed (apt install redis-server)");
            };
            let listening = wait_for_port(port, Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(200));
            if listening && matches!(child.try_wait(), Ok(None)) {
                return (
                    RedisServer {
                        port,
                        child: Some(child),
                    },
                    bus,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no Redis Cluster node could be started on free ports in 10 tries");
    }

    fn node_args(dir: &std::path::Path, port: u16, bus: u16) -> Vec<String> {
        let nodes_file = dir.join(format!("nodes-{port}.conf"));
        [
            "--port",
            &port.to_string(),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-config-file",
            &nodes_file.display().to_string(),
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// One node: cluster mode with its node file in `dir`; a lost master costs only its own
    /// slots (`cluster-require-full-coverage no`), as a store deployment should be set.
    fn spawn_node(dir: &std::path::Path, port: u16, bus: u16) -> Child {
        let args = Self::node_args(dir, port, bus);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_redis(port, &args)
    }

    /// `kill -9`s node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again where it was: it rejoins with its slots (and, without persistence,
    /// none of its keys) and the call returns once every node reports `cluster_state:ok`.
    pub fn restart(&mut self, i: usize) {
        let port = self.nodes[i].port;
        self.nodes[i].child = Some(Self::spawn_node(&self.dir, port, self.buses[i]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.nodes.iter().all(|n| self.state_ok(n.port)) {
            assert!(Instant::now() < deadline, "the cluster never recovered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn state_ok(&self, port: u16) -> bool {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            .unwrap_or(false)
    }

    /// `redis://` URLs of every node (the seeds a client is given).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node holding `key`'s slot: the first node answers a `TYPE` of it itself or with
    /// `MOVED <slot> <host>:<port>`.
    pub fn node_of(&self, key: &str) -> usize {
        let out = Command::new("redis-cli")
            .args(["-p", &self.nodes[0].port.to_string(), "TYPE", key])
            .output()
            .expect("redis-cli must be installed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let port = match text.trim().strip_prefix("MOVED ") {
            Some(moved) => moved
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .expect("MOVED names host:port"),
            None => self.nodes[0].port,
        };
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("the owner is one of the nodes")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the `tansu` binary is: `$RECSYS_TANSU`, else `~/.cache/recsys/tansu/bin/tansu` (where
/// `.ci/run` installs it), else `tansu` on `PATH`.
pub fn tansu_binary() -> std::path::PathBuf {
    installed_binary("RECSYS_TANSU", "tansu")
}

/// A server binary the tests need: the path in `env_var`, else `.ci/run`'s install in
/// `~/.cache/recsys/<name>/bin/<name>`, else `name` on `PATH`.
fn installed_binary(env_var: &str, name: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return path.into();
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = std::path::Path::new(&home)
            .join(".cache/recsys")
            .join(name)
            .join("bin")
            .join(name);
        if cached.exists() {
            return cached;
        }
    }
    name.into()
}

/// Where a Tansu broker keeps its data.
#[derive(Debug, Clone)]
pub enum TansuStorage {
    Memory,
    /// `DIR/tansu.db`: survives a restart.
    Sqlite(std::path::PathBuf),
}

/// A Tansu broker (the Kafka protocol) owned by a test, on a free port; stopped when dropped.
pub struct TansuBroker {
    pub port: u16,
    storage: TansuStorage,
    child: Option<Child>,
}

impl TansuBroker {
    /// A broker keeping everything in memory.
    pub fn start_in_memory() -> TansuBroker {
        Self::start(free_port(), TansuStorage::Memory)
    }

    /// A broker on `port` with `storage`. Panics with the install command if `tansu` is missing.
    pub fn start(port: u16, storage: TansuStorage) -> TansuBroker {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu_binary());
        // Tansu 0.6 resolves a sqlite path against its working directory.
        let engine = match &storage {
            TansuStorage::Memory => "memory://tansu/".to_string(),
            TansuStorage::Sqlite(dir) => {
                command.current_dir(dir);
                "sqlite://tansu.db".to_string()
            }
        };
        let child = command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &engine,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "tansu must be installed: cargo install tansu --locked --features dynostore,libsql \
                 (.ci/run does it), or set RECSYS_TANSU",
            );
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "tansu did not listen on {port}"
        );
        TansuBroker {
            port,
            storage,
            child: Some(child),
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kill -9`s the broker.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        let again = Self::start(self.port, self.storage.clone());
        *self = again;
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the `s3s-fs` binary is: `$RECSYS_S3S_FS`, else `~/.cache/recsys/s3s-fs/bin/s3s-fs`
/// (where `.ci/run` installs it), else `s3s-fs` on `PATH`.
pub fn s3_server_binary() -> std::path::PathBuf {
    installed_binary("RECSYS_S3S_FS", "s3s-fs")
}

/// An S3-protocol server (`s3s-fs`, objects kept as files in a directory of its own) owned by a
/// test, on a free port, with one access key and one bucket; stopped and removed when dropped.
pub struct S3Server {
    pub port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    data: tempfile_dir::Dir,
    child: Option<Child>,
}

impl S3Server {
    /// Starts one with bucket `bucket`. Panics with the install command if `s3s-fs` is missing.
    pub fn start(bucket: &str) -> S3Server {
        let port = free_port();
        let data = std::env::temp_dir().join(format!(
            "recsys-s3-{}-{port}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // A bucket is a directory of the server's root.
        std::fs::create_dir_all(data.join(bucket)).expect("S3 server data directory");
        let (access_key, secret_key) = (
            "recsys-test".to_string(),
            format!("{:016x}", rand::random::<u64>()),
        );
        let child = Command::new(s3_server_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "s3s-fs must be installed: cargo install s3s-fs --version 0.14.1 --locked \
                 --features binary (.ci/run does it), or set RECSYS_S3S_FS",
            );
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "s3s-fs did not listen on {port}"
        );
        S3Server {
            port,
            bucket: bucket.to_string(),
            access_key,
            secret_key,
            data: tempfile_dir::Dir(data),
            child: Some(child),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://<bucket>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("s3://{}/{}", self.bucket, path.trim_start_matches('/'))
    }

    /// The environment a client needs to reach this server (for child processes and for
    /// `object_store`'s `from_env`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The file that holds object `key` of the bucket (s3s-fs keeps objects as plain files).
    pub fn object_file(&self, key: &str) -> std::path::PathBuf {
        self.data.0.join(&self.bucket).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
