//! `ds4 download` (not yet implemented).
use std::process::ExitCode;

pub fn main(_args: &[String]) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'download' is not implemented yet")
}
