//! The JSON documents of Lambda's management API, with Lambda's field names.
//!
//! Owns: the serde shapes, and the conversion of a request document into
//! validated values ([`NewFunction`], [`FunctionSettings`]). Unknown fields are
//! ignored, as the AWS SDKs send fields thaw has no use for. Must not: decide
//! anything about storage or instances.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::LambdaError;
use crate::function::{
    validate_environment, validate_memory_size, validate_timeout, FunctionName, FunctionRef,
    FunctionSettings, Runtime, EPHEMERAL_STORAGE_MB, LATEST,
};

/// Base64 in JSON, bytes in Rust (Lambda's `ZipFile` blob).
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            STANDARD
                .decode(s.trim())
                .map_err(|e| serde::de::Error::custom(format!("ZipFile is not valid base64: {e}")))
        })
        .transpose()
    }
}

/// `Environment` of a request or a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Environment {
    /// The variables; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<BTreeMap<String, String>>,
}

/// `EphemeralStorage`: the size of `/tmp`, MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EphemeralStorage {
    /// Size in MB.
    pub size: i64,
}

/// `Code` of a `CreateFunction` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionCode {
    /// The zip, base64 in JSON.
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub zip_file: Option<Vec<u8>>,
    /// Not supported by thaw.
    #[serde(default, rename = "S3Bucket", skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// Not supported by thaw.
    #[serde(default, rename = "S3Key", skip_serializing_if = "Option::is_none")]
    pub s3_key: Option<String>,
    /// Not supported by thaw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uri: Option<String>,
}

/// `CreateFunction` request body (`POST /2015-03-31/functions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunctionRequest {
    /// Name, or ARN, of the new function.
    pub function_name: String,
    /// Runtime identifier, e.g. `python3.11`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Handler, e.g. `app.handler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Execution role (recorded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The code.
    #[serde(default)]
    pub code: FunctionCode,
    /// MB, 128..=10240; default 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_size: Option<i64>,
    /// Seconds, 1..=900; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Also publish the new function as version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
    /// `Zip` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_type: Option<String>,
    /// `x86_64` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// 512 MB only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
    /// Must be empty: thaw has no layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
    /// Configuration thaw keeps and returns without acting on it
    /// (`VpcConfig`, `TracingConfig`, ...: [`crate::kept`]).
    #[serde(flatten)]
    pub kept: crate::kept::Kept,
    /// The function's tags (at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// A validated `CreateFunction` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFunction {
    /// The function's name.
    pub name: FunctionName,
    /// Its configuration.
    pub settings: FunctionSettings,
    /// The code zip (not yet checked to be a valid zip).
    pub zip: Vec<u8>,
    /// Its tags, checked.
    pub tags: BTreeMap<String, String>,
}

impl CreateFunctionRequest {
    /// Validate the request the way Lambda does and split it into parts.
    pub fn validate(self) -> Result<NewFunction, LambdaError> {
        let target = FunctionRef::parse(&self.function_name)?;
        if target.qualifier.is_some() {
            return Err(LambdaError::invalid_parameter(
                "A qualifier cannot be given when creating a function",
            ));
        }
        check_package_type(self.package_type.as_deref())?;
        check_architectures(self.architectures.as_deref())?;
        check_ephemeral_storage(self.ephemeral_storage)?;
        check_layers(self.layers.as_deref())?;
        let runtime = match self.runtime.as_deref() {
            Some(r) => Runtime::parse(r)?,
            None => {
                return Err(LambdaError::invalid_parameter(
                    "Runtime is required for .zip file deployment packages",
                ))
            }
        };
        let zip = code_zip(
            self.code.zip_file,
            self.code.s3_bucket.is_some() || self.code.s3_key.is_some(),
            self.code.image_uri.is_some(),
        )?;
        let mut settings = FunctionSettings::new(runtime, self.handler.unwrap_or_default());
        if let Some(m) = self.memory_size {
            settings.memory_mb = validate_memory_size(m)?;
        }
        if let Some(t) = self.timeout {
            settings.timeout_s = validate_timeout(t)?;
        }
        if let Some(env) = self.environment {
            settings.environment = env.variables.unwrap_or_default();
        }
        settings.description = self.description.unwrap_or_default();
        settings.role = self.role.unwrap_or_default();
        settings.kept = self.kept;
        settings.validate()?;
        let tags = self.tags.unwrap_or_default();
        crate::tags::validate(&tags)?;
        crate::tags::check_count(tags.len())?;
        Ok(NewFunction {
            name: target.name,
            settings,
            zip,
            tags,
        })
    }
}

fn code_zip(zip: Option<Vec<u8>>, s3: bool, image: bool) -> Result<Vec<u8>, LambdaError> {
    if s3 {
        return Err(LambdaError::invalid_parameter(
            "Code from S3 (S3Bucket, S3Key) is not supported by thaw: upload the zip as ZipFile",
        ));
    }
    if image {
        return Err(LambdaError::invalid_parameter(
            "Container images (ImageUri) are not supported by thaw: upload a zip as ZipFile",
        ));
    }
    zip.ok_or_else(|| {
        LambdaError::invalid_parameter("Please provide a source for function code: ZipFile")
    })
}

fn check_package_type(p: Option<&str>) -> Result<(), LambdaError> {
    match p {
        None | Some("Zip") => Ok(()),
        Some(other) => Err(LambdaError::invalid_parameter(format!(
            "PackageType {other} is not supported by thaw; only Zip is"
        ))),
    }
}

fn check_architectures(a: Option<&[String]>) -> Result<(), LambdaError> {
    match a {
        None => Ok(()),
        Some([only]) if only == "x86_64" => Ok(()),
        Some(other) => Err(LambdaError::invalid_parameter(format!(
            "Architectures {other:?} are not supported by thaw; only [\"x86_64\"] is"
        ))),
    }
}

fn check_ephemeral_storage(e: Option<EphemeralStorage>) -> Result<(), LambdaError> {
    match e {
        None => Ok(()),
        Some(e) if e.size < 512 || e.size > 10240 => Err(LambdaError::validation(
            &e.size.to_string(),
            "ephemeralStorage.size",
            "Member must have value between 512 and 10240",
        )),
        Some(e) if e.size != i64::from(EPHEMERAL_STORAGE_MB) => {
            Err(LambdaError::invalid_parameter(format!(
                "EphemeralStorage of {} MB is not supported by thaw; every function has {EPHEMERAL_STORAGE_MB} MB of /tmp",
                e.size
            )))
        }
        Some(_) => Ok(()),
    }
}

fn check_layers(l: Option<&[String]>) -> Result<(), LambdaError> {
    match l {
        Some(layers) if !layers.is_empty() => Err(LambdaError::invalid_parameter(
            "Layers are not supported by thaw: include the dependencies in the function's zip",
        )),
        _ => Ok(()),
    }
}

/// `UpdateFunctionCode` request body (`PUT /2015-03-31/functions/{name}/code`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionCodeRequest {
    /// The new zip, base64 in JSON.
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub zip_file: Option<Vec<u8>>,
    /// Not supported by thaw.
    #[serde(default, rename = "S3Bucket", skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// Not supported by thaw.
    #[serde(default, rename = "S3Key", skip_serializing_if = "Option::is_none")]
    pub s3_key: Option<String>,
    /// Not supported by thaw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uri: Option<String>,
    /// Also publish the new code as a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
    /// Validate the code without changing the function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Only update if the function's revision is still this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<String>,
    /// `x86_64` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
}

impl UpdateFunctionCodeRequest {
    /// Validate the request and take the zip out of it.
    pub fn take_zip(&mut self) -> Result<Vec<u8>, LambdaError> {
        check_architectures(self.architectures.as_deref())?;
        code_zip(
            self.zip_file.take(),
            self.s3_bucket.is_some() || self.s3_key.is_some(),
            self.image_uri.is_some(),
        )
    }
}

/// `UpdateFunctionConfiguration` request body
/// (`PUT /2015-03-31/functions/{name}/configuration`). Absent fields keep
/// their current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionConfigurationRequest {
    /// New runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// New handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// New role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New memory size, MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_size: Option<i64>,
    /// New timeout, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Replaces all environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// 512 MB only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
    /// Must be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
    /// Configuration thaw keeps and returns without acting on it
    /// (`VpcConfig`, `TracingConfig`, ...: [`crate::kept`]).
    #[serde(flatten)]
    pub kept: crate::kept::Kept,
    /// Only update if the function's revision is still this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<String>,
}

impl UpdateFunctionConfigurationRequest {
    /// The settings after this update, validated as a whole.
    pub fn apply_to(&self, current: &FunctionSettings) -> Result<FunctionSettings, LambdaError> {
        check_ephemeral_storage(self.ephemeral_storage)?;
        check_layers(self.layers.as_deref())?;
        let mut s = current.clone();
        if let Some(r) = &self.runtime {
            s.runtime = Runtime::parse(r)?;
        }
        if let Some(h) = &self.handler {
            s.handler.clone_from(h);
        }
        if let Some(r) = &self.role {
            s.role.clone_from(r);
        }
        if let Some(m) = self.memory_size {
            s.memory_mb = validate_memory_size(m)?;
        }
        if let Some(t) = self.timeout {
            s.timeout_s = validate_timeout(t)?;
        }
        if let Some(env) = &self.environment {
            let vars = env.variables.clone().unwrap_or_default();
            validate_environment(&vars)?;
            s.environment = vars;
        }
        if let Some(d) = &self.description {
            s.description.clone_from(d);
        }
        s.kept = s.kept.merged(&self.kept);
        s.validate()?;
        Ok(s)
    }
}

/// The configuration of a function as Lambda reports it (`$LATEST`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FunctionConfiguration {
    /// Name.
    pub function_name: String,
    /// `arn:aws:lambda:us-east-1:000000000000:function:NAME`.
    pub function_arn: String,
    /// Runtime identifier.
    pub runtime: String,
    /// Execution role.
    pub role: String,
    /// Handler; absent for a custom runtime without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Size of the code zip, bytes.
    pub code_size: u64,
    /// Free text.
    pub description: String,
    /// Timeout, seconds.
    pub timeout: u32,
    /// Memory size, MB.
    pub memory_size: u32,
    /// `2024-01-01T00:00:00.000+0000`.
    pub last_modified: String,
    /// Base64 SHA-256 of the code zip.
    pub code_sha256: String,
    /// `$LATEST`, or the number of a published version.
    pub version: String,
    /// Present when the function has environment variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Always `Active`: thaw creates functions synchronously.
    pub state: String,
    /// Always `Successful`.
    pub last_update_status: String,
    /// Always `Zip`.
    pub package_type: String,
    /// Always `["x86_64"]`.
    pub architectures: Vec<String>,
    /// Changes on every update.
    pub revision_id: String,
    /// Size of `/tmp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
    /// The kept configuration as Lambda returns it (with its defaults:
    /// [`crate::kept::Kept::returned`]).
    #[serde(flatten)]
    pub kept: crate::kept::Kept,
}

impl FunctionConfiguration {
    /// The configuration of a function's `$LATEST` with the fields that are
    /// constant in thaw filled in.
    pub fn latest(name: &FunctionName, settings: &FunctionSettings, code: CodeInfo) -> Self {
        FunctionConfiguration::latest_in(crate::function::ACCOUNT_ID, name, settings, code)
    }

    /// [`FunctionConfiguration::latest`] of a function of `account`.
    pub fn latest_in(
        account: &str,
        name: &FunctionName,
        settings: &FunctionSettings,
        code: CodeInfo,
    ) -> Self {
        FunctionConfiguration {
            function_name: name.as_str().to_string(),
            function_arn: name.arn_in(account),
            runtime: settings.runtime.as_str().to_string(),
            role: settings.role.clone(),
            handler: (!settings.handler.is_empty()).then(|| settings.handler.clone()),
            code_size: code.size,
            description: settings.description.clone(),
            timeout: settings.timeout_s,
            memory_size: settings.memory_mb,
            last_modified: code.last_modified,
            code_sha256: code.sha256,
            version: LATEST.to_string(),
            environment: (!settings.environment.is_empty()).then(|| Environment {
                variables: Some(settings.environment.clone()),
            }),
            state: "Active".into(),
            last_update_status: "Successful".into(),
            package_type: "Zip".into(),
            architectures: vec!["x86_64".into()],
            revision_id: code.revision_id,
            ephemeral_storage: Some(EphemeralStorage {
                size: i64::from(EPHEMERAL_STORAGE_MB),
            }),
            kept: settings.kept.returned(name.as_str()),
        }
    }
}

impl FunctionConfiguration {
    /// The configuration of published version `version` of a function of
    /// `account`: its ARN is qualified with the number, and SnapStart's
    /// `OptimizationStatus` is `On` when it applies to published versions.
    pub fn version_in(
        account: &str,
        name: &FunctionName,
        settings: &FunctionSettings,
        code: CodeInfo,
        version: u32,
    ) -> Self {
        let mut c = FunctionConfiguration::latest_in(account, name, settings, code);
        c.function_arn = format!("{}:{version}", c.function_arn);
        c.version = version.to_string();
        if settings.kept.snap_start_applies() {
            if let Some(s) = c.kept.snap_start.as_mut() {
                s.optimization_status = Some("On".into());
            }
        }
        c
    }
}

/// What [`FunctionConfiguration::latest`] needs besides the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeInfo {
    /// Size of the zip, bytes.
    pub size: u64,
    /// Base64 SHA-256 of the zip.
    pub sha256: String,
    /// Lambda's `LastModified`.
    pub last_modified: String,
    /// The current revision.
    pub revision_id: String,
}

/// `Code` of a `GetFunction` response: where to download the zip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FunctionCodeLocation {
    /// `S3` in Lambda; thaw serves the zip itself.
    pub repository_type: String,
    /// URL of the zip.
    pub location: String,
}

/// `GetFunction` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GetFunctionResponse {
    /// The configuration.
    pub configuration: FunctionConfiguration,
    /// Where the code is.
    pub code: FunctionCodeLocation,
    /// The function's reserved concurrency; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::concurrency::Concurrency>,
    /// The function's tags; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// `ListFunctions` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ListFunctionsResponse {
    /// One page of functions, sorted by name.
    pub functions: Vec<FunctionConfiguration>,
    /// Pass as `Marker` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn create_json(extra: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({
            "FunctionName": "hello",
            "Runtime": "python3.11",
            "Role": "arn:aws:iam::000000000000:role/r",
            "Handler": "app.handler",
            "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
            "SomethingNew": {"x": 1},
        });
        if let (Some(base), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            base.extend(extra);
        }
        v
    }

    fn create(extra: serde_json::Value) -> Result<NewFunction, LambdaError> {
        serde_json::from_value::<CreateFunctionRequest>(create_json(extra))
            .expect("parses")
            .validate()
    }

    #[test]
    fn create_defaults_and_unknown_fields() {
        let f = create(serde_json::json!({})).unwrap();
        assert_eq!(f.name.as_str(), "hello");
        assert_eq!(f.settings.memory_mb, 128);
        assert_eq!(f.settings.timeout_s, 3);
        assert_eq!(f.zip.len(), 22);
        let f = create(serde_json::json!({
            "FunctionName": "arn:aws:lambda:us-east-1:000000000000:function:viaarn",
            "MemorySize": 256, "Timeout": 900,
            "Environment": {"Variables": {"A": "1"}},
            "Architectures": ["x86_64"], "PackageType": "Zip",
            "EphemeralStorage": {"Size": 512}, "Layers": [], "Publish": true,
            "Tags": {"team": "x"},
        }))
        .unwrap();
        assert_eq!(f.name.as_str(), "viaarn");
        assert_eq!(f.settings.memory_mb, 256);
        assert_eq!(f.settings.environment["A"], "1");
    }

    #[test]
    fn create_rejections() {
        let code = |extra: serde_json::Value| create(extra).unwrap_err().code;
        use ErrorCode::*;
        assert_eq!(
            code(serde_json::json!({"Runtime": "cobol85"})),
            InvalidParameterValue
        );
        assert_eq!(code(serde_json::json!({"MemorySize": 64})), Validation);
        assert_eq!(code(serde_json::json!({"Timeout": 0})), Validation);
        assert_eq!(
            code(serde_json::json!({"FunctionName": "bad name!"})),
            Validation
        );
        assert_eq!(
            code(serde_json::json!({"FunctionName": "f:1"})),
            InvalidParameterValue
        );
        assert_eq!(
            code(serde_json::json!({"Code": {"S3Bucket": "b", "S3Key": "k"}})),
            InvalidParameterValue
        );
        let e = create(serde_json::json!({"Code": {"S3Bucket": "b", "S3Key": "k"}})).unwrap_err();
        assert!(e.message.contains("not supported"), "{}", e.message);
        assert_eq!(code(serde_json::json!({"Code": {}})), InvalidParameterValue);
        assert_eq!(
            code(serde_json::json!({"Layers": ["arn:l"]})),
            InvalidParameterValue
        );
        assert_eq!(
            code(serde_json::json!({"Handler": null})),
            InvalidParameterValue
        );
        assert_eq!(
            code(serde_json::json!({"PackageType": "Image"})),
            InvalidParameterValue
        );
        assert_eq!(
            code(serde_json::json!({"Architectures": ["arm64"]})),
            InvalidParameterValue
        );
        assert_eq!(
            code(serde_json::json!({"EphemeralStorage": {"Size": 100}})),
            Validation
        );
        assert_eq!(
            code(serde_json::json!({"Runtime": null})),
            InvalidParameterValue
        );
        assert!(create(serde_json::json!({"Runtime": "provided.al2023", "Handler": null})).is_ok());
        let bad_b64 = serde_json::from_value::<CreateFunctionRequest>(create_json(
            serde_json::json!({"Code": {"ZipFile": "!!"}}),
        ));
        assert!(bad_b64.is_err());
    }

    #[test]
    fn configuration_update_merges_and_validates() {
        let cur = FunctionSettings::new(Runtime::Python311, "app.handler");
        let req: UpdateFunctionConfigurationRequest = serde_json::from_value(serde_json::json!({
            "MemorySize": 512, "Timeout": 7, "Environment": {"Variables": {"A": "1"}}
        }))
        .unwrap();
        let s = req.apply_to(&cur).unwrap();
        assert_eq!(
            (s.memory_mb, s.timeout_s, s.handler.as_str()),
            (512, 7, "app.handler")
        );
        let clear: UpdateFunctionConfigurationRequest =
            serde_json::from_value(serde_json::json!({"Environment": {}})).unwrap();
        assert!(clear.apply_to(&s).unwrap().environment.is_empty());
        let bad: UpdateFunctionConfigurationRequest =
            serde_json::from_value(serde_json::json!({"Handler": ""})).unwrap();
        assert_eq!(
            bad.apply_to(&cur).unwrap_err().code,
            ErrorCode::InvalidParameterValue
        );
    }

    #[test]
    fn configuration_json_uses_lambda_names() {
        let name = FunctionName::parse("hello").unwrap();
        let mut settings = FunctionSettings::new(Runtime::Python311, "app.handler");
        settings.environment.insert("A".into(), "1".into());
        let c = FunctionConfiguration::latest(
            &name,
            &settings,
            CodeInfo {
                size: 10,
                sha256: "abc=".into(),
                last_modified: "2024-01-01T00:00:00.000+0000".into(),
                revision_id: "r1".into(),
            },
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["FunctionArn"],
            "arn:aws:lambda:us-east-1:000000000000:function:hello"
        );
        assert_eq!(v["CodeSha256"], "abc=");
        assert_eq!(v["Version"], "$LATEST");
        assert_eq!(v["State"], "Active");
        assert_eq!(v["LastUpdateStatus"], "Successful");
        assert_eq!(v["PackageType"], "Zip");
        assert_eq!(v["Architectures"], serde_json::json!(["x86_64"]));
        assert_eq!(v["EphemeralStorage"], serde_json::json!({"Size": 512}));
        assert_eq!(
            v["Environment"],
            serde_json::json!({"Variables": {"A": "1"}})
        );
        assert_eq!(v["MemorySize"], 128);
        assert_eq!(v["RevisionId"], "r1");
        let back: FunctionConfiguration = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
