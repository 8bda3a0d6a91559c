//! Lambda API request bodies and path/header values (`thaw-api`): what
//! `thawd`'s handlers parse and validate before acting on a request.

use thaw_api::{
    CreateFunctionRequest, FunctionName, FunctionRef, FunctionSettings, InvocationType,
    PutFunctionConcurrencyRequest, PutProvisionedConcurrencyConfigRequest, Runtime,
    UpdateFunctionCodeRequest, UpdateFunctionConfigurationRequest,
};

/// Parses `data` as each request body the API accepts (as `thawd` does:
/// `serde_json::from_slice`, then the request's validation) and, when it is
/// UTF-8, as a function name, a function reference with a qualifier and an
/// invocation type. A settings update that validates must give settings
/// that validate again.
pub fn api_request(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<CreateFunctionRequest>(data) {
        if let Ok(new) = req.validate() {
            new.settings
                .validate()
                .expect("validated settings validate again");
            FunctionName::parse(new.name.as_str()).expect("a validated name parses again");
        }
    }
    if let Ok(req) = serde_json::from_slice::<UpdateFunctionConfigurationRequest>(data) {
        let current = FunctionSettings::new(Runtime::Python311, "app.handler");
        if let Ok(s) = req.apply_to(&current) {
            s.validate().expect("applied settings validate again");
        }
    }
    if let Ok(mut req) = serde_json::from_slice::<UpdateFunctionCodeRequest>(data) {
        let _ = req.take_zip();
    }
    if let Ok(req) = serde_json::from_slice::<PutFunctionConcurrencyRequest>(data) {
        let _ = req.validate();
    }
    if let Ok(req) = serde_json::from_slice::<PutProvisionedConcurrencyConfigRequest>(data) {
        let _ = req.validate();
    }
    if let Ok(req) =
        serde_json::from_slice::<thaw_api::events::PutFunctionEventInvokeConfigRequest>(data)
    {
        if req.validate().is_ok() {
            // What validates is within Lambda's bounds.
            if let Some(n) = req.maximum_retry_attempts {
                assert!((0..=2).contains(&n), "{n}");
            }
        }
    }
    if let Ok(req) = serde_json::from_slice::<thaw_api::tags::Tags>(data) {
        let _ = thaw_api::tags::validate(&req.tags);
    }
    if let Ok(req) = serde_json::from_slice::<thaw_api::versions::PublishVersionRequest>(data) {
        let _ = req.validate();
    }
    // Alias routing as CreateAlias and UpdateAlias check it: what passes
    // has at most one additional version, a weight in [0, 1], and routes
    // every roll to a version.
    if let Ok(req) = serde_json::from_slice::<thaw_api::versions::CreateAliasRequest>(data) {
        use thaw_api::versions::{route, Qualifier};
        if let (Ok(primary), Some(routing)) = (
            Qualifier::parse_version(&req.function_version),
            req.routing_config.as_ref(),
        ) {
            if let Ok(weights) = routing.check(&primary) {
                assert!(weights.len() <= 1);
                for (v, w) in &weights {
                    assert!((0.0..=1.0).contains(w), "{w}");
                    assert_ne!(Qualifier::Version(*v), primary);
                }
                for roll in [0.0, 0.5, 0.999_999] {
                    let _ = route(&primary, &weights, roll);
                }
            }
        }
    }
    let _ = serde_json::from_slice::<thaw_api::versions::UpdateAliasRequest>(data);
    if let Ok(req) = serde_json::from_slice::<thaw_api::urls::CreateFunctionUrlConfigRequest>(data)
    {
        let _ = req.validate();
    }
    // A function's answer behind a function URL: a status in range when
    // it maps at all.
    if let Ok(r) = thaw_api::urls::response_of(data) {
        assert!((100..=599).contains(&r.status), "{}", r.status);
    }
    // A queued event's record as the event queue stores it.
    let _ = serde_json::from_slice::<thaw_api::events::DestinationRecord>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(name) = FunctionName::parse(s) {
            let _ = name.arn();
        }
        // A path segment, then a `Qualifier` query value after a NUL.
        let (path, qualifier) = match s.split_once('\0') {
            Some((p, q)) => (p, Some(q)),
            None => (s, None),
        };
        if let Ok(r) = FunctionRef::parse(path) {
            let _ = r.clone().latest(qualifier);
            if let Ok((_, q)) = r.qualified(qualifier) {
                // A qualifier that parses prints back as itself.
                let printed = q.to_string();
                assert_eq!(thaw_api::versions::Qualifier::parse(&printed).ok(), Some(q));
            }
        }
        let _ = thaw_api::urls::url_id_of_host(s);
        let _ = InvocationType::parse(s);
        let _ = Runtime::parse(s);
    }
}
