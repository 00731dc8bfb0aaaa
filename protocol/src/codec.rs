//! The frame codec: one compact JSON `Method` per `\n`-terminated line.
//!
//! Pure functions over byte buffers, no I/O: [`encode`] a method into a
//! frame, split incoming bytes into frames with a [`FrameSplitter`] that
//! enforces a maximum frame length, and [`decode`] each frame. Under the
//! `tokio-codec` feature, [`MethodCodec`](crate::MethodCodec) adapts the
//! same logic to tokio-util's `FramedRead`/`FramedWrite`.

use crate::{Dialect, Method};

/// Default maximum length of one frame (64 KiB), newline excluded.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;

/// Every `method` name this crate decodes.
pub const METHOD_NAMES: &[&str] = &[
    "pod_event",
    "notify",
    "shutdown",
    "run",
    "resume",
    "cancel",
    "pause",
    "get_history",
    "reparent",
];

/// Method names of the later dialect ([`Dialect::Worker`]) that are not in
/// [`METHOD_NAMES`]; each decodes as the original method it renames.
pub const WORKER_METHOD_NAMES: &[&str] = &["worker_event"];

/// Every `kind` of `pod_event` this crate decodes.
pub const EVENT_KINDS: &[&str] = &["turn_ended", "errored", "shut_down", "scope_sub_delegated"];

/// A frame longer than the configured maximum.
///
/// Framing cannot resynchronise inside an over-long frame without reading
/// it all, so a receiver treats this as fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame longer than {max} bytes (at least {len} bytes without a newline)")]
pub struct FrameTooLong {
    /// Bytes seen without a newline when the limit was hit.
    pub len: usize,
    /// The configured maximum.
    pub max: usize,
}

/// Why one frame could not be decoded into a [`Method`].
///
/// Each case is distinct so a receiver can count and report them apart;
/// none of them is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is not valid UTF-8.
    #[error("frame is not UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Length of the longest valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The frame is not a JSON document.
    #[error("frame is not JSON: {message} at column {column}")]
    Syntax {
        /// serde_json's description.
        message: String,
        /// 1-based column of the error.
        column: usize,
    },
    /// `method` names no known method.
    #[error("unknown method {method:?}; expected one of {METHOD_NAMES:?}")]
    UnknownMethod {
        /// The method name received.
        method: String,
    },
    /// A `pod_event` whose `kind` names no known event.
    #[error("unknown pod_event kind {kind:?}; expected one of {EVENT_KINDS:?}")]
    UnknownKind {
        /// The kind received.
        kind: String,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// Name of the absent field.
        field: String,
    },
    /// Valid JSON of the wrong shape (a field of the wrong type, say).
    #[error("malformed method: {message}")]
    Malformed {
        /// serde_json's description.
        message: String,
    },
}

/// Encodes `method` as one compact JSON line with a trailing `\n`, in the
/// original dialect (see [`Dialect::encode`] for the other).
///
/// serde_json escapes control characters inside strings, so the only
/// newline in the output is the terminator.
pub fn encode(method: &Method) -> Vec<u8> {
    Dialect::Original.encode(method)
}

/// Appends the frame of `method` to `out`, in the original dialect.
pub fn encode_into(method: &Method, out: &mut Vec<u8>) {
    Dialect::Original.encode_into(method, out);
}

/// Decodes one frame (without its `\n`; a trailing `\r` is tolerated), in
/// either dialect.
///
/// A frame that is not UTF-8 anywhere, even inside a field that decoding
/// ignores, is [`DecodeError::NotUtf8`]: JSON text is UTF-8 (RFC 8259).
pub fn decode(frame: &[u8]) -> Result<Method, DecodeError> {
    let frame = frame.strip_suffix(b"\r").unwrap_or(frame);
    // One validation of the whole frame, then a parse that trusts it:
    // cheaper than serde_json's check of every string on its own.
    let text = std::str::from_utf8(frame).map_err(|utf8| DecodeError::NotUtf8 {
        valid_up_to: utf8.valid_up_to(),
    })?;
    serde_json::from_str(text).map_err(|err| classify(text, err))
}

/// Works out which [`DecodeError`] a failed decode is. Runs only on the
/// error path, so the common case pays for one parse.
fn classify(frame: &str, err: serde_json::Error) -> DecodeError {
    let value: serde_json::Value = match serde_json::from_str(frame) {
        Ok(value) => value,
        Err(_) => {
            return DecodeError::Syntax {
                message: err.to_string(),
                column: err.column(),
            }
        }
    };
    let method = match value.get("method") {
        None => return missing("method"),
        Some(serde_json::Value::String(method)) => method,
        Some(_) => return malformed(err),
    };
    let method = method.as_str();
    if !METHOD_NAMES.contains(&method) && !WORKER_METHOD_NAMES.contains(&method) {
        return DecodeError::UnknownMethod {
            method: method.to_owned(),
        };
    }
    if method == "pod_event" || method == "worker_event" {
        let Some(params) = value.get("params") else {
            return missing("params");
        };
        match params.get("kind") {
            None => return missing("kind"),
            Some(serde_json::Value::String(kind)) if !EVENT_KINDS.contains(&kind.as_str()) => {
                return DecodeError::UnknownKind { kind: kind.clone() }
            }
            Some(_) => {}
        }
    }
    malformed(err)
}

fn missing(field: &str) -> DecodeError {
    DecodeError::MissingField {
        field: field.to_owned(),
    }
}

fn malformed(err: serde_json::Error) -> DecodeError {
    let message = err.to_string();
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        return missing(field);
    }
    DecodeError::Malformed { message }
}

/// Splits a byte stream into `\n`-terminated frames of bounded length.
///
/// ```
/// use pod_protocol::{FrameSplitter, decode, Method};
/// let mut splitter = FrameSplitter::new(1024);
/// splitter.extend(b"{\"method\":\"shutdown\"}\n{\"method\":");
/// let frame = splitter.next_frame().unwrap().unwrap();
/// assert_eq!(decode(&frame).unwrap(), Method::Shutdown);
/// assert!(splitter.next_frame().unwrap().is_none()); // waits for more bytes
/// ```
#[derive(Debug, Clone)]
pub struct FrameSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max_len: usize,
}

impl Default for FrameSplitter {
    fn default() -> Self {
        FrameSplitter::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameSplitter {
    /// A splitter accepting frames of at most `max_len` bytes (newline
    /// excluded).
    pub fn new(max_len: usize) -> Self {
        FrameSplitter {
            buf: Vec::new(),
            scanned: 0,
            max_len,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, without its `\n`; `Ok(None)` when more
    /// bytes are needed. Empty lines are skipped.
    ///
    /// After [`FrameTooLong`] the buffered bytes are discarded; the stream
    /// cannot be trusted to resynchronise, so close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameTooLong> {
        loop {
            match find_frame(&self.buf, &mut self.scanned, self.max_len) {
                Err(err) => {
                    self.buf.clear();
                    self.scanned = 0;
                    return Err(err);
                }
                Ok(None) => return Ok(None),
                Ok(Some(end)) => {
                    let mut frame: Vec<u8> = self.buf.drain(..=end).collect();
                    frame.pop();
                    if !frame.is_empty() {
                        return Ok(Some(frame));
                    }
                }
            }
        }
    }

    /// At end of stream: the unterminated remainder as a last frame, if it
    /// is non-empty (existing senders always terminate lines; this is for
    /// peers that close right after the last byte).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.scanned = 0;
        let rest = std::mem::take(&mut self.buf);
        (!rest.is_empty()).then_some(rest)
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Index of the `\n` ending the first frame of `buf`, scanning from
/// `*scanned` so that a slow sender costs linear time in total.
pub(crate) fn find_frame(
    buf: &[u8],
    scanned: &mut usize,
    max_len: usize,
) -> Result<Option<usize>, FrameTooLong> {
    let limit = buf.len().min(max_len.saturating_add(1));
    match buf[*scanned..limit].iter().position(|&b| b == b'\n') {
        Some(offset) => {
            let end = *scanned + offset;
            *scanned = 0;
            Ok(Some(end))
        }
        None if buf.len() > max_len => Err(FrameTooLong {
            len: buf.len(),
            max: max_len,
        }),
        None => {
            *scanned = limit;
            Ok(None)
        }
    }
}
