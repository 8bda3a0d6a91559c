//! Versions and aliases over HTTP: `PublishVersion`,
//! `ListVersionsByFunction`, the alias operations, and resolving a
//! qualifier (with an alias's weighted routing) to the record an operation
//! or an invocation acts on.

use super::*;
use crate::registry::AliasRecord;
use thaw_api::versions::{
    qualified_arn, route, AliasConfiguration, AliasRoutingConfiguration, CreateAliasRequest,
    ListAliasesResponse, ListVersionsResponse, PublishVersionRequest, Qualifier,
    UpdateAliasRequest,
};

/// An alias moved or went away: provisioned concurrency follows it.
fn concurrency_follows<B: ApiBackend>(b: &B, target: &Target) {
    if let Some(latest) = b.registry().get(target.key.as_str()) {
        b.concurrency_changed(&latest);
    }
}

/// The record `q` names for a management operation (an alias: its primary
/// version).
pub(super) fn lookup_qualified<B: ApiBackend>(
    b: &B,
    target: &Target,
    q: &Qualifier,
) -> Result<FunctionRecord, ApiError> {
    b.registry()
        .resolve(target.key.as_str(), q)
        .map_err(ApiError::from)
}

/// The record one invocation of `q` runs, and the ARN it was invoked by
/// (an alias's, when it was an alias: the function sees it in its
/// context). An alias with weighted routing picks its version here.
pub(super) fn for_invocation<B: ApiBackend>(
    b: &B,
    target: &Target,
    q: &Qualifier,
) -> Result<(FunctionRecord, Option<String>), ApiError> {
    let Qualifier::Alias(name) = q else {
        return Ok((lookup_qualified(b, target, q)?, None));
    };
    let alias = b.registry().alias(target.key.as_str(), name)?;
    let primary = match alias.version {
        None => Qualifier::Latest,
        Some(n) => Qualifier::Version(n),
    };
    let chosen = route(&primary, &alias.routing, roll());
    let record = lookup_qualified(b, target, &chosen)?;
    Ok((
        record,
        Some(qualified_arn(&target.account, target.name.as_str(), q)),
    ))
}

/// Uniform in [0, 1), from the 48 leading bits of a v4 UUID (all random).
fn roll() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() >> 80;
    bits as f64 / (1u64 << 48) as f64
}

/// Lambda's view of a published version or `$LATEST`.
pub(super) fn version_configuration(r: &FunctionRecord) -> Result<FunctionConfiguration, ApiError> {
    let Some(n) = r.version else {
        return configuration(r);
    };
    match (r.function_name(), r.settings()) {
        (Ok(name), Ok(settings)) => Ok(FunctionConfiguration::version_in(
            r.account(),
            &name,
            &settings,
            r.code_info(),
            n,
        )),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(function = %r.name, version = n, error = %e, "stored version record is invalid");
            Err(ApiError::internal("The stored function record is invalid"))
        }
    }
}

/// Publishes `$LATEST` of `target` (after a create or update with
/// `Publish`, or `PublishVersion`) and builds the new version's snapshot.
pub(super) async fn publish<B: ApiBackend>(
    b: &B,
    target: &Target,
    req: PublishVersionRequest,
) -> Result<FunctionRecord, ApiError> {
    req.validate()?;
    let key = target.key.clone();
    let out = with_registry(b, move |r| {
        r.publish_version(
            &key,
            req.code_sha256.as_deref(),
            req.description,
            req.revision_id.as_deref(),
        )
    })
    .await?;
    if out.created {
        b.function_changed(&out.record);
    }
    Ok(out.record)
}

/// `PublishVersion` (201).
pub(super) async fn publish_version<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = scope.resolve(target, None)?;
    let bytes = read_settings_body(&headers, body, "PublishVersion").await?;
    let req: PublishVersionRequest = if bytes.is_empty() {
        PublishVersionRequest::default()
    } else {
        parse_json(&bytes)?
    };
    require_disk(&b, "PublishVersion")?;
    let record = publish(&b, &name, req)
        .instrument(span("PublishVersion", &name))
        .await?;
    Ok((StatusCode::CREATED, Json(version_configuration(&record)?)).into_response())
}

/// `ListVersionsByFunction`: `$LATEST`, then the versions in order; the
/// marker is the last version of the previous page.
pub(super) async fn list_versions<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Json<ListVersionsResponse>, ApiError> {
    let name = scope.resolve(target, None)?;
    let latest = lookup(&b, &name)?;
    let max = page_size(&query)?;
    let marker = query.get("Marker").unwrap_or_default();
    let all = std::iter::once(latest).chain(b.registry().versions(name.key.as_str()));
    let mut page: Vec<FunctionRecord> = match marker {
        "" => all.collect(),
        m => all.skip_while(|r| r.version_label() != m).skip(1).collect(),
    };
    let more = page.len() > max;
    page.truncate(max);
    Ok(Json(ListVersionsResponse {
        next_marker: more
            .then(|| page.last().map(|r| r.version_label()))
            .flatten(),
        versions: page
            .iter()
            .map(version_configuration)
            .collect::<Result<_, _>>()?,
    }))
}

/// The alias path `/functions/{name}/aliases/{alias}`.
pub(super) struct AliasPath(FunctionRef, String);

impl<S: Send + Sync> FromRequestParts<S> for AliasPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((function, alias)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| LambdaError::validation("", "functionName", &e.body_text()))?;
        thaw_api::versions::check_alias_name(&alias)?;
        Ok(AliasPath(FunctionRef::parse(&function)?, alias))
    }
}

fn alias_configuration(target: &Target, name: &str, a: &AliasRecord) -> AliasConfiguration {
    AliasConfiguration {
        alias_arn: qualified_arn(
            &target.account,
            target.name.as_str(),
            &Qualifier::Alias(name.to_string()),
        ),
        name: name.to_string(),
        function_version: match a.version {
            None => thaw_api::function::LATEST.to_string(),
            Some(n) => n.to_string(),
        },
        description: a.description.clone(),
        routing_config: (!a.routing.is_empty()).then(|| routing_config(&a.routing)),
        revision_id: a.revision_id.clone(),
    }
}

/// Stored routing as Lambda's `RoutingConfig`.
fn routing_config(routes: &[(u32, f64)]) -> AliasRoutingConfiguration {
    AliasRoutingConfiguration {
        additional_version_weights: routes.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
    }
}

/// `$LATEST` → `None`, a number → `Some(n)`.
fn version_number(s: &str) -> Result<Option<u32>, ApiError> {
    match Qualifier::parse_version(s)? {
        Qualifier::Version(n) => Ok(Some(n)),
        _ => Ok(None),
    }
}

/// The routing of an alias whose primary version is `primary`.
fn routing(
    primary: Option<u32>,
    config: Option<&AliasRoutingConfiguration>,
) -> Result<Vec<(u32, f64)>, ApiError> {
    let Some(c) = config else {
        return Ok(Vec::new());
    };
    let q = primary.map_or(Qualifier::Latest, Qualifier::Version);
    Ok(c.check(&q)?)
}

/// `CreateAlias` (201).
pub(super) async fn create_alias<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = scope.resolve(target, None)?;
    let bytes = read_settings_body(&headers, body, "CreateAlias").await?;
    let req: CreateAliasRequest = parse_json(&bytes)?;
    thaw_api::versions::check_alias_name(&req.name)?;
    thaw_api::versions::check_description(req.description.as_deref())?;
    let version = version_number(&req.function_version)?;
    let routing = routing(version, req.routing_config.as_ref())?;
    let (key, alias) = (name.key.clone(), req.name.clone());
    let saved = with_registry(&b, move |r| {
        r.put_alias(&key, &alias, true, None, |_| AliasRecord {
            version,
            description: req.description.unwrap_or_default(),
            routing,
            revision_id: String::new(),
        })
    })
    .instrument(span("CreateAlias", &name))
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(alias_configuration(&name, &req.name, &saved)),
    )
        .into_response())
}

/// `GetAlias`.
pub(super) async fn get_alias<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    AliasPath(target, alias): AliasPath,
) -> Result<Json<AliasConfiguration>, ApiError> {
    let name = scope.resolve(target, None)?;
    let a = b.registry().alias(name.key.as_str(), &alias)?;
    Ok(Json(alias_configuration(&name, &alias, &a)))
}

/// `UpdateAlias`: what the request leaves out stays (a new primary version
/// without a routing configuration keeps the routing, as Lambda does).
pub(super) async fn update_alias<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    AliasPath(target, alias): AliasPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AliasConfiguration>, ApiError> {
    let name = scope.resolve(target, None)?;
    let bytes = read_settings_body(&headers, body, "UpdateAlias").await?;
    let req: UpdateAliasRequest = parse_json(&bytes)?;
    thaw_api::versions::check_description(req.description.as_deref())?;
    let current = b.registry().alias(name.key.as_str(), &alias)?;
    let version = match &req.function_version {
        Some(v) => version_number(v)?,
        None => current.version,
    };
    let routing = match &req.routing_config {
        Some(c) => routing(version, Some(c))?,
        None => {
            // The kept routing must still fit the (maybe new) primary.
            routing(version, Some(&routing_config(&current.routing)))?
        }
    };
    let (key, a) = (name.key.clone(), alias.clone());
    let saved = with_registry(&b, move |r| {
        r.put_alias(&key, &a, false, req.revision_id.as_deref(), |cur| {
            AliasRecord {
                version,
                description: req
                    .description
                    .clone()
                    .unwrap_or_else(|| cur.map(|c| c.description.clone()).unwrap_or_default()),
                routing,
                revision_id: String::new(),
            }
        })
    })
    .instrument(span("UpdateAlias", &name))
    .await?;
    concurrency_follows(&b, &name);
    Ok(Json(alias_configuration(&name, &alias, &saved)))
}

/// `DeleteAlias` (204).
pub(super) async fn delete_alias<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    AliasPath(target, alias): AliasPath,
) -> Result<StatusCode, ApiError> {
    let name = scope.resolve(target, None)?;
    let (key, a) = (name.key.clone(), alias.clone());
    with_registry(&b, move |r| r.delete_alias(&key, &a))
        .instrument(span("DeleteAlias", &name))
        .await?;
    concurrency_follows(&b, &name);
    let config = crate::events::config_key(name.key.as_str(), Some(&alias));
    if let Err(e) = b.events().delete_invoke_config(&config).await {
        tracing::warn!(error = %e, "cannot remove the alias's event invoke configuration");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `ListAliases` (`FunctionVersion` filters by primary version; the marker
/// is the last alias of the previous page).
pub(super) async fn list_aliases<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(target): FunctionPath,
    query: QueryMap,
) -> Result<Json<ListAliasesResponse>, ApiError> {
    let name = scope.resolve(target, None)?;
    let latest = lookup(&b, &name)?;
    let max = page_size(&query)?;
    let only = match query.get("FunctionVersion") {
        None => None,
        Some(v) => Some(version_number(v)?),
    };
    let marker = query.get("Marker").unwrap_or_default();
    let mut page: Vec<(&String, &AliasRecord)> = latest
        .aliases
        .iter()
        .filter(|(n, a)| n.as_str() > marker && only.is_none_or(|v| a.version == v))
        .collect();
    let more = page.len() > max;
    page.truncate(max);
    Ok(Json(ListAliasesResponse {
        next_marker: more
            .then(|| page.last().map(|(n, _)| n.to_string()))
            .flatten(),
        aliases: page
            .into_iter()
            .map(|(n, a)| alias_configuration(&name, n, a))
            .collect(),
    }))
}
