//! The README's first command, through the real binary: `recsys quickstart --exit` on a small
//! synthetic set trains, serves, folds a member's events in, and the homepage it prints moved
//! toward what the member played; a rerun in the same directory works from the same state.

use std::process::Command;

use recsys_shared::testkit::free_port;

fn quickstart(dir: &std::path::Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_recsys"))
        .args([
            "quickstart",
            "--exit",
            "--dir",
            dir.to_str().unwrap(),
            "--users",
            "1500",
            "--items",
            "400",
            "--interactions",
            "60000",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--rest-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// `(before, after)` of the summary line.
fn shift(stdout: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.contains("among the top 20 unseen picks"))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // "... top 20 unseen picks: B before, A after"
    (numbers[1], numbers[2])
}

#[test]
fn quickstart_trains_serves_and_shows_the_homepage_moving() {
    let dir = tempfile::tempdir().unwrap();
    let first = quickstart(dir.path());
    for step in 1..=6 {
        assert!(first.contains(&format!("[{step}/6]")), "{first}");
    }
    assert!(
        first.contains("recall@20"),
        "no evaluation figures:\n{first}"
    );
    assert!(first.contains("Top picks for you"), "{first}");
    assert!(first.contains("Because you watched"), "{first}");
    assert!(first.contains("Trending now"), "{first}");
    assert!(first.contains("(0 rejected)"), "{first}");
    assert!(
        first.contains("recsys client homepage --user")
            && first.contains("recsys.v1.Ranking/Homepage"),
        "no client or grpcurl line:\n{first}"
    );
    assert!(
        first.contains("The API has stopped (--exit)") && !first.contains("Try the API"),
        "{first}"
    );
    // The console and the REST API, on the port it was given.
    assert!(
        first.contains("console on http://127.0.0.1:") && first.contains("/v1/rank"),
        "no console or REST line:\n{first}"
    );
    assert!(
        dir.path().join("synthetic/models/CURRENT").is_file(),
        "the synthetic source has a directory of its own"
    );
    let (before, after) = shift(&first);
    assert!(
        after > before + 3,
        "the homepage did not move: {before} → {after}\n{first}"
    );

    // A rerun starts from a fresh store, so the member's "before" is the same again.
    let second = quickstart(dir.path());
    assert_eq!(shift(&second).0, before, "{second}");
}

/// The fault: with 50051 busy the quickstart trained for minutes, then failed at step 4 without
/// naming `--listen`.
#[test]
fn a_busy_port_is_named_with_its_flag_before_any_training() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let flags = ["--listen", "--metrics-listen", "--rest-listen"];
    for flag in flags {
        let o = Command::new(env!("CARGO_BIN_EXE_recsys"))
            .args([
                "quickstart",
                "--exit",
                "--dir",
                dir.path().to_str().unwrap(),
            ])
            .args([flag, busy_addr.as_str()])
            .args(
                flags
                    .iter()
                    .filter(|f| **f != flag)
                    .flat_map(|other| [other.to_string(), format!("127.0.0.1:{}", free_port())]),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains(&busy_addr) && stderr.contains(flag),
            "{flag}: {stderr}"
        );
        assert!(!stdout.contains("[1/6]"), "it started working: {stdout}");
    }
}
