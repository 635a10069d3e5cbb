//! Load generator and servers for `cargo xtask bench`. Every loop is bounded in
//! count and in time. Results are one JSON object on stdout.
//!
//! servers (run until killed):
//!   egress-bench echo-server ADDR        64-byte request → 64-byte reply, then close
//!   egress-bench bulk-server ADDR        sends bytes until the client closes
//! clients:
//!   egress-bench conn ADDR COUNT CONC MAX_SECS    short connections
//!   egress-bench deny ADDR COUNT                   connects expected to fail
//!   egress-bench bulk ADDR BYTES MAX_SECS          one long transfer
//!   egress-bench dns SERVER NAME COUNT CONC        UDP queries for NAME (A)
//!   egress-bench wait ADDR MAX_MS                  connect until it works; when

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MSG: usize = 64;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Process CPU time (user + system) in seconds, of this process.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn echo_server(addr: SocketAddr) {
    let l = TcpListener::bind(addr).expect("bind");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; MSG];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
            // The server closes first, as in the peer baseline.
        });
    }
}

fn bulk_server(addr: SocketAddr) {
    let l = TcpListener::bind(addr).expect("bind");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let chunk = vec![0u8; 256 * 1024];
            while s.write_all(&chunk).is_ok() {}
        });
    }
}

fn conn(addr: SocketAddr, count: usize, conc: usize, max: Duration) -> serde_json::Value {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let threads: Vec<_> = (0..conc.max(1))
        .map(|_| {
            let (next, errors, lat) = (next.clone(), errors.clone(), lat.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut buf = [7u8; MSG];
                while next.fetch_add(1, Ordering::Relaxed) < count && start.elapsed() < max {
                    let t = Instant::now();
                    match TcpStream::connect(addr) {
                        Ok(mut s) => {
                            mine.push(t.elapsed().as_secs_f64() * 1e6);
                            let ok = s.write_all(&buf).is_ok() && s.read_exact(&mut buf).is_ok();
                            if !ok {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    let done = l.len();
    serde_json::json!({
        "connections": done,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": secs,
        "rate": done as f64 / secs,
        "connect_p50_us": percentile(&l, 0.5),
        "connect_p99_us": percentile(&l, 0.99),
        "client_cpu_us_per_conn": if done > 0 { cpu * 1e6 / done as f64 } else { 0.0 },
    })
}

fn deny(addr: SocketAddr, count: usize) -> serde_json::Value {
    let mut l = Vec::with_capacity(count);
    let mut unexpected = 0;
    let start = Instant::now();
    for _ in 0..count {
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        let t = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(_) => unexpected += 1,
            Err(_) => l.push(t.elapsed().as_secs_f64() * 1e6),
        }
    }
    l.sort_by(f64::total_cmp);
    serde_json::json!({
        "attempts": l.len() + unexpected,
        "connected": unexpected,
        "denied_p50_us": percentile(&l, 0.5),
        "denied_p99_us": percentile(&l, 0.99),
    })
}

fn bulk(addr: SocketAddr, bytes: u64, max: Duration) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let start = Instant::now();
    while got < bytes && start.elapsed() < max {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    serde_json::json!({ "bytes": got, "seconds": secs, "gbit_per_s": got as f64 * 8.0 / secs / 1e9 })
}

/// A minimal A query for `name` with id `id`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns(server: SocketAddr, name: &str, count: usize, conc: usize) -> serde_json::Value {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let start = Instant::now();
    let threads: Vec<_> = (0..conc.max(1))
        .map(|i| {
            let (next, errors, lat, name) =
                (next.clone(), errors.clone(), lat.clone(), name.to_owned());
            std::thread::spawn(move || {
                let bind = if server.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let sock = UdpSocket::bind(bind).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut mine = Vec::new();
                let mut buf = [0u8; 1500];
                let mut id = (i as u16).wrapping_mul(7919);
                while next.fetch_add(1, Ordering::Relaxed) < count
                    && start.elapsed() < Duration::from_secs(60)
                {
                    id = id.wrapping_add(1);
                    let q = query(&name, id);
                    let t = Instant::now();
                    if sock.send_to(&q, server).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    loop {
                        match sock.recv_from(&mut buf) {
                            Ok((n, _)) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                                mine.push(t.elapsed().as_secs_f64() * 1e6);
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    serde_json::json!({
        "queries": l.len(),
        "errors": errors.load(Ordering::Relaxed),
        "qps": l.len() as f64 / secs,
        "p50_us": percentile(&l, 0.5),
        "p99_us": percentile(&l, 0.99),
    })
}

/// Tries to connect every 100 µs until it works; reports the wall-clock time of
/// the first success (Unix ns), to time how fast a policy change takes effect.
fn wait(addr: SocketAddr, max: Duration) -> serde_json::Value {
    let start = Instant::now();
    let mut attempts = 0u64;
    while start.elapsed() < max {
        attempts += 1;
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let t_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            let _ = s.write_all(&[0u8; MSG]);
            return serde_json::json!({"ok": true, "t_ns": t_ns, "attempts": attempts});
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    serde_json::json!({"ok": false, "attempts": attempts})
}

/// Pins this process to one CPU when `EGRESS_BENCH_CPU` names one: the bench
/// keeps its client and its servers apart so they do not preempt each other.
fn pin_cpu() {
    let Some(cpu) = std::env::var("EGRESS_BENCH_CPU")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    else {
        return;
    };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn main() {
    pin_cpu();
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        a.get(i)
            .cloned()
            .unwrap_or_else(|| panic!("missing argument {i}; see the source header"))
    };
    let addr = |i: usize| arg(i).parse::<SocketAddr>().expect("address");
    let num = |i: usize| arg(i).parse::<u64>().expect("number");
    let out = match arg(1).as_str() {
        "echo-server" => {
            echo_server(addr(2));
            return;
        }
        "bulk-server" => {
            bulk_server(addr(2));
            return;
        }
        "conn" => conn(
            addr(2),
            num(3).min(1_000_000) as usize,
            num(4).min(256) as usize,
            Duration::from_secs(num(5).min(120)),
        ),
        "deny" => deny(addr(2), num(3).min(100_000) as usize),
        "bulk" => bulk(addr(2), num(3), Duration::from_secs(num(4).min(120))),
        "dns" => dns(
            addr(2),
            &arg(3),
            num(4).min(1_000_000) as usize,
            num(5).min(64) as usize,
        ),
        "wait" => wait(addr(2), Duration::from_millis(num(3).min(60_000))),
        other => panic!("unknown mode {other}"),
    };
    println!("{out}");
}
