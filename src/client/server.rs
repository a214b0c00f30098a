//! The access-point server: one thread accepts, one thread per client reads a request line and
//! streams the handler's replies back.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::Receiver;

use super::access_point::{Listener, Stream, TOKEN_PREFIX, token_matches};
use super::api::{ErrorKind, MAX_REQUEST, Reply, Request};

/// Runs client requests.
pub trait Handler: Send + Sync + 'static {
    /// Starts `request`; its replies arrive on the returned channel, which closes after the last.
    fn handle(&self, request: Request) -> Receiver<Reply>;
}

/// Accepts clients until the listener fails; each on its own thread. With a `token` (a TCP
/// access point), a client's first line must be `TOKEN <token>`.
pub fn serve(listener: Listener, handler: Arc<dyn Handler>, token: Option<String>) {
    let token: Option<Arc<str>> = token.map(Arc::from);
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept() {
            Ok(stream) => {
                // A thread per client, at most MAX_CLIENTS (a client that has not sent its
                // token or request yet holds one for up to REQUEST_TIMEOUT).
                if open.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    open.fetch_sub(1, Ordering::SeqCst);
                    continue; // closed
                }
                let handler = handler.clone();
                let token = token.clone();
                let count = open.clone();
                let spawned = std::thread::Builder::new()
                    .name("client".into())
                    .spawn(move || {
                        serve_client(stream, handler.as_ref(), token.as_deref());
                        count.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) => {
                tracing::warn!("access point accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Clients served at once at most; more are closed at once.
pub const MAX_CLIENTS: usize = 64;

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn serve_client(stream: Stream, handler: &dyn Handler, token: Option<&str>) {
    // A client that connects and sends nothing (or half a line) is dropped after the timeout.
    if stream.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    if let Some(why) = stream.refusal() {
        static REFUSED: crate::log_limit::LogLimit =
            crate::log_limit::LogLimit::new(std::time::Duration::from_secs(10));
        crate::log_limited!(REFUSED, warn, "access point: refused a client: {why}");
        let reply = Reply::Error {
            kind: ErrorKind::BadRequest,
            message: why,
        };
        let mut text = serde_json::to_vec(&reply).expect("reply serialises");
        text.push(b'\n');
        let _ = out.write_all(&text);
        return;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64));
    if let Some(token) = token {
        let given = match reader.read_line(&mut line) {
            Ok(_) => line.trim_end().strip_prefix(TOKEN_PREFIX).unwrap_or(""),
            Err(_) => "",
        };
        if !token_matches(given, token) {
            let reply = Reply::Error {
                kind: ErrorKind::BadRequest,
                message: "this TCP access point needs its token first (testapp reads it from \
                          the runtime directory of the user who started the peer, or takes \
                          --token FILE: the peer's <tree>/access-token)"
                    .into(),
            };
            let mut text = serde_json::to_vec(&reply).expect("reply serialises");
            text.push(b'\n');
            let _ = out.write_all(&text);
            return;
        }
        line.clear();
    }
    let replies = match reader.read_line(&mut line) {
        Ok(0) => return,
        Ok(_) if !line.ends_with('\n') => single(Reply::Error {
            kind: ErrorKind::BadRequest,
            message: format!("request longer than {MAX_REQUEST} bytes or not ended by a newline"),
        }),
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => handler.handle(request),
            Err(e) => single(Reply::Error {
                kind: ErrorKind::BadRequest,
                message: format!("malformed request: {e}"),
            }),
        },
        Err(e) => single(Reply::Error {
            kind: ErrorKind::BadRequest,
            message: format!("unreadable request: {e}"),
        }),
    };
    for reply in replies {
        let mut text = serde_json::to_vec(&reply).expect("reply serialises");
        text.push(b'\n');
        if out.write_all(&text).and_then(|_| out.flush()).is_err() {
            return; // the client went away; the operation goes on
        }
    }
}

fn single(reply: Reply) -> Receiver<Reply> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(reply);
    rx
}
