//! Properties of the helper's launch validation over arbitrary specs:
//! it never panics, an accepted spec keeps every rule it promises and
//! carries its fields through unchanged, and a refused one breaks the rule
//! its error names. `fuzz/` (launch_validation) explores the same ground
//! for longer; these run in the normal suite.

use std::collections::HashSet;
use std::time::Duration;

use execgo_runtime_helper::validate::{validate, ValidateError};
use execgo_runtime_protocol::taskdir::MAX_OUTPUT_HEAD_BYTES;
use execgo_runtime_protocol::{
    LaunchLimits, LaunchProfile, LaunchSpec, CPU_MILLIS_MAX, CPU_MILLIS_MIN,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

/// Text made of `pieces`, or any string.
fn text(pieces: &'static [&'static str], max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        3 => vec(select(pieces), 0..max).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
    .boxed()
}

/// Mostly a value that keeps its rule, else one likely to break it.
fn mostly<T: std::fmt::Debug + Clone + 'static>(
    good: impl Strategy<Value = T> + 'static,
    edge: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![4 => good, 1 => edge].boxed()
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
const ENV: &[&str] = &["PATH", "A", "=", "\0", "/bin", "é"];
const SUBDIR: &[&str] = &["a", "b", "/", ".", "..", "\0", "é", ".a"];
const JSON: &[&str] = &[
    "{", "}", "[", "]", "\"k\"", ":", ",", "1", "null", " ", "\"", "\\",
];
const TEMPLATES: &[&str] = &[
    "{}",
    r#"{"task_id":"t-1"}"#,
    r#" { "a" : [1, null], "b": {} } "#,
];

fn limit() -> BoxedStrategy<u64> {
    mostly(
        1..=MAX_OUTPUT_HEAD_BYTES,
        prop_oneof![
            select(&[0, MAX_OUTPUT_HEAD_BYTES + 1, u64::MAX][..]),
            any::<u64>(),
        ],
    )
}

fn spec() -> impl Strategy<Value = LaunchSpec> {
    let limits = (
        limit(),
        option::of(limit()),
        option::of(limit()),
        option::of(limit()),
        limit(),
        limit(),
        option::of(mostly(
            CPU_MILLIS_MIN..=CPU_MILLIS_MAX,
            select(&[0, CPU_MILLIS_MIN - 1, CPU_MILLIS_MAX + 1, u64::MAX][..]),
        )),
        mostly(1..=u64::MAX, Just(0)),
    )
        .prop_map(
            |(wall, cpu, memory, pids, stdout, stderr, cpu_millis, max_log)| LaunchLimits {
                wall_time_ms: wall,
                cpu_time_sec: cpu,
                memory_bytes: memory,
                pids_max: pids,
                stdout_max_bytes: stdout,
                stderr_max_bytes: stderr,
                cpu_millis,
                max_log_bytes: max_log,
            },
        );
    let task_id = mostly("[A-Za-z0-9._-]{1,8}|[a-z]{120,130}", text(ID, 12));
    let argv = mostly(vec("[a-z/]{1,8}", 1..3), vec(text(ARG, 3), 0..3));
    let env = mostly(
        vec(("[A-Z]{1,2}", "[a-z=/]{0,4}"), 0..4),
        vec((text(ENV, 2), text(ENV, 3)), 0..4),
    );
    let subdir = mostly(
        option::of("[a-z.]{1,3}(/[a-z.]{1,3}){0,2}"),
        option::of(text(SUBDIR, 6)),
    );
    let template = mostly(select(TEMPLATES).prop_map(str::to_string), text(JSON, 8));
    (
        task_id,
        argv,
        env,
        subdir,
        limits,
        any::<u64>(),
        template,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(task_id, argv, env, workspace_subdir, limits, grace, template, cgroups, keep)| {
                LaunchSpec {
                    task_id,
                    argv,
                    env,
                    workspace_subdir,
                    profile: LaunchProfile::Process,
                    limits,
                    termination_grace_ms: grace,
                    result_template: template,
                    task_cgroups: cgroups,
                    keep_descendants: keep,
                    sidecar_target: None,
                    workdir: None,
                    script_fd: false,
                }
            },
        )
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

fn subdir_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.contains('\0')
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn output_ok(n: u64) -> bool {
    (1..=MAX_OUTPUT_HEAD_BYTES).contains(&n)
}

fn acceptable(s: &LaunchSpec) -> bool {
    let mut keys = HashSet::new();
    task_id_ok(&s.task_id)
        && s.argv.first().is_some_and(|p| !p.is_empty())
        && s.argv.iter().all(|a| !a.contains('\0'))
        && s.env.iter().all(|(k, v)| {
            !k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0') && keys.insert(k)
        })
        && s.workspace_subdir.as_deref().is_none_or(subdir_ok)
        && matches!(
            serde_json::from_str(&s.result_template),
            Ok(Value::Object(_))
        )
        && s.limits.wall_time_ms > 0
        && output_ok(s.limits.stdout_max_bytes)
        && output_ok(s.limits.stderr_max_bytes)
        && s.limits.cpu_time_sec != Some(0)
        && s.limits.memory_bytes != Some(0)
        && s.limits.cpu_millis.is_none_or(cpu_millis_ok)
        && s.limits.max_log_bytes > 0
}

fn cpu_millis_ok(m: u64) -> bool {
    (CPU_MILLIS_MIN..=CPU_MILLIS_MAX).contains(&m)
}

/// The spec breaks the rule that `e` names.
fn breaks(s: &LaunchSpec, e: &ValidateError) -> bool {
    let l = &s.limits;
    let template = serde_json::from_str::<Value>(&s.result_template);
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
        ValidateError::TemplateJson(_) => template.is_err(),
        ValidateError::TemplateNotObject => matches!(template, Ok(ref v) if !v.is_object()),
        ValidateError::WallTime => l.wall_time_ms == 0,
        ValidateError::StdoutMax => !output_ok(l.stdout_max_bytes),
        ValidateError::StderrMax => !output_ok(l.stderr_max_bytes),
        ValidateError::CpuTime => l.cpu_time_sec == Some(0),
        ValidateError::Memory => l.memory_bytes == Some(0),
        ValidateError::CpuMillis => l.cpu_millis.is_some_and(|m| !cpu_millis_ok(m)),
        ValidateError::MaxLogBytes => l.max_log_bytes == 0,
        // The strategy never sets a target (sidecar_target: None).
        ValidateError::SidecarTarget(_) => false,
        // Nor a workdir (workdir: None).
        ValidateError::Workdir(_) | ValidateError::WorkdirProfile => false,
        // Nor a script descriptor (script_fd: false).
        ValidateError::ScriptArg => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn validate_keeps_its_promises(spec in spec()) {
        let ok = acceptable(&spec);
        match validate(spec.clone()) {
            Ok(v) => {
                prop_assert!(ok, "accepted a spec that breaks a rule: {:?}", spec);
                prop_assert_eq!(&v.task_id, &spec.task_id);
                prop_assert_eq!(&v.argv, &spec.argv);
                prop_assert_eq!(&v.env, &spec.env);
                prop_assert_eq!(&v.limits, &spec.limits);
                prop_assert_eq!(&v.profile, &spec.profile);
                prop_assert_eq!(v.task_cgroups, spec.task_cgroups);
                prop_assert_eq!(v.keep_descendants, spec.keep_descendants);
                prop_assert_eq!(
                    v.termination_grace,
                    Duration::from_millis(spec.termination_grace_ms)
                );
                match &spec.workspace_subdir {
                    None => prop_assert!(v.workspace_subdir.is_empty()),
                    Some(s) => {
                        prop_assert_eq!(&v.workspace_subdir.join("/"), s);
                        for c in &v.workspace_subdir {
                            prop_assert!(!c.is_empty() && c != "." && c != "..");
                            prop_assert!(!c.contains(['/', '\0']));
                        }
                    }
                }
                prop_assert_eq!(
                    Value::Object(v.result_template.clone()),
                    serde_json::from_str::<Value>(&spec.result_template).unwrap()
                );
                prop_assert_eq!(
                    v.path_var(),
                    spec.env.iter().find(|(k, _)| k == "PATH").map(|(_, p)| p.as_str())
                );
            }
            Err(e) => {
                prop_assert!(!ok, "refused a spec that keeps every rule ({}): {:?}", e, spec);
                prop_assert!(breaks(&spec, &e), "refused for a rule it keeps ({}): {:?}", e, spec);
            }
        }
    }
}

/// The generator reaches both sides, many accepted specs and (nearly) every
/// kind of refusal, so the property above is not vacuous.
#[test]
fn the_generator_reaches_both_sides() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = spec();
    let (mut accepted, mut refused) = (0, HashSet::new());
    for _ in 0..4000 {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        match validate(spec) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused.insert(std::mem::discriminant(&e));
            }
        }
    }
    // About a fifth are accepted, and every one of the 16 refusals is seen.
    assert!(
        accepted >= 200,
        "only {accepted} of 4000 specs were accepted"
    );
    assert!(
        refused.len() >= 14,
        "only {} kinds of refusal",
        refused.len()
    );
}
