//! `dbs::runtime::supervise::exit_on_panic`: a panic on any thread (a plain named one, a
//! worker of the peer's pool, the timer wheel, the main thread, two at once) is logged with
//! the thread's name and message and ends the process with exit code 70.
//!
//! The hook is process-wide and exits, so each case runs in a child process: this test
//! executable again, running only [`child_process`] with `DBS_SUPERVISE_CHILD` naming the case.

use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dbs::runtime::pool::BoundedPool;
use dbs::runtime::supervise::{PANIC_EXIT_CODE, exit_on_panic};
use dbs::runtime::timer::TimerService;

/// Names the case [`child_process`] runs; unset in a normal test run.
const CHILD: &str = "DBS_SUPERVISE_CHILD";

/// How long a child waits for the panic to end it before giving up (and exiting 0, which its
/// parent reports as a failure).
const GIVE_UP: Duration = Duration::from_secs(10);

/// The child side: does nothing unless `DBS_SUPERVISE_CHILD` is set; then installs the hook
/// (except for case `unhooked-worker`) and panics as the case says.
#[test]
fn child_process() {
    let Ok(case) = std::env::var(CHILD) else {
        return;
    };
    if case == "tracing" {
        tracing::subscriber::set_global_default(PrefixSubscriber).unwrap();
    }
    if case != "unhooked-worker" {
        exit_on_panic();
    }
    // Nobody sends on this channel: waiting on it is waiting for the panic to end the process.
    let (_keep, never) = crossbeam_channel::bounded::<()>(0);
    match case.as_str() {
        "thread" | "tracing" => {
            let t = std::thread::Builder::new()
                .name("recv-MDB".into())
                .spawn(|| panic!("boom on a named thread"))
                .unwrap();
            let _ = t.join();
        }
        "worker" | "unhooked-worker" => {
            let pool = BoundedPool::new(2, 1 << 20);
            pool.execute(|| panic!("boom on a worker"));
            // Without the hook the pool replaces the worker and goes on as if nothing happened.
            pool.join();
            pool.execute(|| ());
            pool.join();
            if case == "unhooked-worker" {
                println!("pool still running");
                return;
            }
        }
        "timer" => {
            let timers = TimerService::start(Duration::from_millis(1), 16, |n: u32| {
                panic!("boom on the timer, event {n}")
            });
            timers.schedule(Duration::from_millis(5), 7);
            let _ = never.recv_timeout(GIVE_UP);
        }
        "main" => panic!("boom on the thread that installed the hook"),
        "two" => {
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = ["first", "second"]
                .into_iter()
                .map(|name| {
                    let barrier = barrier.clone();
                    std::thread::Builder::new()
                        .name(name.into())
                        .spawn(move || {
                            barrier.wait();
                            panic!("boom on {name}")
                        })
                        .unwrap()
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
        }
        other => panic!("unknown case {other}"),
    }
    let _ = never.recv_timeout(GIVE_UP);
}

/// Runs `case` in a child process; its exit code and stderr. A child still running after a
/// minute (a hook that neither exits nor lets it end) is killed and fails the test.
fn run_child(case: &str) -> (Option<i32>, String) {
    let mut stderr_file = tempfile::tempfile().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process", "--test-threads", "1"])
        .env(CHILD, case)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(stderr_file.try_clone().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    stderr_file.seek(SeekFrom::Start(0)).unwrap();
    stderr_file.read_to_string(&mut stderr).unwrap();
    eprintln!("---- case {case}: {status:?}\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("case {case}: still running after a minute"));
    (status.code(), stderr)
}

#[track_caller]
fn assert_ended_by_panic(case: &str, thread: &str, message: &str) -> String {
    let (code, stderr) = run_child(case);
    assert_eq!(code, Some(PANIC_EXIT_CODE), "{case}: {stderr}");
    let logged = format!("thread '{thread}' panicked at ");
    let line = stderr
        .lines()
        .find(|l| l.contains(&logged))
        .unwrap_or_else(|| panic!("{case}: no {logged:?} in {stderr:?}"));
    assert!(
        line.contains(message) && line.contains("tests/supervise.rs:"),
        "{case}: {line:?} lacks {message:?} or the place"
    );
    assert!(line.contains("exiting with code 70"), "{case}: {line:?}");
    stderr
}

#[test]
fn a_panic_on_a_named_thread_ends_the_process_with_70() {
    assert_ended_by_panic("thread", "recv-MDB", "boom on a named thread");
}

#[test]
fn a_panic_on_a_pool_worker_ends_the_process_with_70() {
    assert_ended_by_panic("worker", "worker", "boom on a worker");
}

/// The control: without the hook, the panicked worker is silently replaced and the process
/// ends as if all went well. This is what `exit_on_panic` is for.
#[test]
fn without_the_hook_a_panicked_worker_goes_unnoticed() {
    let (code, stderr) = run_child("unhooked-worker");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("exiting with code"), "{stderr}");
}

#[test]
fn a_panic_on_the_timer_thread_ends_the_process_with_70() {
    assert_ended_by_panic("timer", "timer-wheel", "boom on the timer, event 7");
}

#[test]
fn a_panic_on_the_main_thread_ends_the_process_with_70() {
    // The test harness runs the child's test on a thread named after it.
    assert_ended_by_panic(
        "main",
        "child_process",
        "boom on the thread that installed the hook",
    );
}

#[test]
fn two_threads_panicking_at_once_end_the_process_once_with_70() {
    let (code, stderr) = run_child("two");
    assert_eq!(code, Some(PANIC_EXIT_CODE), "{stderr}");
    // At least the first is logged (the second may not get to it before the exit).
    assert!(
        stderr.contains("thread 'first' panicked") || stderr.contains("thread 'second' panicked"),
        "{stderr}"
    );
}

#[test]
fn with_a_tracing_subscriber_the_panic_is_logged_through_it() {
    let stderr = assert_ended_by_panic("tracing", "recv-MDB", "boom on a named thread");
    assert!(
        stderr.contains("TRACED ERROR thread 'recv-MDB' panicked"),
        "{stderr}"
    );
}

/// A tracing subscriber that writes each event's level and message to stderr, prefixed with
/// `TRACED`.
struct PrefixSubscriber;

impl tracing::Subscriber for PrefixSubscriber {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "TRACED {} {}",
            event.metadata().level(),
            message.0
        );
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
