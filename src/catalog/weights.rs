//! Backbone weights: a safetensors upload checked against its architecture, moved to
//! `<backbones>/<id>.safetensors`, and its row, together. Which formats each architecture takes
//! is asked of `train`, never written here.

use super::{Catalog, CatalogError, Upload};
use crate::db::{self, backbones::BackboneRow};
use crate::train::{self, ModelSpec, WeightsFormat};

/// A built-in architecture a job can name, with the weight formats an upload for it may use.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub architecture: train::Architecture,
    pub formats: &'static [WeightsFormat],
}

/// Every built-in architecture, in `train`'s order.
pub fn architectures() -> Vec<Architecture> {
    train::Architecture::ALL
        .into_iter()
        .map(|architecture| Architecture { architecture, formats: train::weight_formats(architecture) })
        .collect()
}

/// What an upload of weights claims to be.
#[derive(Debug, Clone)]
pub struct NewWeights {
    /// The model the file must fit (its backbone's architecture and width).
    pub model: ModelSpec,
    pub format: WeightsFormat,
    /// As the client named them, stored with the row.
    pub architecture: String,
    pub alpha: Option<f32>,
    pub name: String,
}

/// Stored, checked weights.
pub type Weights = BackboneRow;

impl Catalog {
    /// Checks the file in `upload` against `new.model`, moves it into place and stores its row.
    /// A file that does not fit is refused before anything is stored; a failed insert removes
    /// the moved file.
    pub async fn create_weights(&self, upload: Upload, new: NewWeights) -> Result<Weights, CatalogError> {
        let id = upload.id().to_owned();
        let size = upload.size();
        let path = upload.path().to_owned();
        let model = new.model.clone();
        let format = new.format;
        let sha256 = upload.sha256().to_owned();
        let report = tokio::task::spawn_blocking(move || train::check_weights(&model, format, &path)).await??;

        let dir = &self.paths.backbones;
        tokio::fs::create_dir_all(dir).await?;
        let stored = dir.join(format!("{id}.safetensors"));
        tokio::fs::rename(upload.path(), &stored).await?;
        drop(upload);
        let row = BackboneRow {
            id: id.clone(),
            name: new.name,
            architecture: new.architecture,
            alpha: new.alpha.map(f64::from),
            format: new.format.name().to_owned(),
            path: stored.to_string_lossy().into_owned(),
            size_bytes: size as i64,
            sha256,
            tensors: report.tensors as i64,
            params: report.params as i64,
            created_at: db::now(),
        };
        if let Err(error) = db::backbones::insert(&self.pool, &row).await {
            let _ = tokio::fs::remove_file(&stored).await;
            return Err(error.into());
        }
        tracing::info!(backbone_id = %id, architecture = %row.architecture, format = %row.format, "backbone weights stored");
        Ok(row)
    }

    /// Every uploaded weights file, newest first.
    pub async fn list_weights(&self) -> Result<Vec<Weights>, CatalogError> {
        Ok(db::backbones::list(&self.pool).await?)
    }

    pub async fn weights(&self, id: &str) -> Result<Weights, CatalogError> {
        db::backbones::get(&self.pool, id).await?.ok_or_else(|| not_found(id))
    }

    /// Deletes the row, then the file; refused while a queued or running job starts from them.
    pub async fn delete_weights(&self, id: &str) -> Result<(), CatalogError> {
        let row = self.weights(id).await?;
        if !db::backbones::delete_if_unused(&self.pool, id).await? {
            return Err(CatalogError::BackboneInUse(id.to_owned()));
        }
        if let Err(error) = tokio::fs::remove_file(&row.path).await {
            tracing::warn!(backbone_id = %id, %error, "backbone row deleted but its file could not be removed");
        }
        Ok(())
    }
}

fn not_found(id: &str) -> CatalogError {
    CatalogError::NotFound { resource: "backbone", id: id.to_owned() }
}
