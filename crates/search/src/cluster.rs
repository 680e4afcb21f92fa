//! The few Elasticsearch calls auscult makes, behind one small interface over the official
//! `elasticsearch` crate: bulk writes with per-item outcomes, templates, single documents, index
//! listing and deletion, and searches. Everything else in the crate talks to the cluster through here.

use std::time::Duration;

use elasticsearch::{
    BulkParts, Elasticsearch, GetParts, IndexParts, SearchParts,
    auth::Credentials,
    cat::CatIndicesParts,
    cert::{Certificate, CertificateValidation},
    cluster::ClusterPutComponentTemplateParts,
    http::{
        Method, StatusCode, Url,
        headers::HeaderMap,
        response::Response,
        transport::{MultiNodeConnectionPool, TransportBuilder},
    },
    indices::{
        IndicesDeleteParts, IndicesPutIndexTemplateParts, IndicesPutMappingParts,
        IndicesRefreshParts,
    },
};
use serde_json::Value;

use crate::ElasticSettings;

/// What can go wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Elasticsearch setting: {0}")]
    Config(String),
    #[error("Elasticsearch unreachable during {operation}: {detail}")]
    Unreachable {
        operation: &'static str,
        detail: String,
    },
    #[error("Elasticsearch answered {operation} with HTTP {status}: {body}")]
    Status {
        operation: &'static str,
        status: u16,
        body: String,
    },
    #[error("unexpected Elasticsearch answer to {operation}: {detail}")]
    Decode {
        operation: &'static str,
        detail: String,
    },
}

impl ClusterError {
    /// Whether the same request may succeed later: the cluster is down, overloaded or failing over.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => is_retryable_status(*status),
            Self::Config(_) | Self::Decode { .. } => false,
        }
    }
}

/// 429 (too many requests) and 5xx mean "not now"; other failures will not change on resending.
pub fn is_retryable_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// One document for `_bulk`: created once under its id, or, when it has a version, replaced by higher
/// versions only.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkDocument {
    pub index: String,
    pub id: String,
    pub version: Option<i64>,
    pub body: Vec<u8>,
}

impl BulkDocument {
    /// The action line and the source line, as `_bulk` takes them.
    pub fn lines(&self) -> (Vec<u8>, Vec<u8>) {
        let action = match self.version {
            None => serde_json::json!({"create": {"_index": self.index, "_id": self.id}}),
            Some(version) => serde_json::json!({"index": {
                "_index": self.index, "_id": self.id,
                "version": version, "version_type": "external"}}),
        };
        (action.to_string().into_bytes(), self.body.clone())
    }

    /// Bytes this document adds to a `_bulk` body.
    pub fn encoded_len(&self) -> usize {
        self.lines().0.len() + self.body.len() + 2
    }
}

/// What became of one document of a `_bulk`.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    Created,
    /// Already there (409: same id, or an equal or newer version): the document is indexed.
    Duplicate,
    /// Not now (429, 5xx): send it again later.
    Retry {
        status: u16,
        reason: String,
    },
    /// Refused (400 mapping conflict, 404, …): resending the same document cannot help.
    Refused {
        status: u16,
        error_type: String,
        reason: String,
    },
}

/// A connection to the cluster (round robin over its nodes).
#[derive(Debug, Clone)]
pub struct Cluster {
    client: Elasticsearch,
}

impl Cluster {
    pub fn connect(settings: &ElasticSettings) -> Result<Self, ClusterError> {
        let urls = settings
            .urls
            .iter()
            .map(|u| Url::parse(u).map_err(|e| ClusterError::Config(format!("url {u:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(ClusterError::Config("no Elasticsearch url".into()));
        }
        let mut builder = TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
            .timeout(settings.request_timeout)
            .enable_meta_header(false);
        if !settings.api_key.is_empty() {
            builder = builder.auth(Credentials::EncodedApiKey(settings.api_key.clone()));
        } else if !settings.username.is_empty() {
            builder = builder.auth(Credentials::Basic(
                settings.username.clone(),
                settings.password.clone(),
            ));
        }
        if let Some(path) = &settings.ca_path {
            let pem = std::fs::read(path).map_err(|e| {
                ClusterError::Config(format!("reading ca_path {}: {e}", path.display()))
            })?;
            let ca = Certificate::from_pem(&pem)
                .map_err(|e| ClusterError::Config(format!("ca_path {}: {e}", path.display())))?;
            builder = builder.cert_validation(CertificateValidation::Full(ca));
        }
        let transport = builder
            .build()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        Ok(Self {
            client: Elasticsearch::new(transport),
        })
    }

    /// Sends documents in one `_bulk` and returns each one's outcome, in order. A failure of the whole
    /// request (unreachable, 429, 5xx) is an error: no document of it is settled.
    pub async fn bulk(&self, documents: &[BulkDocument]) -> Result<Vec<ItemOutcome>, ClusterError> {
        const OP: &str = "_bulk";
        let mut lines = Vec::with_capacity(documents.len() * 2);
        for document in documents {
            let (action, source) = document.lines();
            lines.push(action);
            lines.push(source);
        }
        let response = self
            .client
            .bulk(BulkParts::None)
            .body(lines)
            .send()
            .await
            .map_err(|e| unreachable(OP, e))?;
        let answer = json_of(OP, response).await?;
        let items = answer["items"]
            .as_array()
            .ok_or_else(|| ClusterError::Decode {
                operation: OP,
                detail: "no items".into(),
            })?;
        if items.len() != documents.len() {
            return Err(ClusterError::Decode {
                operation: OP,
                detail: format!("{} items for {} documents", items.len(), documents.len()),
            });
        }
        Ok(items.iter().map(item_outcome).collect())
    }

    /// Creates or replaces a component template.
    pub async fn put_component_template(
        &self,
        name: &str,
        body: &Value,
    ) -> Result<(), ClusterError> {
        let response = self
            .client
            .cluster()
            .put_component_template(ClusterPutComponentTemplateParts::Name(name))
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable("put component template", e))?;
        json_of("put component template", response).await.map(drop)
    }

    /// Creates or replaces an index template.
    pub async fn put_index_template(&self, name: &str, body: &Value) -> Result<(), ClusterError> {
        let response = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(name))
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable("put index template", e))?;
        json_of("put index template", response).await.map(drop)
    }

    /// Adds `mappings`' fields to an existing index; the fields it already has keep theirs (a
    /// field mapped otherwise is refused).
    pub async fn put_mapping(&self, index: &str, mappings: &Value) -> Result<(), ClusterError> {
        let response = self
            .client
            .indices()
            .put_mapping(IndicesPutMappingParts::Index(&[index]))
            .body(mappings)
            .send()
            .await
            .map_err(|e| unreachable("put mapping", e))?;
        json_of("put mapping", response).await.map(drop)
    }

    /// A document's source, or `None` if it (or its index) does not exist.
    pub async fn get_source(&self, index: &str, id: &str) -> Result<Option<Value>, ClusterError> {
        let response = self
            .client
            .get(GetParts::IndexId(index, id))
            .send()
            .await
            .map_err(|e| unreachable("get document", e))?;
        if response.status_code() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let answer = json_of("get document", response).await?;
        Ok(answer.get("_source").cloned())
    }

    /// Writes a document under `id`, replacing any earlier one, visible to searches at once.
    pub async fn put_document(
        &self,
        index: &str,
        id: &str,
        body: &Value,
    ) -> Result<(), ClusterError> {
        let response = self
            .client
            .index(IndexParts::IndexId(index, id))
            .refresh(elasticsearch::params::Refresh::True)
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable("index document", e))?;
        json_of("index document", response).await.map(drop)
    }

    /// Names of the indices matching `pattern` (`auscult-frames-*`).
    pub async fn indices(&self, pattern: &str) -> Result<Vec<String>, ClusterError> {
        const OP: &str = "list indices";
        let response = self
            .client
            .cat()
            .indices(CatIndicesParts::Index(&[pattern]))
            .format("json")
            .h(&["index"])
            .send()
            .await
            .map_err(|e| unreachable(OP, e))?;
        if response.status_code() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let answer = json_of(OP, response).await?;
        let rows = answer.as_array().ok_or_else(|| ClusterError::Decode {
            operation: OP,
            detail: "not a list".into(),
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| r["index"].as_str().map(str::to_owned))
            .collect())
    }

    pub async fn delete_index(&self, index: &str) -> Result<(), ClusterError> {
        let response = self
            .client
            .indices()
            .delete(IndicesDeleteParts::Index(&[index]))
            .send()
            .await
            .map_err(|e| unreachable("delete index", e))?;
        json_of("delete index", response).await.map(drop)
    }

    /// Makes everything written so far visible to searches of `index` (an alias or pattern).
    pub async fn refresh(&self, index: &str) -> Result<(), ClusterError> {
        let response = self
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[index]))
            .send()
            .await
            .map_err(|e| unreachable("refresh", e))?;
        json_of("refresh", response).await.map(drop)
    }

    /// Runs a search (query and aggregations) over `index` and returns Elasticsearch's answer.
    pub async fn search(&self, index: &str, body: &Value) -> Result<Value, ClusterError> {
        let response = self
            .client
            .search(SearchParts::Index(&[index]))
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable("search", e))?;
        json_of("search", response).await
    }

    /// The cluster's self-description (`GET /`): name, distribution and version.
    pub async fn info(&self) -> Result<Value, ClusterError> {
        let response = self
            .client
            .send::<(), ()>(Method::Get, "/", HeaderMap::new(), None, None, None)
            .await
            .map_err(|e| unreachable("info", e))?;
        json_of("info", response).await
    }
}

fn unreachable(operation: &'static str, error: elasticsearch::Error) -> ClusterError {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail = format!("{detail}: {cause}");
        source = cause.source();
    }
    ClusterError::Unreachable { operation, detail }
}

/// The answer's JSON if it is a success, else a [`ClusterError::Status`] with the body.
async fn json_of(operation: &'static str, response: Response) -> Result<Value, ClusterError> {
    let status = response.status_code();
    let text = response
        .text()
        .await
        .map_err(|e| unreachable(operation, e))?;
    if !status.is_success() {
        let mut body = text;
        body.truncate(2000);
        return Err(ClusterError::Status {
            operation,
            status: status.as_u16(),
            body,
        });
    }
    serde_json::from_str(&text).map_err(|e| ClusterError::Decode {
        operation,
        detail: e.to_string(),
    })
}

fn item_outcome(item: &Value) -> ItemOutcome {
    // Each item is {"create": {...}} or {"index": {...}}.
    let result = item
        .as_object()
        .and_then(|o| o.values().next())
        .cloned()
        .unwrap_or(Value::Null);
    let status = result["status"].as_u64().unwrap_or(0) as u16;
    let error_type = result["error"]["type"].as_str().unwrap_or("").to_owned();
    let reason = result["error"]["reason"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| result["error"].to_string());
    match status {
        200..=299 => ItemOutcome::Created,
        409 => ItemOutcome::Duplicate,
        s if is_retryable_status(s) => ItemOutcome::Retry { status: s, reason },
        s => ItemOutcome::Refused {
            status: s,
            error_type: if error_type.is_empty() {
                "unknown".into()
            } else {
                error_type
            },
            reason,
        },
    }
}

/// A pause that doubles on each failure up to a ceiling and resets on success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: None,
        }
    }

    /// The next wait, with ±20 % jitter so that replicas do not retry in step.
    pub fn next_delay(&mut self) -> Duration {
        let next = self.current.map_or(self.min, |d| (d * 2).min(self.max));
        self.current = Some(next);
        next.mul_f64(rand::random_range(0.8..1.2))
    }

    pub fn reset(&mut self) {
        self.current = None;
    }
}

/// The wait before resending a document that was pushed back `attempts` times already.
pub fn retry_delay(min: Duration, max: Duration, attempts: i32) -> Duration {
    let doubled = min.saturating_mul(1u32 << attempts.clamp(0, 16));
    doubled.min(max).mul_f64(rand::random_range(0.8..1.2))
}
