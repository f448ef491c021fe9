//! `/v1/datasets`: the HTTP side of the dataset catalog. Reads the upload (raw or multipart) into
//! a catalog upload, and maps what the catalog answers; the files and rows are the catalog's.

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::error::{ApiError, ErrorCode, Problem};
use super::idempotency::{self, Claim, IdempotencyKey, IdempotencyParams, Operation};
use super::json::Json;
use super::path::Path as UrlPath;
use super::query::Query;
use super::upload::{check_declared_length, check_name, write_upload};
use super::AppState;
use crate::catalog::{Dataset, Upload};

pub fn routes(max_upload: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // Only the upload takes a large body (the multipart extractor reads this limit).
        .routes(routes!(create_dataset).layer(DefaultBodyLimit::max(max_upload)))
        .routes(routes!(list_datasets))
        .routes(routes!(get_dataset, delete_dataset))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassView {
    pub name: String,
    pub images: usize,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SkippedView {
    /// Path inside the archive.
    pub path: String,
    pub reason: String,
}

/// An uploaded, unpacked image dataset.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetView {
    pub id: String,
    pub name: String,
    /// Sorted by name; the order defines the label indices.
    pub classes: Vec<ClassView>,
    pub image_count: usize,
    /// Files that were not decodable JPEG/PNG images (not fatal).
    pub skipped: usize,
    /// Up to 20 of the skipped files with the reason.
    pub skipped_examples: Vec<SkippedView>,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetView>,
}

/// A dataset archive sent as a form (as a browser's file input does).
#[derive(ToSchema)]
#[allow(dead_code)] // Only documents the form: the handler streams the `file` part.
pub struct DatasetForm {
    /// The archive: zip, tar or tar.gz of class folders.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateDatasetParams {
    /// A name for people; defaults to `dataset`.
    #[param(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
}

impl From<Dataset> for DatasetView {
    fn from(dataset: Dataset) -> Self {
        Self {
            id: dataset.id,
            name: dataset.name,
            classes: dataset.classes.into_iter().map(|c| ClassView { name: c.name, images: c.images }).collect(),
            image_count: dataset.image_count as usize,
            skipped: dataset.skipped as usize,
            skipped_examples: dataset
                .skipped_examples
                .into_iter()
                .map(|s| SkippedView { path: s.path, reason: s.reason })
                .collect(),
            size_bytes: dataset.size_bytes,
            created_at: dataset.created_at,
        }
    }
}

/// Upload a dataset archive.
///
/// The body is a `.zip`, `.tar` or `.tar.gz` archive whose top-level folders are class names
/// holding JPEG/PNG images (one wrapping folder is tolerated), sent raw or as the `file` field of
/// a `multipart/form-data` body. The format is detected from the bytes. Files that are not
/// decodable images are skipped and counted.
#[utoipa::path(
    post, path = "/v1/datasets", tag = "datasets", operation_id = "create_dataset",
    params(CreateDatasetParams, IdempotencyParams),
    request_body(description = "The archive, raw or as the `file` field of multipart/form-data", content(
        (Vec<u8> = "application/zip"), (Vec<u8> = "application/x-tar"), (Vec<u8> = "application/gzip"), (DatasetForm = "multipart/form-data"))),
    responses(
        (status = 201, description = "Unpacked and stored (or, for a retried key, the first answer)", body = DatasetView),
        (status = 400, description = "Not an archive, an unsafe entry, no class folder, or an invalid `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this `Idempotency-Key` is still being handled", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the upload or unpacked size limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An `Idempotency-Key` used before with another name or archive", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The server's disk has no room for it; nothing was stored", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_dataset(
    State(state): State<AppState>,
    Query(params): Query<CreateDatasetParams>,
    key: Option<IdempotencyKey>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.max_upload_bytes;
    check_declared_length(request.headers(), limit, &state.data_dir)?;
    let name = params.name.unwrap_or_else(|| "dataset".to_owned());
    check_name(&name)?;
    // Claimed before the body is read, so that a concurrent retry is refused at once.
    let claim = match key {
        Some(key) => Some(idempotency::claim(&state.jobs.pool, Operation::CreateDataset, key).await?),
        None => None,
    };
    let upload = match receive(&state, request, limit).await {
        Ok(upload) => upload,
        Err(error) => {
            if let Some(Claim::First(reservation)) = claim {
                reservation.release().await;
            }
            return Err(error);
        }
    };
    // Which archive it was is only known once it has all been read.
    let hash = idempotency::request_hash(&[name.as_bytes(), upload.sha256().as_bytes()]);
    let reservation = match claim {
        None => None,
        Some(Claim::Answered(answer)) => return answer.replay(&hash),
        Some(Claim::Created(created)) => {
            let dataset = state.catalog.dataset(created.id_for(&hash)?).await?;
            return idempotency::replayed(StatusCode::CREATED, &DatasetView::from(dataset));
        }
        Some(Claim::First(reservation)) => Some(reservation),
    };
    let key = reservation.as_ref().map(|r| r.key_claim(&hash));
    let outcome = state.catalog.create_dataset(upload, &name, key).await.map(DatasetView::from).map_err(ApiError::from);
    idempotency::finish(reservation, &hash, StatusCode::CREATED, outcome).await
}

/// Streams the archive (the raw body, or the multipart form's `file` field) into an upload.
async fn receive(state: &AppState, request: Request, limit: u64) -> Result<Upload, ApiError> {
    let mut upload = state.catalog.start_upload(limit).await?;

    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if is_multipart {
        let mut multipart = Multipart::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidMultipart, e.body_text()))?;
        let mut found = false;
        while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
            if field.name() == Some("file") {
                let stream = field.map(|chunk| chunk.map_err(multipart_error));
                let written = write_upload(&mut upload, stream).await?;
                state.telemetry.add_upload_bytes(written);
                found = true;
                break;
            }
        }
        if !found {
            return Err(ApiError::BadRequest {
                code: ErrorCode::MissingFile,
                detail: "the multipart body has no `file` field".into(),
                field: Some("file".into()),
            });
        }
    } else {
        // A raw body is not subject to the extractor body limit; the upload counts instead.
        let stream = request
            .into_body()
            .into_data_stream()
            .map(|chunk| chunk.map_err(|e| ApiError::bad_request(ErrorCode::UnreadableBody, e.to_string())));
        let written = write_upload(&mut upload, stream).await?;
        state.telemetry.add_upload_bytes(written);
    }

    Ok(upload)
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: 0 }
    } else {
        ApiError::bad_request(ErrorCode::InvalidMultipart, error.body_text())
    }
}

/// List datasets, newest first.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", operation_id = "list_datasets",
    responses((status = 200, description = "All datasets", body = DatasetList)))]
pub async fn list_datasets(State(state): State<AppState>) -> Result<Json<DatasetList>, ApiError> {
    let datasets = state.catalog.list_datasets().await?.into_iter().map(DatasetView::from).collect();
    Ok(Json(DatasetList { datasets }))
}

/// Get one dataset.
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets", operation_id = "get_dataset",
    params(("id" = String, Path, description = "Dataset id")),
    responses(
        (status = 200, description = "The dataset", body = DatasetView),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_dataset(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<DatasetView>, ApiError> {
    Ok(Json(state.catalog.dataset(&id).await?.into()))
}

/// Delete a dataset and its files; refused while a queued or running job uses it.
#[utoipa::path(delete, path = "/v1/datasets/{id}", tag = "datasets", operation_id = "delete_dataset",
    params(("id" = String, Path, description = "Dataset id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A queued or running job uses it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_dataset(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    state.catalog.delete_dataset(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
