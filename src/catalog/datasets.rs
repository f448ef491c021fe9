//! Datasets: an archive upload unpacked into `<datasets>/<id>/` and its row, together.

use chrono::{DateTime, Utc};

use super::{Catalog, CatalogError, Upload};
use crate::datasets::{self, ClassCount, DatasetManifest, SkippedFile};
use crate::db::{self, datasets::DatasetRow};

/// A stored dataset, its stored JSON parsed.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub id: String,
    pub name: String,
    /// Sorted by name; the order defines the label indices.
    pub classes: Vec<ClassCount>,
    pub image_count: u64,
    pub skipped: u64,
    pub skipped_examples: Vec<SkippedFile>,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<DatasetRow> for Dataset {
    type Error = CatalogError;
    fn try_from(row: DatasetRow) -> Result<Self, CatalogError> {
        let classes = serde_json::from_str(&row.classes).map_err(|source| CatalogError::StoredRow {
            what: "classes",
            id: row.id.clone(),
            source,
        })?;
        Ok(Self {
            classes,
            image_count: row.image_count as u64,
            skipped: row.skipped as u64,
            // Only examples for people: an unreadable list is shown as none rather than failing.
            skipped_examples: serde_json::from_str(&row.skipped_examples).unwrap_or_default(),
            size_bytes: row.size_bytes as u64,
            created_at: row.created_at,
            id: row.id,
            name: row.name,
        })
    }
}

impl Catalog {
    /// Unpacks the archive in `upload` as a dataset named `name` and stores its row. On any
    /// failure neither the folder nor the row exists afterwards (and the upload file is gone).
    pub async fn create_dataset(
        &self,
        upload: Upload,
        name: &str,
        key: Option<db::idempotency::KeyClaim<'_>>,
    ) -> Result<Dataset, CatalogError> {
        let id = upload.id().to_owned();
        let dest = self.paths.datasets.join(&id);
        let limits = self.import_limits.clone();
        let archive = upload.path().to_owned();
        // `import_archive` leaves nothing behind on failure: it extracts beside `dest` and
        // renames into place only once the whole dataset checked out.
        let manifest = {
            let dest = dest.clone();
            tokio::task::spawn_blocking(move || datasets::import_archive(&archive, &dest, &limits)).await??
        };
        drop(upload);

        let row = row_from_manifest(&id, name, &manifest);
        if let Err(error) = insert_with_key(&self.pool, &row, key).await {
            let _ = tokio::fs::remove_dir_all(&dest).await;
            return Err(error.into());
        }
        tracing::info!(dataset_id = %id, images = row.image_count, skipped = row.skipped, "dataset stored");
        Dataset::try_from(row)
    }

    /// Every dataset, newest first.
    pub async fn list_datasets(&self) -> Result<Vec<Dataset>, CatalogError> {
        db::datasets::list(&self.pool).await?.into_iter().map(Dataset::try_from).collect()
    }

    pub async fn dataset(&self, id: &str) -> Result<Dataset, CatalogError> {
        let row = db::datasets::get(&self.pool, id).await?.ok_or_else(|| not_found(id))?;
        Dataset::try_from(row)
    }

    /// Deletes the row, then the folder; refused while a queued or running job uses the
    /// dataset. The row goes first so no new job can name a dataset whose files are going.
    pub async fn delete_dataset(&self, id: &str) -> Result<(), CatalogError> {
        if db::datasets::get(&self.pool, id).await?.is_none() {
            return Err(not_found(id));
        }
        if !db::datasets::delete_if_unused(&self.pool, id).await? {
            return Err(CatalogError::DatasetInUse(id.to_owned()));
        }
        if let Err(error) = tokio::fs::remove_dir_all(self.paths.datasets.join(id)).await {
            tracing::warn!(dataset_id = %id, %error, "dataset row deleted but its files could not be removed");
        }
        Ok(())
    }
}

/// The row, and the idempotency key tied to it, in one transaction.
async fn insert_with_key(
    pool: &sqlx::SqlitePool,
    row: &DatasetRow,
    key: Option<db::idempotency::KeyClaim<'_>>,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    db::datasets::insert(&mut *tx, row).await?;
    if let Some(key) = key {
        db::idempotency::attach(&mut *tx, key, &row.id).await?;
    }
    tx.commit().await
}

fn not_found(id: &str) -> CatalogError {
    CatalogError::NotFound { resource: "dataset", id: id.to_owned() }
}

fn row_from_manifest(id: &str, name: &str, manifest: &DatasetManifest) -> DatasetRow {
    DatasetRow {
        id: id.to_owned(),
        name: name.to_owned(),
        classes: serde_json::to_string(&manifest.classes).unwrap_or_default(),
        image_count: manifest.classes.iter().map(|c| c.images as i64).sum(),
        skipped: manifest.skipped as i64,
        skipped_examples: serde_json::to_string(&manifest.skipped_examples).unwrap_or_default(),
        size_bytes: manifest.total_bytes as i64,
        created_at: db::now(),
    }
}
