//! SQLite: opening the pool, migrations, and one module per table with one function per
//! statement. Functions take any executor so they run on the pool or inside a transaction.

pub mod backbones;
pub mod checkpoints;
pub mod datasets;
pub mod events;
pub mod jobs;

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
        .synchronous(SqliteSynchronous::Normal)
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
