//! The non-chat actions of `ds4`: `--dump-tokens` (spec/server.md §1.8), `--dump-logprobs`
//! (§6.1 JSON), `--perplexity-file` and `--inspect`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use ds4_chat::Tokenizer;
use ds4_engine::{Engine, Session};

/// §1.8: `[id0, id1, ...]`, then `%6d  <raw vocab string>` per token.
pub fn dump_tokens(tok: &Tokenizer, text: &str, out: &mut impl Write) -> io::Result<()> {
    let ids = tok.encode_rendered(text.as_bytes());
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    writeln!(out, "[{}]", list.join(", "))?;
    for &id in &ids {
        writeln!(out, "{id:6}  {}", tok.token_str(id).unwrap_or(""))?;
    }
    Ok(())
}

/// C's `%.9g`, which the reference uses for every number of the logprobs JSON.
pub fn fmt_g9(x: f64) -> String {
    const P: i32 = 9;
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // The exponent after rounding to P significant digits decides the style, as in C.
    let sci = format!("{:.*e}", (P - 1) as usize, x);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..P).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mant), exp.abs())
    } else {
        trim(&format!("{:.*}", (P - 1 - exp) as usize, x))
    }
}

/// A JSON string literal of a token's bytes. Valid UTF-8 is escaped as JSON; otherwise every
/// byte >= 0x80 becomes `\u00XX` (spec/server.md §6.1; the `bytes` array is authoritative).
pub fn json_token_text(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    let escape_char = |s: &mut String, c: char| match c {
        '"' => s.push_str("\\\""),
        '\\' => s.push_str("\\\\"),
        '\n' => s.push_str("\\n"),
        '\r' => s.push_str("\\r"),
        '\t' => s.push_str("\\t"),
        c if (c as u32) < 0x20 => {
            let _ = write!(s, "\\u{:04x}", c as u32);
        }
        c => s.push(c),
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => text.chars().for_each(|c| escape_char(&mut s, c)),
        Err(_) => {
            for &b in bytes {
                if b >= 0x80 {
                    let _ = write!(s, "\\u{b:04x}");
                } else {
                    escape_char(&mut s, b as char);
                }
            }
        }
    }
    s.push('"');
    s
}

fn json_token(tok: &Tokenizer, id: u32) -> String {
    let bytes = tok.token_bytes(id);
    let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!(
        "{{\"id\":{id},\"text\":{},\"bytes\":[{}]}}",
        json_token_text(bytes),
        list.join(",")
    )
}

/// Log-softmax normalizer over the finite logits: `max + ln Σ exp(l − max)`.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| (l as f64 - max).exp())
        .sum();
    max + sum.ln()
}

/// Greedy continuation of `prompt` for at most `max_steps` steps, each with its `top_k` logprobs,
/// written as the §6.1 JSON. Stops after EOS (its step included) or when the context is full.
pub fn dump_logprobs(
    session: &mut Session,
    tok: &Tokenizer,
    prompt: &[u32],
    max_steps: usize,
    top_k: usize,
    path: &Path,
) -> Result<usize> {
    session
        .sync(prompt, super::generate::PREFILL_CHUNK, &mut |_| {})
        .context("prefill")?;
    let eos = tok.special().eos;
    let mut steps = Vec::new();
    let mut order: Vec<u32> = Vec::new();
    for step in 0..max_steps {
        let logits = session.logits();
        let lse = log_sum_exp(logits);
        order.clear();
        order.extend((0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()));
        let k = top_k.min(order.len());
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, by_logit);
        }
        order.truncate(k);
        order.sort_by(by_logit);
        let selected = ds4_engine::sampler::argmax(logits);
        let tops: Vec<String> = order
            .iter()
            .map(|&id| {
                let l = logits[id as usize] as f64;
                format!(
                    "{{\"token\":{},\"logit\":{},\"logprob\":{}}}",
                    json_token(tok, id),
                    fmt_g9(l),
                    fmt_g9(l - lse)
                )
            })
            .collect();
        steps.push(format!(
            "    {{\"step\":{step},\"selected\":{},\"top_logprobs\":[{}]}}",
            json_token(tok, selected),
            tops.join(",")
        ));
        if selected == eos || step + 1 == max_steps || session.tokens().len() + 1 >= session.ctx() {
            break;
        }
        session.push(selected).context("decode")?;
    }
    let json = format!(
        "{{\n  \"source\":\"ds4\",\n  \"prompt_tokens\":{},\n  \"ctx\":{},\n  \"top_k\":{top_k},\n  \"steps\":[\n{}\n  ]\n}}\n",
        prompt.len(),
        session.ctx(),
        steps.join(",\n")
    );
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(steps.len())
}

/// Perplexity of raw text (§6.1): plain-BPE tokens, prefill the first 32, score up to
/// `max_scored` following tokens within the context.
pub fn perplexity(
    session: &mut Session,
    tok: &Tokenizer,
    text: &[u8],
    max_scored: usize,
) -> Result<String> {
    const WARMUP: usize = 32;
    let ids = tok.encode_text(text);
    if ids.len() <= WARMUP {
        bail!(
            "--perplexity-file needs more than {WARMUP} tokens, the file has {}",
            ids.len()
        );
    }
    session
        .sync(&ids[..WARMUP], super::generate::PREFILL_CHUNK, &mut |_| {})
        .context("prefill")?;
    let n_score = max_scored
        .min(ids.len() - WARMUP)
        .min(session.ctx().saturating_sub(WARMUP + 1));
    let mut nll = 0.0f64;
    for (i, &next) in ids[WARMUP..WARMUP + n_score].iter().enumerate() {
        let logits = session.logits();
        nll += log_sum_exp(logits) - logits[next as usize] as f64;
        if i + 1 < n_score {
            session.push(next).context("decode")?;
        }
    }
    let avg = nll / n_score.max(1) as f64;
    Ok(format!(
        "tokens={} scored={n_score} nll={nll:.6} avg_nll={avg:.6} ppl={:.6}",
        ids.len(),
        avg.exp()
    ))
}

/// `--inspect`: what was loaded, and the KV memory a session of `ctx` needs.
pub fn inspect(engine: &Engine, source: &str, ctx: usize) -> String {
    let c = engine.config();
    let est = ds4_model::memory::kv_memory_estimate(c, ctx, super::generate::PREFILL_CHUNK);
    let mut s = String::new();
    let _ = writeln!(s, "model:      {source}");
    let _ = writeln!(s, "backend:    {}", engine.backend_name());
    let _ = writeln!(
        s,
        "layers:     {} (embedding {}, hyper-connections {})",
        c.n_layer, c.n_embd, c.n_hc
    );
    let _ = writeln!(s, "vocab:      {}", c.n_vocab);
    let _ = writeln!(
        s,
        "attention:  {} heads x {} dims, {} kv head, window {}",
        c.n_head, c.head_dim, c.n_head_kv, c.n_swa
    );
    let _ = writeln!(
        s,
        "experts:    {} routed ({} used), {} shared, ffn {}",
        c.n_expert, c.n_expert_used, c.n_expert_shared, c.n_ff_exp
    );
    let _ = writeln!(s, "train ctx:  {}", c.context_length);
    let _ = write!(
        s,
        "kv memory:  {:.1} MiB at ctx={ctx}",
        est.total_bytes as f64 / (1024.0 * 1024.0)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g9_matches_c_printf() {
        // Expected strings from C printf("%.9g").
        let cases = [
            (0.0, "0"),
            (1.0, "1"),
            (-0.5, "-0.5"),
            (123456789.0, "123456789"),
            (1234567890.0, "1.23456789e+09"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (-1.234567891234, "-1.23456789"),
            (2.5e-300, "2.5e-300"),
            (99999999.95, "100000000"),
        ];
        for (x, want) in cases {
            assert_eq!(fmt_g9(x), want, "{x}");
        }
    }

    #[test]
    fn token_text_escapes_json_and_invalid_utf8_bytes() {
        assert_eq!(json_token_text(b"a\"b\\\n"), "\"a\\\"b\\\\\\n\"");
        assert_eq!(json_token_text("é".as_bytes()), "\"é\"");
        assert_eq!(json_token_text(&[0x41, 0xE2, 0x96]), "\"A\\u00e2\\u0096\"");
        assert_eq!(json_token_text(&[0x01]), "\"\\u0001\"");
    }
}
