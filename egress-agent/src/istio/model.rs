//! Small vocabulary types of the registry: resolution, location, protocol.

/// `spec.resolution` (SPEC §2.5).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

impl Resolution {
    /// Parses the field; `Err` carries the unsupported value.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("NONE") {
            "NONE" => Ok(Self::None),
            "STATIC" => Ok(Self::Static),
            "DNS" => Ok(Self::Dns),
            "DNS_ROUND_ROBIN" => Ok(Self::DnsRoundRobin),
            "DYNAMIC_DNS" => Ok(Self::DynamicDns),
            other => Err(other.to_owned()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Static => "STATIC",
            Self::Dns => "DNS",
            Self::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Self::DynamicDns => "DYNAMIC_DNS",
        }
    }
}

/// `spec.location` (SPEC §2.6): a metric label, never a reachability change.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

impl Location {
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("MESH_EXTERNAL") {
            "MESH_EXTERNAL" => Ok(Self::MeshExternal),
            "MESH_INTERNAL" => Ok(Self::MeshInternal),
            other => Err(other.to_owned()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MeshExternal => "MESH_EXTERNAL",
            Self::MeshInternal => "MESH_INTERNAL",
        }
    }
}

/// Port protocols (SPEC §2.7), parsed case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Unset,
    Tcp,
    Udp,
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    HttpProxy,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
}

/// The L4 transport a port is enforced on (SPEC §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn proto(self) -> u8 {
        match self {
            Self::Tcp => egress_common::PROTO_TCP,
            Self::Udp => egress_common::PROTO_UDP,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl Protocol {
    /// `None` for an unsupported protocol (SE-P7). `DoubleHBONE` never parses
    /// (Istio lowercases before comparing with the mixed-case literal).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "" => Self::Unset,
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "http" => Self::Http,
            "http2" => Self::Http2,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "http_proxy" => Self::HttpProxy,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::Mysql,
            _ => return None,
        })
    }

    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Self::Tcp | Self::Https | Self::Tls | Self::Mongo | Self::Redis | Self::Mysql
        )
    }

    pub fn is_http(self) -> bool {
        matches!(
            self,
            Self::Http | Self::Http2 | Self::HttpProxy | Self::Grpc | Self::GrpcWeb
        )
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }

    pub fn transport(self) -> Transport {
        if self == Self::Udp {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_table() {
        assert_eq!(Protocol::parse("tcp"), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse("GRPC-Web"), Some(Protocol::GrpcWeb));
        assert_eq!(Protocol::parse("HTTPS").map(Protocol::is_tls), Some(true));
        assert_eq!(Protocol::parse("HTTPS").map(Protocol::is_tcp), Some(true));
        assert_eq!(Protocol::parse("SCTP"), None);
        assert_eq!(Protocol::parse("DoubleHBONE"), None);
        assert_eq!(
            Protocol::parse("UDP").map(Protocol::transport),
            Some(Transport::Udp)
        );
        assert!(
            !Protocol::Unset.is_tcp() && !Protocol::Unset.is_http() && !Protocol::Unset.is_tls()
        );
    }
}
