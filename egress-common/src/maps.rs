//! Map names and the plain-data keys and values stored in them.
//!
//! Every type here is `#[repr(C)]`, `Copy`, built from fixed-width integers with
//! explicit padding, and size-checked at compile time: the agent writes these bytes
//! and the eBPF programs read them. Ports are host byte order; addresses are
//! [`crate::addr::Addr`] (16 bytes, network byte order, IPv4 v4-mapped).

use crate::addr::Addr;

// ---------------------------------------------------------------------------------
// Map names. The eBPF statics carry exactly these identifiers (aya names a map after
// its static); the agent opens maps only through these constants.
// ---------------------------------------------------------------------------------

/// cgroup id → [`WorkloadValue`]: which cgroups are enforced workloads.
pub const WORKLOADS_MAP: &str = "EGRESS_WORKLOADS";
/// [`ServiceKey`] → [`ServiceValue`]: VIPs and endpoint addresses per view.
pub const SERVICES_MAP: &str = "EGRESS_SERVICES";
/// [`BackendKey`] → [`Backend`]: the slots of each backend set.
pub const BACKENDS_MAP: &str = "EGRESS_BACKENDS";
/// LPM trie of [`CidrKey`] → [`CidrValue`]: CIDR addresses of services, per view.
pub const CIDRS_MAP: &str = "EGRESS_CIDRS";
/// LPM trie of [`IpKey`] → [`PolicyCidrValue`]: excluded and cluster-internal CIDRs.
pub const POLICY_CIDRS_MAP: &str = "EGRESS_POLCIDRS";
/// LRU socket cookie → [`OrigDest`]: what a rewritten socket originally asked for.
pub const SOCK_ORIG_MAP: &str = "EGRESS_SOCKORIG";
/// Per-CPU [`StatKey`] → u64: one increment per classified `connect()`.
pub const STATS_MAP: &str = "EGRESS_STATS";
/// Per-CPU array of u64 indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "EGRESS_COUNTERS";
/// Ring buffer of [`Event`]: denials and audited attempts.
pub const EVENTS_MAP: &str = "EGRESS_EVENTS";
/// Array of one [`DnsConfig`]: where workloads' DNS queries are sent.
pub const DNS_MAP: &str = "EGRESS_DNS";
/// LRU [`UdpNatKey`] → [`OrigDest`]-like [`UdpNatValue`]: replies of redirected UDP
/// are made to come from the address the application sent to.
pub const UDP_NAT_MAP: &str = "EGRESS_UDPNAT";
/// [`LearnedKey`] → [`LearnedValue`]: destinations a workload learned from DNS.
pub const LEARNED_MAP: &str = "EGRESS_LEARNED";
/// [`IpKey`] → [`WorkloadValue`]: workloads by address, for traffic attribution.
pub const WORKLOAD_IPS_MAP: &str = "EGRESS_WLIPS";
/// Per-CPU [`TrafficKey`] → [`TrafficValue`]: packets and payload bytes.
pub const TRAFFIC_MAP: &str = "EGRESS_TRAFFIC";
/// Per-CPU workload id → [`RateBucket`]: the access-log rate limit.
pub const RATE_MAP: &str = "EGRESS_RATE";
/// Interface index → [`WorkloadValue`]: the workload behind each enforced interface
/// (host side of its veth), for the packet-level check on that interface.
pub const IFACES_MAP: &str = "EGRESS_IFACES";
/// LRU [`NeighKey`] → [`NeighValue`]: the link-layer address the network
/// announced (ARP, neighbour advertisement) to a workload for an IP address; a
/// frame the workload sends directly to a neighbour must carry that address.
pub const NEIGH_MAP: &str = "EGRESS_NEIGH";
/// LRU [`FlowKey`] → boot-time ns: flows a remote end opened towards a workload
/// (its replies pass the interface check whatever the registry says).
pub const INBOUND_MAP: &str = "EGRESS_INBOUND";
/// LRU [`FragKey`] → u8: first fragments the interface check let through (the
/// later fragments of the same datagram follow them).
pub const FRAGS_MAP: &str = "EGRESS_FRAGS";
/// Per-CPU workload id → [`RateBucket`]: the DNS query rate limit.
pub const DNS_RATE_MAP: &str = "EGRESS_DNSRATE";
/// Socket storage of [`SockTag`]: the workload a socket was created in, and the
/// destination its packets were last found allowed for. Owned by the programs;
/// the agent never reads it.
pub const SOCK_TAGS_MAP: &str = "EGRESS_SOCKTAGS";

/// The version of what the maps' keys and values mean. Pinned maps outlive the
/// agent; a new agent reuses a pinned map only if its shape (type, key and value
/// sizes, capacity, flags) and this version are unchanged, and otherwise migrates
/// it (a new map filled, then the programs switched). Bump it when a key or value
/// changes meaning at the same size.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Every map the programs define, for checks and inspection.
pub const ALL_MAPS: &[&str] = &[
    WORKLOADS_MAP,
    SERVICES_MAP,
    BACKENDS_MAP,
    CIDRS_MAP,
    POLICY_CIDRS_MAP,
    SOCK_ORIG_MAP,
    STATS_MAP,
    COUNTERS_MAP,
    EVENTS_MAP,
    DNS_MAP,
    UDP_NAT_MAP,
    LEARNED_MAP,
    WORKLOAD_IPS_MAP,
    TRAFFIC_MAP,
    RATE_MAP,
    IFACES_MAP,
    INBOUND_MAP,
    FRAGS_MAP,
    NEIGH_MAP,
];

/// Capacities. The agent may raise them at load time (`EbpfLoader::map_max_entries`).
pub const WORKLOADS_MAX: u32 = 16_384;
pub const SERVICES_MAX: u32 = 1_048_576;
pub const BACKENDS_MAX: u32 = 1_048_576;
pub const CIDRS_MAX: u32 = 262_144;
pub const POLICY_CIDRS_MAX: u32 = 4_096;
pub const SOCK_ORIG_MAX: u32 = 262_144;
pub const STATS_MAX: u32 = 65_536;
pub const EVENTS_BYTES: u32 = 1 << 20;
pub const UDP_NAT_MAX: u32 = 262_144;
pub const LEARNED_MAX: u32 = 262_144;
pub const TRAFFIC_MAX: u32 = 65_536;
pub const IFACES_MAX: u32 = 16_384;
pub const INBOUND_MAX: u32 = 262_144;
pub const FRAGS_MAX: u32 = 16_384;
pub const NEIGH_MAX: u32 = 65_536;

/// The key of [`WORKLOADS_MAP`] that holds the default for cgroups under the attach
/// point that are not a known workload (`unknownWorkloads`). No cgroup has id 0.
pub const UNKNOWN_CGROUP: u64 = 0;
/// The workload id of that default, in stats and events.
pub const UNKNOWN_WORKLOAD_ID: u32 = u32::MAX;
/// The view of that default: no service is ever compiled into it.
pub const EMPTY_VIEW_ID: u32 = u32::MAX;

/// Well-known DNS port.
pub const DNS_PORT: u16 = 53;

/// How many cgroup levels above a socket's cgroup are searched for its workload.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Slots a backend set may hold; weights are expanded into slots up to this bound.
pub const MAX_BACKEND_SLOTS: u16 = 1024;

// ---------------------------------------------------------------------------------
// Enums carried as u8 in maps and events.
// ---------------------------------------------------------------------------------

/// What happened to a `connect()`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Proceeds unchanged.
    Allow = 1,
    /// Proceeds to a backend chosen in the kernel.
    Rewrite = 2,
    /// Fails with EPERM.
    Deny = 3,
    /// Would be denied, but audit mode allows it unchanged.
    Audit = 4,
}

impl Action {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allow),
            2 => Some(Self::Rewrite),
            3 => Some(Self::Deny),
            4 => Some(Self::Audit),
            _ => None,
        }
    }

    /// The metric label value (SPEC §7.8 `decision`, plus `audit`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::Allow => "allowed",
            Self::Rewrite => "rewritten",
            Self::Deny => "denied",
            Self::Audit => "audit",
        }
    }
}

/// Why (SPEC §7.8 `reason`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    RegistryMatch = 1,
    AllowAny = 2,
    RegistryOnly = 3,
    ClusterInternal = 4,
    NoRoute = 5,
    NoEndpoints = 6,
    Overflow = 7,
    /// A socket the connect/sendmsg layer cannot judge (raw, packet, ping, ...).
    SocketType = 8,
    /// A source route: IPv4 options or an IPv6 routing header.
    SourceRoute = 9,
    /// A packet for a destination outside the view, whatever made it (the
    /// packet-level second line).
    PacketCheck = 10,
    /// A packet whose source is not the workload's own address, or a frame whose
    /// link-layer destination is not where its IP destination is reached.
    Spoofed = 11,
}

impl Reason {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::RegistryMatch),
            2 => Some(Self::AllowAny),
            3 => Some(Self::RegistryOnly),
            4 => Some(Self::ClusterInternal),
            5 => Some(Self::NoRoute),
            6 => Some(Self::NoEndpoints),
            7 => Some(Self::Overflow),
            8 => Some(Self::SocketType),
            9 => Some(Self::SourceRoute),
            10 => Some(Self::PacketCheck),
            11 => Some(Self::Spoofed),
            _ => None,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::RegistryMatch => "registry_match",
            Self::AllowAny => "allow_any",
            Self::RegistryOnly => "registry_only",
            Self::ClusterInternal => "cluster_internal",
            Self::NoRoute => "no_route",
            Self::NoEndpoints => "no_endpoints",
            Self::Overflow => "overflow",
            Self::SocketType => "socket_type",
            Self::SourceRoute => "source_route",
            Self::PacketCheck => "packet_check",
            Self::Spoofed => "spoofed",
        }
    }
}

/// Which classification step matched (SPEC §7.3 `match`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchKind {
    None = 0,
    Vip = 1,
    Cidr = 2,
    Dns = 3,
    Port = 4,
    /// The destination is one of a service's own endpoints, allowed as-is.
    Endpoint = 5,
}

impl MatchKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Vip),
            2 => Some(Self::Cidr),
            3 => Some(Self::Dns),
            4 => Some(Self::Port),
            5 => Some(Self::Endpoint),
            _ => None,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Vip => "vip",
            Self::Cidr => "cidr",
            Self::Dns => "dns",
            Self::Port => "port",
            Self::Endpoint => "endpoint",
        }
    }
}

/// IP protocol numbers as they appear in keys.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// `IPPROTO_MPTCP` as `socket(2)` takes it (does not fit a packet's u8 field).
pub const PROTO_MPTCP: u32 = 262;

/// Where a refusal happened ([`Event::layer`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// `connect()` / `sendmsg()`: the first line.
    Connect = 0,
    /// `socket()`: a type the connect layer cannot judge.
    Socket = 1,
    /// `setsockopt()`: an option that changes the first hop.
    Sockopt = 2,
    /// A packet of a workload socket (cgroup egress).
    SocketPacket = 3,
    /// A packet on a workload's interface (TC).
    InterfacePacket = 4,
}

impl Layer {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Connect),
            1 => Some(Self::Socket),
            2 => Some(Self::Sockopt),
            3 => Some(Self::SocketPacket),
            4 => Some(Self::InterfacePacket),
            _ => None,
        }
    }

    /// Does an event of this layer name a destination (a `socket()` or
    /// `setsockopt()` has none yet)?
    pub const fn has_destination(self) -> bool {
        !matches!(self, Self::Socket | Self::Sockopt)
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Socket => "socket",
            Self::Sockopt => "setsockopt",
            Self::SocketPacket => "socket_packet",
            Self::InterfacePacket => "interface_packet",
        }
    }
}

/// Indices of the per-CPU [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A program hit an internal error and returned its failure verdict.
    ErrConnect4 = 0,
    ErrConnect6 = 1,
    ErrGetpeername4 = 2,
    ErrGetpeername6 = 3,
    /// An event could not be reserved in the ring buffer.
    EventsDropped = 4,
    /// A stats entry could not be created (map full).
    StatsFull = 5,
    /// A rewritten socket's original destination could not be recorded.
    SockOrigFull = 6,
    ErrSendmsg4 = 7,
    ErrSendmsg6 = 8,
    ErrRecvmsg4 = 9,
    ErrRecvmsg6 = 10,
    /// A DNS query was redirected to the agent's proxy.
    DnsRedirected = 11,
    /// A redirected UDP flow's reply mapping could not be recorded.
    UdpNatFull = 12,
    /// A denied/audited attempt was not logged: over its workload's rate.
    EventsRateLimited = 13,
    /// A traffic counter could not be created (map full).
    TrafficFull = 14,
    ErrSockCreate = 15,
    ErrSockopt = 16,
    ErrSkbEgress = 17,
    ErrTcEnforce = 18,
    /// Packets the packet-level check dropped (socket egress and interface).
    PacketsDropped = 19,
    /// A socket's tag could not be stored (no memory).
    SockTagFull = 20,
    /// Multicast listener reports of a workload's kernel, dropped on its
    /// interface without an access-log line (nothing the workload asked for).
    MldDropped = 21,
    /// `connect()` calls judged by a build of the programs with the
    /// `upgrade-probe` feature: the variant the lifecycle tests upgrade to, to see
    /// that the new program runs. Always 0 in a normal build.
    UpgradeProbe = 22,
    /// DNS queries of a workload over its rate (`dns.queriesPerSecond`),
    /// dropped before they reach the proxy.
    DnsRateLimited = 23,
}

impl Counter {
    pub const COUNT: u32 = 24;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::ErrConnect4,
        Self::ErrConnect6,
        Self::ErrGetpeername4,
        Self::ErrGetpeername6,
        Self::EventsDropped,
        Self::StatsFull,
        Self::SockOrigFull,
        Self::ErrSendmsg4,
        Self::ErrSendmsg6,
        Self::ErrRecvmsg4,
        Self::ErrRecvmsg6,
        Self::DnsRedirected,
        Self::UdpNatFull,
        Self::EventsRateLimited,
        Self::TrafficFull,
        Self::ErrSockCreate,
        Self::ErrSockopt,
        Self::ErrSkbEgress,
        Self::ErrTcEnforce,
        Self::PacketsDropped,
        Self::SockTagFull,
        Self::MldDropped,
        Self::UpgradeProbe,
        Self::DnsRateLimited,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::ErrConnect4 => "connect4_errors",
            Self::ErrConnect6 => "connect6_errors",
            Self::ErrGetpeername4 => "getpeername4_errors",
            Self::ErrGetpeername6 => "getpeername6_errors",
            Self::EventsDropped => "events_dropped",
            Self::StatsFull => "stats_full",
            Self::SockOrigFull => "sock_orig_full",
            Self::ErrSendmsg4 => "sendmsg4_errors",
            Self::ErrSendmsg6 => "sendmsg6_errors",
            Self::ErrRecvmsg4 => "recvmsg4_errors",
            Self::ErrRecvmsg6 => "recvmsg6_errors",
            Self::DnsRedirected => "dns_redirected",
            Self::UdpNatFull => "udp_nat_full",
            Self::EventsRateLimited => "events_rate_limited",
            Self::TrafficFull => "traffic_full",
            Self::ErrSockCreate => "sock_create_errors",
            Self::ErrSockopt => "setsockopt_errors",
            Self::ErrSkbEgress => "skb_egress_errors",
            Self::ErrTcEnforce => "tc_enforce_errors",
            Self::PacketsDropped => "packets_dropped",
            Self::SockTagFull => "sock_tag_full",
            Self::MldDropped => "mld_dropped",
            Self::UpgradeProbe => "upgrade_probe",
            Self::DnsRateLimited => "dns_rate_limited",
        }
    }
}

// ---------------------------------------------------------------------------------
// Keys and values.
// ---------------------------------------------------------------------------------

/// Workload flag: unknown destinations are denied (REGISTRY_ONLY).
pub const WL_REGISTRY_ONLY: u32 = 1;
/// Workload flag: denials are computed and reported but the connection is allowed.
pub const WL_AUDIT: u32 = 2;
/// Workload flag: UDP other than DNS is enforced too (`udpEnforcement`).
pub const WL_UDP: u32 = 4;
/// Workload flag: leave this cgroup alone. On the [`UNKNOWN_CGROUP`] default,
/// unknown cgroups (`unknownWorkloads: untouched`); on a workload, that one (a
/// hostNetwork or opted-out pod, the agent's own): known, so the default never
/// holds it, and never enforced.
pub const WL_UNTOUCHED: u32 = 8;
/// Workload flags re-allowing socket kinds the connect layer cannot judge
/// (`allowSockets`); without them a REGISTRY_ONLY workload cannot create them.
pub const WL_SOCK_ICMP: u32 = 1 << 8;
pub const WL_SOCK_RAW: u32 = 1 << 9;
pub const WL_SOCK_PACKET: u32 = 1 << 10;
pub const WL_SOCK_UDPLITE: u32 = 1 << 11;
pub const WL_SOCK_SCTP: u32 = 1 << 12;
/// Any other protocol of AF_INET/AF_INET6, and other families than
/// INET, INET6, UNIX, NETLINK and PACKET.
pub const WL_SOCK_OTHER: u32 = 1 << 13;
/// Workload flag: the workload's addresses are known (`EGRESS_WLIPS`): its
/// packets must carry one of them as their source.
pub const WL_HAS_ADDR: u32 = 1 << 16;

/// Value of [`IFACES_MAP`], keyed by interface index (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceValue {
    pub workload: WorkloadValue,
    /// The node side of the link: the interface's own MAC and, when it is a
    /// bridge port, the bridge's. Frames to these go to the node, which routes.
    pub mac: [u8; 6],
    pub bridge_mac: [u8; 6],
    pub _pad: [u8; 4],
    /// The /64 of the workload's first IPv6 address (zero: none): neighbour
    /// solicitations of the workload are for addresses of its own link.
    pub v6_prefix: [u8; 8],
}
const _: () = assert!(size_of::<IfaceValue>() == 40);

/// Key of [`NEIGH_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighKey {
    pub ifindex: u32,
    pub _pad: u32,
    /// Network byte order, IPv4 v4-mapped.
    pub addr: Addr,
}
const _: () = assert!(size_of::<NeighKey>() == 24);

/// Value of [`NEIGH_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighValue {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<NeighValue>() == 8);

/// Value of [`WORKLOADS_MAP`], keyed by cgroup id (u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkloadValue {
    /// The agent's id of the workload, used in stats and events.
    pub workload_id: u32,
    /// The registry view (namespace + Sidecar scope) this workload sees.
    pub view_id: u32,
    /// `WL_*` flags.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<WorkloadValue>() == 16);

/// Key of [`SERVICES_MAP`]: a destination as seen from one view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Destination address, network byte order, IPv4 v4-mapped.
    pub addr: Addr,
    pub view_id: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 24);

/// [`ServiceValue::kind`]: the address is a VIP; rewrite to a backend of `set_id`.
pub const SVC_VIP: u8 = 1;
/// [`ServiceValue::kind`]: the address is a service endpoint; allow as-is.
pub const SVC_ENDPOINT: u8 = 2;

/// Value of [`SERVICES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// The agent's id of the (namespace, host) service, for stats and events.
    pub service_id: u32,
    /// Backend set to pick from ([`BackendKey::set_id`]); a new version of the set
    /// gets a new id, switched in by rewriting this value.
    pub set_id: u32,
    /// Slots in the set. IPv4 slots come first: an IPv4 socket picks among
    /// `v4_slots`, an IPv6 socket among all (IPv4 backends as v4-mapped).
    pub slots: u16,
    pub v4_slots: u16,
    /// `SVC_*`.
    pub kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ServiceValue>() == 16);

/// Key of [`BACKENDS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub set_id: u32,
    pub slot: u32,
}
const _: () = assert!(size_of::<BackendKey>() == 8);

/// Value of [`BACKENDS_MAP`]: where a rewritten connection goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Network byte order, IPv4 v4-mapped.
    pub addr: Addr,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Backend>() == 20);

/// Data of an LPM key of [`CIDRS_MAP`]. The fixed fields come first and are always
/// inside the prefix: `prefix_len = CIDR_FIXED_BITS + prefix on the 128-bit scale`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrKey {
    pub view_id: u32,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    /// Network byte order, IPv4 v4-mapped.
    pub addr: Addr,
}
const _: () = assert!(size_of::<CidrKey>() == 24);

/// Bits of [`CidrKey`] before the address.
pub const CIDR_FIXED_BITS: u32 = 64;

/// [`CidrValue::kind`]: NONE resolution, the destination is kept (port maybe
/// rewritten to `target_port`).
pub const CIDR_PASSTHROUGH: u8 = 1;
/// [`CidrValue::kind`]: STATIC resolution, the destination is load-balanced to a
/// backend of `set_id` like a VIP.
pub const CIDR_BALANCE: u8 = 2;
/// [`CidrValue::kind`]: a NONE entry's `targetPort`, where its rewritten
/// connections' packets go: allowed to packets only, never to a `connect()`.
pub const CIDR_PACKET_ONLY: u8 = 3;

/// Value of [`CIDRS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrValue {
    pub service_id: u32,
    /// For [`CIDR_BALANCE`]: as [`ServiceValue::set_id`].
    pub set_id: u32,
    pub slots: u16,
    pub v4_slots: u16,
    /// For [`CIDR_PASSTHROUGH`]: the NONE `targetPort` (0 = keep the port).
    pub target_port: u16,
    /// `CIDR_*`.
    pub kind: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<CidrValue>() == 16);

/// Data of an LPM key of [`POLICY_CIDRS_MAP`]; prefix on the 128-bit scale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    pub addr: Addr,
}
const _: () = assert!(size_of::<IpKey>() == 16);

/// [`PolicyCidrValue::kind`]: never enforced nor counted.
pub const POLICY_EXCLUDED: u32 = 1;
/// [`PolicyCidrValue::kind`]: cluster-internal, allowed after the registry steps.
pub const POLICY_CLUSTER: u32 = 2;

/// Value of [`POLICY_CIDRS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyCidrValue {
    pub kind: u32,
}
const _: () = assert!(size_of::<PolicyCidrValue>() == 4);

/// Value of [`SOCK_ORIG_MAP`], keyed by socket cookie (u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDest {
    /// What the application connected to.
    pub orig_addr: Addr,
    /// Where the kernel sent it.
    pub backend_addr: Addr,
    pub orig_port: u16,
    pub backend_port: u16,
}
const _: () = assert!(size_of::<OrigDest>() == 36);

/// [`DnsConfig::flags`]: capture workloads' DNS (port 53, UDP and TCP).
pub const DNS_CAPTURE: u16 = 1;
/// [`DnsConfig::flags`]: `proxy_v6` is set.
pub const DNS_HAS_V6: u16 = 2;

/// Value of [`DNS_MAP`] (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsConfig {
    /// The proxy's IPv4 address, v4-mapped.
    pub proxy_v4: Addr,
    /// The proxy's IPv6 address (if `DNS_HAS_V6`).
    pub proxy_v6: Addr,
    /// Host byte order.
    pub port: u16,
    pub flags: u16,
}
const _: () = assert!(size_of::<DnsConfig>() == 36);

/// Key of [`UDP_NAT_MAP`]: a socket and the address its datagrams were sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpNatKey {
    pub cookie: u64,
    /// Where the kernel sent the datagram (the rewritten address).
    pub addr: Addr,
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<UdpNatKey>() == 32);

/// Value of [`UDP_NAT_MAP`]: what the application sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpNatValue {
    pub addr: Addr,
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<UdpNatValue>() == 20);

/// Key of [`LEARNED_MAP`]: one destination a workload may use because its DNS
/// answer named a host of its view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    pub addr: Addr,
    pub workload_id: u32,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<LearnedKey>() == 24);

/// Value of [`LEARNED_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedValue {
    pub service_id: u32,
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` nanoseconds after which the entry no longer counts.
    pub expires_ns: u64,
}
const _: () = assert!(size_of::<LearnedValue>() == 16);

/// [`TrafficKey::dir`]: from the workload.
pub const DIR_SENT: u8 = 0;
/// [`TrafficKey::dir`]: to the workload.
pub const DIR_RECEIVED: u8 = 1;

/// Key of [`TRAFFIC_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrafficKey {
    pub workload_id: u32,
    /// 0 when the remote end is not in the registry.
    pub service_id: u32,
    /// The remote port, host byte order.
    pub port: u16,
    pub proto: u8,
    /// `DIR_*`.
    pub dir: u8,
}
const _: () = assert!(size_of::<TrafficKey>() == 12);

/// Value of [`TRAFFIC_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrafficValue {
    pub packets: u64,
    /// L4 payload bytes (what the application sent or received).
    pub bytes: u64,
}
const _: () = assert!(size_of::<TrafficValue>() == 16);

/// Key of [`INBOUND_MAP`]: a flow a remote end opened towards a workload, as the
/// workload's replies carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The workload's address, network byte order, IPv4 v4-mapped.
    pub local: Addr,
    pub remote: Addr,
    /// Host byte order; 0 in the peer-only form (for ICMP replies and errors).
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Key of [`FRAGS_MAP`]: one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    /// The IPv4 identification or IPv6 fragment id, as in the packet.
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragKey>() == 40);

/// [`SockTag::flags`]: an accepted socket (its peer opened the connection).
pub const TAG_PASSIVE: u32 = 1;
/// [`SockTag::flags`]: `ok_*` hold a destination its packets may go to.
pub const TAG_OK: u32 = 2;
/// [`SockTag::flags`]: a packet-level refusal of this socket was logged already.
pub const TAG_LOGGED: u32 = 4;
/// [`SockTag::flags`]: `cgroup_id` is the socket's creator (tagged at creation).
pub const TAG_CREATED: u32 = 8;

/// Value of [`SOCK_TAGS_MAP`] (socket-local storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTag {
    /// The cgroup the socket was created in.
    pub cgroup_id: u64,
    /// The [`WORKLOADS_MAP`] key that matched at creation (0: none did).
    pub workload_key: u64,
    /// `TAG_*`.
    pub flags: u32,
    /// With [`TAG_OK`]: the destination port (host order) and protocol last
    /// found allowed.
    pub ok_port: u16,
    pub ok_proto: u8,
    pub _pad: u8,
    /// With [`TAG_OK`]: the destination address last found allowed.
    pub ok_addr: Addr,
    /// With [`TAG_OK`]: the source address it was allowed from (zero: not
    /// checked yet, the connect layer filled `ok_*`).
    pub ok_src: Addr,
}
const _: () = assert!(size_of::<SockTag>() == 56);

/// Value of [`RATE_MAP`]: a token bucket kept as time credit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateBucket {
    /// Nanoseconds of credit; one event costs the load-time interval.
    pub credit_ns: u64,
    pub last_ns: u64,
    /// Events this workload could not log on this CPU.
    pub dropped: u64,
}
const _: () = assert!(size_of::<RateBucket>() == 24);

/// Key of [`STATS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatKey {
    pub workload_id: u32,
    /// 0 when nothing in the registry matched.
    pub service_id: u32,
    /// The original destination port, host byte order.
    pub port: u16,
    pub proto: u8,
    /// [`Action`].
    pub action: u8,
    /// [`Reason`].
    pub reason: u8,
    /// [`MatchKind`].
    pub matched: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<StatKey>() == 16);

/// A record on [`EVENTS_MAP`]: one denied or audited `connect()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()` at the decision.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// Thread group id (the process id users see).
    pub pid: u32,
    pub workload_id: u32,
    pub service_id: u32,
    /// Destination the application asked for.
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub action: u8,
    pub reason: u8,
    pub matched: u8,
    /// 4 or 6: the socket family; for [`Layer::Socket`], the `AF_*` number.
    pub family: u8,
    /// [`Layer`]. For [`Layer::Socket`], `port` is the socket type and `proto`
    /// the protocol asked for.
    pub layer: u8,
    /// `comm` of the calling thread, NUL padded.
    pub comm: [u8; 16],
    pub _pad2: [u8; 4],
}
const _: () = assert!(size_of::<Event>() == 72);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], Copy, made only of integers and byte arrays,
    // with every padding byte an explicit field: any bit pattern is valid.
    unsafe impl aya::Pod for WorkloadValue {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for CidrValue {}
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for PolicyCidrValue {}
    unsafe impl aya::Pod for OrigDest {}
    unsafe impl aya::Pod for StatKey {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for DnsConfig {}
    unsafe impl aya::Pod for UdpNatKey {}
    unsafe impl aya::Pod for UdpNatValue {}
    unsafe impl aya::Pod for LearnedKey {}
    unsafe impl aya::Pod for LearnedValue {}
    unsafe impl aya::Pod for TrafficKey {}
    unsafe impl aya::Pod for TrafficValue {}
    unsafe impl aya::Pod for RateBucket {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for SockTag {}
    unsafe impl aya::Pod for IfaceValue {}
    unsafe impl aya::Pod for NeighKey {}
    unsafe impl aya::Pod for NeighValue {}
}
