//! `ds4`: run or chat with the model (default), or one of the tool subcommands.
//! Flags of the default mode follow spec/server.md §6.1; each subcommand owns its own flags.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("inspect") => ds4_cli::cmd::inspect::main(&args[1..]),
        Some("synth") => ds4_cli::cmd::synth::main(&args[1..]),
        Some("logits") => ds4_cli::cmd::logits::main(&args[1..]),
        Some("download") => ds4_cli::cmd::download::main(&args[1..]),
        _ => ds4_cli::cmd::run::main(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, the whole chain: "loading model: tensor \"x\": ...".
            eprintln!("ds4: {e:#}");
            ExitCode::FAILURE
        }
    }
}
