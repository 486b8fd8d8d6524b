//! `ds4 download TARGET`: fetch a model GGUF from Hugging Face (spec/server.md §7).
//!
//! The same targets, file names, URL layout, token sources and `ds4flash.gguf` link as the
//! original `download_model.sh`, without curl: the body is streamed into `<file>.part`, an
//! interrupted transfer is resumed with an HTTP `Range` request (within one run, with backoff, and
//! across runs), and the `.part` file becomes the final name only after an integrity check: the
//! size the server announced, and a GGUF header that `ds4_gguf` parses with every tensor inside
//! the file. A truncated or corrupt download therefore never gets the name a model loader opens.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Where the files live unless `--base-url` / `DS4_DOWNLOAD_BASE_URL` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://huggingface.co/antirez/deepseek-v4-gguf/resolve/main";
/// The name `ds4` opens when no `-m` is given (spec/server.md §6).
pub const DEFAULT_MODEL_LINK: &str = "ds4flash.gguf";

/// One downloadable file (spec/server.md §7 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: &'static str,
    pub file: &'static str,
    pub approx_size: &'static str,
    pub note: &'static str,
    /// Model targets get the `ds4flash.gguf` link; the MTP draft does not.
    pub is_model: bool,
}

pub const TARGETS: [Target; 5] = [
    Target {
        name: "q2-imatrix",
        file: "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf",
        approx_size: "81 GB",
        note: "preferred 2-bit experts, for 96/128 GB of RAM",
        is_model: true,
    },
    Target {
        name: "q4-imatrix",
        file: "DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2-imatrix.gguf",
        approx_size: "153 GB",
        note: "preferred 4-bit experts, for >= 256 GB of RAM",
        is_model: true,
    },
    Target {
        name: "q2",
        file: "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf",
        approx_size: "81 GB",
        note: "legacy 2-bit (no imatrix)",
        is_model: true,
    },
    Target {
        name: "q4",
        file: "DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2.gguf",
        approx_size: "153 GB",
        note: "legacy 4-bit (no imatrix)",
        is_model: true,
    },
    Target {
        name: "mtp",
        file: "DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf",
        approx_size: "3.5 GB",
        note: "optional speculative draft (--mtp FILE --mtp-draft 2)",
        is_model: false,
    },
];

/// The target called `name`, if any.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

// ---- Flags: what the user typed (low args) ---------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "ds4 download",
    about = "Download a DeepSeek V4 Flash GGUF (resumable) and link ./ds4flash.gguf to it",
    after_help = targets_help()
)]
struct Args {
    /// q2-imatrix | q4-imatrix | q2 | q4 | mtp
    target: String,
    /// Hugging Face token (default: $HF_TOKEN, then the huggingface-cli token file)
    #[arg(long)]
    token: Option<String>,
    /// Destination directory (default: $DS4_GGUF_DIR, else ./gguf)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Base URL the file name is appended to (default: $DS4_DOWNLOAD_BASE_URL, else Hugging Face)
    #[arg(long)]
    base_url: Option<String>,
    /// Directory in which to create the ds4flash.gguf link (default: the current directory)
    #[arg(long, default_value = ".")]
    link_dir: PathBuf,
    /// Do not create or change the ds4flash.gguf link
    #[arg(long)]
    no_link: bool,
    /// Times to resume after a dropped connection before giving up
    #[arg(long, default_value_t = 8)]
    retries: u32,
}

fn targets_help() -> String {
    let mut s = String::from("Targets:\n");
    for t in &TARGETS {
        s.push_str(&format!(
            "  {:<11} {:>7}  {}\n",
            t.name, t.approx_size, t.note
        ));
    }
    s
}

// ---- Resolved settings (high args) -----------------------------------------------------------

/// Everything a download needs, checked once.
#[derive(Debug, Clone)]
pub struct DownloadPlan {
    pub target: &'static Target,
    pub url: String,
    pub dest: PathBuf,
    pub token: Option<String>,
    /// Where to put `ds4flash.gguf`, or `None` for no link.
    pub link_dir: Option<PathBuf>,
    pub retries: u32,
}

impl DownloadPlan {
    fn part_path(&self) -> PathBuf {
        with_suffix(&self.dest, ".part")
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// spec/server.md §7: `--token`, else `$HF_TOKEN`, else the token file huggingface-cli writes
/// (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, else `~/.cache/huggingface/token`) if non-empty.
fn resolve_token(flag: Option<String>) -> Option<String> {
    if let Some(t) = flag.filter(|t| !t.trim().is_empty()) {
        return Some(t.trim().to_string());
    }
    if let Some(t) = env_nonempty("HF_TOKEN") {
        return Some(t.trim().to_string());
    }
    let file = if let Some(p) = env_nonempty("HF_TOKEN_PATH") {
        PathBuf::from(p)
    } else if let Some(home) = env_nonempty("HF_HOME") {
        Path::new(&home).join("token")
    } else {
        Path::new(&env_nonempty("HOME")?).join(".cache/huggingface/token")
    };
    // An unreadable token file is the same as none: public files need no token.
    let t = fs::read_to_string(file).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn resolve(args: Args) -> Result<DownloadPlan> {
    let Some(target) = target(&args.target) else {
        bail!("Unknown model: {}\n\n{}", args.target, targets_help());
    };
    let dir = match args.dir {
        Some(d) => d,
        None => env_nonempty("DS4_GGUF_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("gguf")),
    };
    let base = args
        .base_url
        .or_else(|| env_nonempty("DS4_DOWNLOAD_BASE_URL"))
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        bail!("--base-url must be an http:// or https:// URL, got {base:?}");
    }
    let url = format!("{}/{}", base.trim_end_matches('/'), target.file);
    Ok(DownloadPlan {
        target,
        url,
        dest: dir.join(target.file),
        token: resolve_token(args.token),
        link_dir: (!args.no_link && target.is_model).then_some(args.link_dir),
        retries: args.retries,
    })
}

pub fn main(args: &[String]) -> Result<ExitCode> {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            // Usage errors exit 1 like the script (help exits 0); clap prints either.
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return Ok(ExitCode::from(code));
        }
    };
    let plan = resolve(args)?;
    run(&plan)?;
    Ok(ExitCode::SUCCESS)
}

/// Download (or find) the file, check it, link it. Prints the script's progress lines.
pub fn run(plan: &DownloadPlan) -> Result<()> {
    let dir = plan.dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let aria2 = with_suffix(&plan.dest, ".aria2");
    if aria2.exists() {
        bail!(
            "Found incomplete aria2 download sidecar {}; finish it with aria2c or delete it and the partial file",
            aria2.display()
        );
    }
    let existing = fs::metadata(&plan.dest).map(|m| m.len()).unwrap_or(0);
    if existing > 0 {
        println!("Already downloaded: {}", plan.dest.display());
    } else {
        println!(
            "Downloading {} ({}) from {}",
            plan.target.file, plan.target.approx_size, plan.url
        );
        fetch_resumable(plan)?;
        let part = plan.part_path();
        fs::rename(&part, &plan.dest)
            .with_context(|| format!("renaming {} to {}", part.display(), plan.dest.display()))?;
    }
    if let Some(link_dir) = &plan.link_dir {
        let link = link_dir.join(DEFAULT_MODEL_LINK);
        link_model(&plan.dest, &link)?;
        println!("Linked {} -> {}", link.display(), plan.dest.display());
    } else if !plan.target.is_model {
        println!(
            "To use it: ds4 --mtp {} --mtp-draft 2 ...",
            plan.dest.display()
        );
    }
    println!("Done.");
    Ok(())
}

// ---- Transfer --------------------------------------------------------------------------------

/// Why one attempt ended without the whole file.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// Worth resuming: the connection dropped, timed out or the server hiccupped (5xx, 429).
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying (404, 401, a local I/O error, a server that contradicts itself).
    #[error(transparent)]
    Fatal(#[from] anyhow::Error),
}

fn agent() -> ureq::Agent {
    // A read timeout turns a silent stall into a retry instead of a hang.
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build()
}

/// Bring `<dest>.part` to the full size, resuming after every transient failure that made
/// progress, then check it (size and GGUF header).
fn fetch_resumable(plan: &DownloadPlan) -> Result<()> {
    let part = plan.part_path();
    let agent = agent();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec}, ETA {eta}",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    let mut failures = 0u32;
    let total = loop {
        let before = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        match attempt(&agent, plan, &part, &bar) {
            Ok(total) => break total,
            Err(AttemptError::Fatal(e)) => {
                bar.abandon();
                return Err(e);
            }
            Err(AttemptError::Transient(msg)) => {
                let after = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                // A failure after progress is a new failure streak: only consecutive failures
                // without a single new byte count against --retries.
                failures = if after > before { 1 } else { failures + 1 };
                if failures > plan.retries {
                    bar.abandon();
                    bail!(
                        "download incomplete after {} retries: {msg}; {} bytes kept in {} (run the command again to resume)",
                        plan.retries,
                        after,
                        part.display()
                    );
                }
                let wait = Duration::from_millis(250u64 << (failures - 1).min(5));
                bar.suspend(|| {
                    eprintln!(
                        "ds4: {msg}; resuming at byte {after} in {:.1}s",
                        wait.as_secs_f32()
                    )
                });
                std::thread::sleep(wait);
            }
        }
    };
    bar.finish();
    verify(&part, total)
}

/// One HTTP request: ask for the bytes after what `.part` holds, append them. Returns the total
/// size when the file is complete.
fn attempt(
    agent: &ureq::Agent,
    plan: &DownloadPlan,
    part: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<u64, AttemptError> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(&plan.url);
    if let Some(token) = &plan.token {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, r)) if have > 0 => {
            // Nothing after `have`: the part is already whole if the server's size agrees.
            let total = r.header("Content-Range").and_then(content_range_total);
            return match total {
                Some(t) if t == have => Ok(t),
                _ => Err(anyhow::anyhow!(
                    "server refused to resume at byte {have} of {} (HTTP 416); delete it and retry",
                    part.display()
                )
                .into()),
            };
        }
        Err(ureq::Error::Status(code, r)) => {
            let msg = format!("HTTP {code} {} for {}", r.status_text(), plan.url);
            return Err(match code {
                401 | 403 => AttemptError::Fatal(anyhow::anyhow!(
                    "{msg}: pass --token or set HF_TOKEN if the repository needs authentication"
                )),
                408 | 429 | 500..=599 => AttemptError::Transient(msg),
                _ => AttemptError::Fatal(anyhow::anyhow!(msg)),
            });
        }
        Err(e) => return Err(AttemptError::Transient(format!("request failed: {e}"))),
    };
    let content_length = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (start, total) = match resp.status() {
        206 => {
            let range = resp.header("Content-Range").and_then(parse_content_range);
            match range {
                Some((start, total)) if start == have => (start, total),
                _ => {
                    return Err(anyhow::anyhow!(
                        "server answered the resume request at byte {have} with Content-Range {:?}",
                        resp.header("Content-Range")
                    )
                    .into())
                }
            }
        }
        // A server that ignores Range sends the whole file: start over.
        _ => (0, content_length),
    };
    let mut file = if start == 0 {
        File::create(part)
    } else {
        OpenOptions::new().append(true).open(part)
    }
    .with_context(|| format!("opening {}", part.display()))?;
    if let Some(t) = total {
        bar.set_length(t);
    }
    bar.set_position(start);
    bar.reset_eta();
    let mut body = resp.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.flush()
                    .with_context(|| format!("writing {}", part.display()))?;
                return Err(AttemptError::Transient(format!(
                    "connection lost at byte {pos}: {e}"
                )));
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
        pos += n as u64;
        bar.set_position(pos);
    }
    file.sync_all()
        .with_context(|| format!("writing {}", part.display()))?;
    match total {
        Some(t) if pos < t => Err(AttemptError::Transient(format!(
            "connection closed at byte {pos} of {t}"
        ))),
        Some(t) if pos > t => {
            Err(anyhow::anyhow!("server sent {pos} bytes, more than the {t} it announced").into())
        }
        Some(t) => Ok(t),
        // No length announced (chunked): what arrived is all there is; verify() judges it.
        None => Ok(pos),
    }
}

/// `bytes START-END/TOTAL` -> (START, Some(TOTAL)); TOTAL may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total.trim() == "*" {
        None
    } else {
        Some(total.trim().parse().ok()?)
    };
    Some((start.trim().parse().ok()?, total))
}

/// `bytes */TOTAL` (the 416 form) or a full Content-Range -> TOTAL.
fn content_range_total(v: &str) -> Option<u64> {
    v.rsplit_once('/')?.1.trim().parse().ok()
}

/// The integrity check: the announced size, then a GGUF header whose tensors all lie inside the
/// file (ds4_gguf checks every offset against the length).
pub fn verify(path: &Path, expected_len: u64) -> Result<()> {
    let len = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len != expected_len {
        bail!(
            "integrity check failed: {} has {len} bytes, the server announced {expected_len}; run the command again to resume",
            path.display()
        );
    }
    let gguf = ds4_gguf::GgufFile::open(path).map_err(|e| {
        anyhow::anyhow!(
            "integrity check failed: {} is not a valid GGUF ({e}); delete it and download again",
            path.display()
        )
    })?;
    println!(
        "Verified: {len} bytes, GGUF v{}, {} metadata keys, {} tensors",
        gguf.version(),
        gguf.metadata().len(),
        gguf.tensors().len()
    );
    Ok(())
}

/// `ln -sfn target link`, but never replacing a regular file (that could be someone's model).
fn link_model(target: &Path, link: &Path) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(link) {
        if !meta.file_type().is_symlink() {
            bail!(
                "{} exists and is not a symlink; not replacing it",
                link.display()
            );
        }
    }
    // A link created relative to the link's own directory keeps working if both move together.
    let link_dir = link
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let target_abs =
        fs::canonicalize(target).with_context(|| format!("resolving {}", target.display()))?;
    let dir_abs =
        fs::canonicalize(link_dir).with_context(|| format!("resolving {}", link_dir.display()))?;
    let pointee = target_abs
        .strip_prefix(&dir_abs)
        .map(Path::to_path_buf)
        .unwrap_or(target_abs);
    // Create under a temporary name and rename over the old link: the name is never missing.
    let tmp = with_suffix(link, ".tmp-link");
    let _ = fs::remove_file(&tmp);
    symlink(&pointee, &tmp).with_context(|| format!("creating link {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("replacing {}", link.display()))?;
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(content_range_total("bytes */4096"), Some(4096));
    }

    #[test]
    fn targets_match_the_spec_table() {
        assert_eq!(TARGETS.len(), 5);
        let q2 = target("q2-imatrix").map(|t| t.file);
        assert_eq!(
            q2,
            Some("DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf")
        );
        assert!(target("mtp").is_some_and(|t| !t.is_model));
        assert!(target("q8").is_none());
    }
}
