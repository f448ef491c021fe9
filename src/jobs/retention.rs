//! Which checkpoints are kept: per phase the best (lowest validation loss), the last, and the
//! best by the phase's monitored metric (what early stopping restores, needed to resume); the
//! optimizer state only for the newest checkpoint of the job, the one a resume starts from.

use std::collections::{BTreeMap, HashSet};

use sqlx::SqliteConnection;

use crate::db::{self, checkpoints::CheckpointRow};

/// Ids of the checkpoints that are the best of their phase (lowest validation loss; without
/// validation, the last).
pub fn best_of_each_phase(rows: &[CheckpointRow]) -> HashSet<String> {
    let mut by_phase: BTreeMap<i64, Vec<&CheckpointRow>> = BTreeMap::new();
    for row in rows {
        by_phase.entry(row.phase_index).or_default().push(row);
    }
    by_phase
        .values()
        .filter_map(|phase| {
            let with_loss = phase.iter().filter(|r| r.val_loss.is_some_and(f64::is_finite));
            // Ties go to the earlier epoch, as Keras's callbacks do.
            let best = with_loss.fold(None::<&CheckpointRow>, |best, r| match best {
                Some(b) if b.val_loss <= r.val_loss => Some(b),
                _ => Some(r),
            });
            best.or(phase.last().copied()).map(|r| r.id.clone())
        })
        .collect()
}

/// Per phase, the newest checkpoint taken when the monitored metric had just improved (the
/// training loop reports `epochs_without_improvement == 0` then): the weights early stopping
/// restores at the end of the phase.
pub fn monitored_best_of_each_phase(rows: &[CheckpointRow]) -> BTreeMap<i64, &CheckpointRow> {
    let mut best = BTreeMap::new();
    for row in rows {
        if row.resume_state.epochs_without_improvement == 0 {
            best.insert(row.phase_index, row);
        }
    }
    best
}

/// What retention does to a job's checkpoints, decided from the rows alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Superseded {
    /// Checkpoints no longer kept: their rows and files go.
    pub checkpoints: Vec<String>,
    /// Kept checkpoints that are not the newest: their optimizer state goes.
    pub optimizer_states: Vec<String>,
    /// The files of both, to delete once the rows are gone for good.
    pub files: Vec<String>,
}

/// Per phase the best, the last and the monitored best are kept; the optimizer state only for
/// the newest checkpoint of the job.
pub(super) fn superseded(rows: &[CheckpointRow]) -> Superseded {
    let mut keep = best_of_each_phase(rows);
    let mut last_of_phase: BTreeMap<i64, &CheckpointRow> = BTreeMap::new();
    for row in rows {
        last_of_phase.insert(row.phase_index, row);
    }
    keep.extend(last_of_phase.values().map(|r| r.id.clone()));
    keep.extend(monitored_best_of_each_phase(rows).values().map(|r| r.id.clone()));
    let newest = rows.last().map(|r| r.id.as_str());

    let mut superseded = Superseded::default();
    for row in rows {
        if !keep.contains(&row.id) {
            superseded.checkpoints.push(row.id.clone());
            superseded.files.push(row.path.clone());
            superseded.files.extend(row.optimizer_path.clone());
        } else if Some(row.id.as_str()) != newest {
            if let Some(optimizer) = &row.optimizer_path {
                superseded.optimizer_states.push(row.id.clone());
                superseded.files.push(optimizer.clone());
            }
        }
    }
    superseded
}

/// Applies retention to a job's rows inside the caller's transaction and returns the files to
/// delete once it commits ([`remove_files`]): were it rolled back, every row would still have
/// its file.
pub(super) async fn prune(conn: &mut SqliteConnection, job_id: &str) -> sqlx::Result<Vec<String>> {
    let rows = db::checkpoints::list_for_job(&mut *conn, job_id).await?;
    let plan = superseded(&rows);
    for id in &plan.checkpoints {
        db::checkpoints::delete(&mut *conn, id).await?;
    }
    for id in &plan.optimizer_states {
        db::checkpoints::clear_optimizer_path(&mut *conn, id).await?;
    }
    Ok(plan.files)
}

/// Deletes the files of superseded checkpoints; a file that cannot be deleted is only logged
/// (its row is gone, so nothing points to it).
pub(super) fn remove_files(files: &[String]) {
    for file in files {
        if let Err(error) = std::fs::remove_file(file) {
            tracing::warn!(%file, %error, "could not delete a superseded checkpoint file");
        }
    }
}
