//! The RPCs of the ranking API in one table: their names (the metric label, what an API key is
//! allowed), the gRPC paths they answer, and whether admission control caps them. The online
//! tier's admission layer and auth, and the config's check of `online.auth.keys[].rpcs`, all read
//! this table; a new RPC is one row here.

/// How an RPC's gRPC paths are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcPath {
    /// One method: the whole path.
    Exact(&'static str),
    /// A whole service: every path under the prefix.
    Prefix(&'static str),
    /// Not a gRPC method: a grant checked by the HTTP side (the console's roles).
    Http,
}

/// One RPC (or a whole built-in service) of the ranking server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rpc {
    pub name: &'static str,
    pub path: RpcPath,
    /// Scoring work: admission control (the in-progress cap, the queue, load shedding) applies.
    pub ranking: bool,
}

/// Every RPC the ranking server answers.
pub const RPCS: &[Rpc] = &[
    Rpc {
        name: "Rank",
        path: RpcPath::Exact("/recsys.v1.Ranking/Rank"),
        ranking: true,
    },
    Rpc {
        name: "Homepage",
        path: RpcPath::Exact("/recsys.v1.Ranking/Homepage"),
        ranking: true,
    },
    Rpc {
        name: "SimilarItems",
        path: RpcPath::Exact("/recsys.v1.Ranking/SimilarItems"),
        ranking: true,
    },
    Rpc {
        name: "Health",
        path: RpcPath::Prefix("/grpc.health."),
        ranking: false,
    },
    Rpc {
        name: "Reflection",
        path: RpcPath::Prefix("/grpc.reflection."),
        ranking: false,
    },
    // A member's event over REST (`POST /v1/events`): writes, so admission caps it too.
    Rpc {
        name: "IngestEvent",
        path: RpcPath::Http,
        ranking: true,
    },
    // The console's two roles: reading every page, and moving `CURRENT` (promote, roll back).
    Rpc {
        name: "ConsoleRead",
        path: RpcPath::Http,
        ranking: false,
    },
    Rpc {
        name: "ConsoleOperate",
        path: RpcPath::Http,
        ranking: false,
    },
];

/// The RPC a gRPC path belongs to, if any.
pub fn of_path(path: &str) -> Option<&'static Rpc> {
    RPCS.iter().find(|rpc| match rpc.path {
        RpcPath::Exact(p) => path == p,
        RpcPath::Prefix(p) => path.starts_with(p),
        RpcPath::Http => false,
    })
}

/// The RPC called `name`, if any.
pub fn named(name: &str) -> Option<&'static Rpc> {
    RPCS.iter().find(|rpc| rpc.name == name)
}

/// Every RPC's name, comma-separated (for errors).
pub fn names() -> String {
    RPCS.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_rpc() {
        assert_eq!(of_path("/recsys.v1.Ranking/Rank").unwrap().name, "Rank");
        assert_eq!(
            of_path("/grpc.health.v1.Health/Check").unwrap().name,
            "Health"
        );
        assert!(of_path("/recsys.v1.Ranking/RankX").is_none());
        assert!(of_path("/other/Rank").is_none());
        assert!(named("SimilarItems").unwrap().ranking);
        assert!(!named("Reflection").unwrap().ranking);
        assert!(named("rank").is_none());
        assert!(of_path("ConsoleRead").is_none());
        assert_eq!(named("ConsoleOperate").unwrap().path, RpcPath::Http);
    }
}
