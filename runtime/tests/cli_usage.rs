//! The CLI's usage contract, checked on the real binary without a server:
//! usage errors exit 2, bad JSON exits 1 before anything is sent.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_execgo-runtime"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "submit", "status", "wait", "kill", "run"] {
        assert!(text.contains(sub), "{sub} missing from --help:\n{text}");
    }
}

#[test]
fn serve_help_lists_contract_flags_and_env() {
    let out = bin().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen-addr",
        "--data-dir",
        "--max-running-tasks",
        "--max-queued-tasks",
        "--termination-grace-ms",
        "--result-retention-secs",
        "--gc-interval-ms",
        "--dispatch-poll-interval-ms",
        "--cgroup-root",
        "--runtime-id",
        "EXECGO_RUNTIME_ID",
        "--default-capability-mode",
        "EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE",
        "--disable-linux-sandbox",
        "EXECGO_RUNTIME_DISABLE_LINUX_SANDBOX",
        "--disable-cgroup",
        "EXECGO_RUNTIME_DISABLE_CGROUP",
        "--capacity-memory-bytes",
        "--capacity-pids",
        "--tenant-quota",
        "--helper-socket",
        "--helper-path",
        "--opensandbox-listen-addr",
        "EXECGO_RUNTIME_OPENSANDBOX_LISTEN_ADDR",
        "--opensandbox-tenant",
        "EXECGO_RUNTIME_OPENSANDBOX_TENANT",
        "--enable-sidecar-mode",
        "ENABLE_SIDECAR_MODE",
        "--main-container-name",
        "MAIN_CONTAINER_NAME",
        "--opensandbox-workdir-root",
        "EXECGO_RUNTIME_OPENSANDBOX_WORKDIR_ROOT",
    ] {
        assert!(text.contains(flag), "{flag} missing from serve --help");
    }
}

#[test]
fn submit_needs_exactly_one_input() {
    let out = bin().arg("submit").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin()
        .args(["submit", "--json", "{}", "--file", "x.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_json_exits_1_and_sends_nothing() {
    // A listener that records whether anything connected.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    for cmd in ["submit", "run"] {
        let out = bin()
            .args([cmd, "--server", &server, "--json", "{not json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(out.stdout.is_empty(), "{cmd} printed on stdout");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid request json"));
    }
    assert!(
        listener.accept().is_err(),
        "the CLI connected despite bad json"
    );
}

#[test]
fn unreachable_server_exits_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = bin()
        .args([
            "status",
            "--server",
            &format!("http://127.0.0.1:{port}/"),
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn serve_rejects_bad_configuration_with_exit_2() {
    for (args, env) in [
        (vec!["serve", "--tenant-quota", "a=slots:x"], None),
        (vec!["serve", "--tenant-quota", "=slots:1"], None),
        (vec!["serve", "--tenant-quota", "a=slots:1,cpu:3"], None),
        (vec!["serve", "--max-running-tasks", "0"], None),
        (
            vec![
                "serve",
                "--tenant-quota",
                "a=slots:1",
                "--tenant-quota",
                "a=slots:2",
            ],
            None,
        ),
        (
            vec!["serve"],
            Some(("EXECGO_RUNTIME_DISABLE_CGROUP", "yes")),
        ),
        (
            vec!["serve"],
            Some(("EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE", "lenient")),
        ),
        (vec!["serve", "--opensandbox-listen-addr", "5758"], None),
        (vec!["serve", "--opensandbox-tenant", " "], None),
        (vec!["serve", "--main-container-name", "a/b"], None),
        (vec!["serve"], Some(("ENABLE_SIDECAR_MODE", "yes"))),
        (vec!["serve", "--opensandbox-workdir-root", "rel"], None),
        (vec!["serve", "--opensandbox-workdir-root", "/"], None),
        (vec!["serve", "--opensandbox-workdir-root", "/a/../b"], None),
        (vec!["serve", "--opensandbox-workdir-root", "/a/"], None),
        (
            vec!["serve"],
            Some(("EXECGO_RUNTIME_OPENSANDBOX_WORKDIR_ROOT", "/srv:rel")),
        ),
    ] {
        let mut c = bin();
        c.args(&args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        assert!(!out.stderr.is_empty());
    }
}
