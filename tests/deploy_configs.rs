//! Every TOML file under `deploy/` deserializes into the code's config structs (unknown keys are
//! errors), so the documented examples cannot drift from the code.

use std::path::{Path, PathBuf};

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn deploy_configs_match_the_config_structs() {
    let mut files = Vec::new();
    toml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &mut files,
    );
    assert!(!files.is_empty());
    for file in files {
        let config = recsys_shared::config::Config::load_with_env(Some(&file), Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if file.ends_with("single-machine/recsys.toml") {
            // The single-machine file documents the defaults; keep it true.
            assert_eq!(
                config,
                recsys_shared::config::Config::default(),
                "{}",
                file.display()
            );
        }
    }
}
