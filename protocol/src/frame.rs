//! Framing: a 4-byte little-endian length, then a bincode payload.
//!
//! Every decode runs with an explicit byte limit, so a hostile peer cannot
//! make the other side allocate more than [`MAX_FRAME_BYTES`].

use std::io::{self, Read, Write};

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Largest payload either side sends or accepts (4 MiB). A launch request
/// carries the task's argv, env and result template, all bounded by the
/// runtime's 1 MiB request body limit.
pub const MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;

/// A frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer closed the connection")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge { len: u64 },
    #[error("frame i/o failed")]
    Io(#[source] io::Error),
    #[error("frame payload is malformed")]
    Decode(#[source] bincode::Error),
    #[error("message could not be encoded")]
    Encode(#[source] bincode::Error),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(u64::from(MAX_FRAME_BYTES))
        .reject_trailing_bytes()
}

/// Encodes `msg` as one complete frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = options().serialize(msg).map_err(FrameError::Encode)?;
    let len = payload.len() as u64;
    if len > u64::from(MAX_FRAME_BYTES) {
        return Err(FrameError::TooLarge { len });
    }
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes one payload (without its length prefix).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() as u64 > u64::from(MAX_FRAME_BYTES) {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
        });
    }
    options().deserialize(payload).map_err(FrameError::Decode)
}

/// Checks a length prefix before anything is allocated for it.
pub fn payload_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
        });
    }
    Ok(len as usize)
}

/// Reads exactly one frame, blocking, and decodes it: bytes past the frame
/// stay unread for whoever reads next. A clean end of stream before the
/// first byte is [`FrameError::Closed`].
pub fn read_frame<T: DeserializeOwned, R: Read>(reader: &mut R) -> Result<T, FrameError> {
    let mut frames = FrameDecoder::default();
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        match reader.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    frames.push(&prefix);
    // The cap is checked before the payload is read or allocated.
    let mut payload = vec![0u8; payload_len(prefix)?];
    reader.read_exact(&mut payload).map_err(FrameError::Io)?;
    frames.push(&payload);
    frames
        .next_frame()?
        .ok_or_else(|| FrameError::Io(io::ErrorKind::UnexpectedEof.into()))
}

/// Frames out of a byte stream that arrives in pieces: every reader of
/// frames (a socket read without blocking, an async reader) pushes what it
/// got and takes whole frames out. A length prefix over the cap is refused
/// as soon as its four bytes are in, before the payload is waited for.
///
/// Taking frames out costs time linear in their bytes, however small they
/// are: a taken frame only moves `start`, and the taken bytes are dropped
/// at the next push, which moves the bytes not taken out yet once.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the bytes not taken out yet start in `buf`.
    start: usize,
}

impl FrameDecoder {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's payload, if one is in.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let held = &self.buf[self.start..];
        let Some(prefix) = held.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = payload_len(*prefix)?;
        if held.len() < 4 + len {
            return Ok(None);
        }
        let payload = held[4..4 + len].to_vec();
        self.start += 4 + len;
        Ok(Some(payload))
    }

    /// The next whole frame, decoded, if one is in.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.next_payload()?.map(|p| decode(&p)).transpose()
    }

    /// Bytes held that do not make a whole frame yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Encodes and writes one frame.
pub fn write_frame<T: Serialize, W: Write>(writer: &mut W, msg: &T) -> Result<(), FrameError> {
    let bytes = encode(msg)?;
    writer.write_all(&bytes).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Hello, Request};

    #[test]
    fn round_trip() {
        let hello = Hello::current();
        let bytes = encode(&hello).unwrap();
        let back: Hello = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, hello);
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut bytes = (MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let err = read_frame::<Request, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut bytes = 6u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xff; 6]);
        let err = read_frame::<Request, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut payload = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .serialize(&Request::Ping)
            .unwrap();
        payload.push(7);
        assert!(decode::<Request>(&payload).is_err());
    }

    #[test]
    fn the_decoder_takes_frames_out_of_pieces() {
        let mut bytes = encode(&Request::Ping).unwrap();
        bytes.extend(encode(&Hello::current()).unwrap());
        let mut d = FrameDecoder::default();
        // One byte at a time: nothing until the first frame is whole.
        let first_len = encode(&Request::Ping).unwrap().len();
        for b in &bytes[..first_len - 1] {
            d.push(std::slice::from_ref(b));
            assert!(d.next_frame::<Request>().unwrap().is_none());
        }
        d.push(&bytes[first_len - 1..]);
        assert_eq!(d.next_frame::<Request>().unwrap(), Some(Request::Ping));
        assert_eq!(d.next_frame::<Hello>().unwrap(), Some(Hello::current()));
        assert_eq!(d.next_frame::<Hello>().unwrap(), None);
        assert_eq!(d.buffered(), 0);
        // An oversized prefix is refused before its payload arrives.
        d.push(&(MAX_FRAME_BYTES + 1).to_le_bytes());
        assert!(matches!(d.next_payload(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn many_small_frames_take_linear_time() {
        // Taking a frame out must not move the bytes behind it, or many
        // small frames in one buffer cost quadratic time.
        let mut d = FrameDecoder::default();
        d.push(&vec![0u8; 2 << 20]);
        let started = std::time::Instant::now();
        let mut frames = 0;
        while let Some(payload) = d.next_payload().unwrap() {
            assert!(payload.is_empty());
            frames += 1;
        }
        assert_eq!(frames, 2 << 18);
        assert_eq!(d.buffered(), 0);
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        // What follows is framed as before.
        d.push(&encode(&Request::Ping).unwrap());
        assert_eq!(d.next_frame::<Request>().unwrap(), Some(Request::Ping));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn eof_before_a_frame_is_closed() {
        let err = read_frame::<Request, _>(&mut &[][..]).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
        let err = read_frame::<Request, _>(&mut &[1u8, 0][..]).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }
}
