//! Supervision of a process's threads: a panic on any of them ends the process.
//!
//! A peer runs many threads (receivers, senders, the commit thread, the timer wheel, the
//! worker pool, the access point). One that dies by panicking must not go unnoticed: a dead
//! receiver would leave the peer up but deaf on a channel, and the worker pool silently
//! replaces a worker that panicked, dropping whatever it was doing. [`exit_on_panic`] makes
//! every panic fatal instead: it is logged, and the process exits with [`PANIC_EXIT_CODE`].
//! Ending so is no worse for the peer's tree than a SIGKILL, which its storage is built to
//! survive.

use std::io::Write;
use std::panic::PanicHookInfo;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;

/// Exit code of a process ended by a panic on one of its threads (`EX_SOFTWARE`, "internal
/// software error", of sysexits.h).
pub const PANIC_EXIT_CODE: i32 = 70;

/// The thread that is ending the process, once one panicked.
static EXITING: OnceLock<ThreadId> = OnceLock::new();

/// Installs a panic hook that logs any panic, on any thread, and exits the process with
/// [`PANIC_EXIT_CODE`] before the thread unwinds.
///
/// The log line (level error) names the thread, the panic message and where it was raised,
/// with a backtrace when `RUST_BACKTRACE` asks for one. It goes through `tracing` when a
/// subscriber is installed (call this after installing it), else straight to stderr. When
/// several threads panic at once, the first ends the process (the others are logged as far as
/// they get before it does).
///
/// This replaces the previous hook (the default one prints the same facts). A panic caught
/// with `catch_unwind` ends the process too: call this only in programs that catch none.
pub fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        log_panic(info);
        let me = std::thread::current().id();
        if *EXITING.get_or_init(|| me) != me {
            // Another thread is ending the process; it does not take long.
            loop {
                std::thread::park();
            }
        }
        if EXIT_STARTED.swap(true, Ordering::SeqCst) {
            // A panic on the exiting thread while it exits (in an exit handler).
            std::process::abort();
        }
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// Whether the thread in [`EXITING`] has started to exit.
static EXIT_STARTED: AtomicBool = AtomicBool::new(false);

fn log_panic(info: &PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let message = info
        .payload_as_str()
        .unwrap_or("(a panic without a message)");
    let location = info
        .location()
        .map_or_else(|| "an unknown place".to_string(), ToString::to_string);
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => format!("\nbacktrace:\n{backtrace}"),
        _ => String::new(),
    };
    let line = format!(
        "thread '{name}' panicked at {location}: {message}; exiting with code {PANIC_EXIT_CODE}{backtrace}"
    );
    if tracing::dispatcher::has_been_set() {
        tracing::error!("{line}");
    } else {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}
