//! Functions, versions and aliases: `/v1/functions…`.

use crate::api::auth;
use crate::http::problem::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use wafer_core::{
    AliasName, Digest, FunctionName, FunctionRecord, KeyRecord, Scope, VersionRecord, VersionRef,
    VersionSpec,
};

/// Most environment variables a version may set.
const MAX_ENV: usize = 64;
/// Longest environment value, bytes.
const MAX_ENV_VALUE: usize = 4096;

/// Body of `PUT /v1/functions/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    module: String,
    #[serde(default, deserialize_with = "super::json_int::opt_u64")]
    timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "super::json_int::opt_u64")]
    memory_mb: Option<u64>,
    #[serde(default, deserialize_with = "super::json_int::opt_u64")]
    fuel: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    request_env: bool,
    #[serde(default)]
    class: Option<wafer_core::JobClass>,
    #[serde(default)]
    cache: Option<wafer_core::CacheSpec>,
}

fn invalid_config(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-config", detail)
}

fn valid_env_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The JSON form of a version. Environment values are never returned (they may be secrets).
pub fn version_json(v: &VersionRecord) -> Value {
    json!({
        "function": v.function,
        "version": v.version,
        "module": v.spec.module,
        "abi": v.spec.abi,
        "timeout_ms": v.spec.timeout_ms,
        "memory_mb": v.spec.memory_mb,
        "fuel": v.spec.fuel,
        "env_keys": v.spec.env.keys().collect::<Vec<_>>(),
        "public": v.spec.public,
        "request_env": v.spec.request_env,
        "class": v.spec.class,
        "cache": v.spec.cache,
        "created": v.created,
    })
}

/// Loads a function the caller's tenant owns; anyone else's is "not found".
async fn owned(
    state: &AppState,
    caller: &KeyRecord,
    name: &FunctionName,
) -> Result<FunctionRecord, ApiError> {
    match state.meta.get_function(name).await? {
        Some(f) if f.tenant == caller.tenant => Ok(f),
        _ => Err(ApiError::function_not_found(name.as_str())),
    }
}

/// Validates the name and loads the function for a caller with the read scope.
async fn readable(
    state: &AppState,
    headers: &HeaderMap,
    name: String,
) -> Result<(FunctionName, FunctionRecord), ApiError> {
    let name = FunctionName::new(name)?;
    let caller = auth::require(state, headers, Scope::Read).await?;
    let f = owned(state, &caller, &name).await?;
    Ok((name, f))
}

/// Creates a new immutable version and moves `latest` to it.
#[tracing::instrument(skip_all, fields(function = %name))]
pub async fn put(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = FunctionName::new(name)?;
    let caller = auth::require(&state, &headers, Scope::Deploy).await?;
    let req: NewVersion = super::read_json(&state, &headers, body).await?;
    let d = &state.config.functions;
    let digest = Digest::parse(&req.module).map_err(|e| invalid_config(e.to_string()))?;
    let timeout_ms = req.timeout_ms.unwrap_or(d.timeout_ms);
    if timeout_ms == 0 || timeout_ms > d.max_timeout_ms {
        return Err(invalid_config(format!(
            "timeout_ms must be between 1 and {}",
            d.max_timeout_ms
        )));
    }
    let max_memory = state.runner.engine_config().max_memory_mb;
    let memory_mb = req.memory_mb.unwrap_or(d.memory_mb);
    if memory_mb == 0 || memory_mb > max_memory {
        return Err(invalid_config(format!(
            "memory_mb must be between 1 and {max_memory}"
        )));
    }
    let fuel = req.fuel.unwrap_or(d.fuel);
    if fuel == 0 || fuel > d.max_fuel {
        return Err(invalid_config(format!(
            "fuel must be between 1 and {}",
            d.max_fuel
        )));
    }
    let cache = req
        .cache
        .map(wafer_core::CacheSpec::normalized)
        .transpose()
        .map_err(invalid_config)?;
    if req.env.len() > MAX_ENV {
        return Err(invalid_config(format!(
            "at most {MAX_ENV} environment variables"
        )));
    }
    for (k, v) in &req.env {
        if k.starts_with("WAFER_") {
            return Err(invalid_config(format!(
                "environment variable {k} is reserved: Wafer sets WAFER_* variables itself"
            )));
        }
        if !valid_env_key(k) {
            return Err(invalid_config(format!(
                "environment variable name {k:?} must match [A-Za-z_][A-Za-z0-9_]*"
            )));
        }
        if v.len() > MAX_ENV_VALUE || v.contains('\0') {
            return Err(invalid_config(format!(
                "environment variable {k} must be at most {MAX_ENV_VALUE} bytes without NUL"
            )));
        }
    }
    let module = state
        .meta
        .get_module(&caller.tenant, &digest)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "module-not-found",
                "Module not found",
                format!(
                    "no module {digest} was uploaded by this tenant; PUT it to /v1/modules first"
                ),
            )
        })?;
    if module.min_memory_bytes > memory_mb << 20 {
        let needs_mb = module.min_memory_bytes.div_ceil(1 << 20);
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "memory-limit-too-small",
            "Memory limit below what the module needs",
            format!(
                "the module's memories and tables take {} bytes before any code runs; \
                 set memory_mb to at least {needs_mb}",
                module.min_memory_bytes
            ),
        )
        .with("min_memory_mb", needs_mb));
    }
    let spec = VersionSpec {
        module: digest,
        abi: module.abi,
        timeout_ms,
        memory_mb,
        fuel,
        env: req.env,
        public: req.public,
        request_env: req.request_env,
        class: req.class,
        cache,
    };
    let rec = state
        .meta
        .create_version(&caller.tenant, &name, spec, &state.config.quotas)
        .await?;
    wafer_core::crash_point("version-committed");
    state.resolver.invalidate(&name);
    tracing::info!(version = rec.version, "created version");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": name,
            "version": rec.version,
            "module": rec.spec.module,
            "abi": rec.spec.abi,
        })),
    ))
}

/// Lists the caller tenant's functions.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = auth::require(&state, &headers, Scope::Read).await?;
    let functions = state.meta.list_functions(&caller.tenant).await?;
    Ok(Json(json!({ "functions": functions })))
}

/// One function with the version `latest` points to.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (name, f) = readable(&state, &headers, name).await?;
    let current = state
        .meta
        .resolve(&name, &VersionRef::latest())
        .await?
        .map(|(_, v)| version_json(&v));
    let mut v = serde_json::to_value(&f).map_err(ApiError::internal)?;
    v["current"] = current.unwrap_or(Value::Null);
    Ok(Json(v))
}

/// All versions of a function.
pub async fn versions(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = readable(&state, &headers, name).await?;
    let versions = state.meta.list_versions(&name).await?;
    let list: Vec<Value> = versions.iter().map(version_json).collect();
    Ok(Json(json!({ "versions": list })))
}

/// The recent invocation logs of a function, oldest first.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (name, f) = readable(&state, &headers, name).await?;
    Ok(Json(
        json!({ "logs": state.logs.recent(name.as_str(), f.incarnation) }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    #[serde(deserialize_with = "super::json_int::u32")]
    version: u32,
}

/// Points an alias at a version (this is how rollback works: move `latest`).
pub async fn set_alias(
    State(state): State<Arc<AppState>>,
    Path((name, alias)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let name = FunctionName::new(name)?;
    let alias = AliasName::new(alias)?;
    let caller = auth::require(&state, &headers, Scope::Deploy).await?;
    let req: AliasBody = super::read_json(&state, &headers, body).await?;
    let f = state
        .meta
        .set_alias(&caller.tenant, &name, &alias, req.version)
        .await?;
    state.resolver.invalidate(&name);
    tracing::info!(function = %name, %alias, version = req.version, "alias moved");
    Ok(Json(serde_json::to_value(&f).map_err(ApiError::internal)?))
}

/// Deletes a function, its versions and aliases.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let name = FunctionName::new(name)?;
    let caller = auth::require(&state, &headers, Scope::Deploy).await?;
    let f = owned(&state, &caller, &name).await?;
    state.meta.delete_function(&caller.tenant, &name).await?;
    state.resolver.invalidate(&name);
    state.logs.forget(name.as_str(), f.incarnation);
    // A function made again under the name never meets the old one's answers.
    if let Err(e) = state.cache.purge(&caller.tenant, name.as_str()).await {
        tracing::warn!(function = %name, error = %e, "cached answers of a deleted function not purged in the shared cache");
    }
    tracing::info!(function = %name, "function deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/functions/{name}/cache`: forgets every kept answer of the function (owner,
/// scope deploy), in this gateway at once and in the shared cache; 204, or 503 when the
/// shared cache could not be told (this gateway's answers are purged all the same).
pub async fn purge_cache(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let name = FunctionName::new(name)?;
    let caller = auth::require(&state, &headers, Scope::Deploy).await?;
    owned(&state, &caller, &name).await?;
    state
        .cache
        .purge(&caller.tenant, name.as_str())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cache-unavailable",
                "Shared cache unavailable",
                format!("this gateway's answers are purged, the shared cache's are not: {e}"),
            )
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/cache/scope/{target}`: the cache scope of a call of `target` by this caller,
/// for a cache sidecar in front of the gateway. Authorised exactly as the call would be
/// (so it fails as the call would); `cacheable: false` when the call would become a job.
pub async fn cache_scope(
    State(state): State<Arc<AppState>>,
    Path(target): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (scope, _) = super::invoke::scope_of(&state, &headers, &target).await?;
    Ok(Json(match scope {
        None => json!({"cacheable": false}),
        Some(s) => json!({
            "cacheable": true,
            "scope": hex::encode(s.digest),
            "policy": s.policy,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_are_validated() {
        for ok in ["A", "_x", "FOO_BAR9"] {
            assert!(valid_env_key(ok), "{ok}");
        }
        for bad in ["", "9A", "A-B", "A=B", "A B"] {
            assert!(!valid_env_key(bad), "{bad}");
        }
    }
}
