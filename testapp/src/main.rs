//! The dbs TestApp: asks a peer to BACKUP, RESTORE, DELETE, RECLAIM or report its STATE.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use dbs::client::{AccessPoint, Reply, Request};
use dbs::core::StateReport;
use indicatif::{ProgressBar, ProgressStyle};

/// Ask a dbs peer to run an operation.
///
/// Operations (names are case-insensitive; add ENH, e.g. BACKUPENH, for the enhanced
/// subprotocol on a peer that runs one):
///   BACKUP <file> <replication_degree>   back up a file, degree 1-9
///   RESTORE <file>                       restore a file the peer backed up
///   DELETE <file>                        delete a file's backup from every peer
///   RECLAIM <max_kbytes>                 limit the peer's space for stored chunks (0 frees all)
///   STATE                                report what the peer backed up and stores
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment, after_help = AFTER_HELP)]
struct Args {
    /// Print exactly one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// The peer's access point: NAME (Unix socket) or [HOST:]PORT (TCP).
    access_point: String,
    /// BACKUP, RESTORE, DELETE, RECLAIM or STATE (optionally with the ENH suffix).
    operation: String,
    /// The operation's operands.
    #[arg(num_args = 0..=2)]
    operands: Vec<String>,
}

const AFTER_HELP: &str = "\
Exit codes: 0 done; 1 the operation failed (peer unreachable, file unreadable, chunks short of
their degree, peer refused); 2 usage error (unknown operation, wrong operands, degree not 1-9).";

/// A failure with its exit code.
struct Fail(u8, String);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, msg.into())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            if json {
                out(&serde_json::json!({"ok": false, "error": msg}).to_string());
            }
            eprintln!("testapp: {msg}");
            ExitCode::from(code)
        }
    }
}

fn parse_request(op: &str, operands: &[String]) -> Result<Request, Fail> {
    let upper = op.to_ascii_uppercase();
    let (base, enhanced) = match upper.strip_suffix("ENH") {
        Some(b) if b != "STATE" && !b.is_empty() => (b.to_string(), true),
        _ => (upper.clone(), false),
    };
    let want = |n: usize, form: &str| {
        if operands.len() == n {
            Ok(())
        } else {
            Err(usage(format!(
                "{upper} takes {form}, got {} operand(s)",
                operands.len()
            )))
        }
    };
    Ok(match base.as_str() {
        "BACKUP" => {
            want(2, "<file> <replication_degree>")?;
            let degree = match operands[1].as_bytes() {
                [d @ b'1'..=b'9'] => d - b'0',
                _ => {
                    return Err(usage(format!(
                        "replication degree must be a digit 1-9, got {:?}",
                        operands[1]
                    )));
                }
            };
            let path = std::fs::canonicalize(&operands[0])
                .map_err(|e| Fail(1, format!("cannot read {}: {e}", operands[0])))?;
            if !path.is_file() {
                return Err(Fail(1, format!("{} is not a regular file", path.display())));
            }
            Request::Backup {
                path,
                degree,
                enhanced,
            }
        }
        "RESTORE" => {
            want(1, "<file>")?;
            Request::Restore {
                path: absolute(&operands[0])?,
                enhanced,
            }
        }
        "DELETE" => {
            want(1, "<file>")?;
            Request::Delete {
                path: absolute(&operands[0])?,
                enhanced,
            }
        }
        "RECLAIM" => {
            want(1, "<max_kbytes>")?;
            let max_kb = operands[0].parse().map_err(|_| {
                usage(format!(
                    "RECLAIM takes a number of KBytes, got {:?}",
                    operands[0]
                ))
            })?;
            Request::Reclaim { max_kb, enhanced }
        }
        "STATE" => {
            want(0, "no operands")?;
            Request::State
        }
        _ => {
            return Err(usage(format!(
                "unknown operation {op:?}: expected BACKUP, RESTORE, DELETE, RECLAIM or STATE"
            )));
        }
    })
}

/// The path as the peer recorded it: canonical when the file still exists, else absolute.
fn absolute(p: &str) -> Result<PathBuf, Fail> {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(Path::new(p)))
        .map_err(|e| usage(format!("bad path {p:?}: {e}")))
}

fn run(args: Args) -> Result<u8, Fail> {
    let request = parse_request(&args.operation, &args.operands)?;
    let ap = AccessPoint::parse(&args.access_point).map_err(|e| usage(e.to_string()))?;
    let mut stream = ap
        .connect()
        .map_err(|e| Fail(1, format!("cannot reach a peer at access point {ap}: {e}")))?;
    let mut line = serde_json::to_vec(&request).expect("request serialises");
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| Fail(1, format!("sending the request to {ap}: {e}")))?;
    let bar = progress_bar(&request);
    for reply in BufReader::new(stream).lines() {
        let reply = reply.map_err(|e| Fail(1, format!("reading the answer from {ap}: {e}")))?;
        let reply: Reply = serde_json::from_str(&reply)
            .map_err(|e| Fail(1, format!("unreadable answer from {ap}: {e}")))?;
        match reply {
            Reply::Progress { done, total } => {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            }
            Reply::Done {
                ok,
                message,
                result,
            } => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                print_done(&request, args.json, ok, &message, result);
                return Ok(if ok { 0 } else { 1 });
            }
            Reply::Error { message } => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                return Err(Fail(1, message));
            }
        }
    }
    Err(Fail(
        1,
        format!("the peer at {ap} closed the connection before answering"),
    ))
}

fn progress_bar(request: &Request) -> Option<ProgressBar> {
    if !matches!(request, Request::Backup { .. } | Request::Restore { .. })
        || !std::io::stderr().is_terminal()
    {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} chunks ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(request.name());
    Some(bar)
}

fn print_done(
    request: &Request,
    json: bool,
    ok: bool,
    message: &str,
    mut result: serde_json::Value,
) {
    if json {
        if let Some(obj) = result.as_object_mut() {
            obj.insert("ok".into(), ok.into());
            if !message.is_empty() {
                obj.insert("message".into(), message.into());
            }
        }
        out(&result.to_string());
    } else if matches!(request, Request::State) {
        let disk_errors = result["counters"]["disk_errors"].as_u64().unwrap_or(0);
        let last = result["last_disk_error"].as_str().unwrap_or("").to_string();
        match serde_json::from_value::<StateReport>(result) {
            Ok(state) => out(&state.to_string()),
            Err(e) => eprintln!("testapp: unreadable STATE: {e}"),
        }
        if disk_errors > 0 {
            out(&format!("Disk errors: {disk_errors} (last: {last})"));
        }
    } else if ok {
        out(message);
    } else {
        eprintln!("testapp: {message}");
    }
}

/// Prints a line on stdout; a closed stdout (e.g. `| head`) is not an error.
fn out(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}
