//! The registry half of MLflow's REST API under `/api/2.0/mlflow/`: the
//! calls `mlflow.MlflowClient` makes for registered models, versions, tags
//! and aliases, with MLflow's field names, its error shape
//! `{"error_code": …, "message": …}` and status codes.
//!
//! As the `mlflow` client sends them: `GET` calls carry their parameters in
//! the query string (lists as repeated keys), the others a JSON body.
//! Unknown request fields are ignored (newer clients send fields older
//! servers do not know, as MLflow's own server does). Authentication is the
//! embedding server's: this router is mounted behind Tidewatch's API token
//! check for writes.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use crate::entities::Tag;
use crate::store::{NewVersion, Search};
use crate::{Error, Registry};

/// The path prefix of every call.
pub const PREFIX: &str = "/api/2.0/mlflow";

/// The router of the registry API (paths under [`PREFIX`]).
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route(&format!("{PREFIX}/{{*call}}"), any(dispatch))
        .with_state(registry)
}

/// Query parameters that are lists (repeated keys).
const LIST_PARAMETERS: [&str; 2] = ["order_by", "stages"];

fn query_to_json(query: &str) -> Value {
    let mut map = Map::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let key = key.into_owned();
        let value = Value::String(value.into_owned());
        if LIST_PARAMETERS.contains(&key.as_str()) {
            match map.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(values) => values.push(value),
                _ => unreachable!("list parameters are arrays"),
            }
        } else {
            map.insert(key, value);
        }
    }
    Value::Object(map)
}

fn parse<T: DeserializeOwned>(
    method: &Method,
    query: Option<&str>,
    body: &Bytes,
) -> Result<T, Error> {
    let value = if *method == Method::GET || body.is_empty() {
        let mut value = query_to_json(query.unwrap_or_default());
        // A GET with a JSON body (some clients): the body's fields too.
        if !body.is_empty() {
            if let (Value::Object(map), Ok(Value::Object(extra))) =
                (&mut value, serde_json::from_slice::<Value>(body))
            {
                map.extend(extra);
            }
        }
        value
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::InvalidParameter(format!("Malformed JSON request body: {e}")))?
    };
    serde_json::from_value(value)
        .map_err(|e| Error::InvalidParameter(format!("Invalid request: {e}")))
}

/// An integer sent as a number or a string (proto3 JSON writes int64 as
/// strings; query parameters are strings).
fn lenient_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(i64),
        Text(String),
    }
    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Number::Int(n)) => Ok(Some(n)),
        Some(Number::Text(text)) if text.is_empty() => Ok(None),
        Some(Number::Text(text)) => text
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("'{text}' is not an integer"))),
    }
}

/// A boolean sent as a JSON boolean or a string.
fn lenient_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    match Option::<Flag>::deserialize(deserializer)? {
        None => Ok(false),
        Some(Flag::Bool(b)) => Ok(b),
        Some(Flag::Text(text)) => Ok(text.eq_ignore_ascii_case("true")),
    }
}

/// A version sent as a string or a number.
fn version_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Version {
        Int(i64),
        Text(String),
    }
    Ok(match Option::<Version>::deserialize(deserializer)? {
        None => String::new(),
        Some(Version::Int(n)) => n.to_string(),
        Some(Version::Text(text)) => text,
    })
}

fn required(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        Err(Error::InvalidParameter(format!(
            "Missing value for required parameter '{field}'."
        )))
    } else {
        Ok(())
    }
}

#[derive(Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct CreateModel {
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct UpdateModel {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Rename {
    #[serde(default)]
    name: String,
    #[serde(default)]
    new_name: String,
}

#[derive(Deserialize)]
struct SearchRequest {
    #[serde(default)]
    filter: String,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    #[serde(default)]
    order_by: Vec<String>,
    #[serde(default)]
    page_token: String,
}

impl From<SearchRequest> for Search {
    fn from(request: SearchRequest) -> Self {
        Search {
            filter: request.filter,
            max_results: request.max_results,
            order_by: request.order_by,
            page_token: Some(request.page_token).filter(|t| !t.is_empty()),
        }
    }
}

#[derive(Deserialize)]
struct TagRequest {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "version_string")]
    version: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct LatestVersions {
    #[serde(default)]
    name: String,
    #[serde(default)]
    stages: Vec<String>,
}

#[derive(Deserialize)]
struct CreateVersion {
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    run_id: String,
    #[serde(default)]
    run_link: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Deserialize)]
struct VersionRequest {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "version_string")]
    version: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Transition {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "version_string")]
    version: String,
    #[serde(default)]
    stage: String,
    #[serde(default, deserialize_with = "lenient_bool")]
    archive_existing_versions: bool,
}

#[derive(Deserialize)]
struct AliasRequest {
    #[serde(default)]
    name: String,
    #[serde(default)]
    alias: String,
    #[serde(default, deserialize_with = "version_string")]
    version: String,
}

fn pairs(tags: Vec<Tag>) -> Vec<(String, String)> {
    tags.into_iter().map(|tag| (tag.key, tag.value)).collect()
}

fn to_json<T: serde::Serialize>(key: &str, value: &T) -> Value {
    json!({ key: value })
}

async fn dispatch(
    State(registry): State<Registry>,
    method: Method,
    Path(call): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let result = handle(&registry, &method, &call, query.as_deref(), &body).await;
    match result {
        Ok(value) => (StatusCode::OK, axum::Json(value)).into_response(),
        Err(error) => {
            if error.status() >= 500 {
                tracing::error!(call, %error, "registry call failed");
            }
            error_response(error.status(), error.code(), &error.to_string())
        }
    }
}

fn error_response(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

async fn handle(
    registry: &Registry,
    method: &Method,
    call: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Value, Error> {
    let m = method.as_str();
    match (m, call) {
        ("POST", "registered-models/create") => {
            let request: CreateModel = parse(method, query, body)?;
            required("name", &request.name)?;
            let model = registry
                .create_model(request.name, pairs(request.tags), request.description)
                .await?;
            Ok(to_json("registered_model", &model))
        }
        ("GET", "registered-models/get") => {
            let request: NameOnly = parse(method, query, body)?;
            required("name", &request.name)?;
            Ok(to_json(
                "registered_model",
                &registry.get_model(request.name).await?,
            ))
        }
        ("GET", "registered-models/search") => {
            let request: SearchRequest = parse(method, query, body)?;
            let page = registry.search_models(request.into()).await?;
            let mut response = json!({"registered_models": page.items});
            if let Some(token) = page.next_page_token {
                response["next_page_token"] = Value::String(token);
            }
            Ok(response)
        }
        ("PATCH", "registered-models/update") => {
            let request: UpdateModel = parse(method, query, body)?;
            required("name", &request.name)?;
            let model = registry
                .update_model(request.name, request.description)
                .await?;
            Ok(to_json("registered_model", &model))
        }
        ("POST", "registered-models/rename") => {
            let request: Rename = parse(method, query, body)?;
            required("name", &request.name)?;
            required("new_name", &request.new_name)?;
            let model = registry
                .rename_model(request.name, request.new_name)
                .await?;
            Ok(to_json("registered_model", &model))
        }
        ("DELETE", "registered-models/delete") => {
            let request: NameOnly = parse(method, query, body)?;
            required("name", &request.name)?;
            registry.delete_model(request.name).await?;
            Ok(json!({}))
        }
        ("POST", "registered-models/set-tag") => {
            let request: TagRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            registry
                .set_model_tag(request.name, request.key, request.value)
                .await?;
            Ok(json!({}))
        }
        ("DELETE", "registered-models/delete-tag") => {
            let request: TagRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            registry.delete_model_tag(request.name, request.key).await?;
            Ok(json!({}))
        }
        ("POST" | "GET", "registered-models/get-latest-versions") => {
            let request: LatestVersions = parse(method, query, body)?;
            required("name", &request.name)?;
            let versions = registry
                .latest_versions(request.name, request.stages)
                .await?;
            Ok(to_json("model_versions", &versions))
        }
        ("POST", "model-versions/create") => {
            let request: CreateVersion = parse(method, query, body)?;
            required("name", &request.name)?;
            let version = registry
                .create_version(NewVersion {
                    name: request.name,
                    source: request.source,
                    run_id: request.run_id,
                    run_link: request.run_link,
                    description: request.description,
                    tags: pairs(request.tags),
                })
                .await?;
            Ok(to_json("model_version", &version))
        }
        ("GET", "model-versions/get") => {
            let request: VersionRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            let version = registry.get_version(request.name, request.version).await?;
            Ok(to_json("model_version", &version))
        }
        ("GET", "model-versions/search") => {
            let request: SearchRequest = parse(method, query, body)?;
            let page = registry.search_versions(request.into()).await?;
            let mut response = json!({"model_versions": page.items});
            if let Some(token) = page.next_page_token {
                response["next_page_token"] = Value::String(token);
            }
            Ok(response)
        }
        ("PATCH", "model-versions/update") => {
            let request: VersionRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            let version = registry
                .update_version(request.name, request.version, request.description)
                .await?;
            Ok(to_json("model_version", &version))
        }
        ("DELETE", "model-versions/delete") => {
            let request: VersionRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            registry
                .delete_version(request.name, request.version)
                .await?;
            Ok(json!({}))
        }
        ("POST", "model-versions/set-tag") => {
            let request: TagRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            registry
                .set_version_tag(request.name, request.version, request.key, request.value)
                .await?;
            Ok(json!({}))
        }
        ("DELETE", "model-versions/delete-tag") => {
            let request: TagRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            registry
                .delete_version_tag(request.name, request.version, request.key)
                .await?;
            Ok(json!({}))
        }
        ("GET", "model-versions/get-download-uri") => {
            let request: VersionRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            let version = registry.get_version(request.name, request.version).await?;
            Ok(json!({"artifact_uri": version.source}))
        }
        ("POST", "model-versions/transition-stage") => {
            let request: Transition = parse(method, query, body)?;
            required("name", &request.name)?;
            required("stage", &request.stage)?;
            let version = registry
                .transition_stage(
                    request.name,
                    request.version,
                    request.stage,
                    request.archive_existing_versions,
                )
                .await?;
            Ok(to_json("model_version", &version))
        }
        ("POST", "registered-models/alias") => {
            let request: AliasRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            registry
                .set_alias(request.name, request.alias, request.version)
                .await?;
            Ok(json!({}))
        }
        ("DELETE", "registered-models/alias") => {
            let request: AliasRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            registry.delete_alias(request.name, request.alias).await?;
            Ok(json!({}))
        }
        ("GET", "registered-models/alias") => {
            let request: AliasRequest = parse(method, query, body)?;
            required("name", &request.name)?;
            required("alias", &request.alias)?;
            let version = registry
                .version_by_alias(request.name, request.alias)
                .await?;
            Ok(to_json("model_version", &version))
        }
        _ => Err(Error::EndpointNotFound(format!(
            "{m} {PREFIX}/{call} is not an endpoint of Tidewatch's registry"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            ))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn calls_answer_mlflow_shapes_and_errors() {
        let app = router(Registry::in_memory().unwrap());
        let (status, body) = call(
            &app,
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            Some(json!({"name": "churn", "tags": [{"key": "team", "value": "growth"}]})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["registered_model"]["name"], "churn");
        assert_eq!(body["registered_model"]["tags"][0]["key"], "team");
        let (status, body) = call(
            &app,
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            Some(json!({"name": "churn", "source": "s3://m/1", "run_id": "abc"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_version"]["version"], "1");
        assert_eq!(body["model_version"]["status"], "READY");
        assert_eq!(body["model_version"]["current_stage"], "None");
        let (status, _) = call(
            &app,
            "POST",
            "/api/2.0/mlflow/registered-models/alias",
            Some(json!({"name": "churn", "alias": "champion", "version": "1"})),
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = call(
            &app,
            "GET",
            "/api/2.0/mlflow/registered-models/alias?name=churn&alias=champion",
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["model_version"]["aliases"], json!(["champion"]));
        let (status, body) = call(
            &app,
            "GET",
            "/api/2.0/mlflow/model-versions/search?filter=name%3D%27churn%27&max_results=5&order_by=version_number+DESC",
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_versions"][0]["run_id"], "abc");

        // Errors: MLflow's codes and statuses.
        let (status, body) = call(
            &app,
            "GET",
            "/api/2.0/mlflow/registered-models/get?name=absent",
            None,
        )
        .await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (404, Some("RESOURCE_DOES_NOT_EXIST"))
        );
        let (status, body) = call(
            &app,
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            Some(json!({"name": "churn"})),
        )
        .await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (400, Some("RESOURCE_ALREADY_EXISTS"))
        );
        let (status, body) = call(
            &app,
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            Some(json!({"name": "a/b"})),
        )
        .await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (400, Some("INVALID_PARAMETER_VALUE"))
        );
        let (status, body) = call(
            &app,
            "POST",
            "/api/2.0/mlflow/experiments/create",
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (404, Some("ENDPOINT_NOT_FOUND"))
        );
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/api/2.0/mlflow/registered-models/create")
            .body(axum::body::Body::from("{not json"))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 400);
    }
}
