//! A backup that outlives its home, on real peers: the catalog is backed up into the group,
//! a home whose disk died gets it back with RECOVER and restores its tree; generations do not
//! pile up; RECOVER with no catalog fails clearly; two live processes with one id are found.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, random_bytes, wait_until};

/// Peer options of these tests: the catalog is published within 0.2 s of a change.
const FAST: &[&str] = &["--catalog-interval", "0.2"];

fn enhanced_cluster(n: u32) -> Cluster {
    let mut c = Cluster::empty();
    for id in 1..=n {
        c.spawn_version(id, "2.0", FAST);
    }
    c
}

/// A tree of `n` files in nested directories, with various modes and mtimes.
fn make_tree(root: &Path, n: usize) {
    for i in 0..n {
        let p = root.join(format!("d{}/e{}/f{i}", i % 3, i % 5));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, random_bytes(1_000 + i * 997, i as u64)).unwrap();
        let mode = if i % 2 == 0 { 0o640 } else { 0o755 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i as u64 * 3_600);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

/// Every file below `root`: relative path → (bytes, mode, mtime).
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>, u32, i64)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let m = std::fs::metadata(&p).unwrap();
                out.push((
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                    m.mode() & 0o7777,
                    m.mtime(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The file id of the newest catalog generation of `files` files a peer's log says it
/// published.
pub fn catalog_published(log: &str, files: usize) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let rest = l.split("publishing catalog generation ").nth(1)?;
        let (_, rest) = rest.split_once(" as file ")?;
        let (id, counts) = rest.split_once(": ")?;
        counts
            .starts_with(&format!("{files} file(s)"))
            .then(|| id.to_string())
    })
}

/// File ids peer `id` stores chunks of that are not among `users` (catalog generations).
fn catalog_files_at(c: &Cluster, id: u32, users: &BTreeSet<String>) -> BTreeSet<String> {
    c.state(id)["stored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file_id"].as_str().unwrap().to_string())
        .filter(|f| !users.contains(f))
        .collect()
}

fn user_file_ids(c: &Cluster, id: u32) -> BTreeSet<String> {
    let list = c.testapp(&["--json", &c.ap(id), "LIST"]).ok().json();
    list["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["versions"].as_array().unwrap().clone())
        .map(|v| v["file_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_home_whose_disk_died_recovers_its_catalog_and_restores_its_tree() {
    let mut c = enhanced_cluster(4);
    let src = c.dir.path().join("home/thesis");
    make_tree(&src, 50);
    let before = snapshot(&src);
    let s = src.display().to_string();
    c.testapp(&[&c.ap(1), "BACKUP", &s, "2"]).ok();

    // The catalog reaches every other peer (degree 3 with 3 others), one generation each.
    let users = user_file_ids(&c, 1);
    assert_eq!(users.len(), 50);
    assert!(
        wait_until(Duration::from_secs(20), || (2..=4)
            .all(|id| catalog_files_at(&c, id, &users).len() == 1)),
        "catalog holders: {:?}",
        (2..=4)
            .map(|id| catalog_files_at(&c, id, &users))
            .collect::<Vec<_>>()
    );

    // More changes make new generations; the old ones are deleted (no pile-up).
    for i in 0..3 {
        let extra = c.make_file(&format!("extra{i}"), 2_000 + i);
        c.testapp(&[&c.ap(1), "BACKUP", extra.to_str().unwrap(), "2"])
            .ok();
    }
    let users = user_file_ids(&c, 1);
    // The generation that lists all 53 files, and then only it at every holder.
    let mut newest = None;
    assert!(wait_until(Duration::from_secs(20), || {
        newest = catalog_published(&c.log(1), 53);
        newest.is_some()
    }));
    let newest = newest.unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || (2..=4).all(
            |id| catalog_files_at(&c, id, &users) == BTreeSet::from([newest.clone()])
        )),
        "generations pile up: {:?}",
        (2..=4)
            .map(|id| catalog_files_at(&c, id, &users))
            .collect::<Vec<_>>()
    );

    // The disk dies: the home's tree and the originals are gone; one catalog holder is down.
    c.kill(1);
    std::fs::remove_dir_all(c.peer_dir(1)).unwrap();
    std::fs::remove_dir_all(c.dir.path().join("home")).unwrap();
    c.kill(4);
    c.spawn_version(1, "2.0", FAST);
    assert!(wait_until(Duration::from_secs(10), || c
        .log(1)
        .contains("run RECOVER")));
    let state = c.state(1);
    assert!(state["backed_up"].as_array().unwrap().is_empty());

    let run = c.testapp(&["--json", &c.ap(1), "RECOVER"]).ok();
    let doc = run.json();
    assert_eq!(doc["paths"], 53, "{doc}");
    assert!(doc["generation"].as_u64().unwrap() >= 2, "{doc}");

    let out = c.dir.path().join("back");
    let o = out.display().to_string();
    c.testapp(&[&c.ap(1), "RESTORE", &s, "--to", &o]).ok();
    assert!(
        snapshot(&out.join("thesis")) == before,
        "restored tree differs"
    );
    // VERIFY works again on the recovered catalog (its keys and proofs came back too).
    let verify = c.testapp(&["--json", &c.ap(1), "VERIFY", &s]).ok().json();
    assert_eq!(verify["unconfirmed"], 0, "{verify}");
}

/// Secure peers (`--group-key`, `--data-key`): the catalog travels and is stored encrypted
/// (no path in it can be read on a holder's disk), and after the home's disk dies the same id
/// with the same keys gets it back with RECOVER and restores the tree.
#[test]
fn a_secure_home_recovers_its_encrypted_catalog_with_its_keys() {
    let mut c = Cluster::empty();
    let key = |name: &str, secret: &[u8]| {
        let path = c.dir.path().join(name);
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    };
    let group = key("group.key", b"a secure group's secret of 32+ bytes");
    let data: Vec<String> = (1..=4)
        .map(|id| key(&format!("data{id}.key"), &[id as u8; 32]))
        .collect();
    let args = |id: u32| {
        let mut a: Vec<&str> = FAST.to_vec();
        a.extend(["--group-key", &group, "--data-key", &data[id as usize - 1]]);
        a
    };
    for id in 1..=4 {
        c.spawn_version(id, "2.0", &args(id));
    }
    let src = c.dir.path().join("home/secret-thesis");
    make_tree(&src, 20);
    let before = snapshot(&src);
    let s = src.display().to_string();
    c.testapp(&[&c.ap(1), "BACKUP", &s, "2"]).ok();
    let users = user_file_ids(&c, 1);
    assert_eq!(users.len(), 20);
    assert!(wait_until(Duration::from_secs(20), || (2..=4)
        .all(|id| catalog_files_at(&c, id, &users).len() == 1)));
    for id in 2..=4 {
        for f in catalog_files_at(&c, id, &users) {
            for chunk in c.chunk_files(id, &f) {
                let body = std::fs::read(&chunk).unwrap();
                assert!(
                    !body.windows(13).any(|w| w == b"secret-thesis"),
                    "a path in clear in {chunk:?}"
                );
            }
        }
    }
    c.kill(1);
    std::fs::remove_dir_all(c.peer_dir(1)).unwrap();
    std::fs::remove_dir_all(c.dir.path().join("home")).unwrap();
    c.spawn_version(1, "2.0", &args(1));
    // A rogue member (it has the group key) announces a newer generation of peer 1's catalog
    // while RECOVER asks: its file id cannot be peer 1's (that takes peer 1's data key), so it
    // is not even tried.
    let forged = format!(
        "CATALOG 2.0 3 {} 1 99 1000 5 {} \r\n\r\n",
        "ab".repeat(32),
        "cd".repeat(32)
    );
    let flood = std::thread::spawn({
        let (channel, key) = (c.channels[0], c.dir.path().join("group.key"));
        move || {
            let sender = common::sender();
            let key = std::sync::Arc::new(dbs::secure::GroupKey::load(&key).unwrap());
            for i in 0..100u64 {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let seal = dbs::secure::Sealer::new(key.clone(), now.as_micros() as u64 + i);
                let _ = sender.send_to(
                    &seal.seal(forged.as_bytes(), now.as_millis() as u64),
                    channel,
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let run = c.testapp(&["--json", &c.ap(1), "RECOVER"]).ok();
    flood.join().unwrap();
    assert_eq!(run.json()["paths"], 20, "{}", run.stdout);
    assert!(
        run.json()["generation"].as_u64().unwrap() < 99,
        "{}",
        run.stdout
    );
    let out = c.dir.path().join("back");
    let o = out.display().to_string();
    c.testapp(&[&c.ap(1), "RESTORE", &s, "--to", &o]).ok();
    assert!(
        snapshot(&out.join("secret-thesis")) == before,
        "restored tree differs"
    );
}

#[test]
fn recover_fails_clearly_without_a_catalog_and_is_refused_where_it_makes_no_sense() {
    let mut c = enhanced_cluster(2);
    let run = c.testapp(&["--json", &c.ap(1), "RECOVER"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let doc = run.json();
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("no catalog of peer 1"),
        "{doc}"
    );
    let f = c.make_file("mine", 100);
    c.testapp(&[&c.ap(1), "BACKUPENH", f.to_str().unwrap(), "1"])
        .ok();
    let run = c.testapp(&["--json", &c.ap(1), "RECOVER"]);
    assert_eq!(run.code, 3);
    assert_eq!(run.json()["kind"], "bad_request");
    c.spawn(3, &[]); // 1.0
    let run = c.testapp(&["--json", &c.ap(3), "RECOVER"]);
    assert_eq!(run.code, 3);
    assert_eq!(run.json()["kind"], "unsupported");
}

#[test]
fn two_live_peers_with_one_id_are_found_and_publish_no_catalog() {
    let c = enhanced_cluster(2);
    // A second process with id 1: its own tree and access point.
    let mut args = c.peer_args(1);
    args[2] = "twin".into();
    let twin = std::process::Command::new(common::bin("peer"))
        .args(&args)
        .args(["--dir", c.dir.path().join("twin").to_str().unwrap()])
        .args(FAST)
        .env("DBS_RUNTIME_DIR", &c.runtime)
        .stderr(std::fs::File::create(c.dir.path().join("twin.log")).unwrap())
        .spawn()
        .unwrap();
    let _twin = Guard(twin);
    let said = |log: &str| log.contains("another live peer process uses id 1");
    assert!(wait_until(Duration::from_secs(10), || {
        said(&c.log(1))
            && said(&std::fs::read_to_string(c.dir.path().join("twin.log")).unwrap_or_default())
    }));
    let f = c.make_file("mine", 100);
    c.testapp(&[&c.ap(1), "BACKUPENH", f.to_str().unwrap(), "1"])
        .ok();
    assert!(wait_until(Duration::from_secs(5), || c
        .log(1)
        .contains("not publishing the catalog")));
}

/// A process killed when dropped.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
