//! `POST /v1/jobs/{id}/predict`: class probabilities for images, from a checkpoint of the job,
//! through exactly the job's preprocessing (never its augmentation).

use std::io::Read;
use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};

use super::path::Path;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::error::{ApiError, ErrorCode, Problem};
use super::jobs::load_job;
use super::json::Json;
use super::query::Query;
use super::AppState;
use crate::db;
use crate::train::{self, JobSpec};

/// A zip of images for prediction is held in memory: bound it well below dataset uploads.
const MAX_PREDICT_BODY: usize = 64 << 20;
const MAX_IMAGES: usize = 1000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(predict_job).layer(DefaultBodyLimit::max(MAX_PREDICT_BODY)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictParams {
    /// A checkpoint of this job; default: the best (lowest validation loss) of its last phase.
    pub checkpoint: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassProbability {
    pub class: String,
    pub probability: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FilePrediction {
    /// Path inside the zip.
    pub file: String,
    /// Most likely first; absent when the file is not a decodable image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<ClassProbability>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One image gives `predictions`; a zip gives `results`, one per file.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    pub checkpoint_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<ClassProbability>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<FilePrediction>>,
}

/// Classify images with a trained job.
///
/// The body is one image (`image/jpeg` or `image/png`) or a zip of images. Images go through the
/// job's resize and rescaling, never its augmentation.
#[utoipa::path(post, path = "/v1/jobs/{id}/predict", tag = "jobs", operation_id = "predict_job",
    params(("id" = String, Path, description = "Job id"), PredictParams),
    request_body(description = "An image, or a zip of images", content(
        (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "application/zip"))),
    responses(
        (status = 200, description = "Class probabilities, most likely first", body = PredictResponse),
        (status = 400, description = "Not an image or zip, or an undecodable image", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job or checkpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has no checkpoint yet", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 MiB", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn predict_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<PredictParams>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<PredictResponse>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit: MAX_PREDICT_BODY as u64 }
        } else {
            ApiError::bad_request(ErrorCode::UnreadableBody, rejection.body_text())
        }
    })?;
    let job = load_job(&state, &id).await?;
    let (checkpoint_id, weights) = pick_checkpoint(&state, &id, params.checkpoint.as_deref()).await?;
    let spec: JobSpec = job.spec.0;
    let classes: Vec<String> =
        job.classes.map(|c| c.0).ok_or_else(|| ApiError::Internal("the job has no stored classes".into()))?;

    let is_zip = body.starts_with(b"PK\x03\x04") || body.starts_with(b"PK\x05\x06");
    let (names, images) = if is_zip { unzip_images(&body)? } else { (Vec::new(), vec![body.to_vec()]) };
    let results =
        tokio::task::spawn_blocking(move || train::predict(&spec.model, &spec.input, &classes, &weights, &images))
            .await?
            .map_err(|e| ApiError::Internal(format!("prediction: {e}")))?;
    let to_view = |ranked: Vec<(String, f32)>| {
        ranked.into_iter().map(|(class, probability)| ClassProbability { class, probability }).collect::<Vec<_>>()
    };

    if is_zip {
        let results = names
            .into_iter()
            .zip(results)
            .map(|(file, result)| match result {
                Ok(ranked) => FilePrediction { file, predictions: Some(to_view(ranked)), error: None },
                Err(error) => FilePrediction { file, predictions: None, error: Some(error) },
            })
            .collect();
        Ok(Json(PredictResponse { checkpoint_id, predictions: None, results: Some(results) }))
    } else {
        match results.into_iter().next() {
            Some(Ok(ranked)) => {
                Ok(Json(PredictResponse { checkpoint_id, predictions: Some(to_view(ranked)), results: None }))
            }
            Some(Err(error)) => Err(ApiError::bad_request(
                ErrorCode::InvalidImage,
                format!("the body is not a decodable JPEG or PNG image (nor a zip): {error}"),
            )),
            None => Err(ApiError::bad_request(ErrorCode::InvalidImage, "no image")),
        }
    }
}

/// The checkpoint asked for, or by default the best (lowest validation loss) of the last phase.
pub(super) async fn pick_checkpoint(
    state: &AppState,
    job_id: &str,
    wanted: Option<&str>,
) -> Result<(String, PathBuf), ApiError> {
    let rows = db::checkpoints::list_for_job(&state.jobs.pool, job_id).await?;
    let row = match wanted {
        Some(wanted) => {
            rows.iter().find(|r| r.id == wanted).ok_or_else(|| ApiError::not_found("checkpoint of this job", wanted))?
        }
        None => {
            let last_phase = rows.iter().map(|r| r.phase_index).max().ok_or_else(|| ApiError::Conflict {
                code: ErrorCode::NoCheckpoint,
                detail: format!("job {job_id} has no checkpoint yet"),
            })?;
            let best = crate::jobs::best_of_each_phase(&rows);
            rows.iter()
                .find(|r| r.phase_index == last_phase && best.contains(&r.id))
                .ok_or_else(|| ApiError::Internal("no best checkpoint in the last phase".into()))?
        }
    };
    Ok((row.id.clone(), PathBuf::from(&row.path)))
}

/// Every file of a zip (hidden files and folders aside), bounded in count and size.
fn unzip_images(body: &[u8]) -> Result<(Vec<String>, Vec<Vec<u8>>), ApiError> {
    let bad_zip = |e: zip::result::ZipError| {
        ApiError::bad_request(ErrorCode::CorruptArchive, format!("the zip cannot be read: {e}"))
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).map_err(bad_zip)?;
    let (mut names, mut images) = (Vec::new(), Vec::new());
    let mut total = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(bad_zip)?;
        let name = entry.name().map_err(bad_zip)?.into_owned();
        let hidden = name.split('/').any(|part| part.starts_with('.') || part == "__MACOSX");
        if entry.is_dir() || hidden {
            continue;
        }
        if names.len() == MAX_IMAGES {
            return Err(ApiError::bad_request(
                ErrorCode::TooManyImages,
                format!("at most {MAX_IMAGES} images per request"),
            ));
        }
        let mut bytes = Vec::new();
        // Bound what a small compressed entry may expand to.
        let budget = (4 * MAX_PREDICT_BODY as u64).saturating_sub(total);
        entry
            .by_ref()
            .take(budget + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ApiError::bad_request(ErrorCode::CorruptArchive, e.to_string()))?;
        total += bytes.len() as u64;
        if total > 4 * MAX_PREDICT_BODY as u64 {
            return Err(ApiError::PayloadTooLarge { limit: 4 * MAX_PREDICT_BODY as u64 });
        }
        names.push(name);
        images.push(bytes);
    }
    if names.is_empty() {
        return Err(ApiError::bad_request(ErrorCode::InvalidImage, "the zip holds no files"));
    }
    Ok((names, images))
}
