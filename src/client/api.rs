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
    /// Back up a file (absolute path) at a replication degree.
    Backup {
        /// The file.
        path: PathBuf,
        /// Desired replication degree, 1..=9.
        degree: u8,
        /// Run the enhanced subprotocol.
        #[serde(default)]
        enhanced: bool,
    },
    /// Restore a file this peer backed up.
    Restore {
        /// The file as it was backed up.
        path: PathBuf,
        /// Run the enhanced subprotocol.
        #[serde(default)]
        enhanced: bool,
    },
    /// Delete a file's backup.
    Delete {
        /// The file as it was backed up.
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
}

impl Request {
    /// Whether an enhanced subprotocol was asked for.
    pub fn enhanced(&self) -> bool {
        match self {
            Request::Backup { enhanced, .. }
            | Request::Restore { enhanced, .. }
            | Request::Delete { enhanced, .. }
            | Request::Reclaim { enhanced, .. } => *enhanced,
            Request::State => false,
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
        }
    }
}

/// One line of a peer's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply {
    /// Progress of a long operation.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
    },
    /// The operation ended; `ok` false means it ran but failed (e.g. chunks short of degree).
    Done {
        /// Whether it fully succeeded.
        ok: bool,
        /// A one-line summary for people.
        message: String,
        /// The operation's result document.
        result: serde_json::Value,
    },
    /// The request was refused or the operation could not run.
    Error {
        /// What went wrong.
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
}
