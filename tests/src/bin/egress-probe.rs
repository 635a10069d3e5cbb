//! A plain-socket client for the integration tests, run inside a pod's netns and
//! cgroup: connects, reports errno or getpeername() and the server's reply, as JSON.
//!
//! `egress-probe connect ADDR:PORT` — one connection.
//! `egress-probe many ADDR:PORT N` — N sequential connections, one JSON per line.
//! `egress-probe resolve NAME:PORT N` — N times: getaddrinfo(NAME with `{}` replaced
//! by the attempt number), then connect to the first address at once.
//! `egress-probe udp ADDR:PORT [connect]` — one UDP datagram (sendto, or connect
//! then send), and the reply with the address it came from.
//! `egress-probe loop ADDR:PORT MILLIS` — connections back to back for MILLIS ms
//! (at most 100 000), one JSON per line with the wall-clock time `t_ms`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn connect(addr: SocketAddr) -> serde_json::Value {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Err(e) => serde_json::json!({
            "ok": false,
            "errno": e.raw_os_error().unwrap_or(-1),
            "error": e.to_string(),
            "peer": null,
            "reply": "",
        }),
        Ok(mut s) => {
            let peer = s.peer_addr().ok().map(|p| p.to_string());
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let _ = s.write_all(b"probe\n");
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            serde_json::json!({"ok": true, "errno": 0, "error": "", "peer": peer, "reply": reply})
        }
    }
}

fn udp(addr: SocketAddr, connected: bool) -> serde_json::Value {
    let fail = |e: std::io::Error| {
        serde_json::json!({
            "ok": false, "errno": e.raw_os_error().unwrap_or(-1), "error": e.to_string(),
            "peer": null, "reply": "",
        })
    };
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = match std::net::UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let sent = if connected {
        sock.connect(addr).and_then(|()| sock.send(b"probe\n"))
    } else {
        sock.send_to(b"probe\n", addr)
    };
    if let Err(e) = sent {
        return fail(e);
    }
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            let peer = if connected {
                sock.peer_addr().ok().map(|p| p.to_string())
            } else {
                Some(from.to_string())
            };
            serde_json::json!({
                "ok": true, "errno": 0, "error": "", "peer": peer,
                "reply": String::from_utf8_lossy(&buf[..n]),
            })
        }
        Err(e) => fail(e),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: egress-probe connect ADDR:PORT | many ADDR:PORT N | loop ADDR:PORT MILLIS | resolve NAME:PORT N | udp ADDR:PORT [connect]";
    if args.get(1).map(String::as_str) == Some("resolve") {
        use std::net::ToSocketAddrs;
        let template = args.get(2).expect(usage);
        let n: usize = args.get(3).and_then(|n| n.parse().ok()).expect(usage);
        for i in 0..n.min(10_000) {
            let name = template.replace("{}", &i.to_string());
            let mut v = match name.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(addr)) => {
                    let mut v = connect(addr);
                    v["resolved"] = addr.to_string().into();
                    v
                }
                other => serde_json::json!({
                    "ok": false, "errno": -1, "error": format!("resolve {name}: {other:?}"),
                    "peer": null, "reply": "",
                }),
            };
            v["name"] = name.into();
            println!("{v}");
        }
        return;
    }
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    match args.get(1).map(String::as_str) {
        Some("connect") => println!("{}", connect(addr)),
        Some("udp") => println!("{}", udp(addr, args.get(3).is_some_and(|a| a == "connect"))),
        Some("many") => {
            let n: usize = args.get(3).and_then(|n| n.parse().ok()).expect(usage);
            for _ in 0..n.min(10_000) {
                println!("{}", connect(addr));
            }
        }
        Some("loop") => {
            let ms: u64 = args.get(3).and_then(|n| n.parse().ok()).expect(usage);
            let until = std::time::Instant::now() + Duration::from_millis(ms.min(120_000));
            let mut n = 0;
            while std::time::Instant::now() < until && n < 100_000 {
                let t_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                let mut v = connect(addr);
                v["t_ms"] = t_ms.into();
                println!("{v}");
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        _ => panic!("{usage}"),
    }
}
