//! SQLite: opening the pool, migrations, and one module per table with one function per
//! statement. Functions take any executor so they run on the pool or inside a transaction.

pub mod backbones;
pub mod checkpoints;
pub mod datasets;
pub mod events;
pub mod idempotency;
pub mod jobs;
pub mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use sqlx::SqlitePool as Pool;

/// Opens (creating if needed) the database file and applies pending migrations.
pub async fn connect(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        // WAL lets SSE readers replay history while a worker writes events.
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: every commit is on disk before it returns, so an event is durable before any
        // subscriber sees its id. NORMAL could roll the last commits back on power loss, and a
        // rolled-back event's id would be reused by a different event, silently skipped by a
        // client resuming with that Last-Event-ID. The cost is one fsync per commit.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// The current time as stored in every timestamp column.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite 3.7.0 to 3.51.2 can corrupt a WAL database when two connections write or
    /// checkpoint at once (fixed in 3.51.3); the pool opens several. A lock-file refresh must
    /// not bring such a build back.
    #[tokio::test]
    async fn the_bundled_sqlite_is_past_the_wal_reset_bug_and_commits_durably() {
        let dir = tempfile::tempdir().unwrap();
        let pool = connect(&dir.path().join("t.sqlite3")).await.unwrap();
        let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()").fetch_one(&pool).await.unwrap();
        let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
        assert!(parts.as_slice() >= [3, 51, 3].as_slice(), "SQLite {version} has the WAL-reset bug");
        let (synchronous,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(&pool).await.unwrap();
        assert_eq!(synchronous, 2, "synchronous=FULL");
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(&pool).await.unwrap();
        assert_eq!(mode, "wal");
    }
}
