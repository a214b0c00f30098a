//! Arbitrary request lines → the access point's request parser
//! (`serde_json::from_str::<dbs::client::Request>`, as src/client/server.rs calls it on one
//! line read with `read_line`, so only valid UTF-8 reaches it).
//!
//! The parser must never panic. When it accepts a request, serialising it again must give a
//! request that parses back to the same value (what testapp sends is what the peer reads).
#![no_main]

use dbs::client::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(request) = serde_json::from_str::<Request>(line) else {
        return;
    };
    let _ = (request.name(), request.enhanced());
    let text = serde_json::to_string(&request).expect("a parsed request serialises");
    let back: Request = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("re-serialised request {text:?} does not parse: {e}"));
    assert_eq!(back, request, "serialise → parse is not the identity");
});
