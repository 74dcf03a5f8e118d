//! The README's commands run as written: every `sh` block whose commands all start with
//! `recsys ` is run by bash in one scratch directory, with `recsys` the built binary — the blocks
//! without `recsys client` first, in order, then those with it against `recsys online serve` on
//! the model the earlier blocks trained (its address given the way a user gives it:
//! `RECSYS_SERVER`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use recsys_shared::testkit::{free_port, wait_for_port};

/// The `sh` blocks of `markdown`, each as its command lines (comments and blank lines dropped,
/// continuation lines joined).
fn shell_blocks(markdown: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        match (&mut current, trimmed) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                let code = match trimmed.find(" #") {
                    Some(at) if !trimmed.starts_with('#') => trimmed[..at].trim_end(),
                    _ if trimmed.starts_with('#') => "",
                    _ => trimmed,
                };
                if let Some(head) = code.strip_suffix('\\') {
                    pending.push_str(head);
                    continue;
                }
                pending.push_str(code);
                if !pending.trim().is_empty() {
                    block.push(std::mem::take(&mut pending));
                }
                pending.clear();
            }
            (None, _) => {}
        }
    }
    blocks
}

fn run_block(dir: &Path, block: &[String], env: &[(&str, String)]) {
    let script = format!(
        "set -euo pipefail\nrecsys() {{ \"$RECSYS_BIN\" \"$@\"; }}\n{}\n",
        block.join("\n")
    );
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("RECSYS_BIN", env!("CARGO_BIN_EXE_recsys"))
        .env("RECSYS_LOG", "warn")
        .env_remove("RECSYS_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let o = command.output().unwrap();
    assert!(
        o.status.success(),
        "README block failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_readme_blocks_that_use_only_the_binary_run_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let runnable: Vec<Vec<String>> = shell_blocks(&readme)
        .into_iter()
        .filter(|b| !b.is_empty() && b.iter().all(|l| l.starts_with("recsys ")))
        .collect();
    let (clients, offline): (Vec<_>, Vec<_>) = runnable
        .into_iter()
        .partition(|b| b.iter().any(|l| l.starts_with("recsys client ")));
    assert!(
        !offline.is_empty() && !clients.is_empty(),
        "the README has no runnable blocks"
    );
    let dir = tempfile::tempdir().unwrap();
    for block in &offline {
        run_block(dir.path(), block, &[]);
    }
    assert!(
        dir.path().join("var/models/CURRENT").is_file(),
        "the client blocks need a model the offline blocks train in var/models"
    );
    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_recsys"))
        .args(["online", "serve", "--model-root", "var/models"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(dir.path())
        .env("RECSYS__STORE__EMBEDDED__PATH", dir.path().join("features"))
        .env("RECSYS_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let listening = wait_for_port(port, Duration::from_secs(60));
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| {
        assert!(listening, "the server did not listen");
        for block in &clients {
            // The model may still be loading: a few tries for the first block.
            let env = [("RECSYS_SERVER", format!("http://127.0.0.1:{port}"))];
            loop {
                let ok = std::panic::catch_unwind(|| run_block(dir.path(), block, &env));
                match ok {
                    Ok(()) => break,
                    Err(e) if started.elapsed() > Duration::from_secs(30) => {
                        std::panic::resume_unwind(e)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
    });
    let _ = server.kill();
    let _ = server.wait();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn shell_blocks_are_read_with_comments_and_continuations() {
    let markdown = "text\n```sh\nrecsys a --x 1   # why\n# only a comment\n\nrecsys b \\\n    --y 2\n```\n```text\nrecsys not-shell\n```\n";
    assert_eq!(
        shell_blocks(markdown),
        vec![vec![
            "recsys a --x 1".to_string(),
            "recsys b --y 2".to_string()
        ]]
    );
}
