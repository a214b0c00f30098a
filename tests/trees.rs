//! Backups people can use for their files, on real peers: directory trees as one operation,
//! restores to a chosen place that never replace a file unless forced, modes and mtimes kept,
//! versions, LIST, and a file that changes while it is read.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, random_bytes, wait_until};
use serde_json::Value;

/// Writes `len` pseudo-random bytes (seeded by `seed`) to `path`, creating its directories.
fn write(path: &Path, len: usize, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, random_bytes(len, seed)).unwrap();
}

/// Sets a file's mtime to `secs` after the epoch.
fn set_mtime(path: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// A tree with nested directories, an empty file, files on and past the 64,000-byte chunk
/// boundary, a private file with an old mtime, a symbolic link and a FIFO.
fn make_tree(root: &Path) -> Vec<PathBuf> {
    let files = [
        ("a/x.txt", 10),
        ("b/x.txt", 11),
        ("b/c/edge", 64_000),
        ("b/c/two-chunks", 128_001),
        ("empty", 0),
        ("deep/1/2/3/f", 3_000),
    ];
    let mut paths = Vec::new();
    for (i, (name, len)) in files.into_iter().enumerate() {
        let p = root.join(name);
        write(&p, len, i as u64 + 1);
        paths.push(p);
    }
    std::fs::set_permissions(root.join("a/x.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&root.join("b/x.txt"), 1_577_934_245); // 2020-01-02
    std::os::unix::fs::symlink("a/x.txt", root.join("link")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .unwrap();
    assert!(fifo.success());
    paths
}

fn list(c: &Cluster, path: Option<&Path>) -> Value {
    let mut args = vec!["--json".to_string(), c.ap(1), "LIST".into()];
    args.extend(path.map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.testapp(&args).ok().json()
}

/// The newest version of each listed path: path → (state, version).
fn newest(list: &Value) -> Vec<(String, String, u64)> {
    list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let v = p["versions"].as_array().unwrap().last().unwrap();
            (
                p["path"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
                v["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_tree_is_backed_up_restored_and_deleted_as_one_operation() {
    let c = Cluster::start(4);
    let src = c.dir.path().join("src");
    let files = make_tree(&src);
    let s = src.display().to_string();

    let run = c.testapp(&["--json", &c.ap(1), "BACKUP", &s, "2"]).ok();
    let doc = run.json();
    assert_eq!(doc["files"], 6, "{doc}");
    assert_eq!(doc["unchanged"], 0, "{doc}");
    assert_eq!(doc["links"], 1, "{doc}");
    assert_eq!(
        doc["skipped"],
        serde_json::json!([src.join("fifo")]),
        "special files are skipped and named: {doc}"
    );
    // Again: every file is unchanged and skipped.
    let again = c
        .testapp(&["--json", &c.ap(1), "BACKUP", &s, "2"])
        .ok()
        .json();
    assert_eq!(
        (again["files"].clone(), again["unchanged"].clone()),
        (0.into(), 6.into()),
        "{again}"
    );

    // LIST: every file complete at degree 2 or more, the link as a link.
    let listed = list(&c, Some(&src));
    let mut expect: Vec<(String, String, u64)> = files
        .iter()
        .map(|p| (p.display().to_string(), "complete".into(), 1))
        .collect();
    expect.push((src.join("link").display().to_string(), "link".into(), 1));
    expect.sort();
    assert_eq!(newest(&listed), expect);
    for p in listed["files"].as_array().unwrap() {
        let v = &p["versions"][0];
        if v["state"] == "complete" {
            assert!(v["lowest_degree"].as_u64().unwrap() >= 2, "{p}");
        }
    }

    // RESTORE to a chosen place: the paths below src, under out/src, with modes and mtimes.
    let out = c.dir.path().join("out");
    let o = out.display().to_string();
    let restored = c
        .testapp(&["--json", &c.ap(1), "RESTORE", &s, "--to", &o])
        .ok()
        .json();
    assert_eq!(restored["files"], 7, "{restored}");
    for p in &files {
        let r = out.join("src").join(p.strip_prefix(&src).unwrap());
        assert_eq!(
            std::fs::read(&r).unwrap(),
            std::fs::read(p).unwrap(),
            "{}",
            r.display()
        );
        let (a, b) = (
            std::fs::metadata(p).unwrap(),
            std::fs::metadata(&r).unwrap(),
        );
        assert_eq!(
            a.mode() & 0o7777,
            b.mode() & 0o7777,
            "mode of {}",
            r.display()
        );
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "mtime of {}",
            r.display()
        );
    }
    assert_eq!(
        std::fs::read_link(out.join("src/link")).unwrap(),
        Path::new("a/x.txt")
    );
    assert!(!out.join("src/fifo").exists());

    // DELETE of the tree: every file, one operation; no peer keeps a chunk.
    let deleted = c.testapp(&["--json", &c.ap(1), "DELETE", &s]).ok().json();
    assert_eq!(
        deleted["file_ids"].as_array().unwrap().len(),
        7,
        "{deleted}"
    );
    assert!(list(&c, None)["files"].as_array().unwrap().is_empty());
    assert!(wait_until(Duration::from_secs(10), || (2..=4).all(|id| c
        .state(id)["stored"]
        .as_array()
        .unwrap()
        .is_empty())));
    c.assert_idle(&[1, 2, 3, 4]);
}

#[test]
fn restores_never_replace_a_file_unless_forced() {
    let c = Cluster::start(3);
    let a = c.dir.path().join("a/x.txt");
    let b = c.dir.path().join("b/x.txt");
    write(&a, 100, 1);
    write(&b, 200, 2);
    for f in [&a, &b] {
        c.testapp(&[&c.ap(1), "BACKUP", &f.display().to_string(), "2"])
            .ok();
    }
    let restored = c.peer_dir(1).join("restored/x.txt");
    let restore = |f: &Path, extra: &[&str]| {
        let f = f.display().to_string();
        let ap = c.ap(1);
        let mut args = vec![ap.as_str(), "RESTORE", f.as_str()];
        args.extend_from_slice(extra);
        c.testapp(&args)
    };
    restore(&a, &[]).ok();
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&a).unwrap()
    );
    // The same content already there: done, nothing rewritten.
    let again = restore(&a, &[]).ok();
    assert!(again.stdout.contains("already holds"), "{}", again.stdout);
    // Another file of the same name: refused, the first one stays.
    let refused = restore(&b, &[]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&a).unwrap()
    );
    restore(&b, &["--force"]).ok();
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&b).unwrap()
    );

    // A tree restored over a changed copy: that file fails, the others are there; --force
    // replaces it.
    let dir = c.dir.path().display().to_string();
    let out = c.dir.path().join("out");
    let o = out.display().to_string();
    c.testapp(&[&c.ap(1), "RESTORE", &dir, "--to", &o]).ok();
    let name = c.dir.path().file_name().unwrap();
    let copy = out.join(name).join("a/x.txt");
    std::fs::write(&copy, b"edited").unwrap();
    let partial = c.testapp(&["--json", &c.ap(1), "RESTORE", &dir, "--to", &o]);
    assert_eq!(partial.code, 1, "{}", partial.stdout);
    let doc = partial.json();
    assert_eq!(doc["kind"], "incomplete", "{doc}");
    assert_eq!(doc["failed"][0]["path"], serde_json::json!(a), "{doc}");
    assert_eq!(std::fs::read(&copy).unwrap(), b"edited");
    c.testapp(&[&c.ap(1), "RESTORE", &dir, "--to", &o, "--force"])
        .ok();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&a).unwrap());
}

#[test]
fn versions_are_kept_listed_and_restored_by_number() {
    let c = Cluster::start(3);
    let f = c.dir.path().join("notes.txt");
    let s = f.display().to_string();
    let mut contents = Vec::new();
    for n in 1..=3u64 {
        write(&f, 1_000 + n as usize, n);
        contents.push(std::fs::read(&f).unwrap());
        c.testapp(&[&c.ap(1), "BACKUP", &s, "2", "--keep", "2"])
            .ok();
    }
    let listed = list(&c, Some(&f));
    let versions: Vec<u64> = listed["files"][0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![2, 3], "{listed}");
    let out = c.dir.path().join("v2");
    let o = out.display().to_string();
    c.testapp(&[&c.ap(1), "RESTORE", &s, "--version", "2", "--to", &o])
        .ok();
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), contents[1]);
    // The default is the newest; a version no longer kept is refused.
    c.testapp(&[&c.ap(1), "RESTORE", &s]).ok();
    assert_eq!(
        std::fs::read(c.peer_dir(1).join("restored/notes.txt")).unwrap(),
        contents[2]
    );
    let gone = c.testapp(&["--json", &c.ap(1), "RESTORE", &s, "--version", "1"]);
    assert_eq!(gone.code, 3);
    assert_eq!(gone.json()["kind"], "not_backed_up");
    // The peers hold the chunks of the two versions kept only.
    let ids: Vec<String> = listed["files"][0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["file_id"].as_str().unwrap().to_string())
        .collect();
    assert!(wait_until(Duration::from_secs(10), || {
        (2..=3).all(|id| {
            c.state(id)["stored"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| ids.iter().any(|i| s["file_id"] == i.as_str()))
        })
    }));
}

#[test]
fn a_file_that_changes_while_it_is_backed_up_is_reported_and_not_kept() {
    let mut c = Cluster::empty();
    c.spawn(1, &["--rate", "1"]); // 1 MB/s: a 3 MB file takes 3 s to send
    c.spawn(2, &[]);
    c.spawn(3, &[]);
    let f = c.dir.path().join("log.bin");
    let s = f.display().to_string();
    write(&f, 1_000, 1);
    let first = std::fs::read(&f).unwrap();
    c.testapp(&[&c.ap(1), "BACKUP", &s, "2"]).ok();
    write(&f, 3_000_000, 2);
    let backup = c.testapp_in_background(&["--json", &c.ap(1), "BACKUP", &s, "2"]);
    assert!(wait_until(Duration::from_secs(10), || {
        newest(&list(&c, Some(&f)))
            .first()
            .is_some_and(|n| n.1 == "running")
    }));
    // Someone appends to the file while it is read.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"more"))
        .unwrap();
    let run = backup.join().unwrap();
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["kind"], "source_unreadable", "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("changed while it was read"),
        "{doc}"
    );
    // Only the first version is left, and a restore gives it back.
    assert_eq!(
        newest(&list(&c, Some(&f))),
        vec![(s.clone(), "complete".into(), 1)]
    );
    c.testapp(&[&c.ap(1), "RESTORE", &s]).ok();
    assert_eq!(
        std::fs::read(c.peer_dir(1).join("restored/log.bin")).unwrap(),
        first
    );
}

#[test]
fn a_tree_operation_streams_progress_in_files_and_bytes() {
    use std::io::{BufRead, BufReader, Write};
    let c = Cluster::start(3);
    let src = c.dir.path().join("many");
    for i in 0..200 {
        write(&src.join(format!("d{}/f{i}", i % 4)), 5_000, i);
    }
    let mut socket =
        std::os::unix::net::UnixStream::connect(c.runtime.join(format!("{}.sock", c.ap(1))))
            .unwrap();
    let request = serde_json::json!({"op": "backup", "path": src, "degree": 2});
    socket.write_all(format!("{request}\n").as_bytes()).unwrap();
    let lines: Vec<Value> = BufReader::new(socket)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let (last, progress) = lines.split_last().unwrap();
    assert_eq!(last["type"], "done", "{last}");
    assert_eq!(last["result"]["files"], 200, "{last}");
    assert!(!progress.is_empty(), "no progress line");
    let mut done = 0;
    for p in progress {
        assert_eq!(p["type"], "progress");
        assert_eq!(p["total"], 200 * 5_000, "bytes in all: {p}");
        assert_eq!(p["files"][1], 200, "{p}");
        let d = p["done"].as_u64().unwrap();
        assert!(d >= done && d <= 1_000_000, "bytes done go up: {p}");
        done = d;
    }
}

#[test]
fn a_tree_restore_never_writes_through_a_link_out_of_its_target() {
    let c = Cluster::start(3);
    let src = c.dir.path().join("proj");
    write(&src.join("d/x"), 100, 1);
    write(&src.join("y"), 100, 2);
    let s = src.display().to_string();
    c.testapp(&[&c.ap(1), "BACKUP", &s, "2"]).ok();
    // In the target, proj/d is a link to a directory elsewhere.
    let out = c.dir.path().join("out");
    let elsewhere = c.dir.path().join("elsewhere");
    std::fs::create_dir_all(out.join("proj")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("proj/d")).unwrap();
    let o = out.display().to_string();
    let run = c.testapp(&["--json", &c.ap(1), "RESTORE", &s, "--to", &o, "--force"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let doc = run.json();
    assert_eq!(
        doc["failed"][0]["path"],
        serde_json::json!(src.join("d/x")),
        "{doc}"
    );
    assert!(
        doc["failed"][0]["message"]
            .as_str()
            .unwrap()
            .contains("leads out of"),
        "{doc}"
    );
    assert!(!elsewhere.join("x").exists(), "written through the link");
    assert_eq!(
        std::fs::read(out.join("proj/y")).unwrap(),
        std::fs::read(src.join("y")).unwrap()
    );
}
