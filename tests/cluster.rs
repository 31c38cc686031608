//! Several nodes sharing one PostgreSQL store: each node is a mount daemon
//! (and its CLI) in a network namespace of its own, reaching the database
//! over a veth pair and TCP with TLS, all sharing one data directory (the
//! stand-in for NFS). Needs root, /dev/fuse, `ip` and the PostgreSQL server
//! `scripts/test.sh` starts; fails (never skips) without them.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{PgDb, eventually};

/// Runs a command, insisting on success.
fn run(cmd: &[&str]) {
    let o = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A network namespace joined to the host by a veth pair: the host end
/// has `host_ip`, where the test PostgreSQL listens too. Removed on drop.
struct Net {
    ns: String,
    host_if: String,
    host_ip: String,
}

impl Net {
    fn new() -> Net {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let r: [u8; 2] = *uuid::Uuid::new_v4().as_bytes().first_chunk().unwrap();
        let (c, d) = (r[0], (r[1] % 64) * 4);
        let net = Net {
            ns: format!("vfs-{tag}"),
            host_if: format!("vfh{tag}"),
            host_ip: format!("10.213.{c}.{}", d + 1),
        };
        let node_if = format!("vfn{tag}");
        let node_ip = format!("10.213.{c}.{}/30", d + 2);
        run(&["ip", "netns", "add", &net.ns]);
        run(&[
            "ip",
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &node_if,
        ]);
        run(&["ip", "link", "set", &node_if, "netns", &net.ns]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", net.host_ip),
            "dev",
            &net.host_if,
        ]);
        run(&["ip", "link", "set", &net.host_if, "up"]);
        let inns = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &net.ns, "ip"];
            v.extend_from_slice(args);
            run(&v);
        };
        inns(&["addr", "add", &node_ip, "dev", &node_if]);
        inns(&["link", "set", &node_if, "up"]);
        inns(&["link", "set", "lo", "up"]);
        net
    }

    /// Cuts the link (a partition).
    fn down(&self) {
        run(&["ip", "link", "set", &self.host_if, "down"]);
    }

    /// Restores the link.
    fn up(&self) {
        run(&["ip", "link", "set", &self.host_if, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// One node: its namespace, its database URL (through its veth, with TLS)
/// and, once mounted, its mount point. Unmounts on drop, before its
/// namespace goes.
struct Node {
    name: String,
    url: String,
    data: PathBuf,
    mnt: PathBuf,
    net: Net,
}

impl Node {
    /// The command line of `vfolderfs` run on this node.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.net.ns))
            .arg("--")
            .arg(common::bin())
            .args(["--store", &self.url, "--data"])
            .arg(&self.data)
            .args(args)
            .env("VFOLDERFS_NODE", &self.name)
            .env_remove("RUST_LOG");
        c
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{}: vfolderfs {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn mount(&self, extra: &[&str]) {
        std::fs::create_dir_all(&self.mnt).unwrap();
        let mut args = vec!["mount", self.mnt.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.ok(&args);
        assert!(common::is_mounted(&self.mnt));
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn daemon_pid(&self) -> Option<i32> {
        let want = format!(" mount {} ", self.mnt.display());
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&want) && !cmd.starts_with("nsenter") {
                return Some(pid);
            }
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !common::is_mounted(&self.mnt) {
            return;
        }
        let pid = self.daemon_pid();
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(pid) = pid {
            // The daemon forgets its record on the way out; wait for it.
            eventually(Duration::from_secs(20), || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
                    .unwrap_or(true)
            });
        }
    }
}

/// The PostgreSQL server the nodes reach: the one `scripts/test.sh`
/// started, or one of the test's own that it may restart (stopped on drop).
struct Server {
    admin: String,
    port: String,
    ca: String,
    /// For a server of the test's own: its password file and directory.
    own: Option<(String, tempfile::TempDir)>,
}

impl Server {
    fn shared() -> Server {
        let env = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!("{k} is not set: run scripts/test.sh (it starts PostgreSQL)")
            })
        };
        Server {
            admin: common::pg_admin_url(),
            port: env("VFOLDERFS_TEST_PG_PORT"),
            ca: env("VFOLDERFS_TEST_PG_CA"),
            own: None,
        }
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-server.sh")
    }

    /// A server of this test's own (`scripts/pg-server.sh`).
    fn own() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("vfolderfs-pg-")
            .tempdir()
            .unwrap();
        let o = Command::new(Self::script())
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "starting a PostgreSQL server: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8(o.stdout).unwrap();
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("{k} missing in {out}"))
        };
        let passfile = get("PGPASSFILE");
        Server {
            admin: format!("{}&passfile={passfile}", get("VFOLDERFS_TEST_PG")),
            port: get("VFOLDERFS_TEST_PG_PORT"),
            ca: get("VFOLDERFS_TEST_PG_CA"),
            own: Some((passfile, dir)),
        }
    }

    /// Restarts a server of the test's own (a database restart).
    fn restart(&self) {
        let (_, dir) = self.own.as_ref().expect("only a server of the test's own");
        run(&[
            Self::script().to_str().unwrap(),
            "restart",
            dir.path().to_str().unwrap(),
        ]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((_, dir)) = &self.own {
            let _ = Command::new(Self::script())
                .arg("stop")
                .arg(dir.path())
                .status();
        }
    }
}

/// `n` nodes sharing a new store (a database of its own, one data directory).
struct Cluster {
    nodes: Vec<Node>,
    db: PgDb,
    _server: Server,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Self::on(n, Server::shared())
    }

    fn on(n: usize, server: Server) -> Cluster {
        let db = PgDb::on(&server.admin);
        let dir = tempfile::Builder::new()
            .prefix("vfolderfs-cluster-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("shared");
        let passfile = match &server.own {
            Some((f, _)) => format!("&passfile={f}"),
            None => String::new(),
        };
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let net = Net::new();
                Node {
                    name: format!("node{}", i + 1),
                    // TLS with the chain checked (the address is not in the
                    // certificate, so not verify-full).
                    url: format!(
                        "postgres://vfolderfs@{}:{}/{}?sslmode=verify-ca&sslrootcert={}{passfile}",
                        net.host_ip, server.port, db.name, server.ca
                    ),
                    data: data.clone(),
                    mnt: dir.path().join(format!("mnt{}", i + 1)),
                    net,
                }
            })
            .collect();
        nodes[0].ok(&["init"]);
        for n in &nodes[1..] {
            assert!(n.ok(&["init"]).contains("already exists"));
        }
        Cluster {
            nodes,
            db,
            _server: server,
            _dir: dir,
        }
    }

    fn history(&self, name: &str) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.nodes[0].ok(&["history", name, "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn append(p: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)?;
    f.write_all(line.as_bytes())
}

#[test]
fn a_delete_on_node1_is_in_force_on_node2_when_it_returns() {
    let c = Cluster::new(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.mount(&[]);
    n2.mount(&[]);
    // Both mounts are recorded, each with its own node name and instance.
    let nodes: serde_json::Value = serde_json::from_str(&n1.ok(&["nodes", "--json"])).unwrap();
    let list = nodes["nodes"].as_array().unwrap();
    let mut names: Vec<&str> = list.iter().map(|m| m["node"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["node1", "node2"]);
    assert!(list.iter().all(|m| m["live"] == true), "{nodes}");
    assert_ne!(list[0]["instance"], list[1]["instance"]);

    n1.ok(&["create", "shared"]);
    // Node 2 sees it (the change reached it) and writes into it.
    assert!(eventually(Duration::from_secs(10), || n2
        .p("shared")
        .is_dir()));
    std::fs::write(n2.p("shared/log"), "one\n").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(n2.p("shared/log"))
        .unwrap();
    f.write_all(b"two\n").unwrap();
    // Node 1's delete returns once every live node confirmed it...
    n1.ok(&["delete", "shared"]);
    // ... so node 2 refuses at once, through the open handle and anew.
    let e = f.write_all(b"three\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(append(&n2.p(".trash/shared/log"), "four\n").is_err());
    assert_eq!(
        std::fs::read_to_string(n1.p(".trash/shared/log")).unwrap(),
        "one\ntwo\n"
    );
    // Both nodes applied the change.
    let nodes: serde_json::Value = serde_json::from_str(&n2.ok(&["nodes", "--json"])).unwrap();
    let head = nodes["head_rev"].as_u64().unwrap();
    for m in nodes["nodes"].as_array().unwrap() {
        assert!(m["applied_rev"].as_u64().unwrap() <= head);
    }
}

/// A session on `node`: a mount namespace of its own there, with `name`
/// attached at `target` through the node's mount; killed on drop.
struct Session(std::process::Child);

impl Session {
    fn start(node: &Node, name: &str, target: &Path) -> Session {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.net.ns))
            .args([
                "--",
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(
                "\"$B\" --store \"$U\" --data \"$D\" attach \"$N\" --session s1 --target \"$T\" \
                 --mount \"$M\" >/dev/null && echo attached && exec sleep 120",
            )
            .env("B", common::bin())
            .env("U", &node.url)
            .env("D", &node.data)
            .env("N", name)
            .env("T", target)
            .env("M", &node.mnt)
            .env("VFOLDERFS_NODE", &node.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let s = Session(child);
        assert_eq!(line.trim(), "attached");
        s
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_attach_on_node2_blocks_a_delete_from_node1() {
    let c = Cluster::new(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n2.mount(&[]);
    n1.ok(&["create", "data"]);
    assert!(eventually(Duration::from_secs(10), || n2
        .p("data")
        .is_dir()));
    // A session on node 2: a mount namespace of its own that stays alive.
    let session = Session::start(n2, "data", &c._dir.path().join("session-target"));
    let o = n1.cli(&["delete", "data"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("attached to 1 session"), "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&n1.ok(&["show", "data", "--json"])).unwrap()["status"],
        "ready"
    );
    drop(session);
    // With the session gone and its record removed, node 1 may delete.
    n2.ok(&["detach", "--session", "s1"]);
    n1.ok(&["delete", "data"]);
}

#[test]
fn sixteen_processes_over_the_nodes_race_one_transition_exactly_one_wins() {
    let c = Cluster::new(2);
    c.nodes[0].mount(&[]);
    c.nodes[1].mount(&[]);
    c.nodes[0].ok(&["create", "contested"]);
    let children: Vec<_> = (0..16)
        .map(|i| {
            c.nodes[i % 2]
                .cmd(&["delete", "contested"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|ch| ch.wait_with_output().unwrap())
        .collect();
    let wins = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        wins,
        1,
        "{:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect::<Vec<_>>()
    );
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("no vfolder named") || err.contains("its status is delete-pending"),
            "{err}"
        );
    }
    let deletes = c
        .history("contested")
        .iter()
        .filter(|e| e["to"] == "delete-pending")
        .count();
    assert_eq!(deletes, 1);
}

#[test]
fn a_purge_requested_on_every_node_runs_once() {
    let c = Cluster::new(3);
    for n in &c.nodes {
        n.mount(&[]);
    }
    let n1 = &c.nodes[0];
    n1.ok(&["create", "big"]);
    for i in 0..300 {
        std::fs::write(n1.p(&format!("big/f{i}")), b"x").unwrap();
    }
    let id = serde_json::from_str::<serde_json::Value>(&n1.ok(&["show", "big", "--json"])).unwrap()
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    n1.ok(&["delete", "big"]);
    // Every node asks for the purge at once (and every node's pool sees it).
    let children: Vec<_> = c
        .nodes
        .iter()
        .flat_map(|n| [n, n])
        .map(|n| {
            n.cmd(&["purge", &id])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|ch| ch.wait_with_output().unwrap())
        .collect();
    assert!(
        outs.iter().any(|o| o.status.success()),
        "{:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect::<Vec<_>>()
    );
    assert!(eventually(Duration::from_secs(30), || {
        serde_json::from_str::<serde_json::Value>(&n1.ok(&["show", &id, "--json"])).unwrap()["status"]
            == "delete-complete"
    }));
    let h = c.history(&id);
    let count = |to: &str| h.iter().filter(|e| e["to"] == to).count();
    assert_eq!(count("delete-ongoing"), 1, "{h:?}");
    assert_eq!(count("delete-complete"), 1, "{h:?}");
    assert_eq!(count("delete-error"), 0, "{h:?}");
    // The job is gone with its claim: nobody purges it again.
    let jobs: i64 =
        c.db.client()
            .query_one("SELECT count(*) FROM jobs", &[])
            .unwrap()
            .get(0);
    assert_eq!(jobs, 0);
}

#[test]
fn a_partitioned_node_refuses_writes_after_its_lease_and_resumes_when_the_link_returns() {
    let c = Cluster::new(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.mount(&["-o", "lease=1s"]);
    n2.mount(&["-o", "lease=1s"]);
    n1.ok(&["create", "p"]);
    assert!(eventually(Duration::from_secs(10), || n2.p("p").is_dir()));
    std::fs::write(n2.p("p/from2"), "before\n").unwrap();
    n2.net.down();
    struct Up<'a>(&'a Net);
    impl Drop for Up<'_> {
        fn drop(&mut self) {
            self.0.up();
        }
    }
    let up = Up(&n2.net);
    // Node 2 cannot confirm its view: past its lease its writes are refused...
    assert!(
        eventually(Duration::from_secs(30), || append(&n2.p("p/from2"), "x\n")
            .is_err()),
        "node 2 kept accepting writes while cut off"
    );
    // ... and stay refused while the link is down; reads go on.
    std::thread::sleep(Duration::from_secs(2));
    assert!(append(&n2.p("p/from2"), "y\n").is_err());
    assert!(std::fs::read_to_string(n2.p("p/from2")).is_ok());
    // Node 1 works on meanwhile.
    for i in 0..20 {
        std::fs::write(n1.p(&format!("p/from1-{i}")), format!("{i}\n")).unwrap();
    }
    n1.ok(&["create", "during"]);
    drop(up);
    // Back: node 2 resumes by itself, with what changed meanwhile.
    assert!(
        eventually(Duration::from_secs(60), || append(
            &n2.p("p/from2"),
            "after\n"
        )
        .is_ok()),
        "node 2 did not resume after the link came back"
    );
    assert!(eventually(Duration::from_secs(10), || n2
        .p("during")
        .is_dir()));
    for i in 0..20 {
        assert_eq!(
            std::fs::read_to_string(n2.p(&format!("p/from1-{i}"))).unwrap(),
            format!("{i}\n")
        );
    }
    let log = std::fs::read_to_string(n1.p("p/from2")).unwrap();
    assert!(
        log.starts_with("before\n") && log.ends_with("after\n"),
        "{log:?}"
    );
}

fn status(n: &Node, name: &str) -> String {
    let o = n.cli(&["show", name, "--json"]);
    if !o.status.success() {
        return String::new();
    }
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Whether process `pid` is stopped (state `T`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
        .unwrap_or(false)
}

/// Runs a job on `node` in its CLI with a short claim lease, stopping
/// itself just before its final step (`point`), then kills it (-9): a
/// node that dies mid-job.
fn die_before(node: &Node, args: &[&str], point: &str) {
    let mut child = node
        .cmd(args)
        .env("VFOLDERFS_JOB_LEASE_MS", "1000")
        .env("VFOLDERFS_TEST_STOP_AT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // nsenter execs the binary: the child is the job's process.
    let pid = child.id();
    let reached = eventually(Duration::from_secs(60), || stopped(pid));
    let _ = child.kill();
    let _ = child.wait();
    assert!(reached, "{args:?} never reached {point}");
}

#[test]
fn a_node_killed_mid_purge_is_finished_by_another() {
    let c = Cluster::new(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n2.mount(&[]);
    n1.ok(&["create", "doomed"]);
    assert!(eventually(Duration::from_secs(10), || n2
        .p("doomed")
        .is_dir()));
    for i in 0..50 {
        std::fs::write(n2.p(&format!("doomed/f{i}")), b"x").unwrap();
    }
    n1.ok(&["delete", "doomed"]);
    die_before(n1, &["purge", "doomed"], "purge-end");
    // Node 2's pool takes the job over once node 1's claim has lapsed (on
    // the database's clock: node 1 is another node, judged by its lease).
    assert!(
        eventually(Duration::from_secs(60), || status(n1, "doomed")
            == "delete-complete"),
        "node 2 never finished the purge"
    );
    let h = c.history("doomed");
    assert_eq!(
        h.iter().filter(|e| e["to"] == "delete-complete").count(),
        1,
        "{h:?}"
    );
    assert!(
        h.last().unwrap()["cause"]
            .as_str()
            .is_some_and(|c| !c.contains("cli")),
        "{h:?}"
    );
}

#[test]
fn a_node_killed_mid_clone_is_rolled_back_by_another() {
    let c = Cluster::new(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n2.mount(&[]);
    n1.ok(&["create", "src"]);
    assert!(eventually(Duration::from_secs(10), || n2.p("src").is_dir()));
    for i in 0..50 {
        std::fs::write(n2.p(&format!("src/f{i}")), format!("{i}")).unwrap();
    }
    die_before(n1, &["clone", "src", "dst"], "clone-end");
    // Node 2 takes the clone over: a resumed clone is rolled back, its
    // partial target purged, the source ready again.
    assert!(
        eventually(Duration::from_secs(60), || status(n1, "src") == "ready"
            && status(n1, "dst") == "delete-complete"),
        "node 2 never ended the clone: src {}, dst {}",
        status(n1, "src"),
        status(n1, "dst")
    );
    for i in 0..50 {
        assert_eq!(
            std::fs::read_to_string(n2.p(&format!("src/f{i}"))).unwrap(),
            format!("{i}")
        );
    }
    std::fs::write(n2.p("src/after"), "writable again").unwrap();
}

#[test]
fn a_database_restart_under_load_needs_no_remount() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let c = Cluster::on(2, Server::own());
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.mount(&[]);
    n2.mount(&[]);
    n1.ok(&["create", "busy"]);
    assert!(eventually(Duration::from_secs(10), || n2
        .p("busy")
        .is_dir()));
    let stop = AtomicBool::new(false);
    let ok = [AtomicUsize::new(0), AtomicUsize::new(0)];
    std::thread::scope(|s| {
        for (i, n) in [n1, n2].into_iter().enumerate() {
            let (stop, ok) = (&stop, &ok[i]);
            s.spawn(move || {
                let f = n.p(&format!("busy/w{i}"));
                while !stop.load(Ordering::Relaxed) {
                    if append(&f, "x\n").is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        c._server.restart();
        // Status changes go on through the restart, confirmed by both nodes.
        n1.ok(&["create", "after"]);
        n2.ok(&["delete", "busy"]);
        stop.store(true, Ordering::Relaxed);
    });
    assert!(ok.iter().all(|n| n.load(Ordering::Relaxed) > 0));
    // Both mounts, never remounted, enforce the change made after the restart...
    for n in [n1, n2] {
        assert!(append(&n.p(".trash/busy/w0"), "late\n").is_err());
    }
    // ... and serve writes again where the status allows them.
    for n in [n1, n2] {
        assert!(
            eventually(Duration::from_secs(30), || append(&n.p("after/ok"), "y\n")
                .is_ok()),
            "{} did not recover",
            n.name
        );
    }
    // Their job pools work again too: a queued purge is run by one of them.
    n1.ok(&["purge", "busy", "--no-wait"]);
    assert!(
        eventually(Duration::from_secs(60), || status(n1, "busy")
            == "delete-complete"),
        "no mount's pool ran the purge after the restart"
    );
    let nodes: serde_json::Value = serde_json::from_str(&n1.ok(&["nodes", "--json"])).unwrap();
    let live = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["live"] == true)
        .count();
    assert_eq!(live, 2, "{nodes}");
}

#[test]
fn pruning_on_node1_leaves_node2s_attachments_alone() {
    let c = Cluster::new(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n2.mount(&[]);
    n1.ok(&["create", "data"]);
    assert!(eventually(Duration::from_secs(10), || n2
        .p("data")
        .is_dir()));
    let _session = Session::start(n2, "data", &c._dir.path().join("session-target"));
    // Node 1 is another host: it sees none of node 2's processes or
    // namespaces (a pid namespace of its own with its own /proc).
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", n1.net.ns))
        .args(["--", "unshare", "--pid", "--fork", "--mount-proc"])
        .arg(common::bin())
        .args(["--store", &n1.url, "--data"])
        .arg(&n1.data)
        .args(["sessions", "--prune"])
        .env("VFOLDERFS_NODE", &n1.name)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list: serde_json::Value = serde_json::from_str(&n1.ok(&["sessions", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["node"], "node2");
    // So the attachment still blocks a delete from node 1.
    let o = n1.cli(&["delete", "data"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("attached to 1 session"));
}

#[test]
fn a_mount_serves_only_the_store_it_started_with() {
    let c = Cluster::new(1);
    let n1 = &c.nodes[0];
    n1.mount(&[]);
    n1.ok(&["create", "v"]);
    std::fs::write(n1.p("v/f"), "1\n").unwrap();
    let id: String =
        c.db.client()
            .query_one("SELECT value FROM store_info WHERE key = 'id'", &[])
            .unwrap()
            .get(0);
    // Another store's database in its place: writes are refused, until the
    // database is the mount's store again.
    c.db.client()
        .execute(
            "UPDATE store_info SET value = 'another' WHERE key = 'id'",
            &[],
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || append(&n1.p("v/f"), "x\n")
            .is_err()),
        "the mount kept writing for another store"
    );
    c.db.client()
        .execute("UPDATE store_info SET value = $1 WHERE key = 'id'", &[&id])
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || append(&n1.p("v/f"), "y\n")
            .is_ok()),
        "the mount did not resume with its own store"
    );
}
