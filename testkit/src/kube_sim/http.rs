//! The HTTP surface: URL routing the way the real server lays out its paths, authentication,
//! injected faults, and the mapping of verbs onto [`Cluster`] operations.
//!
//! Paths: `/api/v1/...` and `/apis/<group>/<version>/...`, each with
//! `[namespaces/<ns>/]<resource>[/<name>[/status]]` and the legacy `watch/` prefix; discovery at
//! `/api`, `/apis`, `/apis/<group>`, `/api/v1`, `/apis/<group>/<version>`; `/version`; health at
//! `/healthz`, `/livez`, `/readyz` (never authenticated, like the real probes).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::cluster::{Cluster, Mode, Target};
use super::list::ListQuery;
use super::patch::{self, PatchType};
use super::resources::ResourceType;
use super::select::Selector;
use super::status::ApiError;
use super::{openapi, table, watch};

pub(crate) fn router(cluster: Arc<Cluster>) -> Router {
    Router::new().fallback(handle).with_state(cluster)
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(err: &ApiError) -> Response {
    json_response(err.code, &err.to_status())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn handle(
    State(cluster): State<Arc<Cluster>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    cluster.requests.fetch_add(1, Ordering::SeqCst);
    let latency = cluster.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = uri.path().trim_matches('/').to_string();
    if matches!(path.as_str(), "healthz" | "livez" | "readyz") {
        return (StatusCode::OK, "ok").into_response();
    }
    if let Some(code) = cluster.faults.take_failure() {
        return error_response(&ApiError::from_code(code));
    }
    if !cluster.authorized(bearer(&headers)) {
        return error_response(&ApiError::unauthorized());
    }
    let query: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let request = Request {
        cluster,
        method,
        headers,
        body,
        query,
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match request.route(&segments) {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

struct Request {
    cluster: Arc<Cluster>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    query: HashMap<String, String>,
}

/// A resolved resource path.
struct Resource<'a> {
    rt: Arc<ResourceType>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    target: Target,
    watch: bool,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// `?dryRun=All` asks for a dry run; the API knows no other value.
    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.param("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "unsupported dryRun value {other:?}: only \"All\" is valid"
            ))),
        }
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    fn route(&self, segments: &[&str]) -> Result<Response, ApiError> {
        let registry = || self.cluster.registry();
        let discovery =
            |doc: Option<Value>| doc.map(|d| json_response(200, &d)).ok_or_else(not_found);
        match segments {
            ["version"] => Ok(json_response(200, &version())),
            ["api"] => discovery(Some(registry().api_versions(&self.host()))),
            ["apis"] => discovery(Some(registry().api_group_list())),
            ["apis", group] => discovery(registry().api_group(group)),
            ["api", "v1"] => discovery(registry().resource_list("", "v1")),
            ["apis", group, version] => discovery(registry().resource_list(group, version)),
            ["api", "v1", rest @ ..] => self.resource("", "v1", rest),
            ["apis", group, version, rest @ ..] => self.resource(group, version, rest),
            ["openapi", "v3"] => discovery(Some(openapi::root(&registry()))),
            ["openapi", "v3", "api", version] => {
                discovery(openapi::document(&registry(), "", version))
            }
            ["openapi", "v3", "apis", group, version] => {
                discovery(openapi::document(&registry(), group, version))
            }
            _ => Err(not_found()),
        }
    }

    fn host(&self) -> String {
        let host = self.headers.get(header::HOST).and_then(|h| h.to_str().ok());
        host.unwrap_or("127.0.0.1").to_string()
    }

    fn resource(&self, group: &str, version: &str, rest: &[&str]) -> Result<Response, ApiError> {
        let (watch_prefix, rest) = match rest {
            ["watch", rest @ ..] => (true, rest),
            _ => (false, rest),
        };
        let lookup = |plural: &str| self.cluster.registry().by_path(group, version, plural);
        let namespaced = match rest {
            ["namespaces", ns, plural, tail @ ..] => lookup(plural)
                .filter(|rt| rt.namespaced)
                .map(|rt| (rt, Some(*ns), tail)),
            _ => None,
        };
        let (rt, namespace, tail) = match namespaced {
            Some(found) => found,
            None => match rest {
                [plural, tail @ ..] => (lookup(plural).ok_or_else(not_found)?, None, tail),
                [] => return Err(not_found()),
            },
        };
        let (name, target) = match tail {
            [] => (None, Target::Main),
            [name] => (Some(*name), Target::Main),
            [name, "status"] if rt.has_status => (Some(*name), Target::Status),
            _ => return Err(not_found()),
        };
        if name.is_some() && rt.namespaced && namespace.is_none() {
            return Err(not_found());
        }
        let watch = watch_prefix || self.flag("watch");
        self.dispatch(Resource {
            rt,
            namespace,
            name,
            target,
            watch,
        })
    }

    fn selector(&self, rt: &ResourceType, name: Option<&str>) -> Result<Selector, ApiError> {
        // The legacy watch path `watch/.../<name>` is a watch on that one object.
        let by_name = name.map(|n| format!("metadata.name={n}"));
        let fields = match (
            self.param("fieldSelector").filter(|s| !s.is_empty()),
            by_name,
        ) {
            (Some(f), Some(n)) => Some(format!("{f},{n}")),
            (f, n) => f.map(str::to_string).or(n),
        };
        Selector::parse(rt, self.param("labelSelector"), fields.as_deref())
    }

    fn decode_body(&self) -> Result<Value, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        if content_type.contains("yaml") {
            return serde_yaml::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
        }
        if content_type.contains("protobuf") || content_type.contains("cbor") {
            return Err(patch::unsupported(content_type));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }

    fn dispatch(&self, r: Resource<'_>) -> Result<Response, ApiError> {
        let c = &self.cluster;
        let (rt, ns) = (&r.rt, r.namespace);
        let ok = |v: Value| Ok(json_response(200, &v));
        match (&self.method, r.name) {
            (&Method::GET, _) if r.watch => self.watch(&r),
            (&Method::GET, None) => {
                let list = c.list(rt, ns, &self.list_query(rt)?)?;
                ok(self.maybe_table(rt, list))
            }
            (&Method::GET, Some(name)) => {
                let obj = c.get(rt, ns, name)?;
                ok(self.maybe_table(rt, obj))
            }
            (&Method::POST, None) if !rt.namespaced || ns.is_some() => {
                let dry_run = self.dry_run()?;
                let created =
                    c.create_or_dry_run(rt, ns, self.decode_body()?, Mode::Api, dry_run)?;
                Ok(json_response(201, &created))
            }
            _ if self.dry_run()? => Err(ApiError::bad_request(
                "kube-sim supports dryRun=All on create only",
            )),
            (&Method::PUT, Some(name)) => {
                let body = self.decode_body()?;
                ok(c.update(rt, ns, name, r.target, Mode::Api, |_| Ok(body))?)
            }
            (&Method::PATCH, Some(name)) => self.patch(&r, name),
            (&Method::DELETE, Some(name)) => {
                let options = if self.body.is_empty() {
                    json!({})
                } else {
                    self.decode_body()?
                };
                ok(c.delete(rt, ns, name, &options)?)
            }
            (&Method::DELETE, None) => {
                let query = ListQuery {
                    selector: self.selector(rt, None)?,
                    ..ListQuery::default()
                };
                let list = c.list(rt, ns, &query)?;
                for item in list["items"].as_array().into_iter().flatten() {
                    let (item_ns, item_name) = (
                        item["metadata"]["namespace"].as_str(),
                        item["metadata"]["name"].as_str(),
                    );
                    if let Some(item_name) = item_name {
                        c.delete(rt, item_ns, item_name, &json!({}))?;
                    }
                }
                ok(list)
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    fn patch(&self, r: &Resource<'_>, name: &str) -> Result<Response, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let kind = PatchType::from_content_type(content_type)?;
        if kind == PatchType::Strategic && r.rt.custom {
            return Err(patch::unsupported(content_type));
        }
        let body = patch::parse(kind, &self.body)?;
        let c = &self.cluster;
        match c.update(&r.rt, r.namespace, name, r.target, Mode::Api, |current| {
            patch::apply(kind, &current, &body)
        }) {
            Err(err) if err.code == 404 && kind == PatchType::Apply && r.target == Target::Main => {
                let created = c.create(&r.rt, r.namespace, body.clone(), Mode::Api)?;
                Ok(json_response(201, &created))
            }
            result => Ok(json_response(200, &result?)),
        }
    }

    fn list_query(&self, rt: &ResourceType) -> Result<ListQuery, ApiError> {
        Ok(ListQuery {
            selector: self.selector(rt, None)?,
            resource_version: self.param("resourceVersion").map(str::to_string),
            resource_version_match: self
                .param("resourceVersionMatch")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            limit: self.param("limit").and_then(|l| l.parse().ok()),
            continue_token: self
                .param("continue")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        })
    }

    fn watch(&self, r: &Resource<'_>) -> Result<Response, ApiError> {
        let query = watch::WatchQuery {
            selector: self.selector(&r.rt, r.name)?,
            resource_version: self.param("resourceVersion").map(str::to_string),
            bookmarks: self.flag("allowWatchBookmarks"),
            timeout: self
                .param("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .map(Duration::from_secs),
            send_initial_events: self.flag("sendInitialEvents"),
            table: table::wanted(self.accept())
                .then(|| self.param("includeObject").map(str::to_string)),
        };
        let stream = watch::start(
            self.cluster.clone(),
            r.rt.clone(),
            r.namespace.map(str::to_string),
            query,
        )?;
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
    }

    fn accept(&self) -> &str {
        let accept = self
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        accept.unwrap_or("")
    }

    fn maybe_table(&self, rt: &ResourceType, value: Value) -> Value {
        if table::wanted(self.accept()) {
            table::render(rt, &value, self.param("includeObject"))
        } else {
            value
        }
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-kube-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
