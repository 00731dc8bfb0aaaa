//! Wire types and the frame codec spoken between Pods.
//!
//! This crate owns the bytes on a Pod's control socket: the [`Method`] and
//! [`PodEvent`] types with their newline-delimited JSON encoding (byte
//! compatible with existing Pods, in both [`Dialect`]s), content validation
//! ([`PodName`], [`validate_path`], socket [`Address`]es), and a pure frame
//! codec ([`encode`], [`decode`], [`FrameSplitter`]). It does no I/O and has no async runtime dependency:
//! moving frames between processes is `pod-transport`'s job, and what a
//! parent does with an event is `pod-events`'.
//!
//! ```
//! use pod_protocol::{decode, encode, Method, PodEvent};
//!
//! let event = PodEvent::ShutDown { pod_name: "child".into(), incarnation: None };
//! let frame = encode(&Method::PodEvent(event.clone()));
//! assert_eq!(frame, b"{\"method\":\"pod_event\",\"params\":{\"kind\":\"shut_down\",\"pod_name\":\"child\"}}\n");
//!
//! let method = decode(&frame[..frame.len() - 1]).unwrap();
//! method.validate().unwrap(); // a separate step: names and paths
//! assert_eq!(method, Method::PodEvent(event));
//! ```
//!
//! Decoding and validation are separate so a receiver can tell "not a
//! method" ([`DecodeError`]) from "a method with unacceptable content"
//! ([`ValidationError`]).

mod address;
mod buffer;
mod codec;
mod de;
mod dialect;
#[cfg(feature = "tokio-codec")]
mod tokio_codec;
mod validate;
mod wire;

pub use address::{validate_socket, Address, AddressError, Host};
pub use codec::{
    decode, encode, encode_into, DecodeError, FrameSplitter, FrameTooLong, DEFAULT_MAX_FRAME_LEN,
    EVENT_KINDS, METHOD_NAMES, WORKER_METHOD_NAMES,
};
pub use dialect::{Dialect, UnknownDialect};
#[cfg(feature = "tokio-codec")]
pub use tokio_codec::{FrameError, MethodCodec};
pub use validate::{
    validate_path, validate_scope, PodName, ValidationError, MAX_PATH_LEN, MAX_POD_NAME_LEN,
};
pub use wire::{Method, Permission, PodEvent, Reparent, ScopeRule};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
