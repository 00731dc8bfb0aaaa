//! tokio-util adapter for the frame codec (feature `tokio-codec`).

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{decode, find_frame, DecodeError, FrameTooLong};
use crate::{Dialect, Method, DEFAULT_MAX_FRAME_LEN};

/// A fatal error of a framed stream: the stream ends after it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame exceeded the maximum length.
    #[error(transparent)]
    TooLong(#[from] FrameTooLong),
    /// The underlying reader or writer failed.
    #[error("frame I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// `Decoder`/`Encoder` of [`Method`] frames for `FramedRead`/`FramedWrite`.
///
/// Each decoded item is itself a `Result`: a line that fails to decode is
/// yielded as `Ok(Err(DecodeError))` and the stream goes on with the next
/// line, while an over-long frame is the stream error
/// [`FrameError::TooLong`], after which `FramedRead` ends the stream.
///
/// ```
/// use bytes::BytesMut;
/// use pod_protocol::{Method, MethodCodec};
/// use tokio_util::codec::Decoder;
///
/// let mut codec = MethodCodec::default();
/// let mut buf = BytesMut::from(&b"garbage\n{\"method\":\"shutdown\"}\n"[..]);
/// assert!(codec.decode(&mut buf).unwrap().unwrap().is_err());
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap().unwrap(), Method::Shutdown);
/// ```
#[derive(Debug, Clone)]
pub struct MethodCodec {
    max_len: usize,
    scanned: usize,
    dialect: Dialect,
}

impl Default for MethodCodec {
    fn default() -> Self {
        MethodCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl MethodCodec {
    /// A codec accepting frames of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        MethodCodec {
            max_len,
            scanned: 0,
            dialect: Dialect::Original,
        }
    }

    /// This codec, encoding in `dialect` (decoding accepts both).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use pod_protocol::{Dialect, Method, MethodCodec, PodEvent};
    /// use tokio_util::codec::Encoder;
    ///
    /// let mut codec = MethodCodec::default().with_dialect(Dialect::Worker);
    /// let event = PodEvent::ShutDown { pod_name: "w".into(), incarnation: None };
    /// let mut buf = BytesMut::new();
    /// codec.encode(&Method::PodEvent(event), &mut buf).unwrap();
    /// assert!(buf.starts_with(b"{\"method\":\"worker_event\""));
    /// ```
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The configured maximum frame length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The dialect the encoder writes.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

impl Decoder for MethodCodec {
    type Item = Result<Method, DecodeError>;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        loop {
            let Some(end) = find_frame(buf, &mut self.scanned, self.max_len)? else {
                return Ok(None);
            };
            let line = buf.split_to(end + 1);
            let frame = &line[..end];
            if !frame.is_empty() {
                return Ok(Some(decode(frame)));
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        self.scanned = 0;
        if buf.is_empty() {
            return Ok(None);
        }
        let rest = buf.split();
        Ok(Some(decode(&rest)))
    }
}

impl Encoder<&Method> for MethodCodec {
    type Error = FrameError;

    fn encode(&mut self, method: &Method, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.put_slice(&self.dialect.encode(method));
        Ok(())
    }
}
