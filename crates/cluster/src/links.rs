//! Links with faults: every link between the cluster's parts that the fault suite breaks runs through
//! this proxy (as toxiproxy sits between the parts of a Jepsen test), so a link can be slowed, stalled or
//! broken without touching either end.
//!
//! Links come in groups — `ingest` (gateways to each ingest replica), `analysis` (listeners to each
//! analysis replica), `search` (listeners to the Elasticsearch-API server) — and a fault applies to a
//! whole group. The faults in force live in a small JSON file that the proxy rereads every 100 ms, so
//! `auscult chaos` (another process) switches them by rewriting it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    time::Instant,
};

use crate::ClusterError;

/// What a group of links does to the traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum LinkFault {
    /// Bytes flow untouched.
    #[default]
    Pass,
    /// Every byte arrives `ms` milliseconds late, in each direction; throughput is kept.
    Latency { ms: u64 },
    /// Nothing flows and nothing is refused: open connections stall, new ones are accepted and then
    /// hear nothing, as behind a firewall that drops packets. Traffic resumes when the fault lifts.
    Blackhole,
    /// Every open connection is reset (TCP RST) and so is every new one. On HTTP links, new
    /// connections are reset and open ones pass what is in flight.
    Reset,
    /// HTTP links only: this share (0–1) of requests is answered `429 Too Many Requests` without
    /// reaching the server, as an overloaded Elasticsearch answers.
    Throttle { share: f64 },
}

/// The faults in force, by link group; a group not named passes.
pub type Faults = BTreeMap<String, LinkFault>;

/// One link: connections to `listen` are relayed to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `ingest`, `analysis` or `search`.
    pub group: String,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Relayed request by request (HTTP/1.1), so that a request can be answered by the proxy.
    pub http: bool,
}

/// Reads the faults file; a missing file means no faults.
pub fn read_faults(path: &Path) -> Result<Faults, ClusterError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| ClusterError::Io(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Faults::new()),
        Err(e) => Err(ClusterError::Io(format!("{}: {e}", path.display()))),
    }
}

/// Replaces the faults file in one step (write, then rename), so the proxy never reads half of it.
pub fn write_faults(path: &Path, faults: &Faults) -> Result<(), ClusterError> {
    let temporary = path.with_extension("json.new");
    let text = serde_json::to_string_pretty(faults).unwrap_or_default();
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| ClusterError::Io(format!("{}: {e}", path.display())))
}

/// Runs the links until the process is killed.
pub async fn run(links: Vec<Link>, faults_file: PathBuf) -> Result<(), ClusterError> {
    let (faults_tx, faults) = watch::channel(read_faults(&faults_file)?);
    let mut listeners = Vec::new();
    for link in links {
        let listener = TcpListener::bind(link.listen)
            .await
            .map_err(|e| ClusterError::Io(format!("binding {}: {e}", link.listen)))?;
        listeners.push((listener, Arc::new(link)));
    }
    for (listener, link) in listeners {
        tokio::spawn(accept(listener, link, faults.clone()));
    }
    // The file is tiny; rereading it beats watching for renames across filesystems.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match read_faults(&faults_file) {
            Ok(current) => {
                faults_tx.send_if_modified(|faults| {
                    let changed = *faults != current;
                    if changed {
                        eprintln!("links: faults now {}", describe(&current));
                        *faults = current;
                    }
                    changed
                });
            }
            Err(e) => eprintln!("links: keeping the faults in force: {e}"),
        }
    }
}

fn describe(faults: &Faults) -> String {
    if faults.values().all(|f| *f == LinkFault::Pass) {
        return "none".into();
    }
    faults
        .iter()
        .filter(|(_, f)| **f != LinkFault::Pass)
        .map(|(group, fault)| format!("{group}: {fault:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fault_of(faults: &watch::Receiver<Faults>, group: &str) -> LinkFault {
    faults.borrow().get(group).copied().unwrap_or_default()
}

async fn accept(listener: TcpListener, link: Arc<Link>, faults: watch::Receiver<Faults>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let link = Arc::clone(&link);
        let faults = faults.clone();
        if link.http {
            if fault_of(&faults, &link.group) == LinkFault::Reset {
                reset(&client);
                continue;
            }
            tokio::spawn(serve_http(client, link, faults));
        } else {
            tokio::spawn(relay(client, link, faults));
        }
    }
}

/// Closes `stream` with a TCP RST rather than a FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Waits until the group's fault is no longer `fault` (or the proxy is going away).
async fn lifted(faults: &mut watch::Receiver<Faults>, group: &str, fault: LinkFault) {
    while fault_of(faults, group) == fault {
        if faults.changed().await.is_err() {
            return;
        }
    }
}

/// Relays one TCP connection byte for byte, subject to its group's fault.
async fn relay(client: TcpStream, link: Arc<Link>, mut faults: watch::Receiver<Faults>) {
    match fault_of(&faults, &link.group) {
        LinkFault::Reset => return reset(&client),
        LinkFault::Blackhole => {
            // Accepted and then silent; when the fault lifts the connection is reset, as a peer that
            // lost its state would.
            lifted(&mut faults, &link.group, LinkFault::Blackhole).await;
            return reset(&client);
        }
        _ => {}
    }
    let upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(link.upstream)).await
        {
            Ok(Ok(upstream)) => upstream,
            // An unreachable end looks the same to the client as it would without the proxy: refused.
            _ => return reset(&client),
        };
    let _ = upstream.set_nodelay(true);
    let client = Arc::new(client);
    let upstream = Arc::new(upstream);
    let outbound = pump(
        Arc::clone(&client),
        Arc::clone(&upstream),
        &link.group,
        faults.clone(),
    );
    let inbound = pump(
        Arc::clone(&upstream),
        Arc::clone(&client),
        &link.group,
        faults,
    );
    tokio::pin!(outbound, inbound);
    let (first, outbound_first) = tokio::select! {
        first = &mut outbound => (first, true),
        first = &mut inbound => (first, false),
    };
    let rest = if outbound_first {
        tokio::time::timeout(Duration::from_secs(5), &mut inbound).await
    } else {
        tokio::time::timeout(Duration::from_secs(5), &mut outbound).await
    };
    // One side closing lets the other direction finish what is in flight; a reset ends both at once,
    // and so does a direction that does not finish: cutting it with a FIN would pass for a clean end.
    if matches!(first, Pumped::Reset) || !matches!(rest, Ok(Pumped::Closed)) {
        reset(&client);
        reset(&upstream);
    }
}

enum Pumped {
    Closed,
    Reset,
}

/// Moves bytes from `from` to `to` until `from` closes or the fault says reset. Latency delays each chunk
/// by the same amount, through a queue, so that a slow link is slow but not narrow.
async fn pump(
    from: Arc<TcpStream>,
    to: Arc<TcpStream>,
    group: &str,
    mut faults: watch::Receiver<Faults>,
) -> Pumped {
    let (queue, mut due) = mpsc::channel::<(Instant, Bytes)>(64);
    let mut writer = AbortOnDrop(tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if write_all(&to, &chunk).await.is_err() {
                return;
            }
        }
        let _ = socket2::SockRef::from(&*to).shutdown(std::net::Shutdown::Write);
    }));
    let mut buffer = vec![0u8; 16 * 1024];
    let outcome = loop {
        let fault = fault_of(&faults, group);
        match fault {
            LinkFault::Reset => break Pumped::Reset,
            LinkFault::Blackhole => {
                lifted(&mut faults, group, LinkFault::Blackhole).await;
                continue;
            }
            _ => {}
        }
        let read = tokio::select! {
            read = read_some(&from, &mut buffer) => read,
            changed = faults.changed() => {
                if changed.is_err() { break Pumped::Closed; }
                continue;
            }
        };
        match read {
            // A peer that reset its end is passed on as a reset, not as a clean close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Pumped::Reset,
            Ok(0) | Err(_) => break Pumped::Closed,
            Ok(n) => {
                let delay = match fault {
                    LinkFault::Latency { ms } => Duration::from_millis(ms),
                    _ => Duration::ZERO,
                };
                let chunk = Bytes::copy_from_slice(&buffer[..n]);
                if queue.send((Instant::now() + delay, chunk)).await.is_err() {
                    break Pumped::Closed;
                }
            }
        }
    };
    drop(queue);
    if let Pumped::Closed = outcome {
        // What is queued still goes out (a latency fault delays it); a reset drops it.
        let _ = (&mut writer.0).await;
    }
    outcome
}

/// A task that ends with its owner: a pump dropped mid-way (its connection given up on) must not
/// leave its writer blocked on a peer that never reads.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_some(stream: &TcpStream, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buffer) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves one HTTP/1.1 connection, forwarding each request to the upstream server unless the group's
/// fault answers it here.
async fn serve_http(client: TcpStream, link: Arc<Link>, faults: watch::Receiver<Faults>) {
    let upstream = format!("http://{}", link.upstream);
    let http = reqwest::Client::new();
    let service = hyper::service::service_fn(move |request| {
        let faults = faults.clone();
        let link = Arc::clone(&link);
        let upstream = upstream.clone();
        let http = http.clone();
        async move { forward(request, &link, faults, &upstream, &http).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(client), service)
        .await;
}

async fn forward(
    request: hyper::Request<hyper::body::Incoming>,
    link: &Link,
    mut faults: watch::Receiver<Faults>,
    upstream: &str,
    http: &reqwest::Client,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let respond = |status: u16, body: String| {
        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    };
    match fault_of(&faults, &link.group) {
        LinkFault::Throttle { share } if rand::random::<f64>() < share => {
            return respond(
                429,
                r#"{"error":{"type":"es_rejected_execution_exception","reason":"rejected by the fault proxy"},"status":429}"#
                    .into(),
            );
        }
        LinkFault::Latency { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        LinkFault::Blackhole => lifted(&mut faults, &link.group, LinkFault::Blackhole).await,
        _ => {}
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return respond(400, r#"{"error":"unreadable request body"}"#.into());
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return respond(405, r#"{"error":"unknown method"}"#.into());
    };
    let mut outgoing = http.request(method, format!("{upstream}{path}")).body(body);
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(e) => return respond(502, format!(r#"{{"error":"upstream: {e}"}}"#)),
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let Ok(body) = answer.bytes().await else {
        return respond(502, r#"{"error":"upstream body cut"}"#.into());
    };
    let mut response = hyper::Response::new(Full::new(body));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    for (name, value) in &headers {
        let name = name.as_str();
        if matches!(name, "content-length" | "transfer-encoding" | "connection") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    async fn proxy(upstream: SocketAddr, dir: &Path) -> SocketAddr {
        let port = auscult_testkit::free_port().expect("port");
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let link = Link {
            group: "analysis".into(),
            listen,
            upstream,
            http: false,
        };
        tokio::spawn(run(vec![link], dir.join("faults.json")));
        let connected = auscult_testkit::wait_for(Duration::from_secs(10), || async {
            TcpStream::connect(listen).await.ok().map(drop)
        })
        .await;
        assert!(connected.is_some(), "the proxy never listened");
        listen
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0u8; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    fn set(dir: &Path, fault: LinkFault) {
        write_faults(
            &dir.join("faults.json"),
            &Faults::from([("analysis".to_owned(), fault)]),
        )
        .expect("write faults");
    }

    #[tokio::test]
    async fn passes_delays_stalls_and_resets_as_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = proxy(echo_server().await, dir.path()).await;
        let mut stream = TcpStream::connect(listen).await.expect("connect");
        assert_eq!(
            round_trip(&mut stream, b"hello").await.expect("echo"),
            b"hello"
        );

        set(dir.path(), LinkFault::Latency { ms: 300 });
        // The proxy rereads the file every 100 ms; wait until a round trip shows the delay.
        let delayed = auscult_testkit::wait_for(Duration::from_secs(10), || async {
            let mut stream = TcpStream::connect(listen).await.ok()?;
            let started = std::time::Instant::now();
            round_trip(&mut stream, b"slow").await.ok()?;
            (started.elapsed() >= Duration::from_millis(600)).then_some(())
        })
        .await;
        assert!(delayed.is_some(), "latency never applied both ways");

        // An open connection stalls under a blackhole and carries on when it lifts.
        set(dir.path(), LinkFault::Pass);
        let mut open = auscult_testkit::wait_for(Duration::from_secs(10), || async {
            let mut stream = TcpStream::connect(listen).await.ok()?;
            let started = std::time::Instant::now();
            round_trip(&mut stream, b"fast").await.ok()?;
            (started.elapsed() < Duration::from_millis(300)).then_some(stream)
        })
        .await
        .expect("the latency fault never lifted");
        set(dir.path(), LinkFault::Blackhole);
        let stalled = auscult_testkit::wait_for(Duration::from_secs(10), || async {
            let mut probe = TcpStream::connect(listen).await.ok()?;
            let answer =
                tokio::time::timeout(Duration::from_secs(2), round_trip(&mut probe, b"x")).await;
            answer.is_err().then_some(())
        })
        .await;
        assert!(stalled.is_some(), "a blackholed link still answered");
        open.write_all(b"held").await.expect("write");
        let mut held = [0u8; 4];
        let during = tokio::time::timeout(Duration::from_secs(2), open.read_exact(&mut held)).await;
        assert!(during.is_err(), "bytes crossed a blackhole");
        set(dir.path(), LinkFault::Pass);
        tokio::time::timeout(Duration::from_secs(10), open.read_exact(&mut held))
            .await
            .expect("the open connection never resumed")
            .expect("read");
        assert_eq!(&held, b"held");

        set(dir.path(), LinkFault::Blackhole);
        let mut stalled = auscult_testkit::wait_for(Duration::from_secs(10), || async {
            let mut stream = TcpStream::connect(listen).await.ok()?;
            let answer =
                tokio::time::timeout(Duration::from_secs(2), round_trip(&mut stream, b"x")).await;
            answer.is_err().then_some(stream)
        })
        .await
        .expect("a blackholed link still answered");

        set(dir.path(), LinkFault::Reset);
        let mut buffer = [0u8; 8];
        let ended = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buffer))
            .await
            .expect("the stalled connection was never reset");
        assert!(
            matches!(ended, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "expected a reset, got {ended:?}"
        );

        set(dir.path(), LinkFault::Pass);
        let healed = auscult_testkit::wait_for(Duration::from_secs(10), || async {
            let mut stream = TcpStream::connect(listen).await.ok()?;
            (round_trip(&mut stream, b"again").await.ok()? == b"again").then_some(())
        })
        .await;
        assert!(healed.is_some(), "the link did not heal");
    }

    #[test]
    fn faults_read_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("faults.json");
        assert!(read_faults(&path).expect("missing file").is_empty());
        let faults = Faults::from([
            ("search".to_owned(), LinkFault::Throttle { share: 0.3 }),
            ("ingest".to_owned(), LinkFault::Latency { ms: 250 }),
        ]);
        write_faults(&path, &faults).expect("write");
        assert_eq!(read_faults(&path).expect("read"), faults);
        std::fs::write(&path, "{").expect("write");
        assert!(read_faults(&path).is_err());
    }
}
