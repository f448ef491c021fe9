//! The data directory's filesystem: how much room is left, and whether an error means there is
//! none (a leaf: `http`, `jobs`, `catalog` and `datasets` ask it).

use std::io;
use std::path::Path;

/// Space on the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer can still use.
    pub available_bytes: u64,
    pub total_bytes: u64,
}

/// The space on the filesystem that holds `path`.
pub fn space(path: &Path) -> io::Result<DiskSpace> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(DiskSpace {
        available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

/// Whether a write failed because the filesystem (or the writer's quota) is full.
pub fn is_full(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Whether SQLite refused a write because the disk is full (`SQLITE_FULL`).
pub fn is_database_full(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error.code().as_deref() == Some("13"),
        sqlx::Error::Io(error) => is_full(error),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_space_of_a_real_directory_is_plausible() {
        let dir = tempfile::tempdir().unwrap();
        let space = space(dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.available_bytes <= space.total_bytes, "{space:?}");
    }

    #[test]
    fn no_space_and_quota_errors_are_full() {
        assert!(is_full(&io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(is_full(&io::Error::from_raw_os_error(122))); // EDQUOT
        assert!(!is_full(&io::Error::other("x")));
        assert!(!is_full(&io::Error::from_raw_os_error(13))); // EACCES
    }
}
