"""The peer of `recsys offline bench --features`: DuckDB running recsys's feature-job SQL.

    python3 duckdb_features.py INTERACTIONS.parquet ITEMS.parquet SQL_DIR WEIGHTS_JSON THREADS

SQL_DIR holds training.sql, popularity.sql and history.sql exactly as recsys renders them
(parameters substituted). The tables they read are defined the same way as in recsys:
`interactions` and `items` over the Parquet files, `event_weights(event_type, weight)` from the
config, and `training` as the training job's result (materialised, as recsys holds it in memory).
The one adaptation: DuckDB cannot CAST a TIMESTAMP to BIGINT, so the `interactions` view exposes
`ts` as epoch milliseconds already, which the SQL's CAST(ts AS BIGINT) then leaves alone.

Prints one JSON line: seconds (all three jobs, results fetched into Arrow), the row counts, and the
process's peak RSS.
"""

import json
import sys
import time

import duckdb


def peak_rss_mib() -> float:
    """VmHWM of this process. (getrusage's ru_maxrss is inherited from the parent across fork and
    exec on Linux, so it would report the benchmark driver's peak.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    interactions, items, sql_dir, weights_json, threads = sys.argv[1:6]
    weights = json.loads(weights_json)
    sql = {name: open(f"{sql_dir}/{name}.sql").read() for name in ("training", "popularity", "history")}

    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads TO {int(threads)}")
    con.execute(
        "CREATE VIEW interactions AS SELECT user_id, item_id, event_type, value, "
        f"epoch_ms(ts) AS ts FROM read_parquet('{interactions}')"
    )
    con.execute(f"CREATE VIEW items AS SELECT * FROM read_parquet('{items}')")
    values = ", ".join(f"('{k.replace(chr(39), chr(39) * 2)}', {float(v)!r})" for k, v in weights.items())
    con.execute(f"CREATE TABLE event_weights AS SELECT * FROM (VALUES {values}) t(event_type, weight)")
    # No explicit negatives in the synthetic log: the table the query reads is empty, as ours.
    con.execute("CREATE TABLE forgetting_events (event_type VARCHAR)")
    con.execute(f"CREATE TEMP TABLE training AS {sql['training']}")
    training_pairs = con.execute("SELECT COUNT(*) FROM training").fetchone()[0]
    # recsys fetches the training table into memory too.
    training = con.execute("SELECT * FROM training").to_arrow_table()
    popularity = con.execute(sql["popularity"]).to_arrow_table()
    history = con.execute(sql["history"]).to_arrow_table()
    seconds = time.perf_counter() - started

    print(
        json.dumps(
            {
                "seconds": seconds,
                "training_pairs": training_pairs,
                "training_rows_fetched": training.num_rows,
                "popularity_rows": popularity.num_rows,
                "history_rows": history.num_rows,
                "peak_rss_mib": peak_rss_mib(),
                "duckdb": duckdb.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
