//! The end-to-end failover drill: sinks, proxy and load generator, with the
//! preferred CH data centre killed mid-load. Bounded: 16 s of load.

use std::time::Duration;

use residency_proxy::cli::drill::{drill, logged_warnings, DrillArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_preferred_ch_datacenter_never_leaves_the_jurisdiction() {
    let dir = crate::support::TempDir::new("drill");
    let args = DrillArgs {
        duration: Duration::from_secs(16),
        rate: 150.0,
        // Kill zurich at 4 s, restore at 8 s; then kill both CH data
        // centres at 10 s (CH must get 503s, never another jurisdiction);
        // restore at 13 s.
        chaos: [
            "4s:zurich=refuse",
            "8s:zurich=normal",
            "10s:zurich=refuse",
            "10s:geneva=refuse",
            "13s:zurich=normal",
            "13s:geneva=normal",
        ]
        .map(|e| e.parse().unwrap())
        .to_vec(),
        dir: Some(dir.path().to_path_buf()),
        no_progress: true,
        ..DrillArgs::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(60), drill(args, None))
        .await
        .expect("the drill is bounded")
        .expect("the drill ran");
    let text = report.render_text();
    assert!(report.sent > 2000, "{text}");
    assert_eq!(report.residency_violations, Some(0), "{text}");
    assert_eq!(report.acknowledged_missing, Some(0), "{text}");
    assert_eq!(report.reconcile_error, None, "{text}");
    assert!(report.passed(), "{text}");
    // Residency proven from the transparency log too: every acknowledged
    // upload's receipt is signed, included in the final checkpoint, names
    // the data centre the sink stored the body in and the body's SHA-256;
    // the log only grew during the drill.
    let log = report
        .residency_log
        .as_ref()
        .expect("the drill runs with its log");
    assert_eq!(log.error, None, "{text}");
    assert_eq!(log.receipts_verified, report.acknowledged, "{text}");
    assert_eq!(log.receipts_failed, 0, "{text}");
    assert_eq!(log.acknowledged_without_receipt, 0, "{text}");
    assert_eq!(log.consistent, Some(true), "{text}");
    assert!(text.contains("receipt(s) proven"), "{text}");

    // CH traffic moved to geneva within 2 s of zurich being killed.
    let kill = &report.chaos[0];
    assert!(kill.applied.ok, "{text}");
    let failover = kill
        .failover
        .as_ref()
        .expect("a failover report for the kill");
    let ms = failover.time_to_failover_ms.expect("CH failed over");
    assert!(ms < 2000.0, "failover took {ms} ms\n{text}");
    assert_eq!(failover.answered_by.as_deref(), Some("geneva"), "{text}");
    assert!(
        report
            .stored_by_datacenter
            .get("geneva")
            .copied()
            .unwrap_or(0)
            > 0,
        "{text}"
    );

    // With both CH data centres down, CH uploads were refused with 503.
    assert!(
        report.by_status.get(&503).copied().unwrap_or(0) > 0,
        "{text}"
    );
    // The EU and US data centres stored exactly what EU and US acknowledged
    // (a CH upload stored there would also be a residency violation).
    for (dc, j) in [("frankfurt", "eu"), ("virginia", "us")] {
        let stored = report.stored_by_datacenter.get(dc).copied().unwrap_or(0);
        let acked = report.jurisdictions[j].counts.acknowledged;
        assert_eq!(stored, acked, "{dc}: {text}");
    }

    // The HTML report, opened in a real headless Chromium: no console
    // errors, no request anywhere, one chart per jurisdiction, the
    // latency chart, a row per fault; a screenshot is kept as an artefact.
    let html = dir.path().join("drill.html");
    std::fs::write(&html, report.render_html()).unwrap();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-report.png");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/report_check.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&html)
        .arg(&shot)
        .output()
        .expect("run tests/clients/report_check.py");
    assert!(
        out.status.success(),
        "report_check.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["requests"], serde_json::json!([]), "{seen}");
    assert_eq!(
        seen["jurisdiction_charts"],
        serde_json::json!(["ch", "eu", "us"]),
        "{seen}"
    );
    assert_eq!(seen["latency_charts"], 3, "p50, p99 and max: {seen}");
    assert_eq!(
        seen["fault_rows"], 3,
        "zurich, zurich again, geneva: {seen}"
    );
    assert_eq!(seen["width_overflow"], false, "{seen}");
    assert!(
        seen["verdict"].as_str().unwrap().starts_with("PASS"),
        "{seen}"
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!("screenshot of the report: {}", shot.display());
    let junit = report.render_junit();
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert!(
        junit.contains("name=\"no residency violations\""),
        "{junit}"
    );
}

/// The summary of the proxy's warnings reads either log format (`--log-format
/// json` was summarised as no warning at all), and points at the log only
/// when it outlives the drill (`--dir`).
#[test]
fn the_proxy_s_warnings_are_summarised_from_either_log_format() {
    let dir = crate::support::TempDir::new("drill-warnings");
    let text_log = dir.path().join("text.log");
    std::fs::write(
        &text_log,
        "2026-01-01T00:00:00.000001Z  INFO residency_proxy::cli: runtime workers=2\n\
         2026-01-01T00:00:00.000002Z  WARN residency_proxy::proxy::forward: upstream request failed request_id=1 datacenter=\"zurich\"\n\
         2026-01-01T00:00:00.000003Z  WARN residency_proxy::proxy::forward: upstream request failed request_id=2 datacenter=\"zurich\"\n\
         2026-01-01T00:00:00.000004Z ERROR residency_proxy::probes: upstream down: active checks failing datacenter=\"zurich\"\n",
    )
    .unwrap();
    let json_log = dir.path().join("json.log");
    std::fs::write(
        &json_log,
        concat!(
            r#"{"timestamp":"2026-01-01T00:00:00.000001Z","level":"INFO","message":"runtime","target":"residency_proxy::cli"}"#,
            "\n",
            r#"{"timestamp":"2026-01-01T00:00:00.000002Z","level":"WARN","message":"upstream request failed","request_id":"1","target":"residency_proxy::proxy::forward"}"#,
            "\n",
            r#"{"timestamp":"2026-01-01T00:00:00.000003Z","level":"WARN","fields":{"message":"upstream request failed"},"target":"residency_proxy::proxy::forward"}"#,
            "\n",
            r#"{"timestamp":"2026-01-01T00:00:00.000004Z","level":"ERROR","message":"upstream down: active checks failing","target":"residency_proxy::probes"}"#,
            "\n",
        ),
    )
    .unwrap();
    let counted = "3 warning(s)";
    let messages = "2× \"upstream request failed\", 1× \"upstream down: active checks failing\"";
    for log in [&text_log, &json_log] {
        let kept = logged_warnings(log, true).expect("warnings found");
        assert_eq!(
            kept,
            format!("the proxy logged {counted} ({}): {messages}", log.display())
        );
        let removed = logged_warnings(log, false).expect("warnings found");
        assert!(
            removed.starts_with(&format!("the proxy logged {counted}: {messages} (")),
            "{removed}"
        );
        assert!(
            !removed.contains(&log.display().to_string()) && removed.contains("--dir"),
            "{removed}"
        );
    }
}
