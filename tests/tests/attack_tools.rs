//! The attacker's tools, checked WITHOUT any agent: every escape attempt that an
//! enforcement test later expects to see blocked really does put packets on the
//! wire here, and the receiving-side counter really sees them. (A "counter == 0"
//! assertion is only worth something if this file is green.)

use std::net::IpAddr;
use std::time::Duration;

use egress_tests::attack::*;
use egress_tests::server::Server;
use egress_tests::*;

const WAIT: Duration = Duration::from_secs(3);

fn pod_place(net: &Net) -> Place {
    Place {
        netns: net.pod().path(),
        cgroup: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Capability sets from /proc/self/status of a program run as `p`.
fn status_as(net: &Net, p: Privilege) -> (u64, String) {
    let out = command_as(&pod_place(net), p, "/bin/cat")
        .arg("/proc/self/status")
        .output()
        .expect("cat /proc/self/status");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_owned()
    };
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    (eff, field("Uid:"))
}

#[test]
fn container_default_privileges_are_dockers() {
    let net = Net::new(1);
    let net_raw = 1u64 << 13;
    let (eff, uid) = status_as(&net, Privilege::ContainerDefault);
    // Docker's default set: exactly these 14 capabilities.
    assert_eq!(eff, 0xa80425fb, "CapEff {eff:x}");
    assert_ne!(eff & net_raw, 0);
    assert!(uid.split_whitespace().all(|u| u == "65534"), "Uid: {uid}");
    let (eff, uid) = status_as(&net, Privilege::ContainerDefaultNoRaw);
    assert_eq!(eff, 0xa80425fb & !net_raw, "CapEff {eff:x}");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "Uid: {uid}");
}

#[test]
fn tcp_and_mptcp_reach_a_server() {
    let net = Net::new(1);
    let server = Server::start(net.ext(1), sa("[::]:8080"), "ext1");
    let pod = pod_place(&net);
    for args in [
        ["tcp", "198.18.0.11", "8080"],
        ["tcp", "2001:db8::11", "8080"],
        ["mptcp", "198.18.0.11", "8080"],
    ] {
        let a = attack(&pod, Privilege::ContainerDefault, &args);
        assert!(a.ok, "{args:?}: {a:?}");
        assert_eq!(a.step, "done");
        assert_eq!(a.reply, "hello from ext1\n", "{args:?}");
    }
    assert_eq!(server.hit_count(), 3);
}

/// Every attempt below, from the pod as a default container, makes packets from
/// the pod's address arrive on ext1's eth0.
#[test]
fn escape_attempts_put_packets_on_the_wire() {
    let net = Net::new(2);
    allow_ping_group(net.pod());
    let pod = pod_place(&net);
    let mac = mac_of(net.ext(1), "eth0");
    let cases: Vec<Vec<String>> = [
        vec!["raw", "198.18.0.11"],
        vec!["raw", "2001:db8::11"],
        vec!["rawip", "198.18.0.11"],
        vec!["packet", "eth0", &mac, "198.18.0.11"],
        vec!["packet", "eth0", "ff:ff:ff:ff:ff:ff", "198.18.0.11"],
        vec!["ping", "198.18.0.11"],
        vec!["ping", "2001:db8::11"],
        vec!["udp", "198.18.0.11", "9999"],
        vec!["udp", "2001:db8::11", "9999"],
        vec!["udplite", "198.18.0.11", "9999"],
        vec!["udplite", "2001:db8::11", "9999"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let counter =
            PacketCounter::with_sources(net.ext(1), "eth0", &[ip("198.18.0.2"), ip("2001:db8::2")]);
        let a = attack(&pod, Privilege::ContainerDefault, &args);
        assert!(a.ok, "{args:?}: {a:?}");
        assert_eq!((a.step.as_str(), a.errno), ("done", 0), "{args:?}");
        let n = counter.wait_packets(1, WAIT);
        assert!(n >= 1, "{args:?}: ext1 saw no packet from the pod ({a:?})");
    }
}

/// Source routes: sendto(ext2) — what the hooks see — puts the packet on the
/// wire to ext1. The counter on ext1 sees it, with its options / routing header.
#[test]
fn source_routes_send_to_the_first_hop_not_the_sendto_address() {
    let net = Net::new(2);
    let pod = pod_place(&net);
    for args in [
        ["lsrr-opt", "198.18.0.12", "198.18.0.11", "9999"],
        ["ssrr-opt", "198.18.0.12", "198.18.0.11", "9999"],
        ["lsrr-cmsg", "198.18.0.12", "198.18.0.11", "9999"],
    ] {
        let at_dst = PacketCounter::new(net.ext(1), "eth0", ip(POD_V4));
        let at_hop = PacketCounter::new(net.ext(2), "eth0", ip(POD_V4));
        let a = attack(&pod, Privilege::ContainerDefault, &args);
        assert!(a.ok, "{args:?}: {a:?}");
        assert_eq!(at_dst.wait_packets(1, WAIT), 1, "{args:?}");
        assert_eq!(at_dst.packets_with_ip_options(), 1, "{args:?}");
        assert_eq!(at_hop.packets(), 0, "{args:?}");
    }
    // IPv6: type 0 is refused, a Segment Routing Header (type 4) is accepted by
    // setsockopt; per-message routing headers only allow type 2 (Mobile IPv6).
    let at_dst = PacketCounter::new(net.ext(1), "eth0", ip(POD_V6));
    let at_hop = PacketCounter::new(net.ext(2), "eth0", ip(POD_V6));
    let a = attack(
        &pod,
        Privilege::ContainerDefault,
        &["rthdr-opt", "2001:db8::12", "2001:db8::11", "9999"],
    );
    assert!(a.ok, "{a:?}");
    assert_eq!(a.rthdr_type, Some(4), "{a:?}");
    assert_eq!(at_dst.wait_packets(1, WAIT), 1);
    assert_eq!(at_dst.routing_header_packets(), 1);
    assert_eq!(at_hop.packets(), 0);
    let a = attack(
        &pod,
        Privilege::ContainerDefault,
        &["rthdr-cmsg", "2001:db8::12", "2001:db8::11", "9999"],
    );
    eprintln!("rthdr-cmsg without enforcement: {a:?}");
}

#[test]
fn without_net_raw_raw_sockets_are_refused() {
    let net = Net::new(1);
    let pod = pod_place(&net);
    for args in [
        &["raw", "198.18.0.11"][..],
        &["raw", "2001:db8::11"],
        &["rawip", "198.18.0.11"],
        &["packet", "eth0", "ff:ff:ff:ff:ff:ff", "198.18.0.11"],
    ] {
        let a = attack(&pod, Privilege::ContainerDefaultNoRaw, args);
        assert!(!a.ok, "{args:?}: {a:?}");
        assert_eq!(
            (a.step.as_str(), a.errno),
            ("socket", EPERM),
            "{args:?}: {a:?}"
        );
    }
}

#[test]
fn passed_and_held_sockets_connect() {
    let net = Net::new(1);
    let server = Server::start(net.ext(1), sa("[::]:8080"), "ext1");
    let pod = pod_place(&net);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fd.sock");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    for (family, dst) in [
        ("inet", "198.18.0.11"),
        ("inet6", "2001:db8::11"),
        ("inet6", "198.18.0.11"),
    ] {
        let sender = attack_command(
            &pod,
            Privilege::ContainerDefault,
            &["passfd-send", path, family],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let a = attack(
            &pod,
            Privilege::ContainerDefault,
            &["passfd-recv-connect", path, dst, "8080"],
        );
        assert!(a.ok, "{family} {dst}: {a:?}");
        assert_eq!(a.reply, "hello from ext1\n");
        let out = sender.wait_with_output().unwrap();
        let s = parse_attempt(&out.stdout, &out.stderr);
        assert!(s.ok, "{s:?}");
    }

    let held = HeldAttack::start(&pod, Privilege::ContainerDefault, ext_v4(1), 8080, 30);
    assert!(held.pid > 0);
    let a = held.release();
    assert!(a.ok, "{a:?}");
    assert_eq!(a.signalled, Some(1));
    assert_eq!(a.reply, "hello from ext1\n");
    assert_eq!(server.hit_count(), 4);
}

/// Without enforcement, a server's ADD_ADDR makes the client's kernel open a
/// subflow to the announced address: the SYN arrives there.
#[test]
fn an_announced_mptcp_address_gets_a_kernel_made_subflow() {
    let net = Net::new(1);
    let extra = ip("198.18.0.21");
    let syns = SynCounter::new(net.ext(1), "eth0", extra);
    let _server = MptcpAnnouncer::start(net.ext(1), net.pod(), 8090, extra);
    let a = attack(
        &pod_place(&net),
        Privilege::ContainerDefault,
        &["mptcp", "198.18.0.11", "8090"],
    );
    assert!(a.ok && a.reply == "hello from mptcp\n", "{a:?}");
    let start = std::time::Instant::now();
    while syns.syns() == 0 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        syns.syns() >= 1,
        "a subflow SYN reached the announced address"
    );
}

/// Without enforcement, link-layer frames carrying data reach another host of
/// the segment: an oversized ARP frame, a VLAN-tagged frame, a neighbour
/// solicitation with large options forwarded by the pod (escape.rs holds them).
#[test]
fn link_layer_frames_with_data_reach_the_segment() {
    let net = Net::new(2);
    let pod = pod_place(&net);
    let big_arp = NftCounter::matching(net.ext(2), "eth0", "ether type arp meta length > 100");
    let tagged = NftCounter::matching(net.ext(2), "eth0", "ether type vlan");
    let big_nd = NftCounter::matching(
        net.ext(2),
        "eth0",
        "meta l4proto ipv6-icmp meta length > 200",
    );
    let frames = LinkFrames::new(&pod, net.pod(), &mac_of(net.ext(2), "eth0"));
    assert!(frames.big_arp().contains("sent"));
    assert!(frames.tagged_udp().contains("sent"));
    assert!(frames.big_neighbour_solicitation().contains("injected"));
    let start = std::time::Instant::now();
    while (big_arp.count() == 0 || tagged.count() == 0 || big_nd.count() == 0)
        && start.elapsed() < WAIT
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(big_arp.count() >= 1, "the oversized ARP frame arrived");
    assert!(tagged.count() >= 1, "the tagged frame arrived");
    assert!(big_nd.count() >= 1, "the forwarded solicitation arrived");
}
