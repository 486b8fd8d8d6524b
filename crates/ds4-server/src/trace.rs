//! `--trace FILE` (spec/server.md §4.14): per request a header (`===== request N <date> =====`,
//! kind, model, stream, tools, think mode, token counts, sampling), the cache decision, the raw
//! request JSON, the rendered prompt, the generated text as it is sampled, `--- trace: … ---`
//! events and a parsed summary. The file is truncated at start and written unbuffered; the worker
//! writes a request's whole record, so records never interleave. Exact text is not an API.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// The trace sink; a no-op when tracing is off.
#[derive(Debug, Default)]
pub struct Trace {
    file: Option<Mutex<File>>,
}

impl Trace {
    pub fn off() -> Trace {
        Trace { file: None }
    }

    /// Truncates `path` and traces into it.
    pub fn open(path: &Path) -> std::io::Result<Trace> {
        Ok(Trace {
            file: Some(Mutex::new(File::create(path)?)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `text` as is. Errors are ignored: tracing must never fail a request.
    pub fn write(&self, text: &[u8]) {
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(text);
            }
        }
    }

    /// One `--- trace: request N: TEXT ---` event line.
    pub fn line(&self, request: u64, text: &str) {
        if self.enabled() {
            self.write(format!("--- trace: request {request}: {text} ---\n").as_bytes());
        }
    }

    /// A titled multi-line section: `--- TITLE ---`, the body, a newline.
    pub fn section(&self, title: &str, body: &str) {
        if self.enabled() {
            self.write(format!("--- {title} ---\n{body}\n").as_bytes());
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds (proleptic Gregorian; no date crate needed).
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `ids [a b c] "text"`: a token window for the cache-decision section.
pub fn token_window(tokenizer: &ds4_chat::Tokenizer, ids: &[u32]) -> String {
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!(
        "[{}] {:?}",
        list.join(" "),
        String::from_utf8_lossy(&tokenizer.decode(ids))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_795_696_496), "2026-11-26 12:34:56 UTC");
    }
}
