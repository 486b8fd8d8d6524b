//! Scheduling under load (spec/server.md §4.3, §4.12): 50 concurrent streaming clients over a
//! slow fake model, a third of them disconnecting at random points. Every finished response must
//! be complete and well formed, the server must stay healthy, and no task may leak. Also: a queued
//! request whose client left is dropped before it reaches the model.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn streaming_request(output: &str, max_tokens: usize) -> Vec<u8> {
    let body =
        json!({"messages": [{"role": "user", "content": "go"}], "think": false, "stream": true,
        "max_tokens": max_tokens})
        .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\nx-ds4-test-output: {}\r\n\r\n{}",
        body.len(),
        enc(output),
        body
    )
    .into_bytes()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fifty_streams_with_random_disconnects_stay_well_formed() {
    let s = start_with_delay(test_config(), Duration::from_micros(300));
    let addr = s.addr;
    // Baseline after one request, so the server's own long-lived tasks are counted.
    assert_eq!(request(addr, "GET", "/health", &[], "").status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let baseline = s.rt.metrics().num_alive_tasks();
    let text = (0..24)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let plans: Vec<Option<usize>> = (0..50)
        .map(|i| {
            if i % 3 == 0 {
                Some(rng.gen_range(0..1500))
            } else {
                None
            }
        })
        .collect();
    let handles: Vec<_> = plans
        .into_iter()
        .map(|cut| {
            let req = streaming_request(&text, 200);
            std::thread::spawn(move || {
                let mut sock = TcpStream::connect(addr).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                sock.write_all(&req).unwrap();
                match cut {
                    Some(n) => {
                        let mut buf = vec![0u8; n];
                        let _ = sock.read_exact(&mut buf);
                        None // dropped here: the client leaves mid-stream (or while queued)
                    }
                    None => {
                        let mut buf = Vec::new();
                        sock.read_to_end(&mut buf).unwrap();
                        Some(parse_response(&buf))
                    }
                }
            })
        })
        .collect();
    let mut finished = 0;
    for h in handles {
        let Some(r) = h.join().unwrap() else { continue };
        finished += 1;
        assert_eq!(r.status, 200);
        let data = r.sse_data();
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "{}",
            r.body
        );
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, text);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }
    assert!(finished >= 33);
    let r = request(addr, "GET", "/health", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
    wait_until("an empty queue", || {
        s.state.metrics.queue_depth.load(Ordering::Relaxed) == 0
    });
    // Every connection task and stream is gone once the clients are.
    wait_until("tasks to drain", || {
        s.rt.metrics().num_alive_tasks() <= baseline
    });
    // And the server still generates.
    let v = post_forced(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}],
        "think": false}),
        "still here",
    )
    .json();
    assert_eq!(v["choices"][0]["message"]["content"], "still here");
}

#[test]
fn client_leaving_stops_generation_and_queued_jobs_are_dropped() {
    // 20 ms per evaluated token: a 400-token answer would take 8 s.
    let s = start_with_delay(test_config(), Duration::from_millis(20));
    let addr = s.addr;
    let long: String = (0..400).map(|i| format!("t{i} ")).collect();
    // A: streams, reads a little, then leaves.
    let mut a = TcpStream::connect(addr).unwrap();
    a.write_all(&streaming_request(&long, 1000)).unwrap();
    let mut buf = [0u8; 600];
    a.read_exact(&mut buf).unwrap();
    // B: queued behind A, leaves before its turn.
    let mut b = TcpStream::connect(addr).unwrap();
    b.write_all(&streaming_request("never", 10)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(b);
    let t = Instant::now();
    drop(a);
    wait_until("the dropped job", || {
        s.state.metrics.dropped.load(Ordering::Relaxed) == 1
    });
    // A stopped at its next token instead of generating 400.
    wait_until("an idle worker", || {
        s.state.metrics.queue_depth.load(Ordering::Relaxed) == 0
    });
    let v = post_forced(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}],
        "think": false}),
        "ok",
    )
    .json();
    assert_eq!(v["choices"][0]["message"]["content"], "ok");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "generation did not stop when the client left"
    );
    let generated = s.state.metrics.generated_tokens.load(Ordering::Relaxed);
    assert!(
        generated < 200,
        "{generated} tokens generated for clients that left"
    );
}
