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

/// `n` nodes sharing a new store (a database of its own, one data directory).
struct Cluster {
    nodes: Vec<Node>,
    db: PgDb,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let port = std::env::var("VFOLDERFS_TEST_PG_PORT").expect(
            "VFOLDERFS_TEST_PG_PORT is not set: run scripts/test.sh (it starts PostgreSQL)",
        );
        let ca = std::env::var("VFOLDERFS_TEST_PG_CA").expect("VFOLDERFS_TEST_PG_CA");
        let db = PgDb::new();
        let dir = tempfile::Builder::new()
            .prefix("vfolderfs-cluster-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("shared");
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let net = Net::new();
                Node {
                    name: format!("node{}", i + 1),
                    // TLS with the chain checked (the address is not in the
                    // certificate, so not verify-full).
                    url: format!(
                        "postgres://vfolderfs@{}:{port}/{}?sslmode=verify-ca&sslrootcert={ca}",
                        net.host_ip, db.name
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
    let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
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
    let target = c._dir.path().join("session-target");
    let mut session = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", n2.net.ns))
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
            "\"$B\" --store \"$U\" --data \"$D\" attach data --session s1 --target \"$T\" \
             --mount \"$M\" >/dev/null && echo attached && exec sleep 120",
        )
        .env("B", common::bin())
        .env("U", &n2.url)
        .env("D", &n2.data)
        .env("T", &target)
        .env("M", &n2.mnt)
        .env("VFOLDERFS_NODE", &n2.name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let session = Kill(&mut session);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(session.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "attached");
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
