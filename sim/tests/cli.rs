//! The `dbs-sim` command line: a run's JSON summary, replaying a seed, the measurement log,
//! and bad arguments.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dbs-sim"))
        .args(args)
        .env_remove("DBS_SIM_SEED")
        .output()
        .expect("run dbs-sim")
}

fn summary(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("a summary line");
    serde_json::from_str(last).expect("the last line is one JSON object")
}

#[test]
fn json_summary_has_the_documented_fields_and_the_seed_replays() {
    let args = [
        "--peers",
        "5",
        "--files",
        "6",
        "--loss",
        "0.2",
        "--dup",
        "0.1",
        "--crash-rate",
        "1",
        "--version",
        "mixed",
        "--seed",
        "77",
        "--json",
    ];
    let a = sim(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let s = summary(&a);
    for key in [
        "seed",
        "peers",
        "ops",
        "ops_failed",
        "virtual_secs",
        "wall_secs",
        "datagrams",
        "violations",
        "trace_digest",
    ] {
        assert!(s.get(key).is_some(), "no {key} in {s}");
    }
    assert_eq!(s["seed"], 77);
    assert_eq!(s["peers"], 5);
    assert!(s["ops"].as_u64().unwrap() >= 6);
    assert!(s["datagrams"].as_u64().unwrap() > 0);
    assert_eq!(s["violations"], serde_json::json!([]));
    assert_eq!(s["trace_digest"].as_str().unwrap().len(), 64);
    // The same seed, given through the environment, replays the same run.
    let mut replay: Vec<&str> = args.to_vec();
    replay.retain(|a| *a != "--seed" && *a != "77");
    let b = Command::new(env!("CARGO_BIN_EXE_dbs-sim"))
        .args(&replay)
        .env("DBS_SIM_SEED", "77")
        .output()
        .unwrap();
    assert_eq!(summary(&b)["trace_digest"], s["trace_digest"]);
}

#[test]
fn measurement_log_has_one_line_per_simulated_second() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("m.jsonl");
    let out = sim(&[
        "--files",
        "3",
        "--seed",
        "5",
        "--json",
        "--measure",
        log.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let secs = summary(&out)["virtual_secs"].as_f64().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        (lines.len() as f64 - secs).abs() <= 2.0,
        "{} lines for {secs} s",
        lines.len()
    );
    let sent: u64 = lines
        .iter()
        .map(|l| l["sent"]["MDB"]["datagrams"].as_u64().unwrap())
        .sum();
    assert!(sent > 0);
    assert_eq!(lines[0]["stored_bytes"].as_array().unwrap().len(), 4);
}

#[test]
fn bad_arguments_exit_2_naming_the_problem() {
    for (args, says) in [
        (&["--loss", "1.5"][..], "between 0 and 1"),
        (&["--version", "3.0"][..], "1.0, 2.0 or mixed"),
        (&["--peers", "1"][..], "at least 2"),
        (&["--partition", "5"][..], "AT:LENGTH"),
        (&["--degree", "0"][..], "degree"),
    ] {
        let out = sim(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
