//! The HTTP API's JSON: the body of `POST /v1/generate` (field names and defaults as the
//! official `sample_c2i.py`), its answer, the error body, and the OpenAPI description.

use llamagen_runtime::{GenerateRequest, SamplingOptions};
use serde::{Deserialize, Serialize};

/// What the answer carries besides the tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    /// Base64 PNGs in `images` (and the tokens).
    #[default]
    Png,
    /// The tokens only (no VQ decode).
    Tokens,
}

/// The body of `POST /v1/generate`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    pub labels: Vec<usize>,
    #[serde(default = "default_cfg_scale")]
    pub cfg_scale: f32,
    #[serde(default = "default_cfg_interval")]
    pub cfg_interval: f32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default = "default_one")]
    pub top_p: f32,
    #[serde(default = "default_one")]
    pub temperature: f32,
    #[serde(default)]
    pub response_format: ResponseFormat,
}

fn default_cfg_scale() -> f32 {
    4.0
}
fn default_cfg_interval() -> f32 {
    -1.0
}
fn default_top_k() -> usize {
    2000
}
fn default_one() -> f32 {
    1.0
}

impl GenerateBody {
    /// The runtime request (validated by the pipeline before it is queued).
    pub fn request(&self) -> GenerateRequest {
        GenerateRequest {
            labels: self.labels.clone(),
            cfg_scale: self.cfg_scale,
            cfg_interval: self.cfg_interval,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            },
            seed: self.seed,
        }
    }
}

/// The answer of `POST /v1/generate`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct GenerateResponse {
    /// One base64 PNG per label (empty with `response_format: "tokens"`).
    pub images: Vec<String>,
    /// `[labels][tokens_per_image]`.
    pub tokens: Vec<Vec<u32>>,
}

/// The body of every error answer.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The OpenAPI 3.0 description of the API (`GET /openapi.json`).
pub fn openapi() -> serde_json::Value {
    let error = serde_json::json!({
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {
            "title": "llamagen serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Class-conditional image generation from a LlamaGen bundle. Requests \
                that wait together and share their sampling options run as one batch; each \
                request's tokens equal `llamagen generate` with the same flags."
        },
        "paths": {
            "/v1/generate": {"post": {
                "summary": "Generate one image per label",
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/GenerateRequest"}}}},
                "responses": {
                    "200": {"description": "images and tokens", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/GenerateResponse"}}}},
                    "400": error.clone(),
                    "429": error.clone(),
                    "500": error.clone(),
                    "503": error
                }
            }},
            "/healthz": {"get": {
                "summary": "Liveness",
                "responses": {"200": {"description": "ok", "content": {"text/plain": {}}}}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition format 0.0.4",
                    "content": {"text/plain": {}}}}
            }},
            "/openapi.json": {"get": {
                "summary": "This description",
                "responses": {"200": {"description": "OpenAPI 3.0",
                    "content": {"application/json": {}}}}
            }}
        },
        "components": {"schemas": {
            "GenerateRequest": {
                "type": "object",
                "required": ["labels"],
                "additionalProperties": false,
                "properties": {
                    "labels": {"type": "array", "items": {"type": "integer", "minimum": 0},
                        "minItems": 1, "description": "class labels, one image each"},
                    "cfg_scale": {"type": "number", "default": 4.0, "minimum": 0},
                    "cfg_interval": {"type": "number", "default": -1.0},
                    "seed": {"type": "integer", "default": 0, "minimum": 0},
                    "top_k": {"type": "integer", "default": 2000, "minimum": 0},
                    "top_p": {"type": "number", "default": 1.0},
                    "temperature": {"type": "number", "default": 1.0, "minimum": 0},
                    "response_format": {"type": "string", "enum": ["png", "tokens"],
                        "default": "png"}
                }
            },
            "GenerateResponse": {
                "type": "object",
                "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "byte"},
                        "description": "base64 PNGs, one per label"},
                    "tokens": {"type": "array",
                        "items": {"type": "array", "items": {"type": "integer"}}}
                }
            },
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}}
        }}
    })
}
