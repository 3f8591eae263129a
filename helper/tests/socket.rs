//! The standalone socket of the real helper binary: mode 0660 from its
//! creation and, as root, owned by the allowed uid; a directory others
//! could write to is refused at start (exit 1), before anything is bound.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Helper, BIN};

/// Starts a helper on `dir/h.sock`: `Ok` once the socket appears (the
/// helper is then stopped), `Err` with its output when it exits first.
fn try_start(data: &Path, dir: &Path, extra: &[&str]) -> Result<(), Output> {
    let me = common::my_uid();
    assert!(!dir.join("h.sock").exists());
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .arg("--socket")
        .arg(dir.join("h.sock"))
        .args(["--allowed-uid", &me.to_string()])
        .args(extra)
        .args(common::task_user_args(me, me, extra))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if dir.join("h.sock").exists() {
            let _ = child.kill();
            let _ = child.wait();
            // Left behind by the kill; the next start would find it.
            std::fs::remove_file(dir.join("h.sock")).unwrap();
            return Ok(());
        }
        if child.try_wait().unwrap().is_some() {
            return Err(child.wait_with_output().unwrap());
        }
        assert!(Instant::now() < until, "neither bound nor exited");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn refused(out: Output, want: &str) {
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("is unsafe"), "{error}");
    assert!(error.contains(want), "{error}");
}

#[test]
fn a_socket_directory_others_can_write_is_refused() {
    let tmp = common::searchable_tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let chmod = |mode| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));

    chmod(0o777).unwrap();
    refused(try_start(&data, &dir, &[]).unwrap_err(), "others can write");
    assert!(!dir.join("h.sock").exists());

    chmod(0o775).unwrap();
    refused(try_start(&data, &dir, &[]).unwrap_err(), "its group");
    let gid = std::fs::metadata(&dir).unwrap().gid().to_string();
    // The group may share it when it is the allowed group.
    try_start(&data, &dir, &["--allowed-gid", &gid]).unwrap();

    // Sticky, as /tmp: others cannot remove or rename what is ours.
    chmod(0o1777).unwrap();
    try_start(&data, &dir, &[]).unwrap();
    chmod(0o755).unwrap();
    try_start(&data, &dir, &[]).unwrap();

    if common::my_uid() == 0 {
        std::os::unix::fs::chown(&dir, Some(12345), None).unwrap();
        refused(
            try_start(&data, &dir, &[]).unwrap_err(),
            "owned by uid 12345",
        );
    } else {
        println!("skip: needs root to give the directory another owner");
    }
}

#[test]
fn the_socket_is_0660_and_owned_by_the_allowed_uid() {
    let uid = if common::my_uid() == 0 {
        12345
    } else {
        common::my_uid()
    };
    let h = Helper::start_allowing(uid);
    // The socket exists from its bind on; the owner follows a moment later.
    let until = Instant::now() + Duration::from_secs(10);
    let meta = loop {
        let meta = std::fs::symlink_metadata(&h.socket).unwrap();
        if meta.uid() == uid || Instant::now() > until {
            break meta;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.uid(), uid);
    if common::my_uid() != 0 {
        println!("skip: the owner change needs root");
    }
}
