//! `recsys import movielens`: MovieLens 100K (`u.data`, `u.item`), 1M (`ratings.dat`,
//! `movies.dat`) and the CSV releases (`ratings.csv`, `movies.csv`) into the input schema.
//! A rating becomes event type `rating` with its value; seconds become milliseconds.

use std::path::{Path, PathBuf};

use recsys_shared::SharedError;

use crate::progress::Progress;
use crate::tables::{interactions_schema, items_schema, InteractionRow, ItemRow, TableWriter};
use crate::{OfflineError, Result};

/// Which MovieLens release a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// `u.data` (tab-separated) and `u.item` (pipe-separated, Latin-1).
    Ml100k,
    /// `ratings.dat` and `movies.dat` (`::`-separated, Latin-1).
    Ml1m,
    /// `ratings.csv` and `movies.csv` (latest, 20M, 25M, 32M).
    Csv,
}

const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// Counts of what was imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub release: Release,
    pub interactions: u64,
    pub items: u64,
}

impl Release {
    /// Recognises the release by its files.
    pub fn detect(dir: &Path) -> Result<Release> {
        let has = |name: &str| dir.join(name).is_file();
        if has("ratings.csv") && has("movies.csv") {
            Ok(Release::Csv)
        } else if has("ratings.dat") && has("movies.dat") {
            Ok(Release::Ml1m)
        } else if has("u.data") && has("u.item") {
            Ok(Release::Ml100k)
        } else {
            Err(OfflineError::input(
                dir,
                "not a MovieLens directory: expected ratings.csv + movies.csv, ratings.dat + movies.dat, or u.data + u.item",
            ))
        }
    }
}

/// Converts the release in `input` into `output/interactions.parquet` and `output/items.parquet`.
pub fn import(input: &Path, output: &Path) -> Result<ImportSummary> {
    let release = Release::detect(input)?;
    let (ratings, movies) = match release {
        Release::Csv => ("ratings.csv", "movies.csv"),
        Release::Ml1m => ("ratings.dat", "movies.dat"),
        Release::Ml100k => ("u.data", "u.item"),
    };
    let items = read_items(release, &input.join(movies))?;
    let mut writer = TableWriter::create(&output.join("items.parquet"), items_schema())?;
    writer.write_items(&items)?;
    let item_count = items.len() as u64;

    let ratings_path = input.join(ratings);
    let text = read_text(&ratings_path, release)?;
    let lines = text.lines().count() as u64;
    let mut progress = Progress::new("import", lines);
    let mut interactions =
        TableWriter::create(&output.join("interactions.parquet"), interactions_schema())?;
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut count = 0u64;
    // The CSV releases name their columns; they are found by name, in any order.
    let columns = match release {
        Release::Csv => column_order(
            &ratings_path,
            text.lines().next().unwrap_or(""),
            &RATING_COLUMNS,
        )?,
        Release::Ml1m | Release::Ml100k => vec![0, 1, 2, 3],
    };
    for (n, line) in text.lines().enumerate() {
        let line_no = n as u64 + 1;
        let line = line.trim_end_matches('\r');
        if line.is_empty() || (release == Release::Csv && line_no == 1) {
            continue;
        }
        let fields: Vec<&str> = match release {
            Release::Csv => line.split(',').collect(),
            Release::Ml1m => line.split("::").collect(),
            Release::Ml100k => line.split('\t').collect(),
        };
        if fields.len() != columns.len() {
            return Err(line_error(
                &ratings_path,
                line_no,
                format!(
                    "expected 4 fields (user, movie, rating, timestamp), found {}",
                    fields.len()
                ),
            ));
        }
        let fields: Vec<&str> = columns.iter().map(|&c| fields[c]).collect();
        batch.push(parse_rating(&ratings_path, line_no, &fields)?);
        if batch.len() == batch.capacity() {
            interactions.write_interactions(&batch)?;
            count += batch.len() as u64;
            progress.advance(batch.len() as u64, "ratings");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        interactions.write_interactions(&batch)?;
        count += batch.len() as u64;
        progress.advance(batch.len() as u64, "ratings");
    }
    progress.finish();
    if count == 0 {
        return Err(OfflineError::input(&ratings_path, "no ratings"));
    }
    // Both files become visible together, items first: a reader never sees ratings without items.
    writer.finish()?;
    interactions.finish()?;
    Ok(ImportSummary {
        release,
        interactions: count,
        items: item_count,
    })
}

/// The columns of the CSV releases' `ratings.csv`, in the order `parse_rating` takes them.
const RATING_COLUMNS: [&str; 4] = ["userId", "movieId", "rating", "timestamp"];

/// The columns of the CSV releases' `movies.csv`.
const MOVIE_COLUMNS: [&str; 3] = ["movieId", "title", "genres"];

/// Where each of `wanted` stands in the CSV `header` (line 1 of `path`): every one must be
/// there once, and nothing else may be.
fn column_order(path: &Path, header: &str, wanted: &[&str]) -> Result<Vec<usize>> {
    let names: Vec<&str> = header
        .trim_start_matches('\u{feff}')
        .trim_end_matches('\r')
        .split(',')
        .map(|n| n.trim().trim_matches('"'))
        .collect();
    let expected = || format!("expected the header {}", wanted.join(","));
    if let Some(unknown) = names.iter().find(|n| !wanted.contains(n)) {
        return Err(line_error(
            path,
            1,
            format!(
                "unknown column {:?} in the header {header:?}: {}",
                unknown,
                expected()
            ),
        ));
    }
    wanted
        .iter()
        .map(|want| {
            let mut at = names.iter().enumerate().filter(|(_, n)| *n == want);
            match (at.next(), at.next()) {
                (Some((i, _)), None) => Ok(i),
                (None, _) => Err(line_error(
                    path,
                    1,
                    format!(
                        "no column {want:?} in the header {header:?}: {}",
                        expected()
                    ),
                )),
                (Some(_), Some(_)) => Err(line_error(
                    path,
                    1,
                    format!("column {want:?} appears twice in the header {header:?}"),
                )),
            }
        })
        .collect()
}

fn read_text(path: &Path, release: Release) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| SharedError::io(path, e))?;
    Ok(match release {
        // The CSV releases are UTF-8; 100K and 1M are Latin-1, where every byte is one char.
        Release::Csv => String::from_utf8(bytes)
            .map_err(|e| OfflineError::input(path, format!("not UTF-8: {e}")))?,
        Release::Ml100k | Release::Ml1m => bytes.into_iter().map(char::from).collect(),
    })
}

fn parse_rating(path: &Path, line: u64, fields: &[&str]) -> Result<InteractionRow> {
    let bad = |problem: String| OfflineError::Line {
        path: path.to_path_buf(),
        line,
        problem,
    };
    if fields.len() != 4 {
        return Err(bad(format!(
            "expected 4 fields (user, movie, rating, timestamp), found {}",
            fields.len()
        )));
    }
    let id = |name: &str, s: &str| -> Result<String> {
        let s = s.trim();
        match recsys_shared::ids::id_problem(s) {
            None => Ok(s.to_string()),
            Some(p) => Err(bad(format!("{name}: {p}"))),
        }
    };
    let rating: f64 = fields[2]
        .trim()
        .parse()
        .map_err(|_| bad(format!("rating {:?} is not a number", fields[2])))?;
    // MovieLens rates on a five-star scale (half stars from 0.5 in the CSV releases).
    if !(rating > 0.0 && rating <= 5.0) {
        return Err(bad(format!(
            "rating {rating} is outside MovieLens's scale (0, 5]"
        )));
    }
    let seconds: i64 = fields[3]
        .trim()
        .parse()
        .map_err(|_| bad(format!("timestamp {:?} is not an integer", fields[3])))?;
    // Seconds since 1970, and not in the future (a day of clock skew allowed).
    let latest = chrono::Utc::now().timestamp() + 86_400;
    if !(0..=latest).contains(&seconds) {
        return Err(bad(format!(
            "timestamp {seconds} is not a time between 1970 and now (seconds since the epoch)"
        )));
    }
    Ok(InteractionRow {
        user_id: id("user id", fields[0])?,
        item_id: id("movie id", fields[1])?,
        event_type: "rating",
        value: Some(rating),
        ts_ms: seconds
            .checked_mul(1000)
            .ok_or_else(|| bad(format!("timestamp {seconds} is out of range")))?,
    })
}

fn read_items(release: Release, path: &Path) -> Result<Vec<ItemRow>> {
    let text = read_text(path, release)?;
    let mut items = Vec::new();
    match release {
        Release::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(text.as_bytes());
            let header = reader
                .headers()
                .map_err(|e| line_error(path, 1, e.to_string()))?
                .iter()
                .collect::<Vec<_>>()
                .join(",");
            let [id, title, genres] = column_order(path, &header, &MOVIE_COLUMNS)?[..] else {
                unreachable!("three columns asked for")
            };
            for (n, record) in reader.records().enumerate() {
                let line = n as u64 + 2;
                let record = record.map_err(|e| line_error(path, line, e.to_string()))?;
                if record.len() != 3 {
                    return Err(line_error(
                        path,
                        line,
                        format!(
                            "expected 3 fields (movieId, title, genres), found {}",
                            record.len()
                        ),
                    ));
                }
                items.push(item(
                    path,
                    line,
                    &record[id],
                    &record[title],
                    record[genres].split('|'),
                )?);
            }
        }
        Release::Ml1m => {
            for (n, line_text) in text.lines().enumerate() {
                let line = n as u64 + 1;
                let fields: Vec<&str> = line_text.trim_end_matches('\r').split("::").collect();
                if fields.len() != 3 {
                    return Err(line_error(
                        path,
                        line,
                        format!(
                            "expected 3 fields (MovieID::Title::Genres), found {}",
                            fields.len()
                        ),
                    ));
                }
                items.push(item(
                    path,
                    line,
                    fields[0],
                    fields[1],
                    fields[2].split('|'),
                )?);
            }
        }
        Release::Ml100k => {
            for (n, line_text) in text.lines().enumerate() {
                let line = n as u64 + 1;
                let line_text = line_text.trim_end_matches('\r');
                if line_text.is_empty() {
                    continue;
                }
                let fields: Vec<&str> = line_text.split('|').collect();
                if fields.len() != 5 + ML100K_GENRES.len() {
                    return Err(line_error(
                        path,
                        line,
                        format!(
                            "expected {} fields, found {}",
                            5 + ML100K_GENRES.len(),
                            fields.len()
                        ),
                    ));
                }
                let genres = ML100K_GENRES
                    .iter()
                    .zip(&fields[5..])
                    .filter(|(_, flag)| flag.trim() == "1")
                    .map(|(g, _)| *g);
                items.push(item(path, line, fields[0], fields[1], genres)?);
            }
        }
    }
    if items.is_empty() {
        return Err(OfflineError::input(path, "no movies"));
    }
    Ok(items)
}

fn line_error(path: &Path, line: u64, problem: String) -> OfflineError {
    OfflineError::Line {
        path: PathBuf::from(path),
        line,
        problem,
    }
}

fn item<'a>(
    path: &Path,
    line: u64,
    id: &str,
    title: &str,
    genres: impl Iterator<Item = &'a str>,
) -> Result<ItemRow> {
    let id = id.trim();
    if let Some(p) = recsys_shared::ids::id_problem(id) {
        return Err(line_error(path, line, format!("movie id: {p}")));
    }
    Ok(ItemRow {
        item_id: id.to_string(),
        title: title.trim().to_string(),
        genres: genres
            .map(str::trim)
            .filter(|g| !g.is_empty() && *g != "(no genres listed)")
            .map(str::to_string)
            .collect(),
        available_countries: None,
        maturity: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::InputTable;

    fn fixture(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    fn check(files: &[(&str, &[u8])], release: Release, titles: &[&str]) {
        let input = fixture(files);
        let out = tempfile::tempdir().unwrap();
        let summary = import(input.path(), out.path()).unwrap();
        assert_eq!(summary.release, release);
        assert_eq!(summary.interactions, 3);
        assert_eq!(summary.items, titles.len() as u64);
        let weights = recsys_shared::config::FeatureConfig::default().event_weights;
        let event_types: Vec<String> = weights.into_keys().collect();
        let stats = InputTable::discover(&out.path().join("interactions.parquet"))
            .unwrap()
            .validate_interactions(&event_types)
            .unwrap();
        assert_eq!(stats.rows, 3);
        assert_eq!(stats.first_ts_ms, Some(874_965_758_000));
        let items = InputTable::discover(&out.path().join("items.parquet")).unwrap();
        assert_eq!(items.validate_items().unwrap(), titles.len() as u64);
    }

    /// The user and movie ids of an imported interactions table, in file order.
    fn imported_pairs(dir: &Path) -> Vec<(String, String)> {
        use arrow::array::{Array, StringArray};
        let file = std::fs::File::open(dir.join("interactions.parquet")).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut pairs = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let (users, items) = (column("user_id"), column("item_id"));
            for i in 0..users.len() {
                pairs.push((users.value(i).to_string(), items.value(i).to_string()));
            }
        }
        pairs
    }

    /// The fault: a `ratings.csv` whose header reads `movieId,userId,…` was imported by position,
    /// silently: every member became an item and every item a member.
    #[test]
    fn csv_columns_are_found_by_name_and_a_wrong_header_is_refused_naming_it() {
        let movies: &[u8] =
            b"title,genres,movieId\nToy Story (1995),Animation,10\nHeat (1995),Action,20\n";
        let input = fixture(&[
            (
                "ratings.csv",
                b"movieId,userId,timestamp,rating\n10,1,964982703,4.0\n20,2,964981247,5.0\n",
            ),
            ("movies.csv", movies),
        ]);
        let out = tempfile::tempdir().unwrap();
        import(input.path(), out.path()).unwrap();
        assert_eq!(
            imported_pairs(out.path()),
            [("1".into(), "10".into()), ("2".into(), "20".into())]
        );
        for (header, problem) in [
            ("user,movieId,rating,timestamp", "unknown column \"user\""),
            ("userId,movieId,rating", "no column \"timestamp\""),
            (
                "userId,userId,rating,timestamp",
                "column \"userId\" appears twice",
            ),
        ] {
            let ratings = format!("{header}\n1,10,4.0,964982703\n");
            let input = fixture(&[("ratings.csv", ratings.as_bytes()), ("movies.csv", movies)]);
            let err = import(input.path(), out.path()).unwrap_err().to_string();
            assert!(
                err.contains("ratings.csv: line 1")
                    && err.contains(problem)
                    && err.contains(header),
                "{header}: {err}"
            );
        }
        let input = fixture(&[
            (
                "ratings.csv",
                b"userId,movieId,rating,timestamp\n1,10,4.0,964982703\n",
            ),
            (
                "movies.csv",
                b"movieId,name,genres\n10,Toy Story (1995),Animation\n",
            ),
        ]);
        let err = import(input.path(), out.path()).unwrap_err().to_string();
        assert!(
            err.contains("movies.csv: line 1") && err.contains("unknown column \"name\""),
            "{err}"
        );
    }

    #[test]
    fn imports_each_release() {
        check(
            &[
                ("u.data", b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t874965758\n"),
                ("u.item", b"242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n302|L.A. Confidential (1997)|01-Jan-1997||http://x|0|0|0|0|0|0|1|0|0|0|1|0|0|1|0|0|1|0|0\n"),
            ],
            Release::Ml100k,
            &["Kolya (1996)", "L.A. Confidential (1997)"],
        );
        check(
            &[
                ("ratings.dat", b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::874965758\n"),
                ("movies.dat", b"1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"),
            ],
            Release::Ml1m,
            &["a", "b"],
        );
        check(
            &[
                ("ratings.csv", b"userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,3,4.5,964981247\r\n2,1,2.5,874965758\r\n"),
                ("movies.csv", b"movieId,title,genres\r\n1,Toy Story (1995),Adventure|Animation\r\n3,\"Grumpier Old Men, The (1995)\",Comedy|Romance\r\n4,Empty (2000),(no genres listed)\r\n"),
            ],
            Release::Csv,
            &["a", "b", "c"],
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let input = fixture(&[
            (
                "ratings.csv",
                b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,four,964981247\n",
            ),
            (
                "movies.csv",
                b"movieId,title,genres\n1,Toy Story (1995),Animation\n",
            ),
        ]);
        let out = tempfile::tempdir().unwrap();
        let err = import(input.path(), out.path()).unwrap_err().to_string();
        assert!(
            err.contains("ratings.csv: line 3") && err.contains("four"),
            "{err}"
        );
        // Nothing half-written is left behind, not even under a temporary name.
        let left: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        for (line, expect) in [
            ("1,3,-5,964981247", "rating -5 is outside"),
            ("1,3,7.5,964981247", "rating 7.5 is outside"),
            ("1,3,NaN,964981247", "rating NaN is outside"),
            (
                "1,3,4.0,-99999999999999",
                "timestamp -99999999999999 is not a time",
            ),
            ("1,3,4.0,99999999999", "timestamp 99999999999 is not a time"),
        ] {
            let input = fixture(&[
                (
                    "ratings.csv",
                    format!("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n{line}\n")
                        .as_bytes(),
                ),
                (
                    "movies.csv",
                    b"movieId,title,genres\n1,Toy Story (1995),Animation\n",
                ),
            ]);
            let err = import(input.path(), out.path()).unwrap_err().to_string();
            assert!(
                err.contains("ratings.csv: line 3") && err.contains(expect),
                "{line}: {err}"
            );
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(import(empty.path(), out.path())
            .unwrap_err()
            .to_string()
            .contains("not a MovieLens directory"));
    }
}
