//! `ds4 inspect` (not yet implemented).
use std::process::ExitCode;

pub fn main(_args: &[String]) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'inspect' is not implemented yet")
}
