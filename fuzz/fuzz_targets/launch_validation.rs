//! Launch requests as a hostile runtime could send them, through the
//! helper's `validate`: never a panic, an accepted spec keeps every rule
//! the validation promises (docs/security.md, "Boundary 2") and carries its
//! fields through unchanged, and a refused one breaks the rule its error
//! names.
//!
//! The spec is either decoded from the input as the helper decodes a frame
//! (bincode), or built field by field from pieces that are likely to sit
//! on a rule's edge (`.`, `..`, `/`, NUL, `=`, 128-byte ids, zero limits).
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::{Result, Unstructured};
use execgo_runtime_fuzz::validate::{validate, ValidateError};
use execgo_runtime_protocol::taskdir::MAX_OUTPUT_HEAD_BYTES;
use execgo_runtime_protocol::{
    decode, LaunchLimits, LaunchProfile, LaunchSpec, SandboxSpec, CPU_MILLIS_MAX, CPU_MILLIS_MIN,
    SCRIPT_ARG,
};
use libfuzzer_sys::fuzz_target;

/// Text made of `pieces`, or any string at all.
fn text(u: &mut Unstructured, pieces: &[&str]) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let n = u.int_in_range(0..=140)?;
    let mut s = String::new();
    for _ in 0..n {
        if u.is_empty() {
            break;
        }
        s.push_str(u.choose(pieces)?);
    }
    Ok(s)
}

const ID: &[&str] = &[
    "a",
    "Z",
    "7",
    "-",
    "_",
    ".",
    "..",
    "/",
    "\0",
    " ",
    "é",
    "aaaaaaaaaaaaaaaa",
];
const ARG: &[&str] = &["/bin/echo", "a", "", "\0", "=", " "];
const ENV: &[&str] = &["PATH", "A", "=", "\0", "", "/bin", "é"];
const SUBDIR: &[&str] = &["a", "b", "/", ".", "..", "\0", "é", ".a"];
const WORKDIR: &[&str] = &["/", "/", "srv", "a", ".", "..", "\0", "é"];
const JSON: &[&str] = &[
    "{}", "{", "}", "[", "]", "\"k\"", ":", ",", "1", "null", " ", "\"", "\\",
];

fn limit(u: &mut Unstructured) -> Result<u64> {
    if u.ratio(1, 2)? {
        Ok(*u.choose(&[
            0,
            1,
            MAX_OUTPUT_HEAD_BYTES,
            MAX_OUTPUT_HEAD_BYTES + 1,
            u64::MAX,
        ])?)
    } else {
        u.arbitrary()
    }
}

fn opt_limit(u: &mut Unstructured) -> Result<Option<u64>> {
    Ok(if u.arbitrary()? {
        Some(limit(u)?)
    } else {
        None
    })
}

fn build(u: &mut Unstructured) -> Result<LaunchSpec> {
    let argv_len = u.int_in_range(0..=4)?;
    let mut argv: Vec<String> = (0..argv_len).map(|_| text(u, ARG)).collect::<Result<_>>()?;
    let script_fd = u.arbitrary()?;
    if script_fd && u.arbitrary()? {
        argv.push(SCRIPT_ARG.to_string());
    }
    let env_len = u.int_in_range(0..=4)?;
    let env = (0..env_len)
        .map(|_| Ok((text(u, ENV)?, text(u, ENV)?)))
        .collect::<Result<_>>()?;
    Ok(LaunchSpec {
        task_id: text(u, ID)?,
        argv,
        env,
        workspace_subdir: if u.arbitrary()? {
            Some(text(u, SUBDIR)?)
        } else {
            None
        },
        profile: if u.arbitrary()? {
            LaunchProfile::LinuxSandbox(SandboxSpec {
                mount: u.arbitrary()?,
                pid: u.arbitrary()?,
                uts: u.arbitrary()?,
                ipc: u.arbitrary()?,
                net: u.arbitrary()?,
                rootfs: if u.arbitrary()? {
                    Some(text(u, SUBDIR)?)
                } else {
                    None
                },
            })
        } else {
            LaunchProfile::Process
        },
        limits: LaunchLimits {
            wall_time_ms: limit(u)?,
            cpu_time_sec: opt_limit(u)?,
            memory_bytes: opt_limit(u)?,
            pids_max: opt_limit(u)?,
            stdout_max_bytes: limit(u)?,
            stderr_max_bytes: limit(u)?,
            cpu_millis: if u.arbitrary()? {
                Some(*u.choose(&[
                    0,
                    CPU_MILLIS_MIN - 1,
                    CPU_MILLIS_MIN,
                    CPU_MILLIS_MAX,
                    CPU_MILLIS_MAX + 1,
                ])?)
            } else {
                None
            },
            max_log_bytes: limit(u)?,
        },
        termination_grace_ms: u.arbitrary()?,
        result_template: text(u, JSON)?,
        task_cgroups: u.arbitrary()?,
        keep_descendants: u.arbitrary()?,
        sidecar_target: if u.arbitrary()? {
            Some(text(u, ID)?)
        } else {
            None
        },
        workdir: if u.arbitrary()? {
            Some(text(u, WORKDIR)?)
        } else {
            None
        },
        script_fd,
    })
}

// The rules, stated again independently of helper/src/validate.rs.

fn task_id_ok(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn argv_ok(argv: &[String]) -> bool {
    argv.first().is_some_and(|p| !p.is_empty()) && argv.iter().all(|a| !a.contains('\0'))
}

fn env_ok(env: &[(String, String)]) -> bool {
    let mut keys = HashSet::new();
    env.iter().all(|(k, v)| {
        !k.is_empty()
            && !k.contains('=')
            && !k.contains('\0')
            && !v.contains('\0')
            && keys.insert(k)
    })
}

fn subdir_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.contains('\0')
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn absolute_ok(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('/')
        && !s.contains('\0')
        && s[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A workdir is an absolute, normalised path, for a process task that is
/// not a sidecar's.
fn workdir_ok(s: &LaunchSpec) -> bool {
    s.workdir.as_deref().is_none_or(|d| {
        absolute_ok(d) && s.sidecar_target.is_none() && matches!(s.profile, LaunchProfile::Process)
    })
}

/// A script on descriptor 3 is named by the last of two or more
/// arguments.
fn script_ok(s: &LaunchSpec) -> bool {
    !s.script_fd || (s.argv.len() >= 2 && s.argv.last().map(String::as_str) == Some(SCRIPT_ARG))
}

fn template_ok(t: &str) -> bool {
    matches!(serde_json::from_str(t), Ok(serde_json::Value::Object(_)))
}

fn limits_ok(l: &LaunchLimits) -> bool {
    let out = 1..=MAX_OUTPUT_HEAD_BYTES;
    l.wall_time_ms > 0
        && out.contains(&l.stdout_max_bytes)
        && out.contains(&l.stderr_max_bytes)
        && l.cpu_time_sec != Some(0)
        && l.memory_bytes != Some(0)
        && l.cpu_millis
            .map_or(true, |m| (CPU_MILLIS_MIN..=CPU_MILLIS_MAX).contains(&m))
        && l.max_log_bytes > 0
}

fn container_ok(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn acceptable(s: &LaunchSpec) -> bool {
    task_id_ok(&s.task_id)
        && argv_ok(&s.argv)
        && env_ok(&s.env)
        && s.workspace_subdir.as_deref().is_none_or(subdir_ok)
        && template_ok(&s.result_template)
        && limits_ok(&s.limits)
        && s.sidecar_target.as_deref().is_none_or(container_ok)
        && workdir_ok(s)
        && script_ok(s)
}

/// The spec breaks the rule that `e` names.
fn breaks(s: &LaunchSpec, e: &ValidateError) -> bool {
    let l = &s.limits;
    match e {
        ValidateError::TaskId(id) => *id == s.task_id && !task_id_ok(id),
        ValidateError::EmptyArgv => s.argv.is_empty(),
        ValidateError::EmptyProgram => s.argv[0].is_empty(),
        ValidateError::NulInArgv(i) => s.argv[*i].contains('\0'),
        ValidateError::EmptyEnvKey(i) => s.env[*i].0.is_empty(),
        ValidateError::EnvKeyEquals(k) => k.contains('=') && s.env.iter().any(|(x, _)| x == k),
        ValidateError::NulInEnv(_) => s
            .env
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0')),
        ValidateError::DuplicateEnvKey(k) => s.env.iter().filter(|(x, _)| x == k).count() > 1,
        ValidateError::WorkspaceSubdir(d) => {
            s.workspace_subdir.as_ref() == Some(d) && !subdir_ok(d)
        }
        ValidateError::TemplateJson(_) => {
            serde_json::from_str::<serde_json::Value>(&s.result_template).is_err()
        }
        ValidateError::TemplateNotObject => {
            matches!(serde_json::from_str(&s.result_template), Ok(v) if !matches!(v, serde_json::Value::Object(_)))
        }
        ValidateError::WallTime => l.wall_time_ms == 0,
        ValidateError::StdoutMax => !(1..=MAX_OUTPUT_HEAD_BYTES).contains(&l.stdout_max_bytes),
        ValidateError::StderrMax => !(1..=MAX_OUTPUT_HEAD_BYTES).contains(&l.stderr_max_bytes),
        ValidateError::CpuTime => l.cpu_time_sec == Some(0),
        ValidateError::Memory => l.memory_bytes == Some(0),
        ValidateError::CpuMillis => l
            .cpu_millis
            .is_some_and(|m| !(CPU_MILLIS_MIN..=CPU_MILLIS_MAX).contains(&m)),
        ValidateError::MaxLogBytes => l.max_log_bytes == 0,
        ValidateError::SidecarTarget(n) => s.sidecar_target.as_ref() == Some(n) && !container_ok(n),
        ValidateError::Workdir(d) => s.workdir.as_ref() == Some(d) && !absolute_ok(d),
        ValidateError::WorkdirProfile => {
            s.workdir.as_deref().is_some_and(absolute_ok) && !workdir_ok(s)
        }
        ValidateError::ScriptArg => !script_ok(s),
    }
}

fn check(spec: LaunchSpec) {
    let ok = acceptable(&spec);
    match validate(spec.clone()) {
        Ok(v) => {
            assert!(ok, "accepted a spec that breaks a rule: {spec:?}");
            assert_eq!(v.task_id, spec.task_id);
            assert_eq!(v.argv, spec.argv);
            assert_eq!(v.env, spec.env);
            assert_eq!(v.limits, spec.limits);
            assert_eq!(v.profile, spec.profile);
            assert_eq!(v.task_cgroups, spec.task_cgroups);
            assert_eq!(v.keep_descendants, spec.keep_descendants);
            assert_eq!(v.sidecar_target, spec.sidecar_target);
            assert_eq!(v.workdir, spec.workdir);
            assert_eq!(v.script_fd, spec.script_fd);
            assert_eq!(
                v.termination_grace,
                Duration::from_millis(spec.termination_grace_ms)
            );
            match &spec.workspace_subdir {
                None => assert!(v.workspace_subdir.is_empty()),
                Some(s) => {
                    assert_eq!(v.workspace_subdir.join("/"), *s);
                    for c in &v.workspace_subdir {
                        assert!(!c.is_empty() && c != "." && c != ".." && !c.contains(['/', '\0']));
                    }
                }
            }
            assert_eq!(
                serde_json::Value::Object(v.result_template.clone()),
                serde_json::from_str::<serde_json::Value>(&spec.result_template).unwrap()
            );
            assert_eq!(
                v.path_var(),
                spec.env
                    .iter()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, p)| p.as_str())
            );
        }
        Err(e) => {
            assert!(!ok, "refused a spec that keeps every rule ({e}): {spec:?}");
            assert!(
                breaks(&spec, &e),
                "refused for a rule it keeps ({e}): {spec:?}"
            );
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let spec = if mode & 1 == 0 {
        // As the helper gets it: bincode, with the frame limit.
        match decode::<LaunchSpec>(rest) {
            Ok(spec) => spec,
            Err(_) => return,
        }
    } else {
        match build(&mut Unstructured::new(rest)) {
            Ok(spec) => spec,
            Err(_) => return,
        }
    };
    check(spec);
});
