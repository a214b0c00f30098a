//! The LIST report: every path backed up here with its versions, and for each whether it is
//! safe (complete, partial, failed) and the lowest perceived degree of its chunks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metadata::{BackedUpFile, Metadata};
use crate::protocol::FileId;

/// How safe one version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Safety {
    /// Its backup is running.
    Running,
    /// Every chunk at its desired degree.
    Complete,
    /// Every chunk held somewhere, some below the desired degree.
    Partial,
    /// Some chunk held by no peer: it cannot be restored whole.
    Failed,
    /// A symbolic link (recorded, no chunks).
    Link,
}

impl Safety {
    /// The safety of `f`, `running` if its backup is in progress.
    pub fn of(f: &BackedUpFile, running: bool) -> Self {
        if f.is_link() {
            Safety::Link
        } else if running {
            Safety::Running
        } else if !f.restorable() {
            Safety::Failed
        } else if f.lowest_degree().unwrap_or(0) >= usize::from(f.desired) {
            Safety::Complete
        } else {
            Safety::Partial
        }
    }

    fn name(self) -> &'static str {
        match self {
            Safety::Running => "running",
            Safety::Complete => "complete",
            Safety::Partial => "partial",
            Safety::Failed => "failed",
            Safety::Link => "link",
        }
    }
}

/// One version of a path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionReport {
    /// Its number (see `RESTORE --version`).
    pub version: u32,
    /// File id.
    pub file_id: FileId,
    /// Size in bytes.
    pub size: u64,
    /// When it was backed up, seconds since the epoch (0: unknown).
    pub backed_up_at: u64,
    /// Whether it is safe.
    pub state: Safety,
    /// Desired replication degree.
    pub desired: u8,
    /// The lowest perceived degree of its chunks (absent for a link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowest_degree: Option<usize>,
    /// A link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
}

/// One path and its versions, newest last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    /// The path as backed up.
    pub path: PathBuf,
    /// Its versions, oldest first.
    pub versions: Vec<VersionReport>,
}

impl PathReport {
    /// The newest version.
    pub fn newest(&self) -> &VersionReport {
        self.versions.last().expect("a listed path has a version")
    }
}

/// The LIST report, serialised as the `--json` document of `testapp LIST`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListReport {
    /// The paths, in order.
    pub files: Vec<PathReport>,
}

impl ListReport {
    /// The paths of `meta` equal to `under` or below it (all without it); `running` tells
    /// whether a file's backup is in progress.
    pub fn from_metadata(
        meta: &Metadata,
        under: Option<&Path>,
        running: impl Fn(&FileId) -> bool,
    ) -> Self {
        let mut by_path: BTreeMap<&Path, Vec<VersionReport>> = BTreeMap::new();
        for (id, f) in meta.backed_up() {
            if !f.is_users() || under.is_some_and(|u| !f.path.starts_with(u)) {
                continue;
            }
            by_path.entry(&f.path).or_default().push(VersionReport {
                version: f.attrs.version,
                file_id: *id,
                size: f.size,
                backed_up_at: f.attrs.backed_up_at,
                state: Safety::of(f, running(id)),
                desired: f.desired,
                lowest_degree: f.lowest_degree(),
                link: f.attrs.link.clone(),
            });
        }
        let files = by_path
            .into_iter()
            .map(|(path, mut versions)| {
                versions.sort_by_key(|v| (v.version, v.backed_up_at, v.file_id));
                PathReport {
                    path: path.to_path_buf(),
                    versions,
                }
            })
            .collect();
        ListReport { files }
    }

    /// How many listed paths' newest versions are in each state, as "3 complete, 1 partial".
    pub fn tally(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &self.files {
            *counts.entry(p.newest().state.name()).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        parts.join(", ")
    }
}

/// `secs` since the epoch as UTC, to the second; "unknown" for 0.
fn when(secs: u64) -> String {
    if secs == 0 {
        return "unknown".into();
    }
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "unknown".into(),
    }
}

impl fmt::Display for VersionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{:<3} {:>12} B  {}  {:<8}",
            self.version,
            self.size,
            when(self.backed_up_at),
            self.state.name()
        )?;
        match (&self.link, self.lowest_degree) {
            (Some(target), _) => write!(f, " -> {}", target.display()),
            (None, Some(d)) => write!(f, " lowest degree {d} of {}", self.desired),
            (None, None) => Ok(()),
        }
    }
}

impl fmt::Display for ListReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.files {
            writeln!(f, "{}", p.path.display())?;
            for v in p.versions.iter().rev() {
                writeln!(f, "  {v}")?;
            }
        }
        if self.files.is_empty() {
            return write!(f, "nothing backed up here");
        }
        write!(f, "{} path(s): {}", self.files.len(), self.tally())
    }
}
