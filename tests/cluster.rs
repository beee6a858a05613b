//! Three `avap serve` processes sharing the machine's real `PostgreSQL` and
//! Redis, as a cluster behind a load balancer would: a script stored
//! through one node runs on the others, an update reaches every node within
//! a second, and one rate limit holds across the nodes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod support;

use support::{PgDatabase, Reply, Server, avap, fresh_dir};

const V1: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
const V2: &str = "addParam(name, who)\nmessage = \"Howdy, \" + who\naddResult(message)\n";

struct Cluster {
    nodes: Vec<Server>,
    admin: String,
    db: PgDatabase,
}

/// A unique Redis key namespace, so parallel tests and earlier runs never meet.
fn redis_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("avaptest-{tag}-{}-{nanos}", std::process::id())
}

fn node(dir: &Path, db: &PgDatabase, prefix: &str, rate: (&str, &str)) -> Server {
    Server::spawn(node_command(dir, db, prefix, rate), dir.to_path_buf())
}

fn node_command(dir: &Path, db: &PgDatabase, prefix: &str, rate: (&str, &str)) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--require-api-key", "--data-dir"])
        .arg(dir)
        .env("AVAP_DATABASE_URL", &db.url)
        .env("AVAP_REDIS_URL", "redis://127.0.0.1:6379")
        .env("AVAP_REDIS_PREFIX", prefix)
        .env("AVAP_RATE_LIMIT", rate.0)
        .env("AVAP_RATE_BURST", rate.1);
    cmd
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Three nodes on one fresh `PostgreSQL` database and one Redis namespace,
/// sharing one signing key (as a Kubernetes Secret would give them).
fn cluster(tag: &str, rate: (&str, &str)) -> Cluster {
    let db = PgDatabase::create(tag);
    let prefix = redis_prefix(tag);
    let root = fresh_dir(tag);
    let first = node(&root.join("node1"), &db, &prefix, rate);
    let mut nodes = vec![first];
    for n in 2..=3 {
        let dir = root.join(format!("node{n}"));
        copy_dir(&root.join("node1/keys"), &dir.join("keys"));
        nodes.push(node(&dir, &db, &prefix, rate));
    }
    let admin = avap(&["apikey", "create", "--scope", "admin", "--database-url", &db.url])
        .trim()
        .to_owned();
    Cluster { nodes, admin, db }
}

fn greet(server: &Server, key: &str) -> Reply {
    server.as_key(key, "GET", "/api/v1/run/greet?name=Ana", None)
}

fn message(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["result"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_script_stored_on_one_node_runs_and_updates_everywhere() {
    let c = cluster("update", ("0", "1"));
    let [n1, n2, n3] = [&c.nodes[0], &c.nodes[1], &c.nodes[2]];
    let stored = n1.as_key(
        &c.admin,
        "POST",
        "/api/v1/scripts",
        Some(&json!({"name": "greet", "source": V1})),
    );
    assert_eq!(stored.status, 201, "{}", stored.body);
    for n in [n2, n3] {
        assert_eq!(message(&greet(n, &c.admin)), "Hello, Ana");
    }
    // Node 1 caches v1 too, so the update must reach its cache.
    assert_eq!(message(&greet(n1, &c.admin)), "Hello, Ana");

    let updated = n2.as_key(
        &c.admin,
        "POST",
        "/api/v1/scripts",
        Some(&json!({"name": "greet", "source": V2})),
    );
    assert_eq!(updated.status, 201, "{}", updated.body);
    let changed = Instant::now();
    for n in [n1, n3] {
        loop {
            let now = message(&greet(n, &c.admin));
            if now == "Howdy, Ana" {
                break;
            }
            assert_eq!(now, "Hello, Ana", "only the old or the new version");
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "node {} still runs the old version a second after the update",
                n.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let seen_within = changed.elapsed();
    assert!(seen_within < Duration::from_secs(1), "{seen_within:?}");
    eprintln!("nodes 1 and 3 ran the new version {seen_within:?} after the update on node 2");
    // Every node shows the same registry.
    for n in [n1, n2, n3] {
        let shown = n.as_key(&c.admin, "GET", "/api/v1/scripts/greet", None);
        assert_eq!(shown.json()["version"], 2, "{}", shown.body);
    }
}

#[test]
fn one_rate_limit_holds_across_nodes() {
    // 1 request per second after a burst of 12, for each API key.
    let c = cluster("ratelimit", ("1", "12"));
    let key = avap(&["apikey", "create", "--scope", "execute", "--database-url", &c.db.url])
        .trim()
        .to_owned();
    // A key is charged to its own budget once a node has verified it; each
    // node's first request with it is charged to the client's address.
    for node in &c.nodes {
        let r = node.as_key(&key, "GET", "/api/v1/scripts", None);
        assert_eq!(r.status, 403, "an execute key may not list scripts: {}", r.body);
    }
    let started = Instant::now();
    let mut allowed = 0_u64;
    let mut limited = 0_u64;
    for i in 0..30 {
        let node = &c.nodes[i % 3];
        let r = node.as_key(
            &key,
            "POST",
            "/api/v1/execute",
            Some(&json!({"script": "x = 1\naddResult(x)\n"})),
        );
        match r.status {
            200 => allowed += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    let refill = started.elapsed().as_secs() + 1;
    // Three separate limiters would have let all 30 through (12 each).
    assert!(
        allowed <= 12 + refill,
        "{allowed} allowed in {:?} across three nodes",
        started.elapsed()
    );
    assert!(limited >= 30 - 12 - refill, "{limited} limited");
    // Another key has its own budget.
    let r = c.nodes[0].as_key(
        &c.admin,
        "POST",
        "/api/v1/execute",
        Some(&json!({"script": "x = 1\naddResult(x)\n"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Made-up key ids do not get fresh budgets: they are charged to the
    // address, whose budget runs out too.
    let statuses: Vec<u16> = (0..20)
        .map(|i| {
            let forged = format!("avap_{:08x}_x", 0xdead_0000_u32 + i);
            c.nodes[0]
                .as_key(
                    &forged,
                    "POST",
                    "/api/v1/execute",
                    Some(&json!({"script": "x = 1\naddResult(x)\n"})),
                )
                .status
        })
        .collect();
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&429), "forged ids escaped the limit: {statuses:?}");
}

#[test]
fn nodes_with_different_keys_say_what_to_do() {
    let db = PgDatabase::create("keymismatch");
    let prefix = redis_prefix("keymismatch");
    let root = fresh_dir("keymismatch");
    let first = node(&root.join("node1"), &db, &prefix, ("0", "1"));
    let admin = avap(&["apikey", "create", "--scope", "admin", "--database-url", &db.url])
        .trim()
        .to_owned();
    let stored = first.as_key(
        &admin,
        "POST",
        "/api/v1/scripts",
        Some(&json!({"name": "greet", "source": V1})),
    );
    assert_eq!(stored.status, 201, "{}", stored.body);
    let first_key = std::fs::read_to_string(root.join("node1/keys/server.pub")).unwrap();
    // A second node with a key of its own (the keys were not shared).
    let dir = root.join("node2");
    let log = root.join("node2.log");
    let cmd = node_command(&dir, &db, &prefix, ("0", "1"));
    let second = Server::spawn_with_stderr(cmd, dir, std::fs::File::create(&log).unwrap().into());
    let refused = greet(&second, &admin);
    assert_eq!(
        refused.error_kind(),
        (500, "ClusterKeyMismatch".to_owned()),
        "{}",
        refused.body
    );
    let said = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(said.contains("server.key") && said.contains("trusted_keys"), "{said}");
    // Its log named the key at start, before anyone asked.
    let deadline = Instant::now() + Duration::from_secs(5);
    let warned = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("which this node does not trust") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(warned.contains("which this node does not trust"), "{warned}");
    assert!(warned.contains("greet"), "{warned}");
    assert!(!first_key.is_empty());
    // Trusting the first node's key (and restarting) fixes it.
    std::fs::create_dir_all(root.join("node2/trusted_keys")).unwrap();
    std::fs::write(root.join("node2/trusted_keys/node1.pub"), &first_key).unwrap();
    drop(second);
    let second = node(&root.join("node2"), &db, &prefix, ("0", "1"));
    assert_eq!(message(&greet(&second, &admin)), "Hello, Ana");
}
