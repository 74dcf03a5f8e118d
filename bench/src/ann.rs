//! `recsys online bench --ann`: the item index (`model::ials::ann`) against FAISS on the kernel's
//! own items and queries — build time, recall@top against the exact answers, µs per query one at
//! a time — with FAISS's `IndexHNSWFlat` (the same links per node and efConstruction, the same
//! threads; by inner product, and by L2 over the items lifted one dimension so that L2 ranks by
//! inner product) and IVF-PQ run by `deploy/bench/faiss_ann.py` in the same invocation; FAISS's
//! HNSW is whichever of its two graphs is cheaper at the recall compared. Filtered recall uses the synthetic catalog's own filters (a French member who may
//! not see R-rated titles: every 10th item is US-only, every 7th from i3 rated R). Then the
//! similar-items index (the same graphs over unit rows) against `SimilarItems`' exact cosine scan,
//! top 20 for 200 seed items.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use recsys_shared::artifact::published::{build_item_index, build_similar_index};
use recsys_shared::config::AnnIndexConfig;
use recsys_shared::model::ials::ann::ItemIndex;
use recsys_shared::model::ials::ItemMatrix;
use recsys_shared::model::top_k::Scored;

/// What `--ann` measures: from `recsys online bench`'s options.
pub struct AnnSettings<'a> {
    pub top: usize,
    pub factors: usize,
    /// efSearch values of the item index.
    pub expansions: &'a [usize],
    /// Candidates kept while linking an item (efConstruction, `offline.ann_index.expansion_add`).
    pub expansion_add: usize,
    /// The same for the similar-items index (`offline.ann_index.similar_expansion_add`).
    pub similar_expansion_add: usize,
    pub candidates_per_item: usize,
    /// efSearch values of FAISS's HNSW.
    pub faiss_ef: &'a [usize],
    /// The FAISS indexes built (`faiss_ann.py --indexes`).
    pub faiss_indexes: &'a [String],
    /// Whether to build and measure the similar-items index too.
    pub similar: bool,
    /// The Python interpreter and the directory of `faiss_ann.py`; `None`: no FAISS.
    pub peer: Option<(&'a str, &'a Path)>,
}

/// One setting's figures.
pub struct AnnPoint {
    pub expansion: usize,
    pub recall: f64,
    pub filtered_recall: f64,
    pub us_per_query: f64,
    /// Exact rows read (scored) per query.
    pub rows_per_query: f64,
}

/// FAISS's figures for one setting.
pub struct FaissPoint {
    pub index: String,
    pub param: u64,
    pub build_s: f64,
    pub recall: f64,
    pub us_per_query: f64,
    /// Queries per second with every query in one call on all the threads.
    pub qps_batch: f64,
}

pub struct AnnFigures {
    pub build_s: f64,
    pub ranges: usize,
    pub mib: f64,
    pub points: Vec<AnnPoint>,
    pub faiss: Vec<FaissPoint>,
    /// `None` when not asked for.
    pub similar: Option<SimilarFigures>,
}

/// The similar-items index (cosine) against `SimilarItems`' exact scan.
pub struct SimilarFigures {
    pub build_s: f64,
    pub k: usize,
    pub exact_us: f64,
    /// (efSearch, recall@k, µs per query).
    pub points: Vec<(usize, f64, f64)>,
}

/// Items most like a sampled item, top this many (what a "because you watched" row shows).
const SIMILAR_K: usize = 20;
/// Items sampled as seeds.
const SIMILAR_SEEDS: usize = 200;

/// Builds the similar-items index over `matrix` and measures it against the exact cosine scan.
fn measure_similar(
    args: &AnnSettings<'_>,
    dir: &Path,
    matrix: &ItemMatrix,
    config: &AnnIndexConfig,
) -> Result<SimilarFigures, Box<dyn std::error::Error>> {
    eprintln!("  building the similar-items index...");
    let started = Instant::now();
    let built = build_similar_index(matrix.as_slice(), matrix.factors(), config)?;
    let build_s = started.elapsed().as_secs_f64();
    let path = dir.join("similar_index.ann");
    built.save(&path)?;
    drop(built);
    let index = ItemIndex::open(&path, matrix.len(), matrix.factors(), 64, 4)?;
    let seeds: Vec<usize> = (0..SIMILAR_SEEDS)
        .map(|s| s * matrix.len() / SIMILAR_SEEDS)
        .collect();
    let started = Instant::now();
    let exact: Vec<Vec<Scored>> = seeds
        .iter()
        .map(|&seed| matrix.similar(seed, SIMILAR_K, |_| true))
        .collect();
    let exact_us = started.elapsed().as_secs_f64() * 1e6 / seeds.len() as f64;
    let mut points = Vec::new();
    for &expansion in args.expansions {
        index.set_expansion(expansion);
        let per_range = SIMILAR_K * args.candidates_per_item;
        let started = Instant::now();
        let found: Vec<Vec<Scored>> = seeds
            .iter()
            .map(|&seed| {
                index
                    .similar(matrix, seed, SIMILAR_K, per_range, |_| true)
                    .expect("search")
            })
            .collect();
        let us = started.elapsed().as_secs_f64() * 1e6 / seeds.len() as f64;
        let hits: usize = found.iter().zip(&exact).map(|(f, e)| overlap(f, e)).sum();
        let wanted: usize = exact.iter().map(Vec::len).sum();
        let recall = hits as f64 / wanted.max(1) as f64;
        eprintln!(
            "  similar items efSearch {expansion}: recall@{SIMILAR_K} {recall:.4}, {us:.0} µs/query (exact scan {exact_us:.0})"
        );
        points.push((expansion, recall, us));
    }
    Ok(SimilarFigures {
        build_s,
        k: SIMILAR_K,
        exact_us,
        points,
    })
}

/// What the synthetic catalog lets a French member with a PG limit see.
fn french_pg(i: u32) -> bool {
    !i.is_multiple_of(10) && i % 7 != 3
}

fn overlap(found: &[Scored], exact: &[Scored]) -> usize {
    found
        .iter()
        .filter(|f| exact.iter().any(|e| e.index == f.index))
        .count()
}

/// Builds the index over `matrix`, measures it at each `--ann-expansion`, then FAISS.
pub fn measure(
    args: &AnnSettings<'_>,
    dir: &Path,
    matrix: &ItemMatrix,
    queries: &[Vec<f32>],
) -> Result<AnnFigures, Box<dyn std::error::Error>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = AnnIndexConfig {
        min_items: 0,
        threads,
        expansion_add: args.expansion_add,
        similar_expansion_add: args.similar_expansion_add,
        ..Default::default()
    };
    eprintln!(
        "  building the item index ({} items, {threads} threads)...",
        matrix.len()
    );
    let started = Instant::now();
    let built = build_item_index(matrix.as_slice(), matrix.factors(), &config)?;
    let build_s = started.elapsed().as_secs_f64();
    let path = dir.join("item_index.ann");
    built.save(&path)?;
    drop(built);
    let index = ItemIndex::open(&path, matrix.len(), matrix.factors(), 64, 4)?;
    let top = args.top;
    let exact: Vec<Vec<Scored>> = queries
        .iter()
        .map(|q| matrix.top_k_exact(q, top, |_| true))
        .collect();
    let exact_filtered: Vec<Vec<Scored>> = queries
        .iter()
        .map(|q| matrix.top_k_exact(q, top, french_pg))
        .collect();
    let truth: Vec<u8> = exact
        .iter()
        .flat_map(|e| e.iter().flat_map(|s| s.index.to_le_bytes()))
        .collect();
    std::fs::write(dir.join("truth.u32"), truth)?;
    let mut points = Vec::new();
    for &expansion in args.expansions {
        index.set_expansion(expansion);
        let per_range = top * args.candidates_per_item;
        let rows = std::cell::Cell::new(0usize);
        let search = |q: &[f32], allowed: &dyn Fn(u32) -> bool| {
            index
                .search(q, top, per_range, allowed, |i| {
                    rows.set(rows.get() + 1);
                    matrix.score(i as usize, q)
                })
                .expect("search")
        };
        let started = Instant::now();
        let found: Vec<Vec<Scored>> = queries.iter().map(|q| search(q, &|_| true)).collect();
        let us_per_query = started.elapsed().as_secs_f64() * 1e6 / queries.len() as f64;
        let rows_per_query = rows.get() as f64 / queries.len() as f64;
        let filtered: Vec<Vec<Scored>> = queries.iter().map(|q| search(q, &french_pg)).collect();
        let hits: usize = found.iter().zip(&exact).map(|(f, e)| overlap(f, e)).sum();
        let filtered_hits: usize = filtered
            .iter()
            .zip(&exact_filtered)
            .map(|(f, e)| overlap(f, e))
            .sum();
        let point = AnnPoint {
            expansion,
            recall: hits as f64 / (queries.len() * top) as f64,
            filtered_recall: filtered_hits as f64 / (queries.len() * top) as f64,
            us_per_query,
            rows_per_query,
        };
        eprintln!(
            "  recsys ANN efSearch {expansion}: recall@{top} {:.4} (filtered {:.4}), {:.0} µs/query, {:.0} exact rows read per query",
            point.recall, point.filtered_recall, point.us_per_query, point.rows_per_query
        );
        points.push(point);
    }
    let similar = if args.similar {
        Some(measure_similar(args, dir, matrix, &config)?)
    } else {
        None
    };
    let faiss = match args.peer {
        None => Vec::new(),
        Some((python, peer_dir)) => {
            run_faiss(args, python, peer_dir, dir, threads).unwrap_or_else(|e| {
                eprintln!(
                    "  FAISS peer failed ({e}); pip install -r deploy/bench/requirements.txt"
                );
                Vec::new()
            })
        }
    };
    Ok(AnnFigures {
        build_s,
        ranges: index.ranges(),
        mib: index.bytes() as f64 / (1 << 20) as f64,
        points,
        faiss,
        similar,
    })
}

/// `faiss_ann.py`'s options: the same top, threads and graph shape (links per node and
/// efConstruction) as the index it is compared with.
fn faiss_options(args: &AnnSettings<'_>, threads: usize) -> Vec<String> {
    let efs: Vec<String> = args.faiss_ef.iter().map(usize::to_string).collect();
    [
        ("--k", args.factors.to_string()),
        ("--top", args.top.to_string()),
        ("--threads", threads.to_string()),
        ("--ef", efs.join(",")),
        ("--m", AnnIndexConfig::default().connectivity.to_string()),
        ("--ef-construction", args.expansion_add.to_string()),
        ("--indexes", args.faiss_indexes.join(",")),
    ]
    .into_iter()
    .flat_map(|(name, value)| [name.to_string(), value])
    .collect()
}

fn run_faiss(
    args: &AnnSettings<'_>,
    python: &str,
    peer_dir: &Path,
    dir: &Path,
    threads: usize,
) -> Result<Vec<FaissPoint>, String> {
    let script = peer_dir.join("faiss_ann.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(dir)
        .args(faiss_options(args, threads))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{python} {}: {e}", script.display()))?;
    if !out.status.success() {
        // What it measured before it stopped (an index whose build is stopped, say) still counts.
        eprintln!(
            "  {} exited with {}: keeping the settings it printed",
            script.display(),
            out.status
        );
    }
    let mut points = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let json: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("FAISS output {line:?}: {e}"))?;
        let number = |key: &str| {
            json[key]
                .as_f64()
                .ok_or_else(|| format!("FAISS output {line:?} has no {key}"))
        };
        let point = FaissPoint {
            index: json["index"].as_str().unwrap_or("?").to_string(),
            param: number("param")? as u64,
            build_s: number("build_s")?,
            recall: number("recall")?,
            us_per_query: number("us_per_query")?,
            qps_batch: number("qps_batch")?,
        };
        eprintln!(
            "  FAISS {} {}: recall@{} {:.4}, {:.0} µs/query, {:.0} QPS batched (built in {:.0} s)",
            point.index,
            point.param,
            args.top,
            point.recall,
            point.us_per_query,
            point.qps_batch,
            point.build_s
        );
        points.push(point);
    }
    Ok(points)
}

/// The first setting of `points` (cheapest first) reaching `recall`.
pub fn at_recall<T>(points: &[T], recall: f64, of: impl Fn(&T) -> f64) -> Option<&T> {
    points.iter().find(|p| of(p) >= recall)
}

/// Whether a FAISS index is one of its HNSW graphs (inner product, or L2 over lifted items).
fn is_hnsw(index: &str) -> bool {
    index == "hnsw" || index == "hnsw_mips"
}

/// FAISS's HNSW at `recall`: of each graph's cheapest setting reaching it, the one with the
/// fewer µs per query.
fn faiss_hnsw_at(points: &[FaissPoint], recall: f64) -> Option<&FaissPoint> {
    ["hnsw", "hnsw_mips"]
        .iter()
        .filter_map(|name| {
            let graph: Vec<&FaissPoint> = points.iter().filter(|p| p.index == *name).collect();
            at_recall(&graph, recall, |p| p.recall).copied()
        })
        .min_by(|a, b| a.us_per_query.total_cmp(&b.us_per_query))
}

/// Prints the ANN figures beside FAISS's and the exact scan's, and adds them to `summary`.
pub fn report(top: usize, ann: &AnnFigures, exact_us: f64, summary: &mut serde_json::Value) {
    const TARGET: f64 = 0.95;
    let ours = at_recall(&ann.points, TARGET, |p| p.filtered_recall.min(p.recall));
    let theirs = faiss_hnsw_at(&ann.faiss, TARGET);
    // The build compared: the graph reaching the target, else the quicker one built.
    let faiss_build = theirs
        .or_else(|| {
            ann.faiss
                .iter()
                .filter(|p| is_hnsw(&p.index))
                .min_by(|a, b| a.build_s.total_cmp(&b.build_s))
        })
        .map(|p| (p.index.as_str(), p.build_s));
    eprintln!(
        "ANN: item index built in {:.0} s ({} norm ranges, {:.0} MiB); FAISS HNSW built in {} → build time ratio recsys/FAISS {}",
        ann.build_s,
        ann.ranges,
        ann.mib,
        faiss_build.map_or("n/a".into(), |(name, b)| format!("{b:.0} s ({name})")),
        faiss_build.map_or("n/a".into(), |(_, b)| format!("{:.2}", ann.build_s / b)),
    );
    match ours {
        Some(p) => eprintln!(
            "ANN at recall@{} ≥ {TARGET} (filtered too): efSearch {}, {:.0} µs/query ({:.1}× faster than the exact scan); FAISS HNSW {}",
            top,
            p.expansion,
            p.us_per_query,
            exact_us / p.us_per_query,
            theirs.map_or("never reached it".to_string(), |f| format!(
                "{} efSearch {}: {:.0} µs/query → ratio recsys/FAISS {:.2}",
                f.index,
                f.param,
                f.us_per_query,
                p.us_per_query / f.us_per_query
            )),
        ),
        None => eprintln!("ANN never reached recall@{} ≥ {TARGET} at the efSearch values tried", top),
    }
    if let Some(similar) = &ann.similar {
        report_similar(similar, summary);
    }
    summary["ann_build_s"] = ann.build_s.into();
    summary["ann_ranges"] = ann.ranges.into();
    summary["ann_mib"] = ann.mib.into();
    summary["ann_points"] = ann
        .points
        .iter()
        .map(|p| {
            serde_json::json!({"ef": p.expansion, "recall": p.recall,
                "filtered_recall": p.filtered_recall, "us_per_query": p.us_per_query,
                "rows_per_query": p.rows_per_query})
        })
        .collect();
    summary["faiss_points"] = ann
        .faiss
        .iter()
        .map(|p| {
            serde_json::json!({"index": p.index, "param": p.param, "build_s": p.build_s,
                "recall": p.recall, "us_per_query": p.us_per_query, "qps_batch": p.qps_batch})
        })
        .collect();
}

/// Prints the similar-items index's figures and adds them to `summary`.
fn report_similar(similar: &SimilarFigures, summary: &mut serde_json::Value) {
    const TARGET: f64 = 0.95;
    if let Some((ef, recall, us)) = similar.points.iter().find(|p| p.1 >= TARGET) {
        eprintln!(
            "similar items: index built in {:.0} s; at efSearch {ef} recall@{} {recall:.4}, {us:.0} µs/query against the exact scan's {:.0} ({:.1}× faster)",
            similar.build_s,
            similar.k,
            similar.exact_us,
            similar.exact_us / us
        );
    } else {
        eprintln!(
            "similar items: recall@{} never reached {TARGET} at the efSearch values tried",
            similar.k
        );
    }
    summary["similar_build_s"] = similar.build_s.into();
    summary["similar_exact_us"] = similar.exact_us.into();
    summary["similar_points"] = similar
        .points
        .iter()
        .map(|(ef, recall, us)| serde_json::json!({"ef": ef, "recall": recall, "us_per_query": us}))
        .collect();
}

/// The ANN server's throughput beside FAISS HNSW's, from a size's `summary` (after
/// [`report`] and the server runs): FAISS at the setting of either graph with the most
/// throughput among those reaching the recall the server runs at (`expansion`), or at its best
/// recall when none does. FAISS's figure is every query in
/// one call on all threads, in process — no RPC, no filters, no exact scores.
pub fn server_against_faiss(summary: &serde_json::Value, expansion: usize) -> Option<String> {
    let ours = summary["ann_qps"].as_f64()?;
    let recall = summary["ann_points"]
        .as_array()?
        .iter()
        .find(|p| p["ef"].as_u64() == Some(expansion as u64))?["recall"]
        .as_f64()?;
    let hnsw: Vec<&serde_json::Value> = summary["faiss_points"]
        .as_array()?
        .iter()
        .filter(|p| p["index"].as_str().is_some_and(is_hnsw))
        .collect();
    let recall_of = |p: &serde_json::Value| p["recall"].as_f64().unwrap_or(0.0);
    let qps_of = |p: &serde_json::Value| p["qps_batch"].as_f64().unwrap_or(0.0);
    let theirs = hnsw
        .iter()
        .filter(|p| recall_of(p) >= recall)
        .max_by(|a, b| qps_of(a).total_cmp(&qps_of(b)))
        .or_else(|| {
            hnsw.iter()
                .max_by(|a, b| recall_of(a).total_cmp(&recall_of(b)))
        })?;
    let qps = theirs["qps_batch"].as_f64()?;
    Some(format!(
        "ANN server at recall@100 {recall:.3} (efSearch {expansion}): {ours:.0} QPS; FAISS {} efSearch {} at recall {:.3}: {qps:.0} QPS (one call, all threads) → ratio recsys/FAISS {:.2}",
        theirs["index"].as_str().unwrap_or("?"),
        theirs["param"],
        recall_of(theirs),
        ours / qps
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(index: &str, param: u64, recall: f64, us: f64, qps: f64) -> FaissPoint {
        FaissPoint {
            index: index.into(),
            param,
            build_s: 1.0,
            recall,
            us_per_query: us,
            qps_batch: qps,
        }
    }

    #[test]
    fn faiss_builds_its_graph_with_our_expansion_add() {
        let indexes = ["hnsw".to_string()];
        let args = AnnSettings {
            top: 100,
            factors: 64,
            expansions: &[64],
            expansion_add: 48,
            similar_expansion_add: 128,
            candidates_per_item: 1,
            faiss_ef: &[128, 1024],
            faiss_indexes: &indexes,
            similar: false,
            peer: None,
        };
        let options = faiss_options(&args, 2).join(" ");
        assert!(options.contains("--ef-construction 48"), "{options}");
        let links = AnnIndexConfig::default().connectivity;
        assert!(options.contains(&format!("--m {links} ")), "{options}");
        assert!(options.contains("--ef 128,1024"), "{options}");
        assert!(
            options.contains("--k 64 --top 100 --threads 2"),
            "{options}"
        );
    }

    #[test]
    fn faiss_hnsw_is_the_cheaper_graph_at_the_recall_compared() {
        let points = vec![
            point("hnsw", 128, 0.44, 200.0, 9_000.0),
            point("hnsw", 1024, 0.56, 1_300.0, 1_500.0),
            point("hnsw_mips", 128, 0.90, 150.0, 12_000.0),
            point("hnsw_mips", 256, 0.96, 300.0, 6_000.0),
            point("hnsw_mips", 512, 0.99, 600.0, 3_000.0),
            point("ivf_pq", 16, 0.97, 100.0, 20_000.0),
        ];
        // The inner-product graph never reaches 0.95; IVF-PQ is not an HNSW graph.
        let at = faiss_hnsw_at(&points, 0.95).unwrap();
        assert_eq!((at.index.as_str(), at.param), ("hnsw_mips", 256));
        let at = faiss_hnsw_at(&points, 0.5).unwrap();
        assert_eq!((at.index.as_str(), at.param), ("hnsw_mips", 128));
        assert!(faiss_hnsw_at(&points, 0.999).is_none());

        let mut summary = serde_json::json!({
            "ann_qps": 2_000.0,
            "ann_points": [{"ef": 64, "recall": 0.98}],
        });
        summary["faiss_points"] = points
            .iter()
            .map(|p| {
                serde_json::json!({"index": p.index, "param": p.param, "recall": p.recall,
                    "qps_batch": p.qps_batch})
            })
            .collect();
        let line = server_against_faiss(&summary, 64).unwrap();
        assert!(line.contains("FAISS hnsw_mips efSearch 512"), "{line}");
        assert!(line.contains("ratio recsys/FAISS 0.67"), "{line}");
    }
}
