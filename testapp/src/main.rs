//! The dbs TestApp: asks a peer to BACKUP, RESTORE, DELETE, RECLAIM or report its STATE.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use dbs::client::{AccessPoint, ErrorKind, Reply, Request};
use dbs::core::StateReport;
use dbs::core::catalog::ListReport;
use indicatif::{ProgressBar, ProgressStyle};

/// Ask a dbs peer to run an operation.
///
/// Operations (names are case-insensitive; add ENH, e.g. BACKUPENH, for the enhanced
/// subprotocol on a peer that runs one):
///   BACKUP <path> <replication_degree>   back up a file, or a directory tree, degree 1-9
///                                        [--keep N]
///   RESTORE <path>                       restore a file the peer backed up, or every file
///                                        it backed up under a directory
///                                        [--to DIR] [--force] [--version K]
///   DELETE <path>                        delete the backup of a file (every version), or of
///                                        every file under a directory, from every peer
///   RECLAIM <max_kbytes>                 limit the peer's space for stored chunks (0 frees all)
///   STATE                                report what the peer backed up and stores
///   LIST [path]                          list the files backed up (under a path), with their
///                                        versions and whether they are safe
///   VERIFY [path]                        check that enough holders still have each chunk of
///                                        the files backed up (under a path), without moving
///                                        chunk bodies (enhanced peers) [--read-data]
///   RECOVER                              get the peer's catalog back from the group after its
///                                        disk was lost (a peer started with an empty tree
///                                        under the lost peer's id; enhanced peers)
///
/// A tree's backup backs up its regular files, records its symbolic links (not followed),
/// skips and names special files, and skips files unchanged (same size and mtime) since
/// their last complete backup. A restore recreates the paths below the directory named
/// under the target (`RESTORE /home/u/proj --to /tmp/r` gives /tmp/r/proj/...; a file goes to
/// the target under its name) with their modes and mtimes, and never replaces an existing
/// file unless --force (a file that already holds exactly the backed-up content counts as
/// restored). VERIFY asks each holder of each chunk to prove it has the chunk (a hash over
/// a fresh nonce and the chunk, checked against proofs recorded at backup); 1.0 holders cannot
/// answer and are reported unverified; chunks below their degree are named and make it fail.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    verbatim_doc_comment,
    after_help = AFTER_HELP,
    disable_version_flag = true
)]
struct Args {
    /// Print exactly one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// RESTORE: the directory to restore into (created if missing; default: the peer's
    /// restored/ directory).
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
    /// RESTORE: replace files that exist at the target.
    #[arg(long)]
    force: bool,
    /// RESTORE: the version of the file to restore, as LIST numbers them (default: the
    /// newest one every chunk of which a peer holds).
    #[arg(long = "version", value_name = "K")]
    file_version: Option<u32>,
    /// BACKUP: versions of each path to keep once the new one reached its degree (1-255,
    /// default 1); older ones are deleted then. Until then the previous version stays.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    keep: Option<u8>,
    /// VERIFY: also read every chunk back from the holders and check it against its hash
    /// (like a restore that writes nothing; works on 1.0 peers too).
    #[arg(long)]
    read_data: bool,
    /// A TCP access point's token file (default: the one the peer wrote in this user's runtime
    /// directory; the peer also keeps it in its tree, <tree>/access-token).
    #[arg(long, value_name = "FILE")]
    token: Option<PathBuf>,
    /// Print the version of the TestApp.
    #[arg(short = 'V', long = "testapp-version", action = clap::ArgAction::Version)]
    print_version: Option<bool>,
    /// The peer's access point: NAME (Unix socket) or [HOST:]PORT (TCP).
    access_point: String,
    /// BACKUP, RESTORE, DELETE, RECLAIM, STATE, LIST, VERIFY or RECOVER (the first four
    /// optionally with the ENH suffix).
    operation: String,
    /// The operation's operands.
    #[arg(num_args = 0..=2)]
    operands: Vec<String>,
}

const AFTER_HELP: &str = "\
Exit codes (with --json, a failure's document has \"ok\": false and the \"kind\" in brackets):
  0  done
  1  the operation ran and failed: chunks short of their degree or not restorable
     [incomplete], the file to back up unreadable [source_unreadable], a disk error at the
     peer [io], the connection lost before the answer [disconnected], anything else [internal]
  2  usage error: unknown operation, wrong operands, degree not 1-9, bad access point [usage]
  3  the peer refused the request and did nothing: the file was not backed up by it
     [not_backed_up], an operation on the file is running [busy], ENH on a 1.0 peer
     [unsupported], a request it cannot run [bad_request]
  4  no peer could be reached at the access point [unreachable]";

/// Why testapp ends without success.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The command line is wrong.
    Usage,
    /// No peer answers at the access point.
    Unreachable,
    /// The connection broke after the request was sent: the outcome is unknown.
    Disconnected,
    /// The peer refused or failed the operation (or testapp found the same before asking).
    Peer(ErrorKind),
}

impl Kind {
    fn exit_code(self) -> u8 {
        match self {
            Kind::Usage => 2,
            Kind::Unreachable => 4,
            Kind::Peer(k) if k.refused() => 3,
            Kind::Disconnected | Kind::Peer(_) => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Unreachable => "unreachable",
            Kind::Disconnected => "disconnected",
            Kind::Peer(k) => k.name(),
        }
    }
}

/// A failure: its kind (hence the exit code) and the message.
struct Fail(Kind, String);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(Kind::Usage, msg.into())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(kind, msg)) => {
            if json {
                out(
                    &serde_json::json!({"ok": false, "kind": kind.name(), "error": msg})
                        .to_string(),
                );
            }
            eprintln!("testapp: {msg}");
            ExitCode::from(kind.exit_code())
        }
    }
}

fn parse_request(args: &Args) -> Result<Request, Fail> {
    let (op, operands) = (&args.operation, &args.operands);
    let upper = op.to_ascii_uppercase();
    let (base, enhanced) = match upper.strip_suffix("ENH") {
        Some(b) if !["STATE", "LIST", "VERIFY", "RECOVER", ""].contains(&b) => {
            (b.to_string(), true)
        }
        _ => (upper.clone(), false),
    };
    // Options of one operation only.
    let given = [
        ("--to", args.to.is_some(), "RESTORE"),
        ("--force", args.force, "RESTORE"),
        ("--version", args.file_version.is_some(), "RESTORE"),
        ("--keep", args.keep.is_some(), "BACKUP"),
        ("--read-data", args.read_data, "VERIFY"),
    ];
    if let Some((opt, _, only)) = given.iter().find(|(_, set, only)| *set && *only != base) {
        return Err(usage(format!("{opt} applies to {only} only, not {upper}")));
    }
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
            want(2, "<path> <replication_degree>")?;
            let degree = match operands[1].as_bytes() {
                [d @ b'1'..=b'9'] => d - b'0',
                _ => {
                    return Err(usage(format!(
                        "replication degree must be a digit 1-9, got {:?}",
                        operands[1]
                    )));
                }
            };
            let unreadable = |msg| Fail(Kind::Peer(ErrorKind::SourceUnreadable), msg);
            let path = std::fs::canonicalize(&operands[0])
                .map_err(|e| unreadable(format!("cannot read {}: {e}", operands[0])))?;
            if !path.is_file() && !path.is_dir() {
                return Err(unreadable(format!(
                    "{} is neither a regular file nor a directory",
                    path.display()
                )));
            }
            Request::Backup {
                path,
                degree,
                enhanced,
                keep: args.keep.unwrap_or(1),
            }
        }
        "RESTORE" => {
            want(1, "<path>")?;
            let to = match &args.to {
                Some(dir) => Some(
                    std::path::absolute(dir)
                        .map_err(|e| usage(format!("bad --to {}: {e}", dir.display())))?,
                ),
                None => None,
            };
            Request::Restore {
                path: absolute(&operands[0])?,
                enhanced,
                to,
                force: args.force,
                version: args.file_version,
            }
        }
        "DELETE" => {
            want(1, "<path>")?;
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
        "RECOVER" => {
            want(0, "no operands")?;
            Request::Recover
        }
        "LIST" | "VERIFY" => {
            if operands.len() > 1 {
                return Err(usage(format!(
                    "{upper} takes at most one path, got {} operand(s)",
                    operands.len()
                )));
            }
            let path = operands.first().map(|p| absolute(p)).transpose()?;
            if base == "LIST" {
                Request::List { path }
            } else {
                Request::Verify {
                    path,
                    read_data: args.read_data,
                }
            }
        }
        _ => {
            return Err(usage(format!(
                "unknown operation {op:?}: expected BACKUP, RESTORE, DELETE, RECLAIM, STATE, LIST, VERIFY or RECOVER"
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
    let request = parse_request(&args)?;
    let ap = AccessPoint::parse(&args.access_point).map_err(|e| usage(e.to_string()))?;
    let mut stream = ap.connect().map_err(|e| {
        Fail(
            Kind::Unreachable,
            format!("cannot reach a peer at access point {ap}: {e}"),
        )
    })?;
    let mut line = Vec::new();
    if let AccessPoint::Tcp(addr) = &ap {
        let file = match &args.token {
            Some(f) => Some(f.clone()),
            None => dbs::client::access_point::token_path(*addr).ok(),
        };
        match file.map(|f| (std::fs::read_to_string(&f), f)) {
            Some((Ok(token), _)) => {
                line.extend_from_slice(
                    format!(
                        "{}{}\n",
                        dbs::client::access_point::TOKEN_PREFIX,
                        token.trim()
                    )
                    .as_bytes(),
                );
            }
            Some((Err(e), f)) if args.token.is_some() => {
                return Err(usage(format!("cannot read the token {}: {e}", f.display())));
            }
            _ => {} // the peer says what is missing
        }
    }
    line.extend(serde_json::to_vec(&request).expect("request serialises"));
    line.push(b'\n');
    // A request that could not be sent was not run.
    stream.write_all(&line).map_err(|e| {
        Fail(
            Kind::Unreachable,
            format!("sending the request to {ap}: {e}"),
        )
    })?;
    let bar = progress_bar(&request);
    for reply in BufReader::new(stream).lines() {
        let reply = reply.map_err(|e| {
            Fail(
                Kind::Disconnected,
                format!("reading the answer from {ap}: {e}"),
            )
        })?;
        let reply: Reply = serde_json::from_str(&reply).map_err(|e| {
            Fail(
                Kind::Peer(ErrorKind::Internal),
                format!("unreadable answer from {ap}: {e}"),
            )
        })?;
        match reply {
            Reply::Progress { done, total, files } => {
                if let Some(bar) = &bar {
                    if let Some([files_done, files_total]) = files {
                        // A tree: bytes, with files done in the message.
                        if bar.length() != Some(total) {
                            bar.set_style(tree_style());
                        }
                        bar.set_message(format!(
                            "{} {files_done}/{files_total} files",
                            request.name()
                        ));
                    }
                    bar.set_length(total);
                    bar.set_position(done);
                }
            }
            Reply::Done {
                ok,
                kind,
                message,
                result,
            } => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                // An older peer sends no kind.
                let failure = (!ok).then(|| Kind::Peer(kind.unwrap_or_default()));
                print_done(&request, args.json, failure, &message, result);
                return Ok(failure.map_or(0, Kind::exit_code));
            }
            Reply::Error { kind, message } => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                return Err(Fail(Kind::Peer(kind), message));
            }
        }
    }
    Err(Fail(
        Kind::Disconnected,
        format!("the peer at {ap} closed the connection before answering"),
    ))
}

fn progress_bar(request: &Request) -> Option<ProgressBar> {
    if !matches!(
        request,
        Request::Backup { .. } | Request::Restore { .. } | Request::Verify { .. }
    ) || !std::io::stderr().is_terminal()
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

/// The progress bar of a tree: bytes, their rate and the time left.
fn tree_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// Prints a `done` reply; `failure` is set when it says the operation failed.
fn print_done(
    request: &Request,
    json: bool,
    failure: Option<Kind>,
    message: &str,
    mut result: serde_json::Value,
) {
    let ok = failure.is_none();
    if json {
        if let Some(obj) = result.as_object_mut() {
            obj.insert("ok".into(), ok.into());
            if let Some(kind) = failure {
                obj.insert("kind".into(), kind.name().into());
            }
            if !message.is_empty() {
                obj.insert("message".into(), message.into());
            }
        }
        out(&result.to_string());
    } else if matches!(request, Request::List { .. }) {
        match serde_json::from_value::<ListReport>(result) {
            Ok(list) => out(&list.to_string()),
            Err(e) => eprintln!("testapp: unreadable LIST: {e}"),
        }
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
