//! Properties of framing over arbitrary messages, arbitrary bytes and
//! arbitrary cuts of the stream. `fuzz/` (frame_decoder) explores the same
//! ground for longer; these run in the normal suite.

use execgo_runtime_protocol::{
    decode, encode, FrameDecoder, FrameError, Hello, LaunchLimits, LaunchProfile, LaunchSpec,
    Request, MAX_FRAME_BYTES,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;

fn limits() -> impl Strategy<Value = LaunchLimits> {
    (
        any::<u64>(),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        any::<u64>(),
        any::<u64>(),
        option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(
            |(
                wall_time_ms,
                cpu_time_sec,
                memory_bytes,
                pids_max,
                stdout,
                stderr,
                cpu_millis,
                max_log_bytes,
            )| {
                LaunchLimits {
                    wall_time_ms,
                    cpu_time_sec,
                    memory_bytes,
                    pids_max,
                    stdout_max_bytes: stdout,
                    stderr_max_bytes: stderr,
                    cpu_millis,
                    max_log_bytes,
                }
            },
        )
}

fn spec() -> impl Strategy<Value = LaunchSpec> {
    let text = || any::<String>();
    (
        text(),
        vec(text(), 0..4),
        vec((text(), text()), 0..4),
        option::of(text()),
        limits(),
        any::<u64>(),
        text(),
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

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Probe),
        spec().prop_map(Request::Launch),
    ]
}

/// `stream` cut at `cuts` (positions in any order, repeats allowed).
fn pieces(stream: &[u8], cuts: &[Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
    at.sort_unstable();
    at.push(stream.len());
    let mut from = 0;
    at.into_iter()
        .map(|to| {
            let piece = stream[from..to].to_vec();
            from = to;
            piece
        })
        .collect()
}

/// Bytes that often look like frames: short length prefixes followed by
/// payloads that may or may not be that long.
fn hostile_stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        vec(any::<u8>(), 0..32),
        (0u32..48, vec(any::<u8>(), 0..48)).prop_map(|(len, payload)| {
            let mut b = len.to_le_bytes().to_vec();
            b.extend(payload);
            b
        }),
        any::<u32>().prop_map(|len| len.to_le_bytes().to_vec()),
    ];
    vec(piece, 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A handshake and requests, encoded back to back and cut anywhere,
    /// come out of the decoder whole, in order, with nothing left over.
    #[test]
    fn requests_survive_any_cutting(
        reqs in vec(request(), 0..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let mut stream = encode(&Hello::current()).unwrap();
        for r in &reqs {
            stream.extend(encode(r).unwrap());
        }
        let mut d = FrameDecoder::default();
        let mut hello = None;
        let mut got = Vec::new();
        for piece in pieces(&stream, &cuts) {
            d.push(&piece);
            if hello.is_none() {
                hello = d.next_frame::<Hello>().unwrap();
                if hello.is_none() {
                    continue;
                }
            }
            while let Some(r) = d.next_frame::<Request>().unwrap() {
                got.push(r);
            }
        }
        prop_assert_eq!(hello, Some(Hello::current()));
        prop_assert_eq!(got, reqs);
        prop_assert_eq!(d.buffered(), 0);
    }

    /// Hostile bytes never panic the decoder: each read yields whole
    /// payloads, then needs more bytes (holding less than one frame) or
    /// refuses an oversized prefix; a payload decodes or is an error, and
    /// one that decodes is that message's only encoding.
    #[test]
    fn garbage_is_framed_or_refused(
        stream in hostile_stream(),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let mut d = FrameDecoder::default();
        let mut taken = 0;
        'reads: for piece in pieces(&stream, &cuts) {
            d.push(&piece);
            loop {
                match d.next_payload() {
                    Ok(Some(p)) => {
                        taken += 4 + p.len();
                        if let Ok(h) = decode::<Hello>(&p) {
                            prop_assert_eq!(&encode(&h).unwrap()[4..], &p[..]);
                        }
                        if let Ok(r) = decode::<Request>(&p) {
                            prop_assert_eq!(&encode(&r).unwrap()[4..], &p[..]);
                        }
                    }
                    Ok(None) => break,
                    Err(FrameError::TooLarge { len }) => {
                        prop_assert!(len > u64::from(MAX_FRAME_BYTES));
                        break 'reads;
                    }
                    Err(e) => prop_assert!(false, "unexpected error: {e}"),
                }
            }
            prop_assert!(d.buffered() < 4 + MAX_FRAME_BYTES as usize);
        }
        prop_assert!(taken + d.buffered() <= stream.len());
    }

    /// A request's payload with bytes overwritten decodes to a message
    /// whose encoding is exactly those bytes, or is a decode error; a
    /// payload cut short never decodes.
    #[test]
    fn mutated_requests_decode_or_err(
        req in request(),
        edits in vec((any::<Index>(), any::<u8>()), 1..4),
        cut in any::<Index>(),
    ) {
        let frame = encode(&req).unwrap();
        let payload = &frame[4..];
        let short = &payload[..cut.index(payload.len())];
        prop_assert!(matches!(decode::<Request>(short), Err(FrameError::Decode(_))));
        let mut edited = payload.to_vec();
        for (i, b) in edits {
            let i = i.index(edited.len());
            edited[i] = b;
        }
        match decode::<Request>(&edited) {
            Ok(r) => prop_assert_eq!(&encode(&r).unwrap()[4..], &edited[..]),
            Err(FrameError::Decode(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error: {e}"),
        }
    }

    /// A length prefix over the cap is refused once its four bytes are in,
    /// however they arrive, before any payload.
    #[test]
    fn oversized_prefixes_are_refused_early(
        len in (MAX_FRAME_BYTES + 1)..=u32::MAX,
        split in 0usize..=4,
    ) {
        let prefix = len.to_le_bytes();
        let mut d = FrameDecoder::default();
        d.push(&prefix[..split]);
        if split < 4 {
            prop_assert!(matches!(d.next_payload(), Ok(None)));
        }
        d.push(&prefix[split..]);
        let refused = matches!(
            d.next_payload(),
            Err(FrameError::TooLarge { len: l }) if l == u64::from(len)
        );
        prop_assert!(refused);
    }
}
