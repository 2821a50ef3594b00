//! The Kubernetes manifests in `deploy/` checked against the code they deploy: the health
//! router's paths and port, the metric names the registry exports, the environment variables
//! the configuration loader reads (and that their values build a valid `Config`), the names the
//! autoscaler watches, the shutdown timeout the grace period must cover, and the alerts of
//! `docs/HEALTH.md`.
//!
//! Every YAML document under `deploy/` is parsed. The checks are functions over the parsed
//! documents, so the last tests feed them broken manifests and assert that they complain.
#![cfg(feature = "http")]
// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jetstream_bridge::config::ConfigBuilder;
use jetstream_bridge::health::{
    MessageStatus, Metrics, DEFAULT_MIN_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT, HEALTH_PATH,
    LIVE_PATH, METRICS_PATH, READY_PATH,
};
use jetstream_bridge::Config;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// Splits a YAML stream at its `---` document markers (at column 0, as in every manifest here).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs
}

fn parse(file: &str, text: &str) -> Vec<Doc> {
    split_documents(text)
        .into_iter()
        .enumerate()
        .filter_map(|(i, doc)| {
            let value: Value = serde_yaml_ng::from_str(&doc)
                .unwrap_or_else(|e| panic!("{file}, document {}: {e}", i + 1));
            (!value.is_null()).then(|| Doc {
                file: file.to_owned(),
                value,
            })
        })
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(path);
        }
    }
}

/// Every document of every `.yaml`/`.yml` file under `deploy/`.
fn manifests() -> Vec<Doc> {
    let root = workspace().join("deploy");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifests under {}", root.display());
    files
        .iter()
        .flat_map(|path| {
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            let text = std::fs::read_to_string(path).unwrap();
            parse(&name, &text)
        })
        .collect()
}

fn one<'a>(docs: &'a [Doc], kind: &str) -> &'a Doc {
    let found: Vec<_> = docs.iter().filter(|d| d.kind() == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn named<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Option<&'a Doc> {
    docs.iter().find(|d| d.kind() == kind && d.name() == name)
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The pod spec of a Deployment or Job, or of a CronJob's job template.
fn pod_spec(doc: &Doc) -> &Value {
    match doc.kind() {
        "CronJob" => &doc.value["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc.value["spec"]["template"]["spec"],
    }
}

/// Kinds whose pods run our programs.
const WORKLOADS: [&str; 3] = ["Deployment", "Job", "CronJob"];

/// The containers of a workload, init containers first.
fn containers(doc: &Doc) -> Vec<&Value> {
    let spec = pod_spec(doc);
    array(&spec["initContainers"])
        .iter()
        .chain(array(&spec["containers"]))
        .collect()
}

fn container_name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or_default()
}

/// `true` when every `key: value` of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_object() else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// What the code says
// ---------------------------------------------------------------------------------------------

/// The quoted upper-case names (`"NATS_URLS"`) in a Rust source text.
fn quoted_upper_names(source: &str) -> BTreeSet<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 2
                && s.contains('_')
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && s.as_bytes()[0].is_ascii_uppercase()
        })
        .map(str::to_owned)
        .collect()
}

/// The environment variables the configuration loader reads: the names in
/// `jetstream-bridge-config`'s `env.rs` (its table of variables is private), outside its tests.
fn config_env_vars() -> BTreeSet<String> {
    let source = read("crates/jetstream-bridge-config/src/env.rs");
    let code = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    let vars = quoted_upper_names(code);
    for expected in [
        "NATS_URLS",
        "NATS_ENV",
        "APP_NAME",
        "DESTINATION_APP",
        "DATABASE_URL",
        "JETSTREAM_ACK_WAIT",
    ] {
        assert!(
            vars.contains(expected),
            "env.rs no longer reads {expected}?"
        );
    }
    vars
}

/// Variables the deployed programs read besides the configuration: those the worker example
/// and the command line read, where they exist.
fn program_env_vars() -> BTreeSet<String> {
    let mut sources = vec![workspace().join("crates/jetstream-bridge/examples/worker.rs")];
    if let Ok(entries) = std::fs::read_dir(workspace().join("crates/jetstream-bridge-cli/src")) {
        sources.extend(entries.map(|e| e.unwrap().path()));
    }
    sources
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|source| quoted_upper_names(&source))
        .collect()
}

/// Series names (as PromQL sees them) of every metric the registry holds: `# TYPE` lines of
/// the OpenMetrics text, with the counter and histogram suffixes. One message is recorded
/// first, because labelled families without a series are not written at all.
fn exported_series() -> BTreeSet<String> {
    let metrics = Metrics::new();
    metrics.record_message("order.created", MessageStatus::Success, Duration::ZERO);
    let text = metrics.encode().unwrap();
    let mut series = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                series.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                series.insert(name.to_owned());
            }
        }
    }
    for expected in [
        "jetstream_messages_total",
        "jetstream_processing_duration_seconds_bucket",
        "jetstream_dlq_size",
        "jetstream_consumer_pending",
    ] {
        assert!(
            series.contains(expected),
            "{expected} missing from {series:?}"
        );
    }
    series
}

/// The `jetstream_*` identifiers of a PromQL expression.
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("jetstream_"))
        .map(str::to_owned)
        .collect()
}

/// The port the health docs and the router's own example bind (`0.0.0.0:<port>`).
fn documented_health_port() -> u64 {
    let port_in = |file: &str| -> u64 {
        let text = read(file);
        let rest = text
            .split("0.0.0.0:")
            .nth(1)
            .unwrap_or_else(|| panic!("{file} binds no 0.0.0.0:<port>"));
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let docs = port_in("docs/HEALTH.md");
    assert_eq!(
        port_in("crates/jetstream-bridge-health/src/http.rs"),
        docs,
        "the router's example and docs/HEALTH.md disagree on the port"
    );
    docs
}

/// The consumer's default shutdown timeout (`shutdown_timeout: Duration::from_secs(N)` in the
/// builder's defaults, somewhere in the consumer crate's sources; the value is not public).
fn consumer_shutdown_timeout() -> Duration {
    let dir = workspace().join("crates/jetstream-bridge-consumer/src");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let found: BTreeSet<u64> = files
        .iter()
        .flat_map(|path| {
            let source = std::fs::read_to_string(path).unwrap();
            source
                .lines()
                .filter_map(|line| {
                    line.trim()
                        .strip_prefix("shutdown_timeout: Duration::from_secs(")?
                        .split(')')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one default `shutdown_timeout: Duration::from_secs(N)` in {}, found {found:?}",
        dir.display()
    );
    Duration::from_secs(found.into_iter().next().unwrap())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks (each returns its complaints, so the last tests can show they fire)
// ---------------------------------------------------------------------------------------------

/// Environment variables set by workloads or ConfigMaps that no code reads, and secrets given
/// as plain values.
fn env_problems(docs: &[Doc], known: &BTreeSet<String>) -> Vec<String> {
    const SECRETS: [&str; 4] = [
        "NATS_URLS",
        "NATS_URL",
        "DATABASE_URL",
        "JETSTREAM_NKEY_SEED",
    ];
    let mut problems = Vec::new();
    for doc in docs {
        match doc.kind() {
            "ConfigMap" => {
                for key in doc.value["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|e| e.0)
                {
                    if !known.contains(key) {
                        problems.push(format!(
                            "{}: ConfigMap key {key} is read by no code",
                            doc.file
                        ));
                    }
                    if SECRETS.contains(&key.as_str()) {
                        problems.push(format!("{}: {key} belongs in a Secret", doc.file));
                    }
                }
            }
            kind if WORKLOADS.contains(&kind) => {
                for c in containers(doc) {
                    for var in array(&c["env"]) {
                        let name = var["name"].as_str().unwrap_or_default();
                        if !known.contains(name) {
                            problems.push(format!(
                                "{}: container {}: variable {name} is read by no code",
                                doc.file,
                                container_name(c)
                            ));
                        }
                        if SECRETS.contains(&name) && var["valueFrom"]["secretKeyRef"].is_null() {
                            problems.push(format!(
                                "{}: container {}: {name} must come from a Secret",
                                doc.file,
                                container_name(c)
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

/// Metric names in alert rules and autoscalers that the registry does not export, and
/// `container="…"` matchers naming no container of the workloads.
fn metric_problems(docs: &[Doc], series: &BTreeSet<String>) -> Vec<String> {
    let container_names: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "Deployment")
        .flat_map(containers)
        .map(container_name)
        .collect();
    let mut problems = Vec::new();
    let mut check_expr = |file: &str, what: &str, expr: &str| {
        for metric in referenced_metrics(expr) {
            if !series.contains(&metric) {
                problems.push(format!("{file}: {what}: {metric} is not exported"));
            }
        }
        for matcher in expr.split("container=\"").skip(1) {
            let name = matcher.split('"').next().unwrap_or_default();
            if !container_names.contains(name) {
                problems.push(format!("{file}: {what}: no container named {name:?}"));
            }
        }
    };
    for doc in docs {
        match doc.kind() {
            "PrometheusRule" => {
                for group in array(&doc.value["spec"]["groups"]) {
                    for rule in array(&group["rules"]) {
                        let what = rule["alert"].as_str().unwrap_or("a rule");
                        check_expr(&doc.file, what, rule["expr"].as_str().unwrap_or_default());
                    }
                }
            }
            "HorizontalPodAutoscaler" => {
                for metric in array(&doc.value["spec"]["metrics"]) {
                    for source in ["external", "pods", "object"] {
                        if let Some(name) = metric[source]["metric"]["name"].as_str() {
                            check_expr(&doc.file, "metric", name);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

/// Probes, ports and scrape settings that do not match the health router.
fn health_endpoint_problems(docs: &[Doc], port: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let deployment = one(docs, "Deployment");
    let worker = &pod_spec(deployment)["containers"][0];
    let health_port = array(&worker["ports"])
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(port));
    let Some(health_port) = health_port else {
        return vec![format!(
            "{}: the worker exposes no containerPort {port} (the health router's port)",
            deployment.file
        )];
    };
    let port_name = health_port["name"].as_str().unwrap_or_default().to_owned();
    let probe_port_ok = |p: &Value| p.as_u64() == Some(port) || p.as_str() == Some(&port_name);
    for (probe, paths) in [
        ("livenessProbe", &[LIVE_PATH][..]),
        ("readinessProbe", &[READY_PATH][..]),
        ("startupProbe", &[LIVE_PATH, READY_PATH, HEALTH_PATH][..]),
    ] {
        let get = &worker[probe]["httpGet"];
        if get.is_null() {
            problems.push(format!("{}: no HTTP {probe}", deployment.file));
            continue;
        }
        let path = get["path"].as_str().unwrap_or_default();
        if !paths.contains(&path) {
            problems.push(format!(
                "{}: {probe} path {path}, expected {paths:?}",
                deployment.file
            ));
        }
        if !probe_port_ok(&get["port"]) {
            problems.push(format!(
                "{}: {probe} port {}, expected {port}",
                deployment.file, get["port"]
            ));
        }
    }
    let readiness = &worker["readinessProbe"];
    if readiness["periodSeconds"].as_u64().unwrap_or(10) < DEFAULT_MIN_PROBE_INTERVAL.as_secs() {
        problems.push(format!(
            "{}: readiness polled faster than the probe rate limit ({DEFAULT_MIN_PROBE_INTERVAL:?})",
            deployment.file
        ));
    }
    if readiness["timeoutSeconds"].as_u64().unwrap_or(1) <= DEFAULT_PROBE_TIMEOUT.as_secs() {
        problems.push(format!(
            "{}: readiness timeout not above the probe's own timeout ({DEFAULT_PROBE_TIMEOUT:?})",
            deployment.file
        ));
    }
    let annotations = &deployment.value["spec"]["template"]["metadata"]["annotations"];
    if !annotations.is_null() {
        if annotations["prometheus.io/port"].as_str() != Some(port.to_string().as_str()) {
            problems.push(format!(
                "{}: prometheus.io/port is not {port}",
                deployment.file
            ));
        }
        if annotations["prometheus.io/path"].as_str() != Some(METRICS_PATH) {
            problems.push(format!(
                "{}: prometheus.io/path is not {METRICS_PATH}",
                deployment.file
            ));
        }
    }
    for monitor in docs.iter().filter(|d| d.kind() == "PodMonitor") {
        for endpoint in array(&monitor.value["spec"]["podMetricsEndpoints"]) {
            if endpoint["path"].as_str() != Some(METRICS_PATH) {
                problems.push(format!(
                    "{}: scrape path is not {METRICS_PATH}",
                    monitor.file
                ));
            }
            if !probe_port_ok(&endpoint["port"]) {
                problems.push(format!("{}: scrape port is not {port_name}", monitor.file));
            }
        }
    }
    problems
}

/// The environment a container sees: its ConfigMaps (`envFrom`), then its `env` entries, with
/// Secret references resolved from the example Secrets and field references as placeholders.
fn container_env(docs: &[Doc], c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in array(&c["envFrom"]) {
        let name = source["configMapRef"]["name"]
            .as_str()
            .expect("only configMapRef is used in envFrom");
        let map = named(docs, "ConfigMap", name)
            .unwrap_or_else(|| panic!("container {}: no ConfigMap {name}", container_name(c)));
        for (k, v) in map.value["data"].as_object().into_iter().flatten() {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {name}: {k} is not a string"));
            env.insert(k.clone(), v.to_owned());
        }
    }
    for var in array(&c["env"]) {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = var.get("value") {
            v.as_str()
                .unwrap_or_else(|| panic!("{name}: env values must be strings, got {v}"))
                .to_owned()
        } else if let Some(r) = var["valueFrom"].get("secretKeyRef") {
            let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            let doc = named(docs, "Secret", secret)
                .unwrap_or_else(|| panic!("{name}: no Secret {secret} in deploy/"));
            doc.value["stringData"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: Secret {secret} has no key {key}"))
                .to_owned()
        } else if var["valueFrom"].get("fieldRef").is_some() {
            "pod-0".to_owned()
        } else {
            panic!("{name}: unsupported value source {var}");
        };
        env.insert(name, value);
    }
    env
}

fn config_of(env: &BTreeMap<String, String>) -> Result<Config, String> {
    ConfigBuilder::from_env_pairs(env.clone())
        .build()
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every document parses and is a named Kubernetes object, and each concern has its manifest.
#[test]
fn every_manifest_is_a_named_kubernetes_object() {
    let docs = manifests();
    let mut seen = BTreeSet::new();
    for doc in &docs {
        assert!(
            doc.value["apiVersion"].is_string(),
            "{}: no apiVersion",
            doc.file
        );
        assert!(!doc.kind().is_empty(), "{}: no kind", doc.file);
        assert!(
            !doc.name().is_empty(),
            "{}: a {} without a name",
            doc.file,
            doc.kind()
        );
        assert!(
            seen.insert((doc.kind().to_owned(), doc.name().to_owned())),
            "{}: {} {} defined twice",
            doc.file,
            doc.kind(),
            doc.name()
        );
    }
    for kind in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Job",
        "CronJob",
        "ScaledObject",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PrometheusRule",
        "PodMonitor",
    ] {
        assert!(
            docs.iter().any(|d| d.kind() == kind),
            "no {kind} in deploy/"
        );
    }
}

/// Probes use the router's paths on its port; readiness respects the probe's rate limit and
/// timeout; the scrape settings point at `/metrics` on the same port.
#[test]
fn probes_and_scraping_match_the_health_router() {
    let docs = manifests();
    let port = documented_health_port();
    let problems = health_endpoint_problems(&docs, port);
    assert!(problems.is_empty(), "{problems:#?}");
    if let Ok(worker) =
        std::fs::read_to_string(workspace().join("crates/jetstream-bridge/examples/worker.rs"))
    {
        assert!(
            worker.contains(&port.to_string()),
            "examples/worker.rs does not use port {port}"
        );
    }
}

/// Every variable a workload or ConfigMap sets is one the code reads, and secrets come from
/// Secrets.
#[test]
fn environment_variables_are_read_by_the_code() {
    let docs = manifests();
    let known: BTreeSet<String> = config_env_vars()
        .into_iter()
        .chain(program_env_vars())
        .collect();
    let problems = env_problems(&docs, &known);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The environment of every container builds a valid configuration, and the provisioning Job
/// provisions exactly the topology the workers bind to, with the admin identity.
#[test]
fn workers_and_provisioning_share_one_valid_configuration() {
    let docs = manifests();
    let deployment = one(&docs, "Deployment");
    let job = one(&docs, "Job");
    let worker_env = container_env(&docs, &pod_spec(deployment)["containers"][0]);
    let worker = config_of(&worker_env).unwrap_or_else(|e| panic!("worker: {e}"));
    assert!(
        worker.use_outbox() && worker.use_inbox(),
        "the worker runs the relay and the inbox"
    );

    // Same settings apart from the identity (URLs, database, connection name).
    let normalise = |env: &BTreeMap<String, String>| {
        let mut env = env.clone();
        for var in ["NATS_URLS", "DATABASE_URL", "JETSTREAM_CONNECTION_NAME"] {
            env.remove(var);
        }
        config_of(&env).unwrap()
    };
    let mut steps = Vec::new();
    for c in containers(job) {
        let env = container_env(&docs, c);
        config_of(&env).unwrap_or_else(|e| panic!("job container {}: {e}", container_name(c)));
        assert_eq!(
            normalise(&env),
            normalise(&worker_env),
            "job container {}",
            container_name(c)
        );
        assert_ne!(
            env["NATS_URLS"], worker_env["NATS_URLS"],
            "the Job must use the admin NATS user"
        );
        assert_ne!(
            env["DATABASE_URL"], worker_env["DATABASE_URL"],
            "the Job must use the schema owner"
        );
        let command: Vec<&str> = array(&c["command"])
            .iter()
            .chain(array(&c["args"]))
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(command.first(), Some(&"jetstream-bridge"), "{command:?}");
        steps.extend(command.into_iter().skip(1).take(1));
    }
    let position = |step: &str| steps.iter().position(|s| *s == step);
    let (migrate, ensure) = (position("migrate"), position("ensure-topology"));
    assert!(
        migrate.is_some() && ensure.is_some() && migrate < ensure,
        "the Job must run migrate, then ensure-topology: {steps:?}"
    );
    assert_eq!(pod_spec(job)["restartPolicy"], "Never");

    // Maintenance jobs run with the workers' configuration and identity.
    for cron in docs.iter().filter(|d| d.kind() == "CronJob") {
        for c in containers(cron) {
            let env = container_env(&docs, c);
            assert_eq!(
                normalise(&env),
                normalise(&worker_env),
                "{}",
                container_name(c)
            );
            assert_eq!(
                env["DATABASE_URL"],
                worker_env["DATABASE_URL"],
                "{}",
                container_name(c)
            );
        }
    }
}

/// KEDA watches the stream and durable the configuration derives, and scales the worker
/// Deployment; the HPA alternative and the PodDisruptionBudget target it too.
#[test]
fn autoscaling_and_disruption_budget_target_the_worker() {
    let docs = manifests();
    let deployment = one(&docs, "Deployment");
    let pod_labels = &deployment.value["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &deployment.value["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert!(
        deployment.value["spec"].get("replicas").is_none(),
        "the autoscaler owns the replica count"
    );
    let worker = config_of(&container_env(
        &docs,
        &pod_spec(deployment)["containers"][0],
    ))
    .unwrap();

    let scaled = one(&docs, "ScaledObject");
    let target = &scaled.value["spec"]["scaleTargetRef"];
    assert_eq!(
        (target["kind"].as_str(), target["name"].as_str()),
        (Some("Deployment"), Some(deployment.name()))
    );
    let triggers = array(&scaled.value["spec"]["triggers"]);
    let trigger = triggers
        .iter()
        .find(|t| t["type"] == "nats-jetstream")
        .expect("a nats-jetstream trigger");
    assert_eq!(
        trigger["metadata"]["stream"].as_str(),
        Some(worker.stream_name().as_str())
    );
    assert_eq!(
        trigger["metadata"]["consumer"].as_str(),
        Some(worker.durable_name().as_str())
    );
    assert!(trigger["metadata"]["lagThreshold"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .is_some());
    assert!(
        scaled.value["spec"]["minReplicaCount"].as_u64() >= Some(2),
        "keep two workers"
    );

    let hpa = one(&docs, "HorizontalPodAutoscaler");
    assert_eq!(
        hpa.value["spec"]["scaleTargetRef"]["name"].as_str(),
        Some(deployment.name())
    );

    let pdb = one(&docs, "PodDisruptionBudget");
    assert!(
        selects(&pdb.value["spec"]["selector"]["matchLabels"], pod_labels),
        "the PDB selects no worker"
    );
    for monitor in docs.iter().filter(|d| d.kind() == "PodMonitor") {
        assert!(selects(
            &monitor.value["spec"]["selector"]["matchLabels"],
            pod_labels
        ));
    }
}

/// The grace period covers the consumer's shutdown timeout plus one readiness period, so a
/// draining pod is not killed mid-message; every container has requests and limits.
#[test]
fn shutdown_and_resources_are_bounded() {
    let docs = manifests();
    let deployment = one(&docs, "Deployment");
    let grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let readiness = pod_spec(deployment)["containers"][0]["readinessProbe"]["periodSeconds"]
        .as_u64()
        .unwrap_or(10);
    let shutdown = consumer_shutdown_timeout().as_secs();
    assert!(
        grace > shutdown + readiness,
        "grace {grace}s ≤ shutdown {shutdown}s + readiness {readiness}s"
    );

    for doc in docs
        .iter()
        .filter(|d| matches!(d.kind(), "Deployment" | "Job"))
    {
        for c in containers(doc) {
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"][bound][resource].is_string(),
                        "{}: container {} has no {bound}.{resource}",
                        doc.file,
                        container_name(c)
                    );
                }
            }
        }
    }
}

/// Alert rules and autoscaler metrics name only exported series; the PrometheusRule carries
/// every alert of `docs/HEALTH.md` with the same expression, duration and severity.
#[test]
fn alerts_use_exported_metrics_and_match_the_health_guide() {
    let docs = manifests();
    let problems = metric_problems(&docs, &exported_series());
    assert!(problems.is_empty(), "{problems:#?}");

    let guide = read("docs/HEALTH.md");
    let block = guide
        .split("```yaml\n")
        .find(|b| b.starts_with("groups:"))
        .and_then(|b| b.split("```").next())
        .expect("docs/HEALTH.md has no Prometheus rules block");
    let documented: Value = serde_yaml_ng::from_str(block).unwrap();
    let rules: Vec<&Value> = one(&docs, "PrometheusRule").value["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| array(&g["rules"]))
        .collect();
    let normalise = |v: &Value| {
        v.as_str()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut count = 0;
    for group in array(&documented["groups"]) {
        for rule in array(&group["rules"]) {
            count += 1;
            let alert = rule["alert"].as_str().unwrap();
            let ours = rules
                .iter()
                .find(|r| r["alert"] == rule["alert"])
                .unwrap_or_else(|| panic!("prometheus-rules.yaml lacks {alert}"));
            assert_eq!(
                normalise(&ours["expr"]),
                normalise(&rule["expr"]),
                "{alert}"
            );
            assert_eq!(ours["for"], rule["for"], "{alert}");
            assert_eq!(
                ours["labels"]["severity"], rule["labels"]["severity"],
                "{alert}"
            );
        }
    }
    assert!(count >= 6, "only {count} rules read from docs/HEALTH.md");
}

// ---------------------------------------------------------------------------------------------
// The checks fail when they should
// ---------------------------------------------------------------------------------------------

const BROKEN: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: { name: broken }
data:
  JETSTREAM_BATCHSIZE: "50"
  DATABASE_URL: "postgres://u:p@db/app"
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: broken }
spec:
  template:
    metadata:
      annotations: { prometheus.io/port: "8080", prometheus.io/path: /metrics }
    spec:
      containers:
        - name: worker
          ports: [{ name: health, containerPort: 3000 }]
          env:
            - { name: NATS_URLS, value: "nats://u:p@n1:4222" }
            - { name: APP_NAAME, value: billing }
          livenessProbe: { httpGet: { path: /healthz, port: health } }
          readinessProbe: { httpGet: { path: /health/ready, port: 8080 }, periodSeconds: 1, timeoutSeconds: 1 }
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: { name: broken }
spec:
  groups:
    - name: g
      rules:
        - alert: Lag
          expr: jetstream_consumer_lag > 1000
        - alert: Memory
          expr: container_memory_working_set_bytes{container="consumer"} > 1
"#;

/// The checks above complain about a misspelt variable, a secret in a ConfigMap or a plain
/// value, a wrong probe path or port, a too-eager readiness probe, a wrong scrape port, an
/// unknown metric and an unknown container.
#[test]
fn the_checks_reject_broken_manifests() {
    let docs = parse("broken.yaml", BROKEN);
    let env = env_problems(&docs, &config_env_vars()).join("\n");
    for expected in [
        "JETSTREAM_BATCHSIZE is read by no code",
        "DATABASE_URL belongs in a Secret",
        "NATS_URLS must come from a Secret",
        "APP_NAAME is read by no code",
    ] {
        assert!(env.contains(expected), "missing {expected:?} in:\n{env}");
    }

    let health = health_endpoint_problems(&docs, 3000).join("\n");
    for expected in [
        "livenessProbe path /healthz",
        "readinessProbe port 8080",
        "no HTTP startupProbe",
        "readiness polled faster",
        "readiness timeout not above",
        "prometheus.io/port is not 3000",
    ] {
        assert!(
            health.contains(expected),
            "missing {expected:?} in:\n{health}"
        );
    }
    assert!(!health.contains("prometheus.io/path"), "{health}");

    let metrics = metric_problems(&docs, &exported_series()).join("\n");
    assert!(
        metrics.contains("jetstream_consumer_lag is not exported"),
        "{metrics}"
    );
    assert!(
        metrics.contains("no container named \"consumer\""),
        "{metrics}"
    );
    assert!(
        !metrics.contains("container_memory_working_set_bytes"),
        "{metrics}"
    );
}

/// A value the configuration cannot read fails the build, naming the variable.
#[test]
fn an_unreadable_value_fails_the_configuration() {
    let docs = manifests();
    let deployment = one(&docs, "Deployment");
    let mut env = container_env(&docs, &pod_spec(deployment)["containers"][0]);
    env.insert("JETSTREAM_ACK_WAIT".into(), "30".into());
    let err = config_of(&env).unwrap_err();
    assert!(err.contains("JETSTREAM_ACK_WAIT"), "{err}");
}
