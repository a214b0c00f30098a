//! Prometheus metrics over HTTP (`peer --metrics ADDR`): the peer's STATE report rendered in
//! the OpenMetrics text format, served at `GET /metrics` by one thread.
//!
//! The STATE document is the one source: every number in its `counters` object becomes a
//! counter `dbs_<name>_total` (so a counter added to [`crate::core::Counters`] shows up
//! without a change here), except the few that are levels (gauges); its `datagrams`,
//! `operations` and `instances_by_kind` objects become labelled families; the capacity, the
//! chunks stored and the files backed up become gauges.
//!
//! The server answers one connection at a time on its own thread (a request must arrive
//! within [`REQUEST_TIMEOUT`] and fit in [`MAX_REQUEST`] bytes), so a scraper costs the peer
//! one thread whatever it does.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};
use serde_json::{Map, Value};

use crate::log_limit::LogLimit;

/// The content type of [`render`]'s text (what Prometheus asks for first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path metrics are served at.
pub const PATH: &str = "/metrics";

/// How long a client has to send its request (then the connection is closed).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes of a request at most (request line and headers).
pub const MAX_REQUEST: usize = 8192;

/// How long a connection is read from after its response, until the client closes it.
const LINGER: Duration = Duration::from_millis(200);

/// Every metric's name starts with this (and `_`).
const PREFIX: &str = "dbs";

/// The numbers in STATE's `counters` that are levels, not counts since start.
const GAUGES: [&str; 2] = ["instances", "timers"];

/// Why metrics cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be listened on.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The server's thread cannot be started.
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] io::Error),
    /// The text cannot be written.
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The metrics in a STATE document (the one `testapp STATE --json` prints, with its
/// `counters`), in the OpenMetrics text format ([`CONTENT_TYPE`]). What the document lacks is
/// left out.
pub fn render(state: &Value) -> Result<String, MetricsError> {
    let mut m = Metrics::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    m.add(
        "peer",
        "This peer's id and protocol version",
        None,
        Info::new(vec![
            ("peer_id".to_string(), text(&state["peer_id"])),
            (
                "protocol_version".to_string(),
                text(&state["protocol_version"]),
            ),
        ]),
    );
    if let Some(kb) = state["capacity_kb"].as_f64() {
        m.gauge(
            "capacity",
            "Space for chunks stored for other peers",
            Some(Unit::Bytes),
            kb * 1000.0,
        );
    }
    if let Some(kb) = state["used_kb"].as_f64() {
        m.gauge(
            "stored",
            "Space used by the chunks stored here",
            Some(Unit::Bytes),
            kb * 1000.0,
        );
    }
    let below = |chunk: &Value, desired: &Value| {
        chunk["perceived"].as_u64().unwrap_or(0) < desired.as_u64().unwrap_or(0)
    };
    let mut below_degree = Vec::new();
    if let Some(stored) = state["stored"].as_array() {
        m.gauge(
            "stored_chunks",
            "Chunks stored here for other peers",
            None,
            stored.len() as f64,
        );
        let n = stored.iter().filter(|c| below(c, &c["desired"])).count();
        below_degree.push(("stored", n));
    }
    if let Some(files) = state["backed_up"].as_array() {
        let chunks = || files.iter().flat_map(|f| chunks_of(f).map(move |c| (f, c)));
        m.gauge(
            "backed_up_files",
            "Files (and file versions) this peer backed up",
            None,
            files.len() as f64,
        );
        m.gauge(
            "backed_up_chunks",
            "Chunks of the files this peer backed up",
            None,
            chunks().count() as f64,
        );
        let n = chunks().filter(|(f, c)| below(c, &f["desired"])).count();
        below_degree.push(("backed_up", n));
    }
    if !below_degree.is_empty() {
        let family = Family::<Vec<(String, String)>, Gauge>::default();
        for (chunks, n) in below_degree {
            family
                .get_or_create(&vec![("chunks".into(), chunks.into())])
                .set(saturating_i64(n as f64));
        }
        m.add(
            "chunks_below_desired_degree",
            "Chunks whose perceived replication degree is below the desired one: chunks stored \
             here (chunks=stored) and chunks of this peer's own files (chunks=backed_up)",
            None,
            family,
        );
    }
    // Enhanced: what the membership view says, and the chunks short among live peers.
    if let Some(members) = state["membership"].as_array()
        && state["protocol_version"] != "1.0"
    {
        let family = Family::<Vec<(String, String)>, Gauge>::default();
        for s in ["alive", "suspected", "gone"] {
            let n = members.iter().filter(|p| p["state"] == s).count();
            family
                .get_or_create(&vec![("state".into(), s.into())])
                .set(saturating_i64(n as f64));
        }
        m.add(
            "peers",
            "Peers this peer knows of, by what its membership view says (1.0 peers count as \
             alive)",
            None,
            family,
        );
        let live_below = |chunk: &Value, desired: &Value| {
            chunk["live"].as_u64().unwrap_or(0) < desired.as_u64().unwrap_or(0)
        };
        let family = Family::<Vec<(String, String)>, Gauge>::default();
        if let Some(stored) = state["stored"].as_array() {
            let n = stored
                .iter()
                .filter(|c| live_below(c, &c["desired"]))
                .count();
            family
                .get_or_create(&vec![("chunks".into(), "stored".into())])
                .set(saturating_i64(n as f64));
        }
        if let Some(files) = state["backed_up"].as_array() {
            let n = files
                .iter()
                .flat_map(|f| chunks_of(f).map(move |c| (f, c)))
                .filter(|(f, c)| live_below(c, &f["desired"]))
                .count();
            family
                .get_or_create(&vec![("chunks".into(), "backed_up".into())])
                .set(saturating_i64(n as f64));
        }
        m.add(
            "chunks_below_desired_degree_live",
            "Chunks whose holders alive in the membership view are fewer than the desired \
             degree (labels as for chunks_below_desired_degree)",
            None,
            family,
        );
    }
    if let Some(counters) = state["counters"].as_object() {
        m.counters(counters);
    }
    let mut out = String::new();
    encode(&mut out, &m.registry)?;
    Ok(out)
}

/// The chunks of a file in a STATE document's `backed_up`.
fn chunks_of(file: &Value) -> impl Iterator<Item = &Value> {
    file["chunks"].as_array().into_iter().flatten()
}

/// A registry being filled, and the names used in it.
struct Metrics {
    registry: Registry,
    names: HashSet<String>,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            registry: Registry::with_prefix(PREFIX),
            names: HashSet::new(),
        }
    }

    /// Registers `metric` as `name` (with `unit` appended), unless the name is taken: two
    /// families of one name would make the whole text invalid.
    fn add(&mut self, name: &str, help: &str, unit: Option<Unit>, metric: impl Metric) {
        let mut full = name.to_string();
        if let Some(u) = &unit {
            full = format!("{full}_{}", u.as_str());
        }
        if !self.names.insert(full) {
            tracing::debug!("metrics: {name} named twice; the second one left out");
            return;
        }
        match unit {
            Some(unit) => self.registry.register_with_unit(name, help, unit, metric),
            None => self.registry.register(name, help, metric),
        }
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, value: f64) {
        let gauge = Gauge::<i64>::default();
        gauge.set(saturating_i64(value));
        self.add(name, help, unit, gauge);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        self.add(name, help, None, counter);
    }

    /// STATE's `counters`: numbers as counters (or gauges, [`GAUGES`]), flags as 0/1 gauges,
    /// the known objects as labelled families; anything else is left out.
    fn counters(&mut self, counters: &Map<String, Value>) {
        for (key, value) in counters {
            let name = metric_name(key);
            match (key.as_str(), value) {
                ("datagrams", Value::Object(by_channel)) => {
                    let family = counter_family(by_channel, ["channel", "outcome"]);
                    self.add(
                        "datagrams_received",
                        "Datagrams received, by channel and outcome: ok (handed to the \
                         protocol), own (this peer's multicast looped back), malformed, dropped \
                         (the workers' backlog was full)",
                        None,
                        family,
                    );
                }
                ("operations", Value::Object(by_kind)) => {
                    let family = counter_family(by_kind, ["kind", "result"]);
                    self.add(
                        "operations",
                        "Client operations ended, by kind (as the client named it) and result \
                         (ok, or failed: refused, failed or incomplete)",
                        None,
                        family,
                    );
                }
                ("instances_by_kind", Value::Object(by_kind)) => {
                    let family = Family::<Vec<(String, String)>, Gauge>::default();
                    for (kind, n) in by_kind {
                        if let Some(n) = n.as_f64() {
                            family
                                .get_or_create(&vec![("kind".into(), kind.clone())])
                                .set(saturating_i64(n));
                        }
                    }
                    self.add(
                        "instances_by_kind",
                        "Protocol instances in progress, by kind",
                        None,
                        family,
                    );
                }
                (_, Value::Bool(b)) => self.gauge(&name, &help(key), None, f64::from(u8::from(*b))),
                (_, Value::Number(n)) if GAUGES.contains(&key.as_str()) => {
                    self.gauge(&name, &help(key), None, n.as_f64().unwrap_or(0.0));
                }
                (_, Value::Number(n)) => match n.as_u64() {
                    Some(v) => {
                        let name = name.strip_suffix("_total").unwrap_or(&name).to_string();
                        self.counter(&name, &help(key), v);
                    }
                    None => self.gauge(&name, &help(key), None, n.as_f64().unwrap_or(0.0)),
                },
                _ => {}
            }
        }
    }
}

/// A family of counters from an object of objects of numbers: `{"MC": {"ok": 3}}` with labels
/// `[channel, outcome]` is `{channel="MC",outcome="ok"} 3`.
fn counter_family(
    outer: &Map<String, Value>,
    labels: [&str; 2],
) -> Family<Vec<(String, String)>, Counter> {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    for (a, inner) in outer {
        for (b, n) in inner.as_object().into_iter().flatten() {
            if let Some(n) = n.as_u64() {
                family
                    .get_or_create(&vec![
                        (labels[0].to_string(), a.clone()),
                        (labels[1].to_string(), b.clone()),
                    ])
                    .inc_by(n);
            }
        }
    }
    family
}

/// `key` as a metric name: letters, digits and `_` (anything else becomes `_`), not starting
/// with a digit.
fn metric_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// The help text of a STATE counter.
fn help(key: &str) -> String {
    let known = match key {
        "putchunk_launches" => "Chunks whose backup started here (first PUTCHUNK sends)",
        "putchunk_resends" => "PUTCHUNK sends after the first, all chunks",
        "putchunk_late" => {
            "Chunks with fewer STOREDs than expected a while after their first PUTCHUNK"
        }
        "getchunk_resends" => "GETCHUNK sends after the first, all chunks",
        "restore_slowdowns" => {
            "CHUNKs that found this peer's receive queue filling up during one of its restores"
        }
        "bad_bodies" => "CHUNK bodies refused by a restore (wrong size or hash)",
        "chunks_stored" => "Chunks stored here since start",
        "chunks_trimmed" => "Surplus copies dropped after an enhanced backup",
        "putchunks_over_quota" => {
            "PUTCHUNKs not stored: their home's share of the capacity was full"
        }
        "getchunks_over_budget" => {
            "GETCHUNKs not answered: their requester's reply budget was spent"
        }
        "getchunks_repeated" => {
            "GETCHUNKs not answered: the same requester was just answered the chunk"
        }
        "rebackups_over_budget" => {
            "Re-backups after REMOVED held back: the REMOVED's sender's budget was spent"
        }
        "received" => "Datagrams received, all channels",
        "recv_calls" => "System calls that received datagrams (one recvmmsg may take many)",
        "malformed" => "Datagrams dropped as malformed (or received on the wrong channel)",
        "foreign_tcp" => "GETCHUNK 2.0s naming a TCP address other than their sender's",
        "tcp_held_back" => {
            "CHUNK replies held back: the initiator's TCP connection had too much queued"
        }
        "deletes_unproven" => "Secure groups: DELETEs ignored for want of their home's proof",
        "unsealed" => "Secure groups: datagrams and TCP frames dropped as not sealed",
        "bad_mac" => {
            "Secure groups: datagrams and TCP frames dropped for a wrong MAC (another group, altered)"
        }
        "stale" => {
            "Secure groups: datagrams and TCP frames dropped as too old (or sealed before this peer started)"
        }
        "replayed" => "Secure groups: datagrams and TCP frames dropped as replays",
        "pieces_assembled" => "Chunk messages put together from pieces",
        "nacks_sent" => "NACKs sent for missing pieces",
        "nacks_suppressed" => "NACKs not sent because another receiver had asked for as much",
        "pieces_repaired" => "Pieces resent on a NACK",
        "pieces_evicted" => "Incomplete chunk messages evicted for room",
        "pieces_expired" => "Incomplete chunk messages dropped without progress",
        "backlog_dropped" => "Datagrams dropped because the workers' backlog was full",
        "sent" => "Datagrams sent",
        "send_rate" => "The send rate now, bytes per second (below --rate after losses)",
        "send_calls" => "System calls that sent datagrams (a run of pieces by GSO is one)",
        "send_errors" => "Datagram sends that failed",
        "disk_errors" => "Disk operations that failed",
        "metadata_saved" => "1 when the metadata on disk is up to date",
        "instances" => "Protocol instances in progress, all kinds",
        "timers" => "Timers pending",
        _ => return format!("The STATE counter {key}"),
    };
    known.to_string()
}

fn saturating_i64(v: f64) -> i64 {
    // `as` saturates (and maps NaN to 0).
    v.round() as i64
}

/// The HTTP server of [`render`]'s metrics, on one thread; stopped by [`MetricsServer::stop`]
/// or when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0 picks a free one) and serves the metrics of the STATE document
    /// `state` gives at each request.
    pub fn start(
        addr: SocketAddr,
        state: impl Fn() -> Value + Send + 'static,
    ) -> Result<MetricsServer, MetricsError> {
        let bind_err = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, &stopped, &state))
            .map_err(MetricsError::Thread)?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the metrics are: `http://ADDR/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// Stops serving: the request being answered ends first.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // The thread waits in accept(): a connection of our own wakes it.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Answers connections one at a time until `stop` is set.
fn serve(listener: TcpListener, stop: &AtomicBool, state: &dyn Fn() -> Value) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, state) {
                    tracing::debug!("metrics: a connection failed: {e}");
                }
            }
            Err(e) => {
                static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
                crate::log_limited!(LIMIT, warn, "metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// An HTTP response.
#[derive(Debug, PartialEq)]
struct Response {
    status: &'static str,
    content_type: &'static str,
    /// Extra header lines, each ending in CRLF.
    headers: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: "",
            body: format!("{body}\n"),
        }
    }
}

/// Reads one request from `stream` and answers it; the connection is closed after.
fn answer(mut stream: TcpStream, state: &dyn Fn() -> Value) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let (response, head) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(()); // closed before a whole request
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default();
                break (
                    route(method, request.path.unwrap_or_default(), state),
                    method == "HEAD",
                );
            }
            Ok(httparse::Status::Partial) if len < buf.len() => {}
            Ok(httparse::Status::Partial) => {
                break (
                    Response::text("431 Request Header Fields Too Large", "request too large"),
                    false,
                );
            }
            Err(e) => {
                break (
                    Response::text("400 Bad Request", &format!("bad request: {e}")),
                    false,
                );
            }
        }
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        response.headers
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(response.body.as_bytes());
    }
    stream.write_all(&out)?;
    // Closing with unread bytes (a request too large, a body) would reset the connection and
    // could lose the response: end our side, then read what the client still sends, briefly.
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(LINGER))?;
    let lingering = Instant::now();
    while lingering.elapsed() < LINGER && matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}

/// The response to `method` on `target` (a path, maybe with a query).
fn route(method: &str, target: &str, state: &dyn Fn() -> Value) -> Response {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != PATH {
        return Response::text(
            "404 Not Found",
            &format!("not found: metrics are at {PATH}"),
        );
    }
    if method != "GET" && method != "HEAD" {
        return Response {
            headers: "Allow: GET, HEAD\r\n",
            ..Response::text("405 Method Not Allowed", "use GET")
        };
    }
    match render(&state()) {
        Ok(body) => Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            headers: "",
            body,
        },
        Err(e) => Response::text("500 Internal Server Error", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A STATE document as a 1.0 peer reports it (`testapp STATE --json`).
    fn state() -> Value {
        json!({
            "peer_id": 3,
            "protocol_version": "1.0",
            "capacity_kb": 100,
            "used_kb": 64.01,
            "backed_up": [{
                "path": "/tmp/a",
                "file_id": "ab",
                "desired": 2,
                "chunks": [{"no": 0, "perceived": 2}, {"no": 1, "perceived": 1}],
            }],
            "stored": [
                {"file_id": "cd", "no": 0, "size_kb": 64.0, "desired": 1, "perceived": 2},
                {"file_id": "cd", "no": 1, "size_kb": 0.01, "desired": 3, "perceived": 2},
            ],
            "counters": {
                "chunks_stored": 2,
                "received": 40,
                "a_new_counter": 7,
                "already_total": 1,
                "instances": 4,
                "timers": 1,
                "metadata_saved": true,
                "datagrams": {
                    "MC": {"ok": 20, "own": 5, "malformed": 1, "dropped": 0},
                    "MDB": {"ok": 14, "own": 0, "malformed": 0, "dropped": 0},
                },
                "instances_by_kind": {"backups": 1, "watches": 3},
                "operations": {"BACKUP": {"ok": 1, "failed": 2}},
                "some_future_section": {"alive": 3},
            },
            "last_disk_error": null,
        })
    }

    #[test]
    fn renders_every_figure_of_a_state_document() {
        let text = render(&state()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "dbs_peer_info{peer_id=\"3\",protocol_version=\"1.0\"} 1",
            "# TYPE dbs_capacity_bytes gauge",
            "# UNIT dbs_capacity_bytes bytes",
            "dbs_capacity_bytes 100000",
            "dbs_stored_bytes 64010",
            "dbs_stored_chunks 2",
            "dbs_backed_up_files 1",
            "dbs_backed_up_chunks 2",
            "dbs_chunks_below_desired_degree{chunks=\"stored\"} 1",
            "dbs_chunks_below_desired_degree{chunks=\"backed_up\"} 1",
            "# TYPE dbs_chunks_stored counter",
            "dbs_chunks_stored_total 2",
            "dbs_received_total 40",
            // A counter the renderer has never heard of, and one already named _total.
            "# HELP dbs_a_new_counter The STATE counter a_new_counter.",
            "dbs_a_new_counter_total 7",
            "dbs_already_total 1",
            "# TYPE dbs_instances gauge",
            "dbs_instances 4",
            "dbs_timers 1",
            "dbs_metadata_saved 1",
            "dbs_datagrams_received_total{channel=\"MC\",outcome=\"ok\"} 20",
            "dbs_datagrams_received_total{channel=\"MC\",outcome=\"own\"} 5",
            "dbs_datagrams_received_total{channel=\"MC\",outcome=\"malformed\"} 1",
            "dbs_datagrams_received_total{channel=\"MDB\",outcome=\"ok\"} 14",
            "dbs_instances_by_kind{kind=\"watches\"} 3",
            "dbs_operations_total{kind=\"BACKUP\",result=\"ok\"} 1",
            "dbs_operations_total{kind=\"BACKUP\",result=\"failed\"} 2",
        ] {
            assert!(lines.contains(&want), "no line {want:?} in:\n{text}");
        }
        assert_eq!(lines.last(), Some(&"# EOF"));
        assert!(!text.contains("some_future_section"), "{text}");
        assert!(!text.contains("last_disk_error"), "{text}");
        // One TYPE line per family: no name used twice.
        let types: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("# TYPE "))
            .copied()
            .collect();
        let distinct: HashSet<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(types.len(), distinct.len(), "{text}");
    }

    #[test]
    fn an_enhanced_peer_renders_its_membership_and_live_degrees() {
        let mut st = state();
        st["protocol_version"] = json!("2.0");
        st["membership"] = json!([
            {"id": 1, "state": "alive", "enhanced": true},
            {"id": 2, "state": "suspected", "enhanced": true},
            {"id": 4, "state": "alive", "enhanced": false},
        ]);
        st["stored"][0]["live"] = json!(1);
        st["stored"][1]["live"] = json!(3);
        st["backed_up"][0]["chunks"][0]["live"] = json!(1);
        st["backed_up"][0]["chunks"][1]["live"] = json!(1);
        let text = render(&st).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "dbs_peers{state=\"alive\"} 2",
            "dbs_peers{state=\"suspected\"} 1",
            "dbs_peers{state=\"gone\"} 0",
            "dbs_chunks_below_desired_degree_live{chunks=\"stored\"} 0",
            "dbs_chunks_below_desired_degree_live{chunks=\"backed_up\"} 2",
        ] {
            assert!(lines.contains(&want), "no line {want:?} in:\n{text}");
        }
        assert!(
            !render(&state()).unwrap().contains("dbs_peers"),
            "1.0: no view"
        );
    }

    #[test]
    fn a_document_without_figures_renders_only_the_peer() {
        let text = render(&json!({})).unwrap();
        assert!(text.contains("dbs_peer_info"), "{text}");
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(metric_name("send-errors.mc"), "send_errors_mc");
        assert_eq!(metric_name("9lives"), "_9lives");
    }

    #[test]
    fn routes_metrics_and_nothing_else() {
        let st = || state();
        let ok = route("GET", "/metrics?x=1", &st);
        assert_eq!((ok.status, ok.content_type), ("200 OK", CONTENT_TYPE));
        assert!(ok.body.ends_with("# EOF\n"));
        assert_eq!(route("GET", "/other", &st).status, "404 Not Found");
        assert_eq!(route("GET", "/", &st).status, "404 Not Found");
        let post = route("POST", "/metrics", &st);
        assert_eq!(post.status, "405 Method Not Allowed");
        assert_eq!(post.headers, "Allow: GET, HEAD\r\n");
    }

    #[test]
    fn serves_over_http_one_connection_at_a_time_and_stops() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), state).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(server.url(), format!("http://{addr}/metrics"));
        let get = |req: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        // A client that sends nothing holds the server at most REQUEST_TIMEOUT.
        let idle = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(t.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(2));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("dbs_stored_chunks 2\n"), "{ok}");
        drop(idle);
        let head = get("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(get("GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(get("NONSENSE\r\n\r\n").starts_with("HTTP/1.1 400 Bad Request\r\n"));
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST)
        );
        assert!(get(&huge).starts_with("HTTP/1.1 431 "));
        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }
}
