//! A small HTTP proxy in front of the search server that answers some `_bulk` work with 429: whole
//! requests, and single documents inside otherwise successful requests (without forwarding them, the
//! way an overloaded node rejects them). It counts what it saw, so a test can tell exactly which
//! documents were sent again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// What the proxy rejects.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Every `n`th `_bulk` request is answered 429 as a whole (0: never).
    pub reject_every_nth_request: usize,
    /// On its first appearance, every `n`th document is answered 429 (0: never).
    pub reject_every_nth_document: usize,
}

/// What the proxy saw, per document (`index/id`).
#[derive(Debug, Default)]
pub struct Tally {
    pub bulk_requests: usize,
    pub rejected_requests: usize,
    /// Times each document was in a `_bulk` the proxy received.
    pub presented: HashMap<String, usize>,
    /// Times each document was answered 429 on its own.
    pub rejected_alone: HashMap<String, usize>,
    /// Times each document was in a request rejected as a whole.
    pub rejected_with_request: HashMap<String, usize>,
    /// Times each document reached the server.
    pub forwarded: HashMap<String, usize>,
    documents_seen: usize,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    faults: Faults,
    tally: Arc<Mutex<Tally>>,
    http: reqwest::Client,
}

/// Starts the proxy on a free port; returns its URL and the tally.
pub async fn start(upstream: String, faults: Faults) -> (String, Arc<Mutex<Tally>>) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let proxy = Proxy {
        upstream,
        faults,
        tally: Arc::clone(&tally),
        http: reqwest::Client::new(),
    };
    let app = Router::new().fallback(handle).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, tally)
}

async fn handle(
    State(proxy): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path().ends_with("/_bulk") {
        return bulk(&proxy, &uri, body).await;
    }
    forward(&proxy, method, &uri, &headers, body.to_vec()).await
}

async fn forward(
    proxy: &Proxy,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = proxy
        .http
        .request(method, format!("{}{path}", proxy.upstream))
        .body(body);
    if let Some(content_type) = headers.get("content-type") {
        request = request.header("content-type", content_type);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .cloned()
                .unwrap_or_else(|| "application/json".parse().expect("header"));
            let product = response.headers().get("x-elastic-product").cloned();
            let bytes = response.bytes().await.unwrap_or_default();
            let mut answer = (status, bytes).into_response();
            answer.headers_mut().insert("content-type", content_type);
            if let Some(product) = product {
                answer.headers_mut().insert("x-elastic-product", product);
            }
            answer
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response.headers_mut().insert(
        "x-elastic-product",
        "Elasticsearch".parse().expect("header"),
    );
    response
}

async fn bulk(proxy: &Proxy, uri: &Uri, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let pairs: Vec<(&str, &str, String)> = lines
        .chunks(2)
        .map(|pair| {
            let action: Value = serde_json::from_str(pair[0]).unwrap_or(Value::Null);
            let op = action
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            let key = format!(
                "{}/{}",
                op["_index"].as_str().unwrap_or(""),
                op["_id"].as_str().unwrap_or("")
            );
            (pair[0], pair.get(1).copied().unwrap_or(""), key)
        })
        .collect();

    // Decide under the lock, forward without it.
    let (reject_request, rejected): (bool, Vec<bool>) = {
        let mut tally = proxy.tally.lock().expect("tally");
        tally.bulk_requests += 1;
        for (_, _, key) in &pairs {
            *tally.presented.entry(key.clone()).or_default() += 1;
        }
        let every = proxy.faults.reject_every_nth_request;
        if every > 0 && tally.bulk_requests.is_multiple_of(every) {
            tally.rejected_requests += 1;
            for (_, _, key) in &pairs {
                *tally.rejected_with_request.entry(key.clone()).or_default() += 1;
            }
            (true, Vec::new())
        } else {
            let every = proxy.faults.reject_every_nth_document;
            let mut rejected = Vec::with_capacity(pairs.len());
            for (_, _, key) in &pairs {
                tally.documents_seen += 1;
                let first_time = !tally.rejected_alone.contains_key(key)
                    && tally.forwarded.get(key).copied().unwrap_or(0) == 0;
                let reject = every > 0 && first_time && tally.documents_seen.is_multiple_of(every);
                if reject {
                    *tally.rejected_alone.entry(key.clone()).or_default() += 1;
                } else {
                    *tally.forwarded.entry(key.clone()).or_default() += 1;
                }
                rejected.push(reject);
            }
            (false, rejected)
        }
    };
    if reject_request {
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution (queue capacity 200)"}, "status": 429}),
        );
    }

    let mut forwarded_body = Vec::new();
    for ((action, source, _), reject) in pairs.iter().zip(&rejected) {
        if !reject {
            forwarded_body.extend_from_slice(action.as_bytes());
            forwarded_body.push(b'\n');
            forwarded_body.extend_from_slice(source.as_bytes());
            forwarded_body.push(b'\n');
        }
    }
    let mut upstream_items = Vec::new().into_iter();
    if !forwarded_body.is_empty() {
        let path = uri.path_and_query().map_or("/_bulk", |p| p.as_str());
        let answer = proxy
            .http
            .post(format!("{}{path}", proxy.upstream))
            .header("content-type", "application/x-ndjson")
            .body(forwarded_body)
            .send()
            .await;
        let Ok(answer) = answer else {
            return (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response();
        };
        let value: Value = answer.json().await.unwrap_or(Value::Null);
        upstream_items = value["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter();
    }
    let mut items = Vec::with_capacity(pairs.len());
    let mut errors = false;
    for ((action, _, key), reject) in pairs.iter().zip(&rejected) {
        if *reject {
            errors = true;
            let action: Value = serde_json::from_str(action).unwrap_or(Value::Null);
            let op = action
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_default();
            items.push(json!({op: {"_id": key, "status": 429, "error": {
                "type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}}));
        } else {
            let item = upstream_items.next().unwrap_or(Value::Null);
            errors |= item
                .as_object()
                .and_then(|o| o.values().next())
                .is_some_and(|r| r.get("error").is_some());
            items.push(item);
        }
    }
    json_response(
        StatusCode::OK,
        json!({"took": 1, "errors": errors, "items": items}),
    )
}
