//! `--trace FILE` (spec/server.md §4.14): per request, the rendered prompt, cache decisions,
//! generated text and tool-parser events, one line each, written unbuffered.

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

    /// Writes `--- trace: request N: TEXT ---`-style lines; errors are ignored (tracing must
    /// never fail a request).
    pub fn line(&self, request: u64, text: &str) {
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "[{request}] {text}");
            }
        }
    }

    /// A multi-line block (request JSON, rendered prompt) under a header.
    pub fn block(&self, request: u64, title: &str, body: &str) {
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(
                    f,
                    "===== request {request} {title} =====\n{body}\n===== end {title} ====="
                );
            }
        }
    }
}
