//! The `ds4` and `ds4-bench` programs. Each subcommand lives in `cmd/<name>.rs` with its own clap
//! struct (what the user typed) and a `main(args) -> anyhow::Result<ExitCode>` that resolves and
//! runs it; `src/bin/ds4.rs` only dispatches on the first word.

pub mod cmd;
