//! Test worlds for the privileged integration tests: network namespaces joined by a
//! bridge, a cgroup for each pod, real servers in the "external" namespaces, the
//! real agent binary, and clients run inside a pod's netns and cgroup. Everything is
//! created with unique names and removed on drop, also when a test fails.

pub mod apiserver;
pub mod attack;
pub mod bpf;
pub mod dns;
pub mod kubelet;
pub mod server;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A short name unique to this process and call: test resources never collide.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cgroup2 mount, from /proc/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount: these tests need cgroup v2")
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        sh("ip", &["netns", "add", name]);
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }
}

/// Enters the network namespace at `path` on the calling thread only.
pub fn enter_netns(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a valid netns fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory, removed on drop (its processes are killed first: only
/// processes the test itself started ever live in it).
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(path: PathBuf) -> Self {
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub fn child(&self, name: &str) -> Self {
        Self::new(self.path.join(name))
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// Removes a cgroup and any cgroups below it, killing what runs in them first.
fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: only processes the tests placed in their own cgroups live here.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

/// Where a client process runs: a netns, and a cgroup (or none: the test's own).
#[derive(Clone)]
pub struct Place {
    pub netns: PathBuf,
    pub cgroup: Option<PathBuf>,
}

impl Place {
    /// A command that runs inside this place (netns entered, cgroup joined before
    /// exec, so the program's very first syscall is already enforced).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let netns = File::open(&self.netns).expect("open netns");
        let procs = self.cgroup.as_ref().map(|c| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .expect("open cgroup.procs")
        });
        // SAFETY: between fork and exec only write(2) and setns(2) on fds opened
        // before the fork; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(p) = &procs {
                    let rc = libc::write(p.as_raw_fd(), b"0".as_ptr().cast(), 1);
                    if rc != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs a command here and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// Runs the probe client here.
    pub fn probe(&self, args: &[&str]) -> ProbeResult {
        let out = self.run(probe_bin().to_str().unwrap(), args);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "probe output {text:?} ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Runs the probe client here and also returns its process id (what the
    /// access log names).
    pub fn probe_pid(&self, args: &[&str]) -> (u32, ProbeResult) {
        let child = self
            .command(probe_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start probe");
        let pid = child.id();
        let out = child.wait_with_output().expect("probe");
        let r = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "probe output {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (pid, r)
    }

    /// One TCP connection with the probe: connect, send a line, read the reply.
    pub fn connect(&self, addr: SocketAddr) -> ProbeResult {
        self.probe(&["connect", &addr.to_string()])
    }
}

/// What the probe saw for one connection.
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    /// errno of a failed connect, 0 on success.
    pub errno: i32,
    pub error: String,
    /// getpeername() after connect.
    pub peer: Option<String>,
    /// Everything the server sent back.
    pub reply: String,
    /// Wall-clock time of the attempt (`loop` mode).
    #[serde(default)]
    pub t_ms: Option<u64>,
    /// The name looked up and the address it gave (`resolve` mode).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub resolved: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A probe running `loop` in the background.
pub struct ProbeLoop {
    child: Child,
}

impl ProbeLoop {
    pub fn start(place: &Place, addr: SocketAddr, millis: u64) -> Self {
        let child = place
            .command(probe_bin())
            .args(["loop", &addr.to_string(), &millis.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start probe loop");
        Self { child }
    }

    /// Waits for the loop to end and returns every attempt.
    pub fn results(self) -> Vec<ProbeResult> {
        let out = self.child.wait_with_output().expect("probe loop");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

pub const EPERM: i32 = libc::EPERM;

/// Built binaries live next to the test executable's directory.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The probe client: `$EGRESS_PROBE_BIN`, else the bin of this crate built next
/// to the integration tests.
pub fn probe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_PROBE_BIN") {
        return PathBuf::from(p);
    }
    target_dir().join("egress-probe")
}

/// The agent binary: `$EGRESS_AGENT_BIN`, else `target/<profile>/egress-agent`
/// (built by `cargo xtask test`).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("egress-agent");
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build -p egress-agent`; `cargo xtask test` does)",
        p.display()
    );
    p
}

/// The test network, shaped like a Kubernetes node: a "node" namespace (where the
/// agent runs) holding a bridge with the node's addresses (198.18.0.1,
/// 2001:db8::1) and the host side of every veth (`vpod{i}`, `vext{i}`); pod
/// namespaces (pod i from 0: 198.18.0.(2+i), 2001:db8::(2+i)) and "external" host
/// namespaces (host i from 1: 198.18.0.(10+i), 2001:db8::(10+i)) on it. No route
/// leaves the segment, so a VIP that is not rewritten is unreachable.
pub struct Net {
    pub pods: Vec<Netns>,
    pub ext: Vec<Netns>,
    pub node: Netns,
}

pub const NODE_V4: &str = "198.18.0.1";
pub const NODE_V6: &str = "2001:db8::1";
pub const POD_V4: &str = "198.18.0.2";
pub const POD_V6: &str = "2001:db8::2";

pub fn pod_v4(i: usize) -> IpAddr {
    format!("198.18.0.{}", 2 + i).parse().unwrap()
}

pub fn ext_v4(i: usize) -> IpAddr {
    format!("198.18.0.{}", 10 + i).parse().unwrap()
}

pub fn ext_v6(i: usize) -> IpAddr {
    format!("2001:db8::{}", 10 + i).parse().unwrap()
}

impl Net {
    pub fn new(externals: usize) -> Self {
        Self::with_pods(1, externals)
    }

    pub fn with_pods(pods: usize, externals: usize) -> Self {
        let id = unique("eg");
        let node = Netns::new(&format!("{id}n"));
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", "br0"]);
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        node.ip(&["link", "set", "br0", "up"]);
        let attach = |ns: &Netns, port: &str, v4: &str, v6: &str| {
            sh(
                "ip",
                &[
                    "-n", &node.name, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns.name,
                ],
            );
            node.ip(&["link", "set", port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        };
        let mut pod_list = Vec::new();
        for i in 0..pods {
            let ns = Netns::new(&format!("{id}p{i}"));
            attach(
                &ns,
                &format!("vpod{i}"),
                &pod_v4(i).to_string(),
                &format!("2001:db8::{}", 2 + i),
            );
            pod_list.push(ns);
        }
        let mut ext = Vec::new();
        for i in 1..=externals {
            let ns = Netns::new(&format!("{id}e{i}"));
            attach(
                &ns,
                &format!("vext{i}"),
                &ext_v4(i).to_string(),
                &ext_v6(i).to_string(),
            );
            ext.push(ns);
        }
        Self {
            pods: pod_list,
            ext,
            node,
        }
    }

    /// The first pod's namespace.
    pub fn pod(&self) -> &Netns {
        &self.pods[0]
    }

    /// External host `i` (from 1).
    pub fn ext(&self, i: usize) -> &Netns {
        &self.ext[i - 1]
    }
}

/// A running agent, stopped with SIGTERM on drop.
pub struct Agent {
    pub child: Option<Child>,
    /// Its configuration file (for `egress-agent uninstall`).
    pub config: PathBuf,
    /// The file's text at start: uninstall works even once the file is gone
    /// (a sandbox removed before the agent).
    config_text: String,
    pub log: PathBuf,
    pub metrics: SocketAddr,
    /// The network namespace it runs in (none: the test's own).
    pub netns: Option<PathBuf>,
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    /// Starts `egress-agent run --config CONFIG` (inside `netns` when given) and
    /// waits until it is ready.
    pub fn start(config: &Path, metrics: SocketAddr, netns: Option<&Path>) -> Self {
        Self::start_with_env(config, metrics, netns, &[])
    }

    /// As [`Agent::start`], with more environment (e.g. `EGRESS_BPF_OBJECT`).
    pub fn start_with_env(
        config: &Path,
        metrics: SocketAddr,
        netns: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut agent = Self::spawn_with_env(config, metrics, netns, env);
        agent.wait_ready(Duration::from_secs(20));
        agent
    }

    /// As [`Agent::start_with_env`], without waiting until it is ready.
    pub fn spawn_with_env(
        config: &Path,
        metrics: SocketAddr,
        netns: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let log = config.with_extension("log");
        let out = File::create(&log).unwrap();
        let mut cmd = match netns {
            Some(ns) => Place {
                netns: ns.to_owned(),
                cgroup: None,
            }
            .command(agent_bin()),
            None => Command::new(agent_bin()),
        };
        let child = cmd
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start egress-agent");
        Self {
            child: Some(child),
            config: config.to_owned(),
            config_text: std::fs::read_to_string(config).unwrap_or_default(),
            log,
            metrics,
            netns: netns.map(Path::to_owned),
        }
    }

    /// Waits until `/readyz` answers 200 (panics if the agent exits first).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "egress-agent exited ({status}) before ready:\n{}",
                    self.log_text()
                );
            }
            if self.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "egress-agent not ready after {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (the agent logs asynchronously).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(needle) || start.elapsed() > timeout {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the agent's metrics address, from its network namespace.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        match &self.netns {
            None => http_get(self.metrics, path),
            Some(ns) => {
                let (ns, addr, path) = (ns.clone(), self.metrics, path.to_owned());
                std::thread::spawn(move || {
                    enter_netns(&ns);
                    http_get(addr, &path)
                })
                .join()
                .unwrap()
            }
        }
    }

    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let (code, body) = self.get("/metrics").expect("scrape /metrics");
        assert_eq!(code, 200);
        body
    }

    /// Sends SIGTERM, waits for the exit status, then ends enforcement with
    /// `egress-agent uninstall` (the agent itself leaves it in force).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let status = self.signal_and_wait(libc::SIGTERM);
        self.uninstall();
        status
    }

    /// `egress-agent uninstall --config` for this agent's configuration.
    pub fn uninstall(&self) {
        // The sandbox (and the file with it) may be gone already: its text is
        // enough where pinDir and runDir are absolute (the defaults).
        let copy = (!self.config.exists()).then(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.yaml");
            std::fs::write(&path, &self.config_text).unwrap();
            (dir, path)
        });
        let config = copy
            .as_ref()
            .map_or(self.config.as_path(), |(_, p)| p.as_path());
        let out = Command::new(agent_bin())
            .args(["uninstall", "--config", config.to_str().unwrap()])
            .output()
            .expect("run egress-agent uninstall");
        assert!(
            out.status.success(),
            "egress-agent uninstall failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sends `sig` and waits for the exit status; what the agent pinned stays.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("egress-agent did not exit on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        } else {
            // Stopped by the test (kill -9, SIGTERM): what it pinned goes too.
            self.uninstall();
        }
    }
}

/// The tests' usual ServiceEntry: `legacy.internal` in namespace `shop`, VIP
/// 240.240.1.1 port 80 rewritten to port 8080 of 198.18.0.11 and 198.18.0.12.
pub const LEGACY_SE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.internal]
  addresses: [240.240.1.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints:
  - address: 198.18.0.11
  - address: 198.18.0.12
"#;

/// [`LEGACY_SE`] with its first endpoint only.
pub fn legacy_se_one_endpoint() -> String {
    LEGACY_SE.replace("  - address: 198.18.0.12\n", "")
}

/// Minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Sum of a family's samples whose labels include every `label="value"`.
pub fn metric_sum(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(family)
                && (l[family.len()..].starts_with('{') || l[family.len()..].starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A socket address from a literal; panics on a typo in the test.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One test's world: the network, an attach cgroup with a pod cgroup in it, a
/// config directory, and the agent once started.
pub struct World {
    pub net: Net,
    /// Cgroups of the pods after the first (pod i ≥ 1), in pod netns i.
    pub more_pods: Vec<Cgroup>,
    // Fields drop in order: the pod cgroup before the attach cgroup holding it.
    pub pod: Cgroup,
    /// Where the programs attach.
    pub root: Cgroup,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new(externals: usize) -> Self {
        Self::with_pods(1, externals)
    }

    /// `pods` pod namespaces, each with its own cgroup: `pod` (the first), then
    /// `pod1`, `pod2`, ... under the attach cgroup.
    pub fn with_pods(pods: usize, externals: usize) -> Self {
        let net = Net::with_pods(pods, externals);
        let root = Cgroup::new(cgroup2_root().join(unique("egress-test-")));
        let pod = root.child("pod");
        let more_pods = (1..pods).map(|i| root.child(&format!("pod{i}"))).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("serviceentries")).unwrap();
        Self {
            net,
            more_pods,
            pod,
            root,
            dir,
        }
    }

    /// Pod `i` (0 is `pod()`): its netns and cgroup.
    pub fn pod_n(&self, i: usize) -> Place {
        if i == 0 {
            return self.pod();
        }
        Place {
            netns: self.net.pods[i].path(),
            cgroup: Some(self.more_pods[i - 1].path.clone()),
        }
    }

    pub fn se_dir(&self) -> PathBuf {
        self.dir.path().join("serviceentries")
    }

    /// A dual-stack TCP server on external host `i`, replying "hello from {name}".
    pub fn ext_server(&self, i: usize, port: u16, name: &str) -> server::Server {
        server::Server::start(self.net.ext(i), sa(&format!("[::]:{port}")), name)
    }

    /// Writes a ServiceEntry file.
    pub fn write_se(&self, file: &str, yaml: &str) {
        std::fs::write(self.se_dir().join(file), yaml).unwrap();
    }

    /// The pod: its netns and cgroup.
    pub fn pod(&self) -> Place {
        Place {
            netns: self.net.pod().path(),
            cgroup: Some(self.pod.path.clone()),
        }
    }

    /// Another workload cgroup under the attach point, in the pod's netns.
    pub fn extra_pod(&self, name: &str) -> (Cgroup, Place) {
        let cg = self.root.child(name);
        let place = Place {
            netns: self.net.pod().path(),
            cgroup: Some(cg.path.clone()),
        };
        (cg, place)
    }

    /// The agent configuration file `start_agent` writes.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.yaml")
    }

    /// Runs an `egress-agent` subcommand (inspect, explain, validate).
    pub fn agent_cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .output()
            .expect("run egress-agent")
    }

    /// The pod's netns, but the test's own cgroup (outside the attach point).
    pub fn pod_netns_only(&self) -> Place {
        Place {
            netns: self.net.pod().path(),
            cgroup: None,
        }
    }

    /// Writes the agent config (pod = workload shop/web unless `workloads` says
    /// otherwise) and starts the agent in the node namespace.
    pub fn start_agent(&self, mode: &str, extra: &str) -> Agent {
        // The node namespace is the test's own: the port is always free there.
        let metrics: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let config = self.dir.path().join("agent.yaml");
        let instance = self
            .root
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut text = format!(
            "outboundTrafficPolicy: {{mode: {mode}}}\ncgroupPath: {}\nserviceEntryDir: serviceentries\n\
             metricsAddress: {metrics}\ninstance: {instance}\nstateDir: state\n",
            self.root.path.display()
        );
        if !extra.contains("workloads:") {
            text.push_str(
                "workloads:\n  - {cgroup: pod, namespace: shop, name: web, ip: 198.18.0.2, ips: [\"2001:db8::2\"]}\n",
            );
        }
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        Agent::start(&config, metrics, Some(&self.net.node.path()))
    }
}
