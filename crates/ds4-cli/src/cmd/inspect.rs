//! `ds4 inspect FILE`: what is in a GGUF, without loading the model. Prints the header, every
//! metadata key (arrays and long strings abbreviated) and the tensor table; `--dequant NAME --out F`
//! writes one tensor as little-endian f32 in GGUF row order (for checking a quant kernel against
//! another implementation); `--ctx N` adds the KV memory estimate of spec/model.md §4.2.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use ds4_gguf::{GgufFile, TensorInfo, TensorType, Value};

/// What the user typed.
#[derive(Debug, Parser)]
#[command(
    name = "ds4 inspect",
    about = "Print a GGUF's metadata and tensor table; dequantize one tensor"
)]
struct Args {
    /// The GGUF file.
    file: PathBuf,
    /// Dequantize this tensor to little-endian f32 (row-major, GGUF order) into --out.
    #[arg(long, value_name = "NAME", requires = "out")]
    dequant: Option<String>,
    /// Output file for --dequant.
    #[arg(long, value_name = "FILE", requires = "dequant")]
    out: Option<PathBuf>,
    /// Also print the KV memory estimate for this context size (needs a DS4 model file).
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
}

/// Longest string value printed in full; longer ones (chat templates) are cut with their length.
const MAX_SHOWN_STRING: usize = 120;

pub fn main(args: &[String]) -> anyhow::Result<ExitCode> {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            });
        }
    };
    let file =
        GgufFile::open(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());

    if let (Some(name), Some(path)) = (&args.dequant, &args.out) {
        let t = file
            .tensor(name)
            .with_context(|| format!("no tensor named {name:?} in {}", args.file.display()))?;
        let n =
            dequantize_to_file(&file, t, path).with_context(|| format!("dequantizing {name:?}"))?;
        writeln!(
            out,
            "wrote {n} f32 values of {name} ({} {:?}) to {}",
            t.ty,
            t.dims,
            path.display()
        )?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }

    print_summary(&mut out, &args.file, &file)?;
    if let Some(ctx) = args.ctx {
        let cfg = ds4_model::Config::from_gguf(&file).context("--ctx needs a DS4 model file")?;
        // spec/model.md §4.3: the prefill chunk cap is 2048 when ctx > 2048, else ctx.
        let prefill_cap = ctx.min(2048);
        writeln!(
            out,
            "\n{}",
            ds4_model::kv_memory_estimate(&cfg, ctx, prefill_cap)
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn print_summary(out: &mut impl Write, path: &Path, file: &GgufFile) -> anyhow::Result<()> {
    writeln!(
        out,
        "{}: GGUF v{}, {} bytes, {} metadata keys, {} tensors, alignment {}, data at offset {}",
        path.display(),
        file.version(),
        file.bytes().len(),
        file.metadata().len(),
        file.tensors().len(),
        file.alignment(),
        file.data_offset()
    )?;
    writeln!(out, "\nmetadata:")?;
    for (key, value) in file.metadata() {
        writeln!(
            out,
            "  {key} ({}) = {}",
            value.type_desc(),
            show_value(value)
        )?;
    }
    writeln!(out, "\ntensors:")?;
    let name_w = file
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "  {:<name_w$}  {:<7}  {:<24}  {:>14}  {:>14}",
        "name", "type", "dims", "offset", "bytes"
    )?;
    let mut total = 0u64;
    for t in file.tensors() {
        let dims = format!("{:?}", t.dims);
        writeln!(
            out,
            "  {:<name_w$}  {:<7}  {dims:<24}  {:>14}  {:>14}",
            t.name,
            t.ty.name(),
            t.offset,
            t.n_bytes
        )?;
        total += t.n_bytes;
    }
    writeln!(
        out,
        "  {} tensors, {total} bytes of tensor data",
        file.tensors().len()
    )?;
    Ok(())
}

/// A value for one line: arrays show their first items (Value's Display), strings are cut.
fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > MAX_SHOWN_STRING => {
            let cut = (0..=MAX_SHOWN_STRING)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            format!("{:?}... ({} bytes)", &s[..cut], s.len())
        }
        v => v.to_string(),
    }
}

/// Writes every row of `t`, dequantized, as little-endian f32; returns the element count.
fn dequantize_to_file(file: &GgufFile, t: &TensorInfo, path: &Path) -> anyhow::Result<u64> {
    if t.ty == TensorType::I32 {
        bail!(
            "{} is an I32 id table, not a weight; nothing to dequantize",
            t.name
        );
    }
    let ne0 = usize::try_from(t.dims[0]).context("row too long")?;
    let row_bytes = usize::try_from(t.row_bytes()).context("row too long")?;
    let data = file.tensor_data(t);
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut row = vec![0f32; ne0];
    let mut bytes = Vec::with_capacity(ne0 * 4);
    for src in data.chunks_exact(row_bytes) {
        ds4_quant::dequantize_row(t.ty, src, &mut row);
        bytes.clear();
        bytes.extend(row.iter().flat_map(|x| x.to_le_bytes()));
        w.write_all(&bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(t.n_elems())
}
