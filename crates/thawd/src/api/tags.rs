//! Function tags: `TagResource` (POST), `UntagResource` (DELETE, keys in
//! `tagKeys`) and `ListTags` (GET) on `/2017-03-31/tags/{ARN}`. Tags are
//! kept in the function's record; they are not part of its code revision.

use super::*;

/// The function a tagging request's ARN names (Lambda takes an ARN here;
/// thaw also takes a name), in the caller's account.
fn target(scope: &Scope, resource: FunctionRef) -> Result<Target, ApiError> {
    scope.resolve(resource, None)
}

pub(super) async fn list<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(resource): FunctionPath,
) -> Result<Json<thaw_api::tags::Tags>, ApiError> {
    let name = target(&scope, resource)?;
    let record = lookup(&b, &name)?;
    Ok(Json(thaw_api::tags::Tags { tags: record.tags }))
}

pub(super) async fn tag<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(resource): FunctionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let name = target(&scope, resource)?;
    let bytes = read_settings_body(&headers, body, "TagResource").await?;
    let req: thaw_api::tags::Tags = parse_json(&bytes)?;
    thaw_api::tags::validate(&req.tags)?;
    let key = name.key.clone();
    with_registry(&b, move |r| {
        r.update_tags(&key, |tags| tags.extend(req.tags))
    })
    .instrument(span("TagResource", &name))
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn untag<B: ApiBackend>(
    State(b): State<B>,
    scope: Scope,
    FunctionPath(resource): FunctionPath,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let name = target(&scope, resource)?;
    let Query(pairs) = query.map_err(|e| {
        LambdaError::new(
            ErrorCode::Validation,
            format!("Invalid query string: {}", e.body_text()),
        )
    })?;
    let keys: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "tagKeys")
        .map(|(_, v)| v)
        .collect();
    if keys.is_empty() {
        return Err(ApiError(LambdaError::validation(
            "null",
            "tagKeys",
            "Member must not be null",
        )));
    }
    let key = name.key.clone();
    with_registry(&b, move |r| {
        r.update_tags(&key, |tags| {
            for k in &keys {
                tags.remove(k);
            }
        })
    })
    .instrument(span("UntagResource", &name))
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
