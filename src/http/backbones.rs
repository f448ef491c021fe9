//! `/v1/backbones`: the built-in architectures and uploaded pretrained weights, checked against
//! their architecture when uploaded so a job can rely on them. Reads the query and the body into
//! a catalog upload and maps what the catalog answers; the files and rows are the catalog's.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::error::{ApiError, ErrorCode, Problem};
use super::json::Json;
use super::path::Path as UrlPath;
use super::query::Query;
use super::upload::{check_declared_length, check_name, write_upload};
use super::AppState;
use crate::catalog::{self, NewWeights, Weights};
use crate::train::{Architecture, ModelSpec, WeightsFormat};

pub fn routes(max_upload: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_backbone).layer(DefaultBodyLimit::max(max_upload)))
        .routes(routes!(list_backbones))
        .routes(routes!(get_backbone, delete_backbone))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateBackboneParams {
    // Read as strings and parsed by the handler, so each keeps its own error code; documented
    // as the enums they must name.
    /// `mobilenet_v2`, `efficientnet_lite0`, `xception` or `small_cnn`.
    #[param(value_type = Architecture)]
    pub architecture: String,
    /// Width multiplier (MobileNetV2: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4); only for `mobilenet_v2`.
    #[param(exclusive_minimum = 0, maximum = 2)]
    pub alpha: Option<f32>,
    /// How tensors are named and laid out: `keras`, `torchvision`, `efficientnet_pytorch`, or
    /// `tanuki` (our checkpoints).
    #[param(value_type = WeightsFormat)]
    pub format: String,
    /// A name for people; defaults to the architecture.
    #[param(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
}

/// Uploaded pretrained weights.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackboneView {
    pub id: String,
    pub name: String,
    pub architecture: String,
    pub alpha: Option<f64>,
    pub format: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// Tensors in the file.
    pub tensors: u64,
    /// Values the backbone takes from it.
    pub params: u64,
    pub created_at: DateTime<Utc>,
}

/// An architecture a job can name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArchitectureView {
    pub name: String,
    pub description: String,
    /// Weight formats an upload for it may use.
    pub formats: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackboneList {
    pub architectures: Vec<ArchitectureView>,
    pub weights: Vec<BackboneView>,
}

impl From<Weights> for BackboneView {
    fn from(row: Weights) -> Self {
        Self {
            id: row.id,
            name: row.name,
            architecture: row.architecture,
            alpha: row.alpha,
            format: row.format,
            size_bytes: row.size_bytes as u64,
            sha256: row.sha256,
            tensors: row.tensors as u64,
            params: row.params as u64,
            created_at: row.created_at,
        }
    }
}

fn architectures() -> Vec<ArchitectureView> {
    catalog::architectures()
        .into_iter()
        .map(|a| ArchitectureView {
            name: a.architecture.name().to_owned(),
            description: a.architecture.description().to_owned(),
            formats: a.formats.iter().map(|f| f.name().to_owned()).collect(),
        })
        .collect()
}

/// The model spec the uploaded file must fit.
fn model_for(params: &CreateBackboneParams) -> Result<ModelSpec, ApiError> {
    let mut backbone = serde_json::json!({"architecture": params.architecture});
    if let Some(alpha) = params.alpha {
        backbone["alpha"] = serde_json::json!(alpha);
    }
    serde_json::from_value(serde_json::json!({ "backbone": backbone })).map_err(|e| ApiError::BadRequest {
        code: ErrorCode::InvalidArchitecture,
        detail: format!("architecture {:?} (alpha {:?}): {e}", params.architecture, params.alpha),
        field: Some("architecture".into()),
    })
}

fn format_of(name: &str) -> Result<WeightsFormat, ApiError> {
    serde_json::from_value(serde_json::json!(name)).map_err(|_| ApiError::BadRequest {
        code: ErrorCode::InvalidFormat,
        detail: format!(
            "format must be one of {}, got {name:?}",
            WeightsFormat::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        ),
        field: Some("format".into()),
    })
}

/// Upload pretrained weights for an architecture.
///
/// The body is a safetensors file (raw, `application/octet-stream`). It is checked against the
/// architecture before it is stored: a file that does not fit is a 422 naming the first tensor
/// that is missing or has the wrong shape.
#[utoipa::path(post, path = "/v1/backbones", tag = "backbones", operation_id = "create_backbone",
    params(CreateBackboneParams),
    request_body(content = Vec<u8>, description = "A safetensors file", content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Checked and stored", body = BackboneView),
        (status = 400, description = "Unknown architecture or format", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the upload limit", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The server's disk has no room for it; nothing was stored", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file does not fit the architecture", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_backbone(
    State(state): State<AppState>,
    Query(params): Query<CreateBackboneParams>,
    request: Request,
) -> Result<(StatusCode, Json<BackboneView>), ApiError> {
    let limit = state.max_upload_bytes;
    check_declared_length(request.headers(), limit, &state.data_dir)?;
    let model = model_for(&params)?;
    let format = format_of(&params.format)?;
    if let Some(name) = &params.name {
        check_name(name)?;
    }
    let mut upload = state.catalog.start_upload(limit).await?;
    let stream = request
        .into_body()
        .into_data_stream()
        .map(|chunk| chunk.map_err(|e| ApiError::bad_request(ErrorCode::UnreadableBody, e.to_string())));
    write_upload(&mut upload, stream).await?;

    let new = NewWeights {
        model,
        format,
        name: params.name.clone().unwrap_or_else(|| params.architecture.clone()),
        architecture: params.architecture,
        alpha: params.alpha,
    };
    let weights = state.catalog.create_weights(upload, new).await?;
    Ok((StatusCode::CREATED, Json(weights.into())))
}

/// The built-in architectures and the uploaded weights.
#[utoipa::path(get, path = "/v1/backbones", tag = "backbones", operation_id = "list_backbones",
    responses((status = 200, description = "Architectures and uploaded weights", body = BackboneList)))]
pub async fn list_backbones(State(state): State<AppState>) -> Result<Json<BackboneList>, ApiError> {
    let weights = state.catalog.list_weights().await?.into_iter().map(BackboneView::from).collect();
    Ok(Json(BackboneList { architectures: architectures(), weights }))
}

/// One uploaded weights file.
#[utoipa::path(get, path = "/v1/backbones/{id}", tag = "backbones", operation_id = "get_backbone",
    params(("id" = String, Path, description = "Backbone weights id")),
    responses(
        (status = 200, description = "The weights", body = BackboneView),
        (status = 404, description = "No such weights", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_backbone(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<BackboneView>, ApiError> {
    Ok(Json(state.catalog.weights(&id).await?.into()))
}

/// Delete uploaded weights; refused while a queued or running job starts from them.
#[utoipa::path(delete, path = "/v1/backbones/{id}", tag = "backbones", operation_id = "delete_backbone",
    params(("id" = String, Path, description = "Backbone weights id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such weights", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A queued or running job uses them", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_backbone(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    state.catalog.delete_weights(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
