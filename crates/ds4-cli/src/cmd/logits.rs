//! `ds4 logits` (not yet implemented).
use std::process::ExitCode;

pub fn main(_args: &[String]) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'logits' is not implemented yet")
}
