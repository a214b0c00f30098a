//! Requests and replies between TestApp and peer: one JSON object per line. A request is one
//! line; the peer answers with any number of `progress` lines and then one `done` or `error`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest request line a peer reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Back up a file or a directory tree (absolute path) at a replication degree.
    Backup {
        /// The file or directory.
        path: PathBuf,
        /// Desired replication degree, 1..=9.
        degree: u8,
        /// Run the enhanced subprotocol.
        #[serde(default)]
        enhanced: bool,
        /// Versions of each path kept once the new one reached its degree (at least 1).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        keep: u8,
    },
    /// Restore a file, or every file backed up under a directory.
    Restore {
        /// The file or directory as it was backed up.
        path: PathBuf,
        /// Run the enhanced subprotocol.
        #[serde(default)]
        enhanced: bool,
        /// Directory to restore into (default: the peer's `restored/`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<PathBuf>,
        /// Replace files already there.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// The version to restore (default: the newest whole one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
    /// Delete the backup of a file, or of every file backed up under a directory (every
    /// version).
    Delete {
        /// The file or directory as it was backed up.
        path: PathBuf,
        /// Run the enhanced subprotocol.
        #[serde(default)]
        enhanced: bool,
    },
    /// Set the space for stored chunks.
    Reclaim {
        /// Maximum KBytes (1000 bytes).
        max_kb: u64,
        /// Run the enhanced subprotocol.
        #[serde(default)]
        enhanced: bool,
    },
    /// Report the peer's state.
    State,
    /// Check that enough holders still have each chunk of the files backed up here (under a
    /// path, if given), without moving chunk bodies (enhanced peers only); `read_data` also
    /// reads every chunk back and checks it, writing nothing.
    Verify {
        /// Only this file or what is under this directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// Also read every chunk back.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        read_data: bool,
    },
    /// Get this peer's catalog back from the group (enhanced peers), on a peer started with an
    /// empty tree after its disk was lost.
    Recover,
    /// List the files backed up here (under a path, if given) with their versions and
    /// whether they are safe.
    List {
        /// Only this file or what is under this directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
}

fn one() -> u8 {
    1
}

fn is_one(n: &u8) -> bool {
    *n == 1
}

impl Request {
    /// Whether an enhanced subprotocol was asked for.
    pub fn enhanced(&self) -> bool {
        match self {
            Request::Backup { enhanced, .. }
            | Request::Restore { enhanced, .. }
            | Request::Delete { enhanced, .. }
            | Request::Reclaim { enhanced, .. } => *enhanced,
            Request::State | Request::List { .. } | Request::Verify { .. } | Request::Recover => {
                false
            }
        }
    }

    /// Upper-case operation name, as typed on the TestApp command line.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Backup { .. } => "BACKUP",
            Request::Restore { .. } => "RESTORE",
            Request::Delete { .. } => "DELETE",
            Request::Reclaim { .. } => "RECLAIM",
            Request::State => "STATE",
            Request::List { .. } => "LIST",
            Request::Verify { .. } => "VERIFY",
            Request::Recover => "RECOVER",
        }
    }
}

/// Why an operation failed or was refused, for programs (the message is for people).
///
/// The first four mean the peer refused the request and did nothing ([`ErrorKind::refused`]);
/// the others that the operation ran and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or its arguments are out of range (degree not 1-9, a file too
    /// large for chunk numbers, a path that names no file, a restore over the original).
    BadRequest,
    /// This peer did not back up that file (RESTORE, DELETE).
    NotBackedUp,
    /// An operation on that file is already running here.
    Busy,
    /// The peer does not run that operation (an `ENH` one on a 1.0 peer).
    Unsupported,
    /// The file to back up cannot be read: missing, not a regular file, unreadable, or it
    /// changed during the backup.
    SourceUnreadable,
    /// The operation ran but did not finish its job: a backup with chunks short of the
    /// desired degree, a restore with chunks no peer delivered.
    Incomplete,
    /// The peer's own disk failed it (e.g. writing the restored file).
    Io,
    /// Anything else: a fault of the peer, a reply without a kind (from a peer older than
    /// kinds) or a kind newer than this library.
    #[default]
    #[serde(other)]
    Internal,
}

impl ErrorKind {
    /// Whether the peer refused the request without doing anything (rather than ran it and
    /// failed).
    pub fn refused(self) -> bool {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::NotBackedUp
            | ErrorKind::Busy
            | ErrorKind::Unsupported => true,
            ErrorKind::SourceUnreadable
            | ErrorKind::Incomplete
            | ErrorKind::Io
            | ErrorKind::Internal => false,
        }
    }

    /// The wire name, e.g. `not_backed_up`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotBackedUp => "not_backed_up",
            ErrorKind::Busy => "busy",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::SourceUnreadable => "source_unreadable",
            ErrorKind::Incomplete => "incomplete",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of a peer's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply {
    /// Progress of a long operation.
    Progress {
        /// Units done: chunks of one file, bytes of a tree.
        done: u64,
        /// Units in all.
        total: u64,
        /// A tree: files done and in all (`done` and `total` are then bytes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        files: Option<[u64; 2]>,
    },
    /// The operation ended; `ok` false means it ran but failed (e.g. chunks short of degree).
    Done {
        /// Whether it fully succeeded.
        ok: bool,
        /// Why it failed, when `ok` is false (absent from the replies of older peers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<ErrorKind>,
        /// A one-line summary for people.
        message: String,
        /// The operation's result document.
        result: serde_json::Value,
    },
    /// The request was refused or the operation could not run.
    Error {
        /// What went wrong, for programs ([`ErrorKind::Internal`] when an older peer sent none).
        #[serde(default)]
        kind: ErrorKind,
        /// What went wrong, for people.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        let r = Request::Backup {
            path: "/a/b".into(),
            degree: 2,
            enhanced: false,
            keep: 1,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"backup","path":"/a/b","degree":2,"enhanced":false}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"state"}"#).unwrap(),
            Request::State
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format"}"#).is_err());
    }

    #[test]
    fn reply_wire_form_with_kinds() {
        let error = Reply::Error {
            kind: ErrorKind::NotBackedUp,
            message: "no".into(),
        };
        let text = serde_json::to_string(&error).unwrap();
        assert_eq!(
            text,
            r#"{"type":"error","kind":"not_backed_up","message":"no"}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), error);

        let failed = Reply::Done {
            ok: false,
            kind: Some(ErrorKind::Incomplete),
            message: "short".into(),
            result: serde_json::json!({"short": [1]}),
        };
        let text = serde_json::to_string(&failed).unwrap();
        assert_eq!(
            text,
            r#"{"type":"done","ok":false,"kind":"incomplete","message":"short","result":{"short":[1]}}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), failed);

        // A success carries no kind at all.
        let done = Reply::Done {
            ok: true,
            kind: None,
            message: String::new(),
            result: serde_json::json!({}),
        };
        let text = serde_json::to_string(&done).unwrap();
        assert_eq!(
            text,
            r#"{"type":"done","ok":true,"message":"","result":{}}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), done);

        // Every kind round-trips under the name `name` gives; refusals are the first four.
        let all = [
            ErrorKind::BadRequest,
            ErrorKind::NotBackedUp,
            ErrorKind::Busy,
            ErrorKind::Unsupported,
            ErrorKind::SourceUnreadable,
            ErrorKind::Incomplete,
            ErrorKind::Io,
            ErrorKind::Internal,
        ];
        for (i, kind) in all.into_iter().enumerate() {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(text, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&text).unwrap(), kind);
            assert_eq!(kind.refused(), i < 4, "{kind}");
        }
    }

    #[test]
    fn replies_of_older_peers_still_parse() {
        // Before kinds: an error and a failed done had none.
        assert_eq!(
            serde_json::from_str::<Reply>(r#"{"type":"error","message":"old"}"#).unwrap(),
            Reply::Error {
                kind: ErrorKind::Internal,
                message: "old".into()
            }
        );
        assert_eq!(
            serde_json::from_str::<Reply>(
                r#"{"type":"done","ok":false,"message":"m","result":null}"#
            )
            .unwrap(),
            Reply::Done {
                ok: false,
                kind: None,
                message: "m".into(),
                result: serde_json::Value::Null
            }
        );
        // A kind this library does not know yet counts as internal.
        assert_eq!(
            serde_json::from_str::<Reply>(r#"{"type":"error","kind":"on_fire","message":"m"}"#)
                .unwrap(),
            Reply::Error {
                kind: ErrorKind::Internal,
                message: "m".into()
            }
        );
    }
}
