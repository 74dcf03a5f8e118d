//! Helpers the cross-process tests share: running the `recsys` binary, reading its JSON answer,
//! child processes killed on drop, waiting for a condition. Each test file takes what it needs.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `recsys` binary with `args`, warnings-only logs and extra environment `env`.
pub fn command<K: AsRef<OsStr>, V: AsRef<OsStr>>(args: &[&str], env: &[(K, V)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsys"));
    cmd.args(args).env("RECSYS_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the `recsys` binary to completion.
pub fn recsys<K: AsRef<OsStr>, V: AsRef<OsStr>>(args: &[&str], env: &[(K, V)]) -> Output {
    command(args, env).output().expect("recsys runs")
}

/// No extra environment, for [`recsys`] and [`command`].
pub const NO_ENV: &[(&str, &str)] = &[];

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The last line of stdout as JSON (every command's summary).
pub fn last_json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no stdout; stderr: {}", stderr(o)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing running.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ok` every 50 ms until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `recsys offline synth`: a synthetic log of `users` members, `items` items and `interactions`
/// rows from `seed`, written into `output`.
pub fn synth(output: &std::path::Path, users: u32, items: u32, interactions: u32, seed: &str) {
    let (users, items, interactions) = (
        users.to_string(),
        items.to_string(),
        interactions.to_string(),
    );
    let o = recsys(
        &[
            "offline",
            "synth",
            "--users",
            &users,
            "--items",
            &items,
            "--interactions",
            &interactions,
            "--seed",
            seed,
            "--output",
            output.to_str().unwrap(),
        ],
        NO_ENV,
    );
    assert!(o.status.success(), "offline synth: {}", stderr(&o));
}
