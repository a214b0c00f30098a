//! The initiator side of the delete subprotocol: DELETE sent several times, the file forgotten.

use std::path::Path;

use super::{Action, Channel, CommandError, Core, OpEvent, OpId, TimerEvent};
use crate::protocol::{FileId, MessageKind};

impl Core {
    /// Starts DELETE for the file backed up from `path`.
    pub fn start_delete(&self, op: OpId, path: &Path) -> Result<Vec<Action>, CommandError> {
        let file = {
            let mut meta = self.meta.lock();
            let file = meta
                .file_for_path(path)
                .ok_or_else(|| CommandError::NotBackedUp(path.to_path_buf()))?;
            if self.backups.iter().any(|b| b.file == file) {
                return Err(CommandError::BackupRunning(path.to_path_buf()));
            }
            if self.restores.iter().any(|r| r.file == file) {
                return Err(CommandError::RestoreRunning(path.to_path_buf()));
            }
            meta.backed_up.remove(&file);
            meta.touch();
            file
        };
        Ok(self.delete_send(file, self.cfg.delete_sends - 1, Some(op)))
    }

    /// Sends DELETE for `file` now and schedules the `remaining` repeats.
    pub(super) fn delete_send(&self, file: FileId, remaining: u8, op: Option<OpId>) -> Vec<Action> {
        let mut actions = vec![self.send(Channel::Mc, MessageKind::Delete { file })];
        if remaining > 0 {
            actions.push(Action::Schedule {
                delay: self.cfg.delete_interval,
                event: TimerEvent::DeleteAgain {
                    file,
                    remaining: remaining - 1,
                    op,
                },
            });
        } else if let Some(op) = op {
            actions.push(Action::Report {
                op,
                event: OpEvent::DeleteDone { file },
            });
        }
        actions
    }
}
