//! The interactive `ds4>` prompt under a pseudo-terminal: a turn answers and reports its speed,
//! commands work, Ctrl+C stops an answer and returns to the prompt (not the process), /quit
//! leaves and the history is saved.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use rexpect::session::{spawn_command, PtySession};

/// The demo model, generated once per test binary before any test uses it, so parallel tests
/// never race on writing it (see tests/run.rs).
fn cache_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ds4-cli-repl-demo");
        let o = Command::new(env!("CARGO_BIN_EXE_ds4"))
            .args(["--demo", "--inspect"])
            .env("DS4_CACHE_DIR", &dir)
            .output()
            .expect("run ds4");
        assert!(
            o.status.success(),
            "demo model: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        dir
    })
}

fn spawn(home: &std::path::Path, args: &[&str]) -> PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ds4"));
    cmd.arg("--demo")
        .args(args)
        .env("DS4_CACHE_DIR", cache_dir())
        .env("HOME", home)
        .env("TERM", "xterm-256color");
    spawn_command(cmd, Some(60_000)).expect("spawn ds4 in a pty")
}

#[test]
fn repl_answers_runs_commands_and_quits() {
    let home = tempfile::tempdir().expect("home");
    let mut p = spawn(home.path(), &["-n", "8", "--ctx", "4096", "--seed", "5"]);
    p.exp_string("/think-max").expect("help list at start");
    p.exp_string("ds4> ").expect("prompt");
    // Ctrl+C at the prompt only redraws it.
    p.send_control('c').expect("ctrl-c");
    p.exp_string("ds4> ").expect("prompt redrawn after Ctrl+C");
    p.send_line("hello there").expect("send");
    p.exp_regex(r"generation: [0-9]+\.[0-9]+ t/s")
        .expect("an answer and its speed line");
    p.exp_string("ds4> ").expect("prompt after the answer");
    p.send_line("/nothink").expect("send");
    p.exp_string("Thinking mode: none.").expect("/nothink");
    p.send_line("/think-max").expect("send");
    p.exp_string("Thinking mode: high (ctx below 393216).")
        .expect("/think-max at a small ctx");
    p.send_line("/frobnicate").expect("send");
    p.exp_string("unknown command: /frobnicate")
        .expect("unknown command");
    p.send_line("/ctx").expect("send");
    p.exp_string("/ctx needs a positive integer")
        .expect("/ctx without N");
    p.send_line("/ctx 2048").expect("send");
    p.exp_string("Context: 2048 tokens").expect("/ctx N");
    p.send_line("and again").expect("send");
    p.exp_regex(r"generation: [0-9]+\.[0-9]+ t/s")
        .expect("a second answer after /ctx");
    p.send_line("/quit").expect("send");
    p.exp_eof().expect("exit on /quit");
    let history = std::fs::read_to_string(home.path().join(".ds4_history")).expect("history saved");
    assert!(
        history.contains("hello there") && history.contains("/ctx 2048"),
        "{history}"
    );
}

#[test]
fn ctrl_c_stops_the_answer_not_the_process() {
    let home = tempfile::tempdir().expect("home");
    // A budget the demo model cannot finish in the test's time: only Ctrl+C ends this answer.
    let mut p = spawn(
        home.path(),
        &["-n", "100000", "--ctx", "8192", "--seed", "9"],
    );
    p.exp_string("ds4> ").expect("prompt");
    p.send_line("write a very long story").expect("send");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    p.send_control('c').expect("ctrl-c");
    p.exp_string("interrupted").expect("the answer stops");
    p.exp_string("ds4> ").expect("back at the prompt");
    // The process is alive and still answers.
    p.send_line("/help").expect("send");
    p.exp_string("/read FILE").expect("help after Ctrl+C");
    p.send_control('d').expect("ctrl-d");
    p.exp_eof().expect("exit on EOF");
}
