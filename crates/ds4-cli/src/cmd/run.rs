//! `ds4 run` (not yet implemented).
use std::process::ExitCode;

pub fn main(_args: &[String]) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'run' is not implemented yet")
}
