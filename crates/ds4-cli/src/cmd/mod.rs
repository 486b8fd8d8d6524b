//! One module per `ds4` subcommand; `run` is the default (no subcommand word).
pub mod download;
pub mod inspect;
pub mod logits;
pub mod run;
pub mod synth;
