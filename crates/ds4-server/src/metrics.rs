//! Process-wide counters for `GET /metrics` (Prometheus text format 0.0.4). Plain atomics: the
//! worker and the handlers bump them, the scrape reads them; no metrics crate needed for a dozen
//! numbers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: [AtomicU64; 4],
    pub errors: AtomicU64,
    /// Jobs waiting for the worker (signed so a racy read never wraps).
    pub queue_depth: AtomicI64,
    /// Queued jobs dropped because their client left.
    pub dropped: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub prefill_tokens: AtomicU64,
    pub prefill_micros: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub decode_micros: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Requests whose prefix was restored from the disk KV cache.
    pub disk_hits: AtomicU64,
    /// Checkpoint files written to the disk KV cache.
    pub disk_saves: AtomicU64,
}

/// Endpoint index into [`Metrics::requests`].
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    ChatCompletions = 0,
    Completions = 1,
    Responses = 2,
    Messages = 3,
}

const ENDPOINT_NAMES: [&str; 4] = ["chat_completions", "completions", "responses", "messages"];

impl Metrics {
    pub fn request(&self, e: Endpoint) {
        self.requests[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_prefill(&self, prefilled: usize, reused: usize, seconds: f64) {
        self.prompt_tokens
            .fetch_add((prefilled + reused) as u64, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(reused as u64, Ordering::Relaxed);
        self.prefill_tokens
            .fetch_add(prefilled as u64, Ordering::Relaxed);
        self.prefill_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        if reused > 0 {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_decode(&self, generated: usize, seconds: f64) {
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        self.decode_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rate = |tokens: u64, micros: u64| {
            if micros == 0 {
                0.0
            } else {
                tokens as f64 * 1e6 / micros as f64
            }
        };
        let mut s = String::new();
        s.push_str("# HELP ds4_requests_total Generation requests received, by endpoint.\n");
        s.push_str("# TYPE ds4_requests_total counter\n");
        for (name, n) in ENDPOINT_NAMES.iter().zip(&self.requests) {
            let _ = writeln!(s, "ds4_requests_total{{endpoint=\"{name}\"}} {}", get(n));
        }
        let counters: [(&str, &str, u64); 10] = [
            (
                "ds4_request_errors_total",
                "Requests answered with an error status.",
                get(&self.errors),
            ),
            (
                "ds4_dropped_requests_total",
                "Queued requests dropped because the client left.",
                get(&self.dropped),
            ),
            (
                "ds4_prompt_tokens_total",
                "Prompt tokens synced into the session (tokens in).",
                get(&self.prompt_tokens),
            ),
            (
                "ds4_cached_tokens_total",
                "Prompt tokens reused from the live KV state.",
                get(&self.cached_tokens),
            ),
            (
                "ds4_prefill_tokens_total",
                "Prompt tokens evaluated by prefill.",
                get(&self.prefill_tokens),
            ),
            (
                "ds4_generated_tokens_total",
                "Generated tokens (tokens out).",
                get(&self.generated_tokens),
            ),
            (
                "ds4_cache_hits_total",
                "Requests that reused part of the live KV state.",
                get(&self.cache_hits),
            ),
            (
                "ds4_cache_misses_total",
                "Requests that prefilled from token 0.",
                get(&self.cache_misses),
            ),
            (
                "ds4_kv_disk_hits_total",
                "Requests whose prefix was restored from the disk KV cache.",
                get(&self.disk_hits),
            ),
            (
                "ds4_kv_disk_saves_total",
                "Checkpoint files written to the disk KV cache.",
                get(&self.disk_saves),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges: [(&str, &str, f64); 3] = [
            (
                "ds4_queue_depth",
                "Jobs waiting for the inference worker.",
                self.queue_depth.load(Ordering::Relaxed).max(0) as f64,
            ),
            (
                "ds4_prefill_tokens_per_second",
                "Average prefill speed since start.",
                rate(get(&self.prefill_tokens), get(&self.prefill_micros)),
            ),
            (
                "ds4_decode_tokens_per_second",
                "Average decode speed since start.",
                rate(get(&self.generated_tokens), get(&self.decode_micros)),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        s
    }
}
