use std::process::Command;

fn threadhost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_threadhost"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn serve_help_documents_every_flag_and_its_default() {
    let out = threadhost(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--stdio",
        "--listen",
        "127.0.0.1:4545",
        "--data-dir",
        "--unload-delay",
        "[default: 30m]",
        "--shutdown-timeout",
        "[default: 10s]",
        "--token",
        "THREADHOST_TOKEN",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            help.contains(needle),
            "serve --help lacks {needle:?}:\n{help}"
        );
    }
    let top = threadhost(&["--help"]);
    assert!(String::from_utf8_lossy(&top.stdout).contains("serve"));
}

#[test]
fn version_prints_the_package_version() {
    let out = threadhost(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("threadhost {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_duration_without_a_unit_is_refused_with_a_hint() {
    let out = threadhost(&["serve", "--stdio", "--unload-delay", "30"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--unload-delay") && err.contains("missing unit") && err.contains("30s"),
        "{err}"
    );
    let out = threadhost(&["serve", "--shutdown-timeout", "5 minutes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
}

#[test]
fn stdio_and_listen_cannot_be_combined() {
    let out = threadhost(&["serve", "--stdio", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[tokio::test]
async fn the_tour_walks_the_lifecycle_and_ends_with_a_cold_resume() {
    let out = tokio::time::timeout(
        crate::support::BOUND * 2,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_threadhost"))
            .args(["tour", "--unload-delay", "300ms"])
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("the tour ends in time")
    .expect("the tour runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "bob   ← thread/started",
        "item/commandExecution/requestApproval",
        "bob   ← thread/closed",
        "(\"completed\"): [\"approved: cargo test\"]",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
