//! Arbitrary bytes through the server's own request parsers (spec/server.md §4.6-§4.9): byte 0
//! picks the endpoint (chat completions, completions, responses, messages), the rest is the body.
//! Parsed requests continue through the replay memory, the renderer, the tokenizer and the
//! live-tail split; see `ds4_server::fuzzing::request` for the invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&endpoint, body)) = data.split_first() {
        ds4_server::fuzzing::request(endpoint, body);
    }
});
