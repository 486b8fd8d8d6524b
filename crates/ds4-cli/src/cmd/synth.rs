//! `ds4 synth` (not yet implemented).
use std::process::ExitCode;

pub fn main(_args: &[String]) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'synth' is not implemented yet")
}
