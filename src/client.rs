//! `recsys client`: the ranking API from a terminal — Rank, Homepage and SimilarItems through the
//! same gRPC client the tests use, with TLS and an API key, printed as a table (or the answer as
//! JSON with `--json`). No `.proto` files or other tools needed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use recsys_shared::proto::v1::ranking_client::RankingClient;
use recsys_shared::proto::v1::{
    HomepageRequest, HomepageResponse, RankRequest, ScoredItem, SimilarItemsRequest, VectorSource,
};

/// Where the server is and how to reach it.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The server: `http://host:port`, or `https://host:port` for TLS.
    #[arg(
        long,
        env = "RECSYS_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// PEM file of the CA that signed the server's certificate; required with https (the
    /// system's roots are not used).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate is for, when it is not the host in `--server`.
    #[arg(long, global = true)]
    pub domain: Option<String>,
    /// PEM file of this client's certificate, for mutual TLS (with --key).
    #[arg(long, requires = "key", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM file of this client's private key, for mutual TLS (with --cert).
    #[arg(long, requires = "cert", global = true)]
    pub key: Option<PathBuf>,
    /// A file holding the API key (sent as `authorization: Bearer …`); or set RECSYS_API_KEY.
    /// The key is never printed.
    #[arg(long, global = true)]
    pub api_key_file: Option<PathBuf>,
    /// The call's deadline, in milliseconds.
    #[arg(long, default_value_t = 5000, global = true)]
    pub timeout_ms: u64,
    /// Print the answer as one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The calls.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// The member's top items over the whole catalog (Rank).
    Rank {
        /// The member.
        #[arg(long)]
        user: String,
        /// How many items.
        #[arg(long, default_value_t = 10)]
        k: u64,
        /// Only items available in this ISO 3166-1 alpha-2 country.
        #[arg(long, default_value = "")]
        country: String,
        /// Leave out the items in the member's history [default: the server's
        /// online.exclude_seen, true unless configured].
        #[arg(long, conflicts_with = "include_seen")]
        exclude_seen: bool,
        /// Keep the items in the member's history in the ranking.
        #[arg(long)]
        include_seen: bool,
        /// Leave out these items (repeat the flag, or separate with commas).
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
    },
    /// The member's homepage rows (Homepage).
    Homepage {
        /// The member.
        #[arg(long)]
        user: String,
        /// How many rows.
        #[arg(long, default_value_t = 3)]
        rows: u64,
        /// Items per row.
        #[arg(long, default_value_t = 10)]
        items_per_row: u64,
        /// Only items available in this ISO 3166-1 alpha-2 country.
        #[arg(long, default_value = "")]
        country: String,
    },
    /// The items most like one item (SimilarItems).
    Similar {
        /// The item.
        #[arg(long)]
        item: String,
        /// How many items.
        #[arg(long, default_value_t = 10)]
        k: u64,
    },
}

/// The request header a member's id travels in, which balancers hash on to keep a member on one
/// server (Envoy's `hash_policy`, HAProxy's `balance hdr(...)`).
pub const MEMBER_HEADER: &str = "x-recsys-member-id";

/// A request for `user` with a deadline, their id in [`MEMBER_HEADER`] (an id no header can
/// carry, with a control character, goes without it: the server refuses it anyway, by name).
fn for_member<M>(message: M, user: &str, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Ok(value) = user.parse() {
        request.metadata_mut().insert(MEMBER_HEADER, value);
    }
    request
}

/// The response header a balancer names the answering server in (the netns cluster's HAProxy
/// sets it), shown so a member's affinity can be seen.
pub const SERVED_BY_HEADER: &str = "x-recsys-served-by";

fn served_by(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(SERVED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn by_line(by: &Option<String>) -> String {
    by.as_ref()
        .map_or_else(String::new, |server| format!(", served by {server}"))
}

/// Makes the call and prints the answer.
pub async fn run(connection: &Connection, command: &ClientCommand) -> Result<()> {
    let channel = connect(connection).await?;
    let api_key = api_key(connection)?;
    let mut client =
        RankingClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            if let Some(key) = &api_key {
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {key}")
                        .parse()
                        .map_err(|_| tonic::Status::invalid_argument("the API key is not ASCII"))?,
                );
            }
            Ok(request)
        });
    let timeout = Duration::from_millis(connection.timeout_ms);
    fn with_deadline<M>(message: M, timeout: Duration) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    let failed = |rpc: &str, status: tonic::Status| {
        anyhow::anyhow!(
            "{rpc} at {}: {:?}: {}",
            connection.server,
            status.code(),
            status.message()
        )
    };
    match command {
        ClientCommand::Rank {
            user,
            k,
            country,
            exclude_seen,
            include_seen,
            exclude,
        } => {
            let response = client
                .rank(for_member(
                    RankRequest {
                        user_id: user.clone(),
                        k: *k,
                        country: country.clone(),
                        exclude_item_ids: exclude.clone(),
                        exclude_seen: match (exclude_seen, include_seen) {
                            (true, _) => Some(true),
                            (_, true) => Some(false),
                            _ => None,
                        },
                    },
                    user,
                    timeout,
                ))
                .await
                .map_err(|s| failed("Rank", s))?;
            let by = served_by(response.metadata());
            let answer = response.into_inner();
            let served = served!(answer);
            if connection.json {
                let mut json = served.json();
                if let Some(server) = &by {
                    json["served_by"] = server.as_str().into();
                }
                json["items"] = items_json(&answer.items);
                println!("{json}");
            } else {
                println!("Rank for {user} — {}{}", served.line(), by_line(&by));
                print_items(&answer.items);
            }
        }
        ClientCommand::Homepage {
            user,
            rows,
            items_per_row,
            country,
        } => {
            let response = client
                .homepage(for_member(
                    HomepageRequest {
                        user_id: user.clone(),
                        rows: *rows,
                        items_per_row: *items_per_row,
                        country: country.clone(),
                    },
                    user,
                    timeout,
                ))
                .await
                .map_err(|s| failed("Homepage", s))?;
            let by = served_by(response.metadata());
            let answer = response.into_inner();
            let served = served!(answer);
            if connection.json {
                let mut json = served.json();
                if let Some(server) = &by {
                    json["served_by"] = server.as_str().into();
                }
                json["rows"] = rows_json(&answer);
                println!("{json}");
            } else {
                println!("Homepage of {user} — {}{}", served.line(), by_line(&by));
                for row in &answer.rows {
                    println!("\n  {}", row.title);
                    print_items(&row.items);
                }
            }
        }
        ClientCommand::Similar { item, k } => {
            let answer = client
                .similar_items(with_deadline(
                    SimilarItemsRequest {
                        item_id: item.clone(),
                        k: *k,
                    },
                    timeout,
                ))
                .await
                .map_err(|s| failed("SimilarItems", s))?
                .into_inner();
            if connection.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "model_version": answer.model_version,
                        "items": items_json(&answer.items),
                    })
                );
            } else {
                println!("Items like {item} — model {}", answer.model_version);
                print_items(&answer.items);
            }
        }
    }
    Ok(())
}

async fn connect(connection: &Connection) -> Result<Channel> {
    let server = &connection.server;
    let mut endpoint = Channel::from_shared(server.clone())
        .with_context(|| {
            format!("--server {server:?} is not a URL such as http://127.0.0.1:50051")
        })?
        .connect_timeout(Duration::from_millis(connection.timeout_ms));
    if server.starts_with("https://") {
        recsys_shared::tls::install_crypto_provider();
        let mut tls = ClientTlsConfig::new();
        match &connection.ca {
            Some(ca) => {
                let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => anyhow::bail!("--server is https: give the server's CA with --ca FILE"),
        }
        if let Some(domain) = &connection.domain {
            tls = tls.domain_name(domain.clone());
        }
        if let (Some(cert), Some(key)) = (&connection.cert, &connection.key) {
            let cert = std::fs::read(cert).with_context(|| format!("--cert {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("--key {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("the TLS settings (--ca, --cert, --key)")?;
    } else if connection.ca.is_some() || connection.cert.is_some() {
        anyhow::bail!("--ca, --cert and --key are for an https:// --server");
    }
    endpoint.connect().await.with_context(|| {
        format!(
            "no answer from {server}: is `recsys online serve` (or the quickstart) running there?"
        )
    })
}

/// The API key from `--api-key-file` or RECSYS_API_KEY; trailing newlines are not part of it.
fn api_key(connection: &Connection) -> Result<Option<String>> {
    let key = match &connection.api_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--api-key-file {}", path.display()))?,
        ),
        None => std::env::var("RECSYS_API_KEY").ok(),
    };
    Ok(key
        .map(|k| k.trim_end_matches(['\r', '\n']).to_string())
        .filter(|k| !k.is_empty()))
}

fn source(code: i32) -> &'static str {
    match VectorSource::try_from(code) {
        Ok(VectorSource::Cache) => "cache",
        Ok(VectorSource::Store) => "store",
        Ok(VectorSource::FoldIn) => "fold-in",
        Ok(VectorSource::ColdStart) => "cold start (popularity)",
        _ => "unspecified",
    }
}

fn print_items(items: &[ScoredItem]) {
    if items.is_empty() {
        println!("    (no items)");
    }
    for (rank, item) in items.iter().enumerate() {
        println!(
            "  {:>3}. {:<16} {:>8.4}  {}",
            rank + 1,
            item.item_id,
            item.score,
            item.title
        );
    }
}

fn items_json(items: &[ScoredItem]) -> serde_json::Value {
    items
        .iter()
        .map(|i| serde_json::json!({"item_id": i.item_id, "score": i.score, "title": i.title}))
        .collect()
}

/// How `$answer` (a Rank or Homepage response: the same fields) was served.
macro_rules! served {
    ($answer:expr) => {
        Served {
            model_version: &$answer.model_version,
            vector_source: $answer.vector_source,
            degraded: $answer.degraded,
            request_id: &$answer.request_id,
            experiments: &$answer.experiments,
        }
    };
}
use served;

/// What Rank and Homepage answers both say about how they were served.
struct Served<'a> {
    model_version: &'a str,
    vector_source: i32,
    degraded: bool,
    request_id: &'a str,
    experiments: &'a [recsys_shared::proto::v1::ExperimentAssignment],
}

impl Served<'_> {
    /// `model V, vector from S` (and ` (degraded)`), for the table's heading.
    fn line(&self) -> String {
        format!(
            "model {}, vector from {}{}",
            self.model_version,
            source(self.vector_source),
            if self.degraded { " (degraded)" } else { "" }
        )
    }

    /// The same as a JSON object, for `--json`.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_version": self.model_version,
            "vector_source": source(self.vector_source),
            "degraded": self.degraded,
            "request_id": self.request_id,
            "experiments": self
                .experiments
                .iter()
                .map(|a| serde_json::json!({"experiment": a.experiment, "variant": a.variant}))
                .collect::<Vec<_>>(),
        })
    }
}

fn rows_json(answer: &HomepageResponse) -> serde_json::Value {
    answer
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "title": r.title,
                "kind": r.kind,
                "seed_item_id": r.seed_item_id,
                "items": items_json(&r.items),
            })
        })
        .collect()
}

#[cfg(test)]
mod member_header_tests {
    use super::*;

    #[test]
    fn a_members_requests_carry_their_id_for_the_balancer() {
        let request = for_member((), "u0000007", Duration::from_secs(1));
        assert_eq!(request.metadata().get(MEMBER_HEADER).unwrap(), "u0000007");
        // An id no header can carry goes without it (the server names what is wrong with it).
        let request = for_member((), "u1\nu2", Duration::from_secs(1));
        assert!(request.metadata().get(MEMBER_HEADER).is_none());
    }
}
