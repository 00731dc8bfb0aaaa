//! The journal beside the table file: the next table, written durably
//! before the table file is rewritten in place, so that a crash in the
//! middle of the rewrite leaves a complete table to recover.
//!
//! Format: one header line, then the table exactly as it will be written
//! to the data file:
//!
//! ```text
//! pod-scope-lock journal 1 <body length> <checksum, 16 hex digits>\n
//! <body>
//! ```
//!
//! A journal is *complete* when its length is the header's plus the body
//! length, the checksum matches, and the body decodes as a valid table; a
//! journal killed while being written is none of these and is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::OFlags;

use crate::error::ScopeError;
use crate::format;
use crate::table::Table;

use super::open::{open_regular, read_capped};

const MAGIC: &str = "pod-scope-lock journal 1";

/// A 64-bit checksum (a torn or partly written journal must not pass; no
/// adversary is assumed: the directory is private). Four independent
/// lanes of a multiply-rotate mix over 8-byte words, so the multiplies
/// overlap: well under a millisecond for the 3 MB of 10,000 allocations.
pub(super) fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    fn mix(lane: u64, word: u64) -> u64 {
        (lane ^ word).wrapping_mul(K).rotate_left(31)
    }
    fn word(bytes: &[u8]) -> u64 {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(word)
    }
    let mut lanes = [K, K.rotate_left(16), K.rotate_left(32), K.rotate_left(48)];
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, chunk) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = mix(*lane, word(chunk));
        }
    }
    // The tail, a word at a time into the first lane, then the length, so
    // that zero padding never collides with zero bytes.
    let mut h = lanes[0];
    for chunk in blocks.remainder().chunks(8) {
        h = mix(h, word(chunk));
    }
    for lane in &lanes[1..] {
        h = mix(h, *lane);
    }
    h = mix(h, bytes.len() as u64);
    h ^ (h >> 29)
}

fn header(body: &[u8]) -> String {
    format!("{MAGIC} {} {:016x}\n", body.len(), checksum(body))
}

/// Writes `body` as the journal at `path`, durably: created exclusively
/// (mode 0600, never through a symbolic link: `O_CREAT|O_EXCL` does not
/// follow one, and `O_NOFOLLOW` says so twice), written, fdatasync'ed,
/// then the directory fsync'ed so its name is durable too.
///
/// Runs under the table's exclusive lock, after loading removed any
/// leftover journal; a file found at the name anyway (planted meanwhile)
/// is unlinked, not written through, and creation retried once.
pub(super) fn write(path: &Path, dir: &Path, body: &[u8]) -> Result<(), ScopeError> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(path)
    };
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove(path)?;
            create()
        }
        other => other,
    }
    .map_err(|e| ScopeError::io(path, e))?;
    let written = file
        .write_all(header(body).as_bytes())
        .and_then(|()| file.write_all(body))
        .and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Incomplete, so harmless; removed so as not to linger.
        let _ = fs::remove_file(path);
        return Err(ScopeError::io(path, e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ScopeError::io(dir, e))
}

/// Removes the journal (or whatever is at its name: unlinking a symbolic
/// link removes the link, not its target). A missing one is fine.
pub(super) fn remove(path: &Path) -> Result<(), ScopeError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ScopeError::io(path, e)),
    }
}

/// The complete journal at `path`: its body and the table it holds.
/// `None` if there is none, or it is incomplete, or not a regular file,
/// or over `limit` bytes: then there is nothing to recover from.
pub(super) fn read(path: &Path, limit: u64) -> Option<(Vec<u8>, Table)> {
    let file = open_regular(path, false).ok()??;
    let mut bytes = read_capped(&file, path, limit.saturating_add(128)).ok()?;
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[..newline]).ok()?;
    let rest = line.strip_prefix(MAGIC)?.strip_prefix(' ')?;
    let (length, sum) = rest.split_once(' ')?;
    let length: usize = length.parse().ok()?;
    let sum = u64::from_str_radix(sum, 16).ok()?;
    let body = bytes.split_off(newline + 1);
    if body.len() != length || checksum(&body) != sum {
        return None;
    }
    let table = format::decode(&body).ok()?;
    Some((body, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_sees_every_byte_and_the_length() {
        // Longer than one 32-byte block, with a tail.
        let body =
            b"{\"version\":1,\"allocations\":[]}\n{\"version\":1,\"allocations\":[]}\n".to_vec();
        let sum = checksum(&body);
        for i in 0..body.len() {
            let mut changed = body.clone();
            changed[i] ^= 1;
            assert_ne!(checksum(&changed), sum, "byte {i}");
        }
        assert_ne!(checksum(&body[..body.len() - 1]), sum);
        assert_ne!(checksum(&[0; 8]), checksum(&[0; 9]));
    }

    #[test]
    fn only_a_complete_journal_is_read_back() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("scope.lock.journal");
        let body = format::encode(&Table::new());
        write(&path, temp.path(), &body).unwrap();
        let (read_body, table) = read(&path, 1 << 20).unwrap();
        assert_eq!(read_body, body);
        assert!(table.is_empty());
        let full = fs::read(&path).unwrap();
        // Every truncation (a journal killed while being written) is
        // incomplete, and so is one with a flipped byte.
        for len in 0..full.len() {
            fs::write(&path, &full[..len]).unwrap();
            assert!(read(&path, 1 << 20).is_none(), "{len} bytes");
        }
        let mut flipped = full.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        fs::write(&path, &flipped).unwrap();
        assert!(read(&path, 1 << 20).is_none());
        // Valid framing around a body that is not a table is not a
        // journal either.
        let junk = b"not a table";
        let mut framed = header(junk).into_bytes();
        framed.extend_from_slice(junk);
        fs::write(&path, &framed).unwrap();
        assert!(read(&path, 1 << 20).is_none());
    }
}
