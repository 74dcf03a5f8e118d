//! `recsys`: the one binary of the platform. It parses arguments, loads the config and wires the
//! tier libraries together; the logic lives in `offline/`, `nearline/`, `online/` and `shared/`.
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 the publish gate refused a model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use recsys_offline::synth::{SynthSpec, SynthWorld};
use recsys_offline::train::{evaluate_only, TrainJob};
use recsys_shared::artifact::ModelRoot;
use recsys_shared::config::{Config, Protocol};

#[derive(Parser)]
#[command(
    name = "recsys",
    version,
    about = "Three-tier recommendation platform: offline training, nearline fold-in, online ranking"
)]
struct Cli {
    /// TOML configuration file; `RECSYS__SECTION__KEY` environment variables override it.
    #[arg(long, global = true, env = "RECSYS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr (filter with RECSYS_LOG, e.g. `RECSYS_LOG=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Convert public data sets into the input schema.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Offline tier: batch jobs that build features, train, evaluate and publish models.
    #[command(subcommand)]
    Offline(OfflineCommand),
    /// Nearline tier: Kafka workers folding member events into their vectors (not built yet).
    #[command(subcommand)]
    Nearline(NearlineCommand),
    /// Online tier: the gRPC ranking API (not built yet).
    #[command(subcommand)]
    Online(OnlineCommand),
    /// Run the whole platform on embedded defaults (not built yet).
    Quickstart,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// MovieLens 100K, 1M or a CSV release (latest, 20M, 25M, 32M) → interactions.parquet + items.parquet.
    Movielens {
        /// Directory holding u.data + u.item, ratings.dat + movies.dat, or ratings.csv + movies.csv.
        #[arg(long)]
        input: PathBuf,
        /// Directory to write interactions.parquet and items.parquet into.
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum OfflineCommand {
    /// Generate a synthetic catalog and interaction log with planted structure.
    Synth {
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        #[arg(long, default_value_t = 2_000)]
        items: usize,
        #[arg(long, default_value_t = 500_000)]
        interactions: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Directory to write interactions.parquet and items.parquet into.
        #[arg(long)]
        output: PathBuf,
    },
    /// Build features, evaluate, fit, publish a new model version (prints one JSON line).
    Train(TrainArgs),
    /// Evaluate the configured model on a held-out split (prints one JSON line).
    Evaluate(EvaluateArgs),
    /// Point CURRENT at an earlier (or later) published version.
    Rollback {
        #[arg(long)]
        model_root: Option<PathBuf>,
        /// The version to make current.
        #[arg(long)]
        to: String,
    },
    /// List the published versions, the current one marked.
    Versions {
        #[arg(long)]
        model_root: Option<PathBuf>,
    },
    /// Training benchmark against the Python library `implicit`, and accuracy on MovieLens.
    Bench(recsys_offline::bench::BenchArgs),
}

#[derive(Args)]
struct AlsArgs {
    /// Latent factors [config: offline.als.factors, default 64].
    #[arg(long)]
    factors: Option<usize>,
    /// L2 regularisation λ [offline.als.regularization, default 0.1].
    #[arg(long)]
    regularization: Option<f32>,
    /// Confidence per unit of strength, c = 1 + α r [offline.als.alpha, default 10].
    #[arg(long)]
    alpha: Option<f32>,
    /// ALS iterations [offline.als.iterations, default 15].
    #[arg(long)]
    iterations: Option<usize>,
    /// Conjugate-gradient steps per solve [offline.als.cg_steps, default 3].
    #[arg(long)]
    cg_steps: Option<usize>,
    /// Threads, 0 = all cores [offline.als.threads, default 0].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct TrainArgs {
    /// Interactions Parquet file or directory.
    #[arg(long)]
    interactions: PathBuf,
    /// Items (catalog) Parquet file or directory.
    #[arg(long)]
    items: PathBuf,
    /// Model root to publish into [model.root].
    #[arg(long)]
    model_root: Option<PathBuf>,
    /// Ignore events after this instant (RFC 3339, YYYY-MM-DD, or epoch milliseconds).
    #[arg(long, value_parser = parse_instant)]
    as_of: Option<i64>,
    /// Publish without evaluating (the gate is skipped).
    #[arg(long)]
    skip_eval: bool,
    /// Move CURRENT even when the publish gate refuses.
    #[arg(long)]
    force: bool,
    /// Seed of the factor initialisation [offline.als.seed, default 42].
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    als: AlsArgs,
}

#[derive(Args)]
struct EvaluateArgs {
    /// Interactions Parquet file or directory.
    #[arg(long)]
    interactions: PathBuf,
    /// Evaluation protocol [offline.evaluation.protocol].
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Fraction of eligible members held out [offline.evaluation.heldout_fraction, default 0.2].
    #[arg(long)]
    heldout_fraction: Option<f64>,
    /// Seed of the split [offline.evaluation.seed, default 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Write the exact split to DIR/{train,foldin,target}.parquet.
    #[arg(long)]
    export_split: Option<PathBuf>,
    #[command(flatten)]
    als: AlsArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    StrongGeneralization,
    LeaveLastOut,
}

#[derive(Subcommand)]
enum NearlineCommand {
    /// Consume member events and fold them into member vectors (not built yet).
    Run,
    /// Send events from JSON lines or Parquet to Kafka (not built yet).
    Produce,
}

#[derive(Subcommand)]
enum OnlineCommand {
    /// Serve the gRPC ranking API (not built yet).
    Serve,
}

fn parse_instant(s: &str) -> std::result::Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        // A date means the end of that day: its events are included.
        return Ok(d
            .and_hms_milli_opt(23, 59, 59, 999)
            .expect("valid")
            .and_utc()
            .timestamp_millis());
    }
    Err(format!(
        "{s:?} is not RFC 3339 (2026-11-01T00:00:00Z), a date (2026-11-01) or epoch milliseconds"
    ))
}

impl AlsArgs {
    fn apply(&self, config: &mut Config) {
        let als = &mut config.offline.als;
        if let Some(v) = self.factors {
            als.factors = v;
        }
        if let Some(v) = self.regularization {
            als.regularization = v;
        }
        if let Some(v) = self.alpha {
            als.alpha = v;
        }
        if let Some(v) = self.iterations {
            als.iterations = v;
        }
        if let Some(v) = self.cg_steps {
            als.cg_steps = v;
        }
        if let Some(v) = self.threads {
            als.threads = v;
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    Ok(Config::load(cli.config.as_deref())?)
}

fn validated(config: Config) -> Result<Config> {
    config
        .validate()
        .map_err(|problem| anyhow::anyhow!("command-line options: {problem}"))?;
    Ok(config)
}

fn not_built(what: &str, issue: u32) -> Result<ExitCode> {
    anyhow::bail!("{what} is not built yet (tracked in issue {issue}); see README.md, \"What is not done yet\"")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Import(ImportCommand::Movielens { input, output }) => {
            let summary = recsys_offline::movielens::import(input, output)
                .with_context(|| format!("importing MovieLens from {}", input.display()))?;
            println!(
                "{}",
                serde_json::json!({
                    "release": format!("{:?}", summary.release),
                    "interactions": summary.interactions,
                    "items": summary.items,
                    "output": output,
                })
            );
        }
        Command::Offline(OfflineCommand::Synth {
            users,
            items,
            interactions,
            seed,
            output,
        }) => {
            let spec = SynthSpec {
                users: *users,
                items: *items,
                interactions: *interactions,
                seed: *seed,
            };
            SynthWorld::new(spec)?.write(output)?;
            println!(
                "{}",
                serde_json::json!({"output": output, "users": users, "items": items, "interactions": interactions, "seed": seed})
            );
        }
        Command::Offline(OfflineCommand::Train(args)) => {
            let mut config = load_config(&cli)?;
            args.als.apply(&mut config);
            if let Some(seed) = args.seed {
                config.offline.als.seed = seed;
            }
            if let Some(root) = &args.model_root {
                config.model.root = root.clone();
            }
            let job = TrainJob {
                interactions: args.interactions.clone(),
                items: args.items.clone(),
                config: validated(config)?,
                as_of_ms: args.as_of,
                skip_eval: args.skip_eval,
                force: args.force,
            };
            let outcome = job.run()?;
            if outcome.gate_refused {
                tracing::error!(gate = %outcome.gate, version = %outcome.version, "CURRENT not moved; rerun with --force to publish anyway");
            } else {
                tracing::info!(gate = %outcome.gate, version = %outcome.version, "published");
            }
            println!("{}", serde_json::to_string(&outcome)?);
            if outcome.gate_refused {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Offline(OfflineCommand::Evaluate(args)) => {
            let mut config = load_config(&cli)?;
            args.als.apply(&mut config);
            let evaluation = &mut config.offline.evaluation;
            if let Some(p) = args.protocol {
                evaluation.protocol = match p {
                    ProtocolArg::StrongGeneralization => Protocol::StrongGeneralization,
                    ProtocolArg::LeaveLastOut => Protocol::LeaveLastOut,
                };
            }
            if let Some(f) = args.heldout_fraction {
                evaluation.heldout_fraction = f;
            }
            if let Some(s) = args.seed {
                evaluation.seed = s;
            }
            let config = validated(config)?;
            let result = evaluate_only(&args.interactions, &config, args.export_split.as_deref())?;
            println!("{}", serde_json::to_string(&result)?);
        }
        Command::Offline(OfflineCommand::Rollback { model_root, to }) => {
            let config = load_config(&cli)?;
            let root = ModelRoot::new(model_root.clone().unwrap_or(config.model.root));
            let lock = root.lock()?;
            let previous = root.rollback(&lock, to)?;
            println!(
                "{}",
                serde_json::json!({"current": to, "previous": previous})
            );
        }
        Command::Offline(OfflineCommand::Versions { model_root }) => {
            let config = load_config(&cli)?;
            let root = ModelRoot::new(model_root.clone().unwrap_or(config.model.root));
            let current = root.current_version()?;
            for version in root.versions()? {
                let marker = if Some(&version) == current.as_ref() {
                    "*"
                } else {
                    " "
                };
                let summary = match root.manifest(&version) {
                    Ok(m) => format!(
                        "{} members, {} items{}",
                        m.rows.members,
                        m.rows.items,
                        m.evaluation
                            .map(|e| format!(", {:?}", e.metrics))
                            .unwrap_or_default()
                    ),
                    Err(e) => format!("unreadable: {e}"),
                };
                println!("{marker} {version}  {summary}");
            }
        }
        Command::Offline(OfflineCommand::Bench(args)) => {
            recsys_offline::bench::run(args)?;
        }
        Command::Nearline(_) => return not_built("the nearline tier", 4),
        Command::Online(_) => return not_built("the online tier", 3),
        Command::Quickstart => return not_built("quickstart", 5),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECSYS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
