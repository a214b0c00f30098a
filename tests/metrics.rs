//! End to end: `peer --metrics` serves Prometheus metrics over HTTP that agree with STATE.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, bin};
use serde_json::Value;

const K: usize = 64_000;

/// The options that turn metrics on at a free loopback port.
const METRICS: [&str; 2] = ["--metrics", "127.0.0.1:0"];

/// The metrics URL peer `id` logged at its (last) start.
fn metrics_url(c: &Cluster, id: u32) -> String {
    c.log(id)
        .lines()
        .filter_map(|l| {
            l.split_once("metrics on ")
                .map(|(_, url)| url.trim().to_string())
        })
        .next_back()
        .unwrap_or_else(|| panic!("peer {id} logged no metrics address:\n{}", c.log(id)))
}

/// The address in a metrics URL.
fn addr_of(url: &str) -> SocketAddr {
    let rest = url.strip_prefix("http://").expect("http URL");
    rest.strip_suffix("/metrics")
        .expect("/metrics URL")
        .parse()
        .expect("IP:PORT")
}

/// An HTTP client that reads every status as a response, and reaches loopback directly
/// whatever the proxy settings.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A GET of `url`: status, content type, body.
fn get(url: &str) -> (u16, String, String) {
    let mut resp = agent().get(url).call().expect("GET");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.body_mut().read_to_string().expect("body");
    (resp.status().as_u16(), content_type, body)
}

/// The samples of an exposition text: series (name and labels, as written) to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            (series.to_string(), value.parse().expect("sample value"))
        })
        .collect()
}

/// Peer `id`'s whole STATE document.
fn full_state(c: &Cluster, id: u32) -> Value {
    c.testapp(&["--json", &c.ap(id), "STATE"]).ok().json()
}

/// Asserts that the metric `series` lies between its STATE figure before the scrape and after.
fn between(m: &HashMap<String, f64>, series: &str, before: &Value, after: &Value) {
    let got = *m
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in the metrics: {m:?}"));
    let (lo, hi) = (before.as_f64().unwrap(), after.as_f64().unwrap());
    assert!(
        lo <= got && got <= hi,
        "{series} = {got}, STATE said {lo} before the scrape and {hi} after"
    );
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn metrics_agree_with_state_after_a_backup() {
    let mut c = Cluster::empty();
    for id in 1..=3 {
        c.spawn(id, &METRICS);
    }
    c.spawn(4, &[]);
    assert!(
        !c.log(4).contains("metrics on"),
        "metrics are off unless asked for: {}",
        c.log(4)
    );
    let path = c.make_file("watched", 3 * K + 10);
    let run = c
        .testapp(&["--json", &c.ap(1), "BACKUP", path.to_str().unwrap(), "2"])
        .ok();
    assert_eq!(run.json()["ok"], true);
    c.assert_idle(&[1, 2, 3, 4]);

    let mut stored_here = 0.0;
    for id in 1..=3 {
        let url = metrics_url(&c, id);
        let before = full_state(&c, id);
        let (status, content_type, body) = get(&url);
        let after = full_state(&c, id);
        assert_eq!(status, 200, "{body}");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        let m = samples(&body);
        let (bc, ac) = (&before["counters"], &after["counters"]);

        // The figures of an idle peer are the STATE's.
        let n = |v: &Value| v.as_array().unwrap().len() as f64;
        assert_eq!(m["dbs_stored_chunks"], n(&before["stored"]), "peer {id}");
        assert_eq!(m["dbs_stored_chunks"], n(&after["stored"]), "peer {id}");
        assert_eq!(
            m["dbs_backed_up_files"],
            n(&before["backed_up"]),
            "peer {id}"
        );
        assert_eq!(
            m["dbs_capacity_bytes"],
            before["capacity_kb"].as_f64().unwrap() * 1000.0
        );
        assert_eq!(
            m["dbs_stored_bytes"],
            (before["used_kb"].as_f64().unwrap() * 1000.0).round()
        );
        assert_eq!(
            m[&format!("dbs_peer_info{{peer_id=\"{id}\",protocol_version=\"1.0\"}}")],
            1.0
        );
        stored_here += m["dbs_stored_chunks"];

        // Every counter of STATE is there, between its values before and after the scrape.
        let mut counters = 0;
        for (key, value) in bc.as_object().unwrap() {
            if value.is_u64() && !["instances", "timers"].contains(&key.as_str()) {
                between(&m, &format!("dbs_{key}_total"), value, &ac[key]);
                counters += 1;
            }
        }
        assert!(counters >= 15, "only {counters} counters in {bc}");
        between(&m, "dbs_instances", &bc["instances"], &ac["instances"]);
        for channel in ["MC", "MDB", "MDR"] {
            for outcome in ["ok", "own", "malformed", "dropped"] {
                between(
                    &m,
                    &format!(
                        "dbs_datagrams_received_total{{channel=\"{channel}\",outcome=\"{outcome}\"}}"
                    ),
                    &bc["datagrams"][channel][outcome],
                    &ac["datagrams"][channel][outcome],
                );
            }
        }
        let mc_ok = m["dbs_datagrams_received_total{channel=\"MC\",outcome=\"ok\"}"];
        assert!(mc_ok > 0.0, "peer {id} handled no MC datagram");
        for kind in bc["instances_by_kind"].as_object().unwrap().keys() {
            assert_eq!(m[&format!("dbs_instances_by_kind{{kind=\"{kind}\"}}")], 0.0);
        }
        // Nothing below its degree: the backup reached it everywhere.
        assert_eq!(
            m["dbs_chunks_below_desired_degree{chunks=\"backed_up\"}"],
            0.0
        );
        if id != 1 {
            let mdb_ok = m["dbs_datagrams_received_total{channel=\"MDB\",outcome=\"ok\"}"];
            assert!(mdb_ok >= 4.0, "peer {id} took {mdb_ok} PUTCHUNKs");
            assert_eq!(m["dbs_backed_up_files"], 0.0);
        }
    }
    // Peer 4 (no metrics) may hold some of them too.
    stored_here += c.state(4)["stored"].as_array().unwrap().len() as f64;
    assert!(
        stored_here >= 8.0,
        "4 chunks at degree 2: {stored_here} stored"
    );

    // The initiator counts the backup among the operations that ended well, as STATE does.
    let url = metrics_url(&c, 1);
    let m = samples(&get(&url).2);
    assert_eq!(
        m["dbs_operations_total{kind=\"BACKUP\",result=\"ok\"}"],
        1.0
    );
    assert_eq!(
        m["dbs_operations_total{kind=\"BACKUP\",result=\"failed\"}"],
        0.0
    );
    assert_eq!(m["dbs_backed_up_files"], 1.0);
    assert_eq!(m["dbs_backed_up_chunks"], 4.0);
    let ops = &full_state(&c, 1)["counters"]["operations"];
    assert_eq!(ops["BACKUP"]["ok"], 1, "{ops}");
    // A refused DELETE counts as failed.
    let missing = c.dir.path().join("never-backed-up");
    assert_eq!(
        c.testapp(&[&c.ap(1), "DELETE", missing.to_str().unwrap()])
            .code,
        3
    );
    let m = samples(&get(&url).2);
    assert_eq!(
        m["dbs_operations_total{kind=\"DELETE\",result=\"failed\"}"],
        1.0
    );

    // Only /metrics is served.
    let other = url.replace("/metrics", "/other");
    let (status, _, body) = get(&other);
    assert_eq!(status, 404, "{body}");

    // Scrapers cost the peer no thread: connections wait their turn on the one server thread.
    let pid = c.pid(2);
    let url2 = metrics_url(&c, 2);
    let before = threads(pid);
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(addr_of(&url2)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // (At most as many: a thread of an earlier access-point client may have ended meanwhile.)
    let open = threads(pid);
    assert!(
        open <= before,
        "{open} threads with 16 connections open, {before} before"
    );
    drop(idle);
    let t = Instant::now();
    assert_eq!(get(&url2).0, 200);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // At shutdown the server stops with the peer.
    assert_eq!(c.stop(1), Some(0), "{}", c.log(1));
    assert!(
        TcpStream::connect(addr_of(&url)).is_err(),
        "metrics still served after the peer stopped"
    );
}

#[test]
fn metrics_off_loopback_need_allow_remote() {
    let mut c = Cluster::empty();
    let refused = |extra: &[&str]| {
        let out = Command::new(bin("peer"))
            .args(c.peer_args(1))
            .arg("--dir")
            .arg(c.peer_dir(1))
            .args(extra)
            .env("DBS_RUNTIME_DIR", &c.runtime)
            .output()
            .expect("run peer");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = refused(&["--metrics", "10.0.0.1:9464"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--metrics 10.0.0.1:9464 is not on loopback")
            && stderr.contains("--allow-remote"),
        "{stderr}"
    );
    let (code, stderr) = refused(&["--metrics", "localhost"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not IP:PORT"), "{stderr}");
    assert!(!c.peer_dir(1).exists(), "a refused peer made its tree");

    // With --allow-remote, any address: the wildcard one here (inside the test's own network).
    c.spawn(1, &["--allow-remote", "--metrics", "0.0.0.0:0"]);
    let url = metrics_url(&c, 1);
    let port = addr_of(&url).port();
    assert!(url.starts_with("http://0.0.0.0:"), "{url}");
    let (status, _, body) = get(&format!("http://127.0.0.1:{port}/metrics"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("dbs_stored_chunks 0\n"), "{body}");
    assert_eq!(c.stop(1), Some(0), "{}", c.log(1));
}
