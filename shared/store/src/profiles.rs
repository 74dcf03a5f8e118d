//! The bulk load of member profiles (`recsys offline load-profiles`): the account side's
//! attributes that filter what a member is shown, from JSON lines
//! `{"user_id": "...", "max_maturity": "PG-13"}` (`null` lifts the limit).
//!
//! Every line is checked before anything is written, so a bad file writes nothing; the file is
//! read twice (check, then write) in batches, so memory stays bounded whatever its size.

use std::io::BufRead;
use std::path::Path;

use recsys_shared::config::MaturityConfig;
use recsys_shared::ids::id_problem;

use super::features::{FeatureStore, MemberProfile};
use super::{IdempotencyToken, StoreError};

/// Profiles written per store batch.
const BATCH: usize = 1000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileLine {
    user_id: String,
    max_maturity: Option<String>,
}

/// What a load wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProfileLoadReport {
    pub profiles: u64,
    /// Of which without a limit (deleted).
    pub unrestricted: u64,
}

fn input_error(path: &Path, problem: String) -> StoreError {
    StoreError::Input {
        path: path.display().to_string(),
        problem,
    }
}

/// Reads `path` line by line, checking each profile, and hands them to `sink` in batches.
fn each_batch(
    path: &Path,
    maturity: &MaturityConfig,
    mut sink: impl FnMut(Vec<(String, MemberProfile)>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let file = std::fs::File::open(path).map_err(|e| input_error(path, e.to_string()))?;
    let mut batch = Vec::with_capacity(BATCH);
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| input_error(path, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |problem: String| input_error(path, format!("line {}: {problem}", n + 1));
        let row: ProfileLine = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        if let Some(problem) = id_problem(&row.user_id) {
            return Err(at(format!("`user_id`: {problem}")));
        }
        if let Some(rating) = &row.max_maturity {
            if maturity.level(rating).is_none() {
                return Err(at(format!(
                    "`max_maturity` {rating:?} is not one of online.maturity.ratings {:?}",
                    maturity.ratings
                )));
            }
        }
        batch.push((
            row.user_id,
            MemberProfile {
                max_maturity: row.max_maturity,
            },
        ));
        if batch.len() == BATCH {
            sink(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))?;
        }
    }
    if !batch.is_empty() {
        sink(batch)?;
    }
    Ok(())
}

/// Checks every line of `path`, then writes the profiles, with a progress display.
pub async fn load_profiles(
    path: &Path,
    store: &FeatureStore,
    maturity: &MaturityConfig,
) -> Result<ProfileLoadReport, StoreError> {
    let mut total = 0u64;
    each_batch(path, maturity, |batch| {
        total += batch.len() as u64;
        Ok(())
    })?;
    let mut progress = recsys_shared::progress::Progress::new("loading profiles", total);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(String, MemberProfile)>>(4);
    let (file, ratings) = (path.to_path_buf(), maturity.clone());
    let reader = tokio::task::spawn_blocking(move || {
        each_batch(&file, &ratings, |batch| {
            tx.blocking_send(batch)
                .map_err(|_| input_error(&file, "the writer stopped".into()))
        })
    });
    let mut report = ProfileLoadReport {
        profiles: 0,
        unrestricted: 0,
    };
    let token = IdempotencyToken::now();
    while let Some(batch) = rx.recv().await {
        store.put_profiles(&batch, token).await?;
        report.profiles += batch.len() as u64;
        report.unrestricted += batch
            .iter()
            .filter(|(_, p)| p.max_maturity.is_none())
            .count() as u64;
        progress.advance(batch.len() as u64, "");
    }
    reader
        .await
        .map_err(|e| input_error(path, format!("reader task failed: {e}")))??;
    progress.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn profiles_load_and_a_bad_line_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = recsys_shared::config::StoreConfig {
            embedded: recsys_shared::config::EmbeddedConfig {
                path: dir.path().join("features"),
            },
            ..Default::default()
        };
        let store = FeatureStore::new(crate::open(&config).await.unwrap(), 10);
        let maturity = MaturityConfig::default();
        let good = dir.path().join("good.jsonl");
        let mut lines: String = (0..2500)
            .map(|i| format!("{{\"user_id\":\"u{i}\",\"max_maturity\":\"PG\"}}\n"))
            .collect();
        lines.push_str("{\"user_id\":\"free\",\"max_maturity\":null}\n");
        std::fs::write(&good, lines).unwrap();
        let report = load_profiles(&good, &store, &maturity).await.unwrap();
        assert_eq!((report.profiles, report.unrestricted), (2501, 1));
        let read = store.get("u2499").await.unwrap().profile;
        assert_eq!(read.max_maturity.as_deref(), Some("PG"));

        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"user_id\":\"new\",\"max_maturity\":\"G\"}\n{\"user_id\":\"x\",\"max_maturity\":\"XXX\"}\n",
        )
        .unwrap();
        let e = load_profiles(&bad, &store, &maturity)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.jsonl: line 2: `max_maturity` \"XXX\""),
            "{e}"
        );
        assert_eq!(
            store.get("new").await.unwrap().profile,
            MemberProfile::default()
        );
    }
}
