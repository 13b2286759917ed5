//! The shipped Prometheus rules and Grafana dashboard (packaging/prometheus) checked and
//! unit-tested by Debian's promtool, and a real Prometheus scraping a real daemon: a failing
//! curl shows in its HTTP API, the rules load, the dashboard's queries run, and no metric
//! label holds a peer address or an SNI. Needs root
//! (`sudo ./x test`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tlsmon_e2e::*;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus")
}

/// `promtool args...` in the rules' folder: (success, stdout and stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    run_bounded(
        with_stderr("promtool").args(args).current_dir(rules_dir()),
        Duration::from_secs(60),
    )
}

#[test]
#[ignore = "needs Debian's promtool (scripts/setup.sh test installs it; sudo ./x test)"]
fn the_shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "tlsmon-rules.yml"]);
    assert!(ok && out.contains("SUCCESS: 6 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "tlsmon-rules.test.yml"]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// The dashboard's queries, with the `$instance` variable as Grafana's "All" gives it.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(rules_dir().join("tlsmon-dashboard.json"))
        .expect("tlsmon-dashboard.json");
    let dash: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let queries: Vec<String> = dash["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace("$instance", ".*")))
        .collect();
    assert!(queries.len() >= 8, "{queries:?}");
    queries
}

#[test]
#[ignore = "needs Debian's promtool (scripts/setup.sh test installs it; sudo ./x test)"]
fn every_dashboard_query_is_promql_promtool_accepts() {
    // promtool checks PromQL in rule files: each query becomes a recording rule.
    let dir = TempDir::new("dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: tlsmon_dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(q).expect("quoted")
        ));
    }
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).expect("rules");
    let (ok, out) = promtool(&["check", "rules", &file.display().to_string()]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// GET on Prometheus's HTTP API, the `data` of a success.
fn api(port: u16, path: &str, query: Option<&str>) -> Value {
    api_answer(port, path, query)["data"].clone()
}

/// GET on Prometheus's HTTP API, the whole answer.
fn api_answer(port: u16, path: &str, query: Option<&str>) -> Value {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "-G"])
        .arg(format!("http://127.0.0.1:{port}{path}"));
    if let Some(q) = query {
        cmd.args(["--data-urlencode", &format!("query={q}")]);
    }
    let (_, out) = run_bounded(&mut cmd, Duration::from_secs(10));
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_real_prometheus_scrapes_a_failing_curl_and_loads_the_rules() {
    let port = free_port();
    let d = Daemon::start_with_status(&format!("listen = \"127.0.0.1:{port}\""));
    let dir = TempDir::new("prometheus");
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tlsmon\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            rules_dir().join("tlsmon-rules.yml").display()
        ),
    )
    .expect("prometheus.yml");
    let prom_port = free_port();
    let _prometheus = spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
    );
    let (_pki, _server, server_port) = tls12_self_signed_server();
    assert!(
        !curl_named("secret.example", server_port),
        "curl trusted a self-signed certificate"
    );
    // A handshake closed without data (a health check): the closed_after_handshake series.
    openssl_client(
        format!("127.0.0.1:{server_port}").parse().expect("addr"),
        &[],
    );
    let t0 = Instant::now();
    let mut failed = Value::Null;
    while t0.elapsed() < Duration::from_secs(60) {
        failed = api(
            prom_port,
            "/api/v1/query",
            Some(r#"tlsmon_handshakes_total{outcome="failed",cause="self_signed"}"#),
        );
        if failed["result"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        failed["result"].as_array().is_some_and(|r| !r.is_empty()),
        "Prometheus has no failed handshake: {failed}\n{}",
        d.log()
    );
    let alerts = api(
        prom_port,
        "/api/v1/query",
        Some(r#"tlsmon_alerts_total{process="curl",cause="self_signed"}"#),
    );
    assert!(
        alerts["result"].as_array().is_some_and(|r| !r.is_empty()),
        "{alerts}"
    );
    // The rules loaded and evaluate without error.
    let rules = api(prom_port, "/api/v1/rules", None);
    let group = &rules["groups"][0];
    assert_eq!(group["name"], "tlsmon", "{rules}");
    assert!(
        group["rules"]
            .as_array()
            .is_some_and(|r| r.len() == 6 && r.iter().all(|r| r["health"] != "err")),
        "{rules}"
    );
    // The dashboard's queries run on the real server, on metrics the daemon exports (a
    // misspelled name would run too, on nothing).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15)
        && !d
            .get("/metrics")
            .1
            .contains("tlsmon_closed_after_handshake_total")
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let exported: Vec<String> = d
        .get("/metrics")
        .1
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    for q in dashboard_queries() {
        let answer = api_answer(prom_port, "/api/v1/query", Some(&q));
        assert_eq!(answer["status"], "success", "{q}: {answer}");
        for name in q
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tlsmon_"))
        {
            let base = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                exported.iter().any(|e| e == base),
                "{q}: {name} is not exported ({exported:?})"
            );
        }
    }
    // Cardinality: no label but the scrape's own names a peer or an SNI.
    let all = api(
        prom_port,
        "/api/v1/query",
        Some(r#"{__name__=~"tlsmon_.*"}"#),
    );
    for series in all["result"].as_array().into_iter().flatten() {
        for (name, value) in series["metric"].as_object().into_iter().flatten() {
            // The scrape's own address, and `service` (a listener or server, ip:port, at
            // most 256 distinct values, then "other").
            if name == "instance" || name == "service" {
                continue;
            }
            let v = value.as_str().unwrap_or("");
            assert!(
                !v.contains("secret.example") && !v.contains(&server_port.to_string()),
                "label {name}={v} names a peer or SNI: {series}"
            );
        }
    }
}
