//! A typed, blocking client of thaw's API, used by the CLI, benchmarks and
//! tests.
//!
//! Owns: building requests and turning responses, including Lambda error
//! responses, into typed values. Must not: retry or hide errors; the caller
//! decides. Built on `reqwest::blocking`, so it must not be called from inside
//! an async runtime.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::blocking::{RequestBuilder, Response};

use crate::auth::{sign_request, Credentials, SignError};
use reqwest::Url;
use serde::de::DeserializeOwned;

use crate::error::{ErrorBody, ErrorCode, ERROR_TYPE_HEADER};
use crate::invoke::SnapshotReport;
use crate::invoke::{
    InvocationType, ServerTiming, StartKind, CLIENT_CONTEXT_HEADER, FUNCTION_ERROR_HEADER,
    INVOCATION_TYPE_HEADER, LOG_RESULT_HEADER, LOG_TYPE_HEADER, REQUEST_ID_HEADER,
    SERVER_TIMING_HEADER, THAW_START_HEADER,
};
use crate::logs::LogRecord;
use crate::types::{
    CreateFunctionRequest, FunctionConfiguration, GetFunctionResponse, ListFunctionsResponse,
    UpdateFunctionCodeRequest, UpdateFunctionConfigurationRequest,
};

/// How long one request may take: the longest function timeout (900 s) plus
/// init and queueing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(960);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not an http(s) URL.
    #[error("Invalid endpoint {endpoint}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is invalid.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The API answered with a Lambda error.
    #[error("{code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Lambda's error code (from `x-amzn-ErrorType`).
        code: ErrorCode,
        /// Lambda's message.
        message: String,
    },
    /// The request did not get a response.
    #[error("Request to {url} failed")]
    Transport {
        /// What was requested.
        url: String,
        /// Why it failed.
        #[source]
        source: reqwest::Error,
    },
    /// The response could not be understood.
    #[error("Unexpected response from {url}")]
    Decode {
        /// What was requested.
        url: String,
        /// Why it could not be decoded.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ClientError {
    /// Lambda's error code, if the API answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the API said the function does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(&ErrorCode::ResourceNotFound)
    }
}

/// Options of [`Client::invoke`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvokeOptions {
    /// `RequestResponse`, `Event` or `DryRun`.
    pub invocation_type: InvocationType,
    /// Ask for the last 4 KiB of the log (`X-Amz-Log-Type: Tail`).
    pub log_tail: bool,
    /// A JSON document passed to the function as its client context.
    pub client_context: Option<String>,
}

/// The response of [`Client::invoke`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvokeResult {
    /// 200 (sync), 202 (`Event`) or 204 (`DryRun`).
    pub status: u16,
    /// The function's response, or its error document.
    pub payload: Vec<u8>,
    /// `Unhandled` when the function failed.
    pub function_error: Option<String>,
    /// The decoded log tail, when asked for.
    pub log_result: Option<String>,
    /// Whether the instance was started for this call (`X-Thaw-Start`).
    pub start: Option<StartKind>,
    /// The phases of the call (`Server-Timing`).
    pub server_timing: Option<ServerTiming>,
    /// How a restored instance's memory came back (`X-Thaw-Memory`, on
    /// its first invocation).
    pub memory: Option<crate::invoke::MemoryInfo>,
    /// The request id.
    pub request_id: Option<String>,
}

/// A client of one thaw daemon.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    endpoint: Url,
    credentials: Option<Credentials>,
}

impl Client {
    /// A client of the daemon at `endpoint`, e.g. `http://127.0.0.1:9070`.
    pub fn new(endpoint: &str) -> Result<Client, ClientError> {
        let invalid = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Endpoint {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut url = Url::parse(endpoint).map_err(|e| invalid(Box::new(e)))?;
        if !matches!(url.scheme(), "http" | "https") || url.path_segments_mut().is_err() {
            return Err(invalid("expected an http:// URL".into()));
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| invalid(Box::new(e)))?;
        Ok(Client {
            http,
            credentials: Credentials::discover(url.as_str()),
            endpoint: url,
        })
    }

    /// This client, signing its requests with `credentials` (instead of
    /// those [`Credentials::discover`] found).
    pub fn with_credentials(mut self, credentials: Credentials) -> Client {
        self.credentials = Some(credentials);
        self
    }

    /// The credentials requests are signed with, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The daemon's metrics, in Prometheus' text format.
    pub fn metrics_text(&self) -> Result<String, ClientError> {
        let url = self.url(&["metrics"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        resp.text().map_err(|source| ClientError::Transport {
            url: url.to_string(),
            source,
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn function_url(&self, name: &str, tail: &[&str]) -> Url {
        let mut segments = vec!["2015-03-31", "functions", name];
        segments.extend_from_slice(tail);
        self.url(&segments)
    }

    /// `CreateFunction`.
    pub fn create_function(
        &self,
        req: &CreateFunctionRequest,
    ) -> Result<FunctionConfiguration, ClientError> {
        let url = self.url(&["2015-03-31", "functions"]);
        let resp = self.send(self.http.post(url.clone()).json(req), &url)?;
        decode(resp, &url)
    }

    /// `GetFunction`.
    pub fn get_function(&self, name: &str) -> Result<GetFunctionResponse, ClientError> {
        let url = self.function_url(name, &[]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// `GetFunctionConfiguration`.
    pub fn get_function_configuration(
        &self,
        name: &str,
    ) -> Result<FunctionConfiguration, ClientError> {
        let url = self.function_url(name, &["configuration"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// `ListFunctions`: one page.
    pub fn list_functions(
        &self,
        marker: Option<&str>,
        max_items: Option<u32>,
    ) -> Result<ListFunctionsResponse, ClientError> {
        let mut url = self.url(&["2015-03-31", "functions", ""]);
        let max_items = max_items.map(|n| n.to_string());
        with_query(
            &mut url,
            &[("Marker", marker), ("MaxItems", max_items.as_deref())],
        );
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// `ListFunctions`, following `NextMarker` to the end.
    pub fn list_all_functions(&self) -> Result<Vec<FunctionConfiguration>, ClientError> {
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self.list_functions(marker.as_deref(), None)?;
            all.extend(page.functions);
            match page.next_marker {
                Some(m) if marker.as_deref() != Some(m.as_str()) => marker = Some(m),
                _ => return Ok(all),
            }
        }
    }

    /// `UpdateFunctionCode`.
    pub fn update_function_code(
        &self,
        name: &str,
        req: &UpdateFunctionCodeRequest,
    ) -> Result<FunctionConfiguration, ClientError> {
        let url = self.function_url(name, &["code"]);
        let resp = self.send(self.http.put(url.clone()).json(req), &url)?;
        decode(resp, &url)
    }

    /// `UpdateFunctionConfiguration`.
    pub fn update_function_configuration(
        &self,
        name: &str,
        req: &UpdateFunctionConfigurationRequest,
    ) -> Result<FunctionConfiguration, ClientError> {
        let url = self.function_url(name, &["configuration"]);
        let resp = self.send(self.http.put(url.clone()).json(req), &url)?;
        decode(resp, &url)
    }

    /// `DeleteFunction`.
    pub fn delete_function(&self, name: &str) -> Result<(), ClientError> {
        let url = self.function_url(name, &[]);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    /// `Invoke`. A function error is not a [`ClientError`]: it comes back as
    /// [`InvokeResult::function_error`].
    pub fn invoke(
        &self,
        name: &str,
        payload: &[u8],
        opts: &InvokeOptions,
    ) -> Result<InvokeResult, ClientError> {
        let url = self.function_url(name, &["invocations"]);
        let mut req = self
            .http
            .post(url.clone())
            .header(INVOCATION_TYPE_HEADER, opts.invocation_type.as_str())
            .header(LOG_TYPE_HEADER, if opts.log_tail { "Tail" } else { "None" })
            .body(payload.to_vec());
        if let Some(ctx) = &opts.client_context {
            req = req.header(CLIENT_CONTEXT_HEADER, STANDARD.encode(ctx));
        }
        let resp = self.send(req, &url)?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let log_result = match header(LOG_RESULT_HEADER) {
            None => None,
            Some(b64) => {
                let bytes = STANDARD.decode(b64).map_err(|e| ClientError::Decode {
                    url: url.to_string(),
                    source: Box::new(e),
                })?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        let mut result = InvokeResult {
            status: resp.status().as_u16(),
            payload: Vec::new(),
            function_error: header(FUNCTION_ERROR_HEADER),
            log_result,
            start: header(THAW_START_HEADER).and_then(|s| StartKind::parse(&s)),
            server_timing: header(SERVER_TIMING_HEADER).and_then(|s| ServerTiming::parse(&s)),
            memory: header(crate::invoke::THAW_MEMORY_HEADER)
                .and_then(|s| crate::invoke::MemoryInfo::parse(&s)),
            request_id: header(REQUEST_ID_HEADER),
        };
        result.payload = resp
            .bytes()
            .map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })?
            .to_vec();
        Ok(result)
    }

    /// `PutFunctionConcurrency`: reserve `n` concurrent executions for the
    /// function (0 stops it).
    pub fn put_function_concurrency(
        &self,
        name: &str,
        n: i64,
    ) -> Result<crate::Concurrency, ClientError> {
        let url = self.url(&["2017-10-31", "functions", name, "concurrency"]);
        let body = crate::PutFunctionConcurrencyRequest {
            reserved_concurrent_executions: Some(n),
        };
        let resp = self.send(self.http.put(url.clone()).json(&body), &url)?;
        decode(resp, &url)
    }

    /// `GetFunctionConcurrency`.
    pub fn get_function_concurrency(&self, name: &str) -> Result<crate::Concurrency, ClientError> {
        let url = self.url(&["2019-09-30", "functions", name, "concurrency"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// `DeleteFunctionConcurrency`.
    pub fn delete_function_concurrency(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["2017-10-31", "functions", name, "concurrency"]);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    /// `GetAccountSettings`.
    pub fn get_account_settings(&self) -> Result<crate::AccountSettings, ClientError> {
        let url = self.url(&["2016-08-19", "account-settings"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    fn provisioned_url(&self, name: &str, qualifier: &str) -> Url {
        let mut url = self.url(&["2019-09-30", "functions", name, "provisioned-concurrency"]);
        url.query_pairs_mut().append_pair("Qualifier", qualifier);
        url
    }

    /// `PutProvisionedConcurrencyConfig` on a version, an alias or `$LATEST`.
    pub fn put_provisioned_concurrency_config(
        &self,
        name: &str,
        qualifier: &str,
        n: i64,
    ) -> Result<crate::ProvisionedConcurrencyConfig, ClientError> {
        let url = self.provisioned_url(name, qualifier);
        let body = crate::PutProvisionedConcurrencyConfigRequest {
            provisioned_concurrent_executions: Some(n),
        };
        let resp = self.send(self.http.put(url.clone()).json(&body), &url)?;
        decode(resp, &url)
    }

    /// `GetProvisionedConcurrencyConfig`.
    pub fn get_provisioned_concurrency_config(
        &self,
        name: &str,
        qualifier: &str,
    ) -> Result<crate::ProvisionedConcurrencyConfig, ClientError> {
        let url = self.provisioned_url(name, qualifier);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// `DeleteProvisionedConcurrencyConfig`.
    pub fn delete_provisioned_concurrency_config(
        &self,
        name: &str,
        qualifier: &str,
    ) -> Result<(), ClientError> {
        let url = self.provisioned_url(name, qualifier);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    /// `ListProvisionedConcurrencyConfigs`.
    pub fn list_provisioned_concurrency_configs(
        &self,
        name: &str,
    ) -> Result<crate::ListProvisionedConcurrencyConfigsResponse, ClientError> {
        let mut url = self.url(&["2019-09-30", "functions", name, "provisioned-concurrency"]);
        url.query_pairs_mut().append_pair("List", "ALL");
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// `PublishVersion`.
    pub fn publish_version(
        &self,
        name: &str,
        req: &crate::versions::PublishVersionRequest,
    ) -> Result<FunctionConfiguration, ClientError> {
        let url = self.function_url(name, &["versions"]);
        let resp = self.send(self.http.post(url.clone()).json(req), &url)?;
        decode(resp, &url)
    }

    /// `ListVersionsByFunction`, following `NextMarker` to the end.
    pub fn list_versions(&self, name: &str) -> Result<Vec<FunctionConfiguration>, ClientError> {
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut url = self.function_url(name, &["versions"]);
            with_query(&mut url, &[("Marker", marker.as_deref())]);
            let resp = self.send(self.http.get(url.clone()), &url)?;
            let page: crate::versions::ListVersionsResponse = decode(resp, &url)?;
            all.extend(page.versions);
            match page.next_marker {
                Some(m) if marker.as_deref() != Some(m.as_str()) => marker = Some(m),
                _ => return Ok(all),
            }
        }
    }

    /// `CreateAlias`.
    pub fn create_alias(
        &self,
        name: &str,
        req: &crate::versions::CreateAliasRequest,
    ) -> Result<crate::versions::AliasConfiguration, ClientError> {
        let url = self.function_url(name, &["aliases"]);
        let resp = self.send(self.http.post(url.clone()).json(req), &url)?;
        decode(resp, &url)
    }

    /// `UpdateAlias`.
    pub fn update_alias(
        &self,
        name: &str,
        alias: &str,
        req: &crate::versions::UpdateAliasRequest,
    ) -> Result<crate::versions::AliasConfiguration, ClientError> {
        let url = self.function_url(name, &["aliases", alias]);
        let resp = self.send(self.http.put(url.clone()).json(req), &url)?;
        decode(resp, &url)
    }

    /// `ListAliases` (first page: up to 50).
    pub fn list_aliases(
        &self,
        name: &str,
    ) -> Result<Vec<crate::versions::AliasConfiguration>, ClientError> {
        let url = self.function_url(name, &["aliases"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        let page: crate::versions::ListAliasesResponse = decode(resp, &url)?;
        Ok(page.aliases)
    }

    /// `DeleteAlias`.
    pub fn delete_alias(&self, name: &str, alias: &str) -> Result<(), ClientError> {
        let url = self.function_url(name, &["aliases", alias]);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    fn event_config_url(&self, name: &str) -> Url {
        self.url(&["2019-09-25", "functions", name, "event-invoke-config"])
    }

    /// `PutFunctionEventInvokeConfig`: replaces the function's retry,
    /// maximum age and destination settings for `Event` invocations.
    pub fn put_function_event_invoke_config(
        &self,
        name: &str,
        config: &crate::events::PutFunctionEventInvokeConfigRequest,
    ) -> Result<crate::events::FunctionEventInvokeConfig, ClientError> {
        let url = self.event_config_url(name);
        let resp = self.send(self.http.put(url.clone()).json(config), &url)?;
        decode(resp, &url)
    }

    /// `GetFunctionEventInvokeConfig`.
    pub fn get_function_event_invoke_config(
        &self,
        name: &str,
    ) -> Result<crate::events::FunctionEventInvokeConfig, ClientError> {
        let url = self.event_config_url(name);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// `DeleteFunctionEventInvokeConfig`.
    pub fn delete_function_event_invoke_config(&self, name: &str) -> Result<(), ClientError> {
        let url = self.event_config_url(name);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    /// The function's event queue: how many events wait, and its failed
    /// events (thaw extension).
    pub fn event_queue(&self, name: &str) -> Result<crate::events::EventQueueView, ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "events"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// thaw's log endpoint: the last `limit` log lines of `name`, optionally
    /// only those of one request.
    pub fn logs(
        &self,
        name: &str,
        request_id: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<LogRecord>, ClientError> {
        let mut url = self.url(&["thaw", "v1", "functions", name, "logs"]);
        let limit = limit.map(|n| n.to_string());
        with_query(
            &mut url,
            &[("request_id", request_id), ("limit", limit.as_deref())],
        );
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// Snapshots the function (thaw extension): a new instance is started,
    /// invoked once with `payload`, and checkpointed; later instances of
    /// this code revision are restored from the snapshot.
    pub fn create_snapshot(
        &self,
        name: &str,
        payload: &[u8],
    ) -> Result<SnapshotReport, ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "snapshot"]);
        let resp = self.send(self.http.post(url.clone()).body(payload.to_vec()), &url)?;
        decode(resp, &url)
    }

    /// Destroys the function's idle instances (thaw extension), so that the
    /// next invocation gets a new one (restored if the function has a
    /// snapshot, else cold). The code revision and standby sandboxes stay.
    pub fn retire_instances(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "retire"]);
        self.send(self.http.post(url.clone()), &url)?;
        Ok(())
    }

    /// Where the function's snapshot stands (thaw extension).
    pub fn snapshot_status(&self, name: &str) -> Result<crate::SnapshotStatus, ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "snapshot"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// Every function's snapshot status (thaw extension).
    pub fn list_snapshots(&self) -> Result<Vec<crate::SnapshotStatus>, ClientError> {
        let url = self.url(&["thaw", "v1", "snapshots"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// Queues a snapshot build of the function's current revision with the
    /// test event from its code (thaw extension); returns at once.
    pub fn queue_snapshot(&self, name: &str) -> Result<crate::SnapshotStatus, ClientError> {
        let mut url = self.url(&["thaw", "v1", "functions", name, "snapshot"]);
        url.query_pairs_mut().append_pair("wait", "false");
        let resp = self.send(self.http.post(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// Deletes the function's snapshot (thaw extension): new instances
    /// start cold again.
    pub fn delete_snapshot(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "snapshot"]);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    /// Forgets the working set of the function's snapshot: the next
    /// restore records it again.
    pub fn rerecord_working_set(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "snapshot", "working-set"]);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    /// The function's code zip, as uploaded.
    pub fn function_code(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "code"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })
    }

    /// The function's platform settings (thaw extension).
    pub fn get_function_settings(
        &self,
        name: &str,
    ) -> Result<crate::PlatformSettings, ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "settings"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// Replaces the function's platform settings (thaw extension); new
    /// instances use them.
    pub fn put_function_settings(
        &self,
        name: &str,
        settings: &crate::PlatformSettings,
    ) -> Result<crate::PlatformSettings, ClientError> {
        let url = self.url(&["thaw", "v1", "functions", name, "settings"]);
        let resp = self.send(self.http.put(url.clone()).json(settings), &url)?;
        decode(resp, &url)
    }

    /// Creates an account (root account only; thaw extension): its id and
    /// first access key, whose secret is shown only now.
    pub fn create_account(&self, name: &str) -> Result<crate::auth::NewAccessKey, ClientError> {
        let url = self.url(&["thaw", "v1", "accounts"]);
        let body = crate::auth::CreateAccountRequest {
            name: name.to_string(),
        };
        let resp = self.send(self.http.post(url.clone()).json(&body), &url)?;
        decode(resp, &url)
    }

    /// The accounts and their key ids (root account only; thaw extension).
    pub fn list_accounts(&self) -> Result<Vec<crate::auth::AccountSummary>, ClientError> {
        let url = self.url(&["thaw", "v1", "accounts"]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// Adds an access key to `account` (the caller's own, or any as root;
    /// at most two at once: rotate by creating the new one, moving the
    /// clients, deleting the old one).
    pub fn create_access_key(
        &self,
        account: &str,
    ) -> Result<crate::auth::NewAccessKey, ClientError> {
        let url = self.url(&["thaw", "v1", "accounts", account, "keys"]);
        let resp = self.send(self.http.post(url.clone()), &url)?;
        decode(resp, &url)
    }

    /// Deletes access key `key` of `account` (not its only one).
    pub fn delete_access_key(&self, account: &str, key: &str) -> Result<(), ClientError> {
        let url = self.url(&["thaw", "v1", "accounts", account, "keys", key]);
        self.send(self.http.delete(url.clone()), &url)?;
        Ok(())
    }

    /// Send a request; a non-2xx answer becomes [`ClientError::Api`].
    fn send(&self, req: RequestBuilder, url: &Url) -> Result<Response, ClientError> {
        let transport = |source| ClientError::Transport {
            url: url.to_string(),
            source,
        };
        let mut req = req.build().map_err(transport)?;
        if let Some(creds) = &self.credentials {
            sign(&mut req, creds).map_err(|e| ClientError::Endpoint {
                endpoint: url.to_string(),
                source: Box::new(e),
            })?;
        }
        let resp = self.http.execute(req).map_err(transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get(ERROR_TYPE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(ErrorCode::parse)
            .unwrap_or_else(|| ErrorCode::Other(format!("HTTP {status}")));
        let body = resp.bytes().unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .and_then(|b| b.text().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(512).collect());
        Err(ClientError::Api {
            status,
            code,
            message,
        })
    }
}

/// Signs a built request in place (see [`crate::auth::sign_request`]).
fn sign(req: &mut reqwest::blocking::Request, creds: &Credentials) -> Result<(), SignError> {
    let body = req
        .body()
        .map(|b| b.as_bytes().map(<[u8]>::to_vec))
        .unwrap_or(Some(Vec::new()))
        .ok_or_else(SignError::streaming)?;
    let mut signed = http::Request::builder()
        .method(req.method().clone())
        .uri(req.url().as_str())
        .body(body)
        .map_err(|e| SignError::other(e.to_string()))?;
    *signed.headers_mut() = req.headers().clone();
    if let Some(host) = req.url().host_str() {
        let host = match req.url().port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        if let Ok(v) = http::HeaderValue::from_str(&host) {
            signed.headers_mut().insert(http::header::HOST, v);
        }
    }
    sign_request(&mut signed, creds, std::time::SystemTime::now())?;
    *req.headers_mut() = signed.headers().clone();
    Ok(())
}

/// Append the parameters that are set; leave the URL without `?` if none is.
fn with_query(url: &mut Url, params: &[(&str, Option<&str>)]) {
    let set: Vec<(&str, &str)> = params
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    if !set.is_empty() {
        url.query_pairs_mut().extend_pairs(set);
    }
}

fn decode<T: DeserializeOwned>(resp: Response, url: &Url) -> Result<T, ClientError> {
    let body = resp.bytes().map_err(|source| ClientError::Transport {
        url: url.to_string(),
        source,
    })?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
        url: url.to_string(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_names_and_keep_prefixes() {
        let c = Client::new("http://127.0.0.1:9070").unwrap();
        assert_eq!(
            c.function_url("f", &["invocations"]).as_str(),
            "http://127.0.0.1:9070/2015-03-31/functions/f/invocations"
        );
        let arn = "arn:aws:lambda:us-east-1:000000000000:function:f";
        assert!(c
            .function_url(arn, &[])
            .as_str()
            .ends_with("/functions/arn:aws:lambda:us-east-1:000000000000:function:f"));
        assert_eq!(
            c.function_url("a/b", &[]).as_str(),
            "http://127.0.0.1:9070/2015-03-31/functions/a%2Fb"
        );
        let p = Client::new("http://host/prefix/").unwrap();
        assert_eq!(
            p.url(&["2015-03-31", "functions", ""]).as_str(),
            "http://host/prefix/2015-03-31/functions/"
        );
        let mut u = c.url(&["x"]);
        with_query(&mut u, &[("a", None)]);
        assert_eq!(u.as_str(), "http://127.0.0.1:9070/x");
        with_query(
            &mut u,
            &[("a", None), ("Marker", Some("m n")), ("b", Some("1"))],
        );
        assert_eq!(u.as_str(), "http://127.0.0.1:9070/x?Marker=m+n&b=1");
        assert!(Client::new("not a url").is_err());
        assert!(Client::new("mailto:x@y").is_err());
    }
}
