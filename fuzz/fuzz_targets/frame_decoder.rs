//! Bytes from a hostile peer, in pieces of any size, through the
//! [`FrameDecoder`] the helper reads every connection with.
//!
//! Never a panic, and:
//! * the decoder holds less than one whole frame (`4 + MAX_FRAME_BYTES`)
//!   once the whole frames are taken out, and accounts for every byte;
//! * how the stream is cut into pieces changes nothing: the same payloads
//!   come out, then the same error or the same leftover;
//! * a payload that decodes as a `Hello` or a `Request` is that message's
//!   only encoding (re-encoding gives the same bytes back), and a decoded
//!   `Launch` goes through the helper's validation.
#![no_main]

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use arbitrary::Arbitrary;
use execgo_runtime_fuzz::validate::validate;
use execgo_runtime_protocol::{
    decode, encode, FrameDecoder, FrameError, Hello, Request, MAX_FRAME_BYTES,
};
use libfuzzer_sys::fuzz_target;

const CAP: usize = MAX_FRAME_BYTES as usize;

/// One push: what a `recv` on the helper's socket could return.
#[derive(Debug, Arbitrary)]
enum Piece {
    Bytes(Vec<u8>),
    /// A length prefix on its own, so every frame size is one step away.
    Prefix(u32),
    /// `len` copies of `byte`, as much as one read of the helper's (64 KiB).
    Fill {
        byte: u8,
        len: u16,
    },
    /// 0xff bytes, up to 16 either side of a whole frame at the cap, which
    /// no input of libFuzzer's sizes reaches otherwise (one per input; not
    /// zeros, which make a million empty frames: a unit test has those).
    NearCap {
        offset: u8,
    },
}

/// Bytes per input at most, besides one `NearCap`: enough for many reads,
/// few enough that an input runs in milliseconds.
const BUDGET: usize = 256 * 1024;

impl Piece {
    fn bytes(&self, budget: &mut usize, near_cap: &mut bool) -> Vec<u8> {
        let mut bytes = match self {
            Piece::Bytes(b) => b.clone(),
            Piece::Prefix(len) => len.to_le_bytes().to_vec(),
            Piece::Fill { byte, len } => vec![*byte; usize::from(*len).min(*budget)],
            Piece::NearCap { offset } if !*near_cap => {
                *near_cap = true;
                return vec![0xff; CAP + 4 + usize::from(offset % 32) - 16];
            }
            Piece::NearCap { .. } => Vec::new(),
        };
        bytes.truncate(*budget);
        *budget -= bytes.len();
        bytes
    }
}

/// What a reader of the stream got.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: usize,
    /// Of the payloads, in order.
    digest: u64,
    end: End,
}

#[derive(Debug, PartialEq)]
enum End {
    /// The decoder refused a length prefix: the connection is closed.
    TooLarge(u64),
    /// No error; this many bytes of an incomplete frame wait.
    Waiting(usize),
}

/// Reads the stream as the helper does: after each push, every whole
/// frame is taken out. Payloads not seen before go to `check`.
fn run<'a>(pushes: impl Iterator<Item = &'a [u8]>, mut check: impl FnMut(&[u8])) -> Outcome {
    let mut d = FrameDecoder::default();
    let mut digest = DefaultHasher::new();
    let (mut frames, mut pushed, mut taken) = (0, 0, 0);
    for bytes in pushes {
        d.push(bytes);
        pushed += bytes.len();
        loop {
            match d.next_payload() {
                Ok(Some(p)) => {
                    assert!(p.len() <= CAP);
                    frames += 1;
                    taken += 4 + p.len();
                    p.hash(&mut digest);
                    check(&p);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len }) => {
                    assert!(len > u64::from(MAX_FRAME_BYTES));
                    let end = End::TooLarge(len);
                    return Outcome {
                        frames,
                        digest: digest.finish(),
                        end,
                    };
                }
                Err(e) => panic!("next_payload failed other than TooLarge: {e}"),
            }
        }
        assert!(
            d.buffered() < 4 + CAP,
            "{} bytes buffered after every whole frame was taken out",
            d.buffered()
        );
        assert_eq!(taken + d.buffered(), pushed, "bytes lost or invented");
    }
    let end = End::Waiting(d.buffered());
    Outcome {
        frames,
        digest: digest.finish(),
        end,
    }
}

/// A decoded message is re-encoded to exactly its payload.
fn canonical<T: serde::Serialize>(msg: &T, payload: &[u8]) {
    let frame = encode(msg).expect("a decoded message encodes");
    assert_eq!(&frame[..4], &(payload.len() as u32).to_le_bytes());
    assert_eq!(
        &frame[4..],
        payload,
        "decoded message re-encodes differently"
    );
}

fn check_payload(payload: &[u8]) {
    if let Ok(hello) = decode::<Hello>(payload) {
        canonical(&hello, payload);
    }
    if let Ok(req) = decode::<Request>(payload) {
        canonical(&req, payload);
        if let Request::Launch(spec) = req {
            if let Err(e) = validate(spec) {
                let _ = e.to_string();
            }
        }
    }
}

fuzz_target!(|pieces: Vec<Piece>| {
    let (mut budget, mut near_cap) = (BUDGET, false);
    let pieces: Vec<Vec<u8>> = pieces
        .iter()
        .map(|p| p.bytes(&mut budget, &mut near_cap))
        .collect();
    // Each distinct payload is checked once (a run of zeros is a million
    // empty frames).
    let mut seen = HashSet::new();
    let cut = run(pieces.iter().map(Vec::as_slice), |p| {
        if seen.insert(p.to_vec()) {
            check_payload(p);
        }
    });
    // The same stream in one piece.
    let whole = pieces.concat();
    let in_one = run(std::iter::once(whole.as_slice()), |_| {});
    assert_eq!(cut, in_one, "the pieces changed what was read");
});
