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
