//! What can be validated of `deploy/` without a container engine or a cluster: every TOML file
//! deserializes into the code's config structs (unknown keys are errors); every YAML file parses;
//! the Kubernetes ConfigMap embeds exactly `cluster/recsys.toml`; every container's `RECSYS__*`
//! environment applies cleanly to the config it mounts; every `recsys` command line in Compose
//! and Kubernetes is accepted by the real binary's argument parser; Envoy's health check names the
//! service the online tier reports; the shell scripts parse.

use std::path::{Path, PathBuf};
use std::process::Command;

use recsys_shared::config::Config;
use serde_yaml::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, extensions, out);
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
    out.sort();
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            merge_keys(&mut value);
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Applies YAML merge keys (`<<: *anchor`), which Compose uses; the mapping's own keys win.
fn merge_keys(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            if let Some(Value::Mapping(base)) = map.remove("<<") {
                for (k, v) in base {
                    if !map.contains_key(&k) {
                        map.insert(k, v);
                    }
                }
            }
            for (_, v) in map.iter_mut() {
                merge_keys(v);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(merge_keys),
        _ => {}
    }
}

fn get<'a>(map: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(map, |v, key| v.get(*key))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .map(|v| v.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The `recsys` argument lists of a container: its args/command as a list, or the `recsys ...`
/// commands inside a `sh -c` script.
fn recsys_invocations(command: &[String], args: &[String]) -> Vec<Vec<String>> {
    let all: Vec<String> = command.iter().chain(args).cloned().collect();
    if all.first().is_some_and(|c| c == "/bin/sh") {
        let script = all.last().expect("a script");
        return script
            .split("&&")
            .map(|part| {
                part.split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|words| words.first().is_some_and(|w| w == "recsys"))
            .map(|words| words[1..].to_vec())
            .collect();
    }
    vec![all]
}

fn assert_recsys_accepts(origin: &str, args: &[String]) {
    assert!(!args.is_empty(), "{origin}: no recsys command");
    let o = Command::new(env!("CARGO_BIN_EXE_recsys"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{origin}: `recsys {}` is refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `RECSYS__*` variables of a container's environment (Compose map or Kubernetes list).
fn recsys_env(env: Option<&Value>) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = match env {
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                };
                (k.as_str().unwrap().to_string(), value)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| {
                Some((
                    item.get("name")?.as_str()?.to_string(),
                    item.get("value")?.as_str()?.to_string(),
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter(|(k, _)| k.starts_with("RECSYS__"))
        .collect()
}

#[test]
fn deploy_configs_match_the_config_structs() {
    let mut tomls = Vec::new();
    files(&deploy(), &["toml"], &mut tomls);
    assert!(tomls.len() >= 3, "{tomls:?}");
    for file in tomls {
        let config = Config::load_with_env(Some(&file), Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if file.ends_with("single-machine/recsys.toml") {
            // The single-machine file documents the defaults; keep it true.
            assert_eq!(config, Config::default(), "{}", file.display());
        }
    }
}

#[test]
fn every_yaml_file_parses_and_kubernetes_objects_are_complete() {
    let mut yamls = Vec::new();
    files(&deploy(), &["yaml", "yml"], &mut yamls);
    assert!(yamls.len() >= 7, "{yamls:?}");
    for file in &yamls {
        let docs = yaml_documents(file);
        assert!(!docs.is_empty(), "{}: empty", file.display());
        if file.parent().unwrap().ends_with("kubernetes") {
            for doc in &docs {
                for field in ["apiVersion", "kind"] {
                    assert!(doc.get(field).is_some(), "{}: no {field}", file.display());
                }
                let name = get(doc, &["metadata", "name"]).and_then(Value::as_str);
                assert!(name.is_some(), "{}: no metadata.name", file.display());
            }
        }
    }
}

#[test]
fn the_configmap_embeds_the_cluster_config() {
    let cluster = std::fs::read_to_string(deploy().join("cluster/recsys.toml")).unwrap();
    let docs = yaml_documents(&deploy().join("kubernetes/configmap.yaml"));
    let embedded = get(&docs[0], &["data", "recsys.toml"])
        .and_then(Value::as_str)
        .expect("data.recsys.toml");
    assert_eq!(
        embedded.trim_end(),
        cluster.trim_end(),
        "kubernetes/configmap.yaml differs from cluster/recsys.toml"
    );
}

#[test]
fn compose_services_run_real_commands_with_valid_config() {
    let docs = yaml_documents(&deploy().join("docker-compose.yml"));
    let services = docs[0]
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    let cluster = deploy().join("cluster/recsys.toml");
    let mut checked = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if service.get("image").and_then(Value::as_str) != Some("recsys:latest") {
            continue;
        }
        let env = recsys_env(service.get("environment"));
        Config::load_with_env(Some(&cluster), env)
            .unwrap_or_else(|e| panic!("compose service {name}: {e}"));
        let command = strings(service.get("command"));
        let entrypoint = strings(service.get("entrypoint"));
        for args in recsys_invocations(&entrypoint, &command) {
            assert_recsys_accepts(&format!("compose service {name}"), &args);
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} recsys commands found");
}

#[test]
fn kubernetes_containers_run_real_commands_with_valid_config() {
    let cluster = deploy().join("cluster/recsys.toml");
    let mut yamls = Vec::new();
    files(&deploy().join("kubernetes"), &["yaml"], &mut yamls);
    let mut checked = 0;
    for file in yamls {
        for doc in yaml_documents(&file) {
            let spec = match doc.get("kind").and_then(Value::as_str) {
                Some("Deployment") => get(&doc, &["spec", "template", "spec"]),
                Some("CronJob") => get(&doc, &["spec", "jobTemplate", "spec", "template", "spec"]),
                _ => None,
            };
            let Some(containers) = spec
                .and_then(|s| s.get("containers"))
                .and_then(Value::as_sequence)
            else {
                continue;
            };
            for c in containers {
                if c.get("image").and_then(Value::as_str) != Some("recsys:latest") {
                    continue;
                }
                let origin = format!("{}: container {:?}", file.display(), c.get("name"));
                Config::load_with_env(Some(&cluster), recsys_env(c.get("env")))
                    .unwrap_or_else(|e| panic!("{origin}: {e}"));
                for args in recsys_invocations(&strings(c.get("command")), &strings(c.get("args")))
                {
                    assert_recsys_accepts(&origin, &args);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 4, "only {checked} recsys commands found");
}

#[test]
fn envoy_hashes_on_the_member_header_and_checks_the_ranking_service() {
    let docs = yaml_documents(&deploy().join("envoy/envoy.yaml"));
    let text = serde_yaml::to_string(&docs[0]).unwrap();
    assert!(text.contains("header_name: x-recsys-member-id"), "{text}");
    assert!(text.contains("lb_policy: RING_HASH"), "{text}");
    let clusters = get(&docs[0], &["static_resources", "clusters"])
        .and_then(Value::as_sequence)
        .expect("clusters");
    let health = get(&clusters[0], &["health_checks"])
        .and_then(Value::as_sequence)
        .and_then(|h| h[0].get("grpc_health_check"))
        .and_then(|g| g.get("service_name"))
        .and_then(Value::as_str);
    assert_eq!(health, Some(recsys_online::server::SERVICE_NAME));
}

#[test]
fn the_local_scripts_parse() {
    let mut scripts = Vec::new();
    files(&deploy().join("local"), &["sh"], &mut scripts);
    assert!(scripts.len() >= 3, "{scripts:?}");
    for script in scripts {
        let o = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The fault: `kill $(cat var/tansu/tansu.pid)`, as `start-tansu.sh` said, killed only the shell
/// around tansu, which kept the port. Now the pid is tansu's and `stop.sh` frees the port.
#[test]
fn start_tansu_writes_the_brokers_own_pid_and_stop_sh_stops_it() {
    use recsys_shared::testkit::{free_port, tansu_binary, wait_for_port};
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let run = |script: &str| {
        let o = Command::new("bash")
            .arg(deploy().join("local").join(script))
            .env("TANSU", tansu_binary())
            .env("NO_INSTALL", "1")
            .env("PORT", port.to_string())
            .env("DATA", data.path())
            .env("DEV", data.path().join("dev"))
            .env("REDIS_PORT", free_port().to_string())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run("start-tansu.sh");
    assert!(wait_for_port(port, std::time::Duration::from_secs(10)));
    let pid = std::fs::read_to_string(data.path().join("tansu.pid")).unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", pid.trim())).unwrap();
    assert!(
        exe.file_name().is_some_and(|n| n == "tansu"),
        "the pid file names {exe:?}, not tansu"
    );
    run("stop.sh");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} still open after stop.sh"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The fault: the README said `nearline produce --input events.jsonl` and no such file existed.
/// `sample-events.sh` writes one, stamped now, that a worker accepts line by line.
#[test]
fn sample_events_are_what_a_worker_accepts() {
    let o = Command::new("bash")
        .arg(deploy().join("local/sample-events.sh"))
        .arg("25")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, &o.stdout).unwrap();
    let rules = recsys_nearline::event::EventRules::from_config(&Config::default());
    let now = chrono::Utc::now().timestamp_millis();
    let events =
        recsys_nearline::produce::read_events(&file, |e| rules.validate(e, None, now)).unwrap();
    assert_eq!(events.len(), 25);
    assert!(events.iter().filter(|e| e.user_id == "u0000007").count() >= 10);
}

/// The fault: without tansu, `start-tansu.sh` silently began a 10-25 minute `cargo install`.
/// It says so first, and with NO_INSTALL=1 stops there.
#[test]
fn start_tansu_without_tansu_says_so_before_building_it() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(deploy().join("local/start-tansu.sh"))
        .env("HOME", home.path())
        .env("PATH", "/usr/bin:/bin")
        .env_remove("TANSU")
        .env("NO_INSTALL", "1")
        .env("DATA", home.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("tansu is not installed"), "{err}");
}
