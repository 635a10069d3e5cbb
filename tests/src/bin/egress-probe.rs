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
//! `egress-probe mix REGISTERED UNREGISTERED MILLIS RATE` — connections alternating
//! between the two addresses, paced at RATE per second for MILLIS ms (at most 60 s
//! and 200 000 attempts); each one that connects sends one line and closes. One
//! JSON summary: outcomes per address, with the time of each failure.

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
        Some("mix") => {
            let other: SocketAddr = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
            let ms: u64 = args.get(4).and_then(|n| n.parse().ok()).expect(usage);
            let rate: u64 = args.get(5).and_then(|n| n.parse().ok()).expect(usage);
            println!(
                "{}",
                mix(addr, other, ms.min(60_000), rate.clamp(1, 20_000))
            );
        }
        _ => panic!("{usage}"),
    }
}

/// Paced connections alternating between `reg` and `unreg`; see the module doc.
fn mix(reg: SocketAddr, unreg: SocketAddr, ms: u64, rate: u64) -> serde_json::Value {
    use std::time::Instant;
    let start = Instant::now();
    let until = Duration::from_millis(ms);
    #[derive(Default)]
    struct Tally {
        ok: u64,
        refused: u64,
        other: u64,
        failures: Vec<(u64, i32)>,
    }
    let mut t = [Tally::default(), Tally::default()];
    let mut n: u64 = 0;
    while start.elapsed() < until && n < 200_000 {
        let due = Duration::from_micros(n * 1_000_000 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let which = (n % 2) as usize;
        let to = if which == 0 { reg } else { unreg };
        let at = start.elapsed().as_millis() as u64;
        match TcpStream::connect_timeout(&to, Duration::from_millis(1000)) {
            Ok(mut s) => {
                let _ = s.write_all(b"mix\n");
                t[which].ok += 1;
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(-1);
                if errno == libc::EPERM {
                    t[which].refused += 1;
                } else {
                    t[which].other += 1;
                }
                // Refusals of the unregistered address are what is expected.
                if (which == 0 || errno != libc::EPERM) && t[which].failures.len() < 50 {
                    t[which].failures.push((at, errno));
                }
            }
        }
        n += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let tally = |t: &Tally| serde_json::json!({"ok": t.ok, "refused": t.refused, "other": t.other, "failures": t.failures});
    serde_json::json!({
        "attempts": n,
        "seconds": elapsed,
        "rate": n as f64 / elapsed,
        "registered": tally(&t[0]),
        "unregistered": tally(&t[1]),
    })
}
