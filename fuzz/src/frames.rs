//! Target 1, frames: bytes through framing, decoding, validation and
//! re-encoding in each dialect.

use bytes::BytesMut;
use pod_events::{render, Origin};
use pod_protocol::{
    decode, encode, Address, DecodeError, Dialect, FrameError, FrameSplitter, Method, MethodCodec,
    PodEvent, DEFAULT_MAX_FRAME_LEN,
};
use tokio_util::codec::Decoder;

use crate::check_rendered_line;

/// How a byte stream ends once framed.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte was consumed.
    Eof,
    /// A frame went over the limit; the connection is closed there.
    TooLong,
}

/// Feeds `data` as a byte stream through the frame splitter and through
/// the listener's `MethodCodec`, twice: with the default 64 KiB limit in one
/// read, and with a small limit (0..=127, from the first byte) in small
/// reads (1..=32 bytes, from the last byte).
///
/// Checks: no panic; both framers yield exactly the frames of a simple
/// model (non-empty `\n`-separated lines, the unterminated rest at end of
/// stream) and stop with an error at the first line over the limit; every
/// frame decodes the same way through both; every decoded method
/// re-encodes to one `\n`-terminated line that decodes to the same value
/// and re-encodes to the same bytes, and in every dialect to a line that
/// decodes to the same value; every socket field of a validated event is
/// an address that displays and parses back to itself; every decoded event
/// renders to one bounded line.
pub fn frames(data: &[u8]) {
    check_stream(data, DEFAULT_MAX_FRAME_LEN, data.len().max(1));
    let small_max = data.first().map_or(0, |b| usize::from(*b) % 128);
    let read_size = data.last().map_or(1, |b| 1 + usize::from(*b) % 32);
    check_stream(data, small_max, read_size);
}

/// The frames a correct framer yields for `stream` under `max`, and how it
/// ends.
fn model(stream: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if line.len() > max {
            return (frames, End::TooLong);
        }
        if !line.is_empty() {
            frames.push(line);
        }
        match next {
            Some(next) => rest = next,
            None => return (frames, End::Eof),
        }
    }
}

fn check_stream(stream: &[u8], max: usize, read_size: usize) {
    let (expected, expected_end) = model(stream, max);

    let (split, split_end) = split_frames(stream, max, read_size);
    assert_eq!(
        (&split, &split_end),
        (
            &expected.iter().map(|f| f.to_vec()).collect(),
            &expected_end
        ),
        "FrameSplitter (max {max}, reads of {read_size})"
    );

    let (decoded, codec_end) = codec_items(stream, max, read_size);
    assert_eq!(codec_end, expected_end, "MethodCodec end (max {max})");
    assert_eq!(decoded.len(), expected.len(), "MethodCodec frame count");
    for (frame, item) in expected.iter().zip(&decoded) {
        assert!(frame.len() <= max && !frame.contains(&b'\n'));
        let direct = decode(frame);
        assert_eq!(&direct, item, "codec and decode() disagree on {frame:?}");
        check_frame(frame, direct);
    }
}

fn split_frames(stream: &[u8], max: usize, read_size: usize) -> (Vec<Vec<u8>>, End) {
    let mut splitter = FrameSplitter::new(max);
    let mut frames = Vec::new();
    for read in stream.chunks(read_size) {
        splitter.extend(read);
        loop {
            match splitter.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(too_long) => {
                    assert!(too_long.len > max && too_long.max == max, "{too_long:?}");
                    assert_eq!(splitter.buffered(), 0, "buffer kept after FrameTooLong");
                    return (frames, End::TooLong);
                }
            }
        }
        assert!(splitter.buffered() <= max, "buffered beyond the limit");
    }
    frames.extend(splitter.finish());
    (frames, End::Eof)
}

type Item = Result<Method, DecodeError>;

fn codec_items(stream: &[u8], max: usize, read_size: usize) -> (Vec<Item>, End) {
    let mut codec = MethodCodec::new(max);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let on_error = |error: FrameError| match error {
        FrameError::TooLong(too_long) => {
            assert!(too_long.len > max && too_long.max == max, "{too_long:?}");
            End::TooLong
        }
        other => panic!("MethodCodec failed without I/O: {other}"),
    };
    for read in stream.chunks(read_size) {
        buf.extend_from_slice(read);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(error) => return (items, on_error(error)),
            }
        }
        assert!(buf.len() <= max, "MethodCodec buffered beyond the limit");
    }
    // FramedRead calls decode_eof until it yields nothing.
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => break,
            Err(error) => return (items, on_error(error)),
        }
    }
    assert!(buf.is_empty(), "MethodCodec left bytes at end of stream");
    (items, End::Eof)
}

fn check_frame(frame: &[u8], decoded: Item) {
    let method = match decoded {
        Ok(method) => method,
        Err(error) => {
            // The receive loop logs it: formatting must not panic.
            let _ = error.to_string();
            return;
        }
    };
    match method.validate() {
        Err(error) => {
            let _ = error.to_string();
        }
        Ok(()) => check_addresses(&method),
    }
    let encoded = encode(&method);
    assert_eq!(
        encoded.iter().filter(|&&b| b == b'\n').count(),
        1,
        "encode is not one line: {encoded:?}"
    );
    assert_eq!(encoded.last(), Some(&b'\n'));
    let line = &encoded[..encoded.len() - 1];
    let again = decode(line).unwrap_or_else(|error| {
        panic!(
            "re-encoded frame does not decode ({error}):\n  frame:      {:?}\n  re-encoded: {:?}",
            String::from_utf8_lossy(frame),
            String::from_utf8_lossy(line)
        )
    });
    // Exact, floats included: pod-protocol enables serde_json's
    // `float_roundtrip` (a finding of this target; see
    // `a_float_parameter_survives_decode_and_encode` in protocol's tests).
    assert_eq!(
        again,
        method,
        "re-encoded frame decodes to another value:\n  frame:      {:?}\n  re-encoded: {:?}",
        String::from_utf8_lossy(frame),
        String::from_utf8_lossy(line)
    );
    assert_eq!(encode(&again), encoded, "encoding is not stable");
    // A relay may write upward in either dialect: each must carry the same
    // method, and the original dialect is what `encode` writes.
    for &dialect in Dialect::ALL {
        let line = dialect.encode(&method);
        let inner = &line[..line.len() - 1];
        assert_eq!(
            decode(inner).as_ref(),
            Ok(&method),
            "{dialect} re-encoding: {:?}",
            String::from_utf8_lossy(inner)
        );
        if dialect == Dialect::Original {
            assert_eq!(line, encoded, "encode is not the original dialect");
        }
    }
    if let Method::PodEvent(event) = &method {
        check_rendered_line(&render(event, Origin::Reported));
        check_rendered_line(&render(event, Origin::Inferred));
    }
}

/// A validated event's socket fields are addresses whose display parses
/// back to the same address.
fn check_addresses(method: &Method) {
    let Method::PodEvent(PodEvent::ScopeSubDelegated {
        sub_socket,
        spawner_socket,
        ..
    }) = method
    else {
        return;
    };
    for socket in std::iter::once(sub_socket).chain(spawner_socket) {
        let address: Address = socket
            .parse()
            .unwrap_or_else(|error| panic!("validated socket {socket:?} is no address: {error}"));
        assert_eq!(
            address.to_string().parse::<Address>().as_ref(),
            Ok(&address),
            "{socket:?}"
        );
    }
}
