//! The journal beside the table file: the next table, written durably
//! before the table file is rewritten in place, so that a crash in the
//! middle of the rewrite leaves a complete table to recover.
//!
//! Format: one header line, then the table exactly as it will be written
//! to the data file, then a checksum of each 256-byte block of the bytes
//! it replaces (8 bytes each, little-endian):
//!
//! ```text
//! pod-scope-lock journal 1 <new length> <old length> <checksum, 16 hex digits>\n
//! <new><old block checksums>
//! ```
//!
//! A journal is *complete* when its length is the header's plus the new
//! length plus 8 bytes per old block, the checksum (over both) matches, and
//! the new table decodes as a valid table; a journal killed while being
//! written is none of these and is ignored.
//!
//! The old blocks tell a data file torn by *this* rewrite (a prefix of the
//! new bytes over the old ones, as `pwrite` from offset 0 leaves it when
//! killed, with or without the final truncation) from one torn by someone
//! else since (an existing Pod, which knows no journal, killed in its own
//! rewrite after this journal's writer died): only the first is recovered
//! from the journal; the second is refused as corrupt rather than rolled
//! back to a stale table. (Checksums rather than the old bytes themselves
//! keep the journal about the size of the table: 3% more.)

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

/// Old bytes are summed in blocks of this size: the block holding the
/// point where a rewrite stopped cannot be checked (part old, part new),
/// every later one is.
const BLOCK: usize = 256;

/// The bytes a rewrite replaces, as the journal keeps them: their length
/// and a checksum per block.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Old {
    len: usize,
    blocks: Vec<u64>,
}

impl Old {
    pub(super) fn of(bytes: &[u8]) -> Self {
        Old {
            len: bytes.len(),
            blocks: bytes.chunks(BLOCK).map(checksum).collect(),
        }
    }

    fn encoded(&self) -> Vec<u8> {
        self.blocks.iter().flat_map(|b| b.to_le_bytes()).collect()
    }

    fn decode(len: usize, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != len.div_ceil(BLOCK).checked_mul(8)? {
            return None;
        }
        let blocks = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut word = [0u8; 8];
                word.copy_from_slice(c);
                u64::from_le_bytes(word)
            })
            .collect();
        Some(Old { len, blocks })
    }
}

fn header(new: &[u8], old: &Old, old_blocks: &[u8]) -> String {
    format!(
        "{MAGIC} {} {} {:016x}\n",
        new.len(),
        old.len,
        checksum_of(new, old_blocks)
    )
}

/// The checksum of the new bytes and the old blocks' checksums.
fn checksum_of(new: &[u8], old_blocks: &[u8]) -> u64 {
    checksum(new) ^ checksum(old_blocks).rotate_left(17)
}

/// Whether `data` is what rewriting `old` in place with `new` leaves when
/// interrupted: `new` written from offset 0 up to some point and `old`
/// after it (its length, and every block after the one holding that
/// point, checked against the old checksums), or a prefix of `new` longer
/// than `old` (the file grew as it was written).
pub(super) fn is_tear(data: &[u8], new: &[u8], old: &Old) -> bool {
    let written = data.iter().zip(new).take_while(|(d, n)| d == n).count();
    if written == data.len() && data.len() >= old.len {
        return true;
    }
    if data.len() != old.len {
        return false;
    }
    let first = written.div_ceil(BLOCK);
    data.chunks(BLOCK)
        .zip(&old.blocks)
        .skip(first)
        .all(|(block, &sum)| checksum(block) == sum)
}

/// Writes `new` (and the block checksums of `old`, the bytes it replaces)
/// as the journal at `path`, durably: created exclusively
/// (mode 0600, never through a symbolic link: `O_CREAT|O_EXCL` does not
/// follow one, and `O_NOFOLLOW` says so twice), written, fdatasync'ed,
/// then the directory fsync'ed so its name is durable too.
///
/// Runs under the table's exclusive lock, after loading removed any
/// leftover journal; a file found at the name anyway (planted meanwhile)
/// is unlinked, not written through, and creation retried once.
pub(super) fn write(path: &Path, dir: &Path, new: &[u8], old: &[u8]) -> Result<(), ScopeError> {
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
    let old = Old::of(old);
    let old_blocks = old.encoded();
    let written = file
        .write_all(header(new, &old, &old_blocks).as_bytes())
        .and_then(|()| file.write_all(new))
        .and_then(|()| file.write_all(&old_blocks))
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

/// A complete journal: the new table's bytes and table, what the old
/// bytes were.
pub(super) struct Complete {
    pub(super) new: Vec<u8>,
    pub(super) table: Table,
    pub(super) old: Old,
}

/// The complete journal at `path`, if there is one: `None` if there is
/// none, or it is incomplete, not a regular file, or over `limit` bytes
/// (the table's limit plus room for the header and the old blocks'
/// checksums): then there is nothing to recover from.
pub(super) fn read(path: &Path, limit: u64) -> Option<Complete> {
    let file = open_regular(path, false).ok()??;
    let limit = limit.saturating_add(limit / 16).saturating_add(128);
    let mut bytes = read_capped(&file, path, limit).ok()?;
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[..newline]).ok()?;
    let mut fields = line.strip_prefix(MAGIC)?.strip_prefix(' ')?.split(' ');
    let new_length: usize = fields.next()?.parse().ok()?;
    let old_length: usize = fields.next()?.parse().ok()?;
    let sum = u64::from_str_radix(fields.next()?, 16).ok()?;
    if fields.next().is_some() {
        return None;
    }
    let mut new = bytes.split_off(newline + 1);
    let old_blocks = new.split_off(new_length.min(new.len()));
    if new.len() != new_length || checksum_of(&new, &old_blocks) != sum {
        return None;
    }
    let old = Old::decode(old_length, &old_blocks)?;
    let table = format::decode(&new).ok()?;
    Some(Complete { new, table, old })
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
        // Bytes moved from the new table to the old one change it too.
        assert_ne!(checksum_of(b"ab", b"c"), checksum_of(b"a", b"bc"));
    }

    #[test]
    fn a_tear_is_a_prefix_of_the_new_bytes_over_the_old_ones() {
        let old: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let new: Vec<u8> = (0..1500u32).map(|i| b'0' + (i % 10) as u8).collect();
        let summary = Old::of(&old);
        let tear = |new: &[u8], old: &[u8], written: usize| {
            [&new[..written], old.get(written..).unwrap_or_default()].concat()
        };
        for written in 0..=new.len() {
            assert!(
                is_tear(&tear(&new, &old, written), &new, &summary),
                "{written}"
            );
        }
        // Longer new bytes: the file grows as they are written.
        let short = Old::of(&old[..100]);
        for written in 0..=new.len() {
            assert!(is_tear(&tear(&new, &old[..100], written), &new, &short));
        }
        // Someone else's bytes are not a tear of this rewrite: other
        // content of the same length, old bytes changed past the point the
        // rewrite reached, another length.
        let theirs: Vec<u8> = (0..2000u32).map(|i| b' ' + (i % 90) as u8).collect();
        assert!(!is_tear(&theirs, &new, &summary));
        let mut changed = tear(&new, &old, 300);
        changed[1000] ^= 1;
        assert!(!is_tear(&changed, &new, &summary));
        assert!(!is_tear(&old[..1999], &new, &summary));
        assert!(!is_tear(&new[..1000], &new, &summary));
        assert!(!is_tear(b"", &new, &summary));
        assert!(is_tear(b"", &new, &Old::of(b"")));
    }

    #[test]
    fn only_a_complete_journal_is_read_back() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("scope.lock.journal");
        let body = format::encode(&Table::new());
        let old = b"the bytes it replaces".to_vec();
        write(&path, temp.path(), &body, &old).unwrap();
        let complete = read(&path, 1 << 20).unwrap();
        assert_eq!((&complete.new, &complete.old), (&body, &Old::of(&old)));
        assert!(complete.table.is_empty());
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
        let mut framed = header(junk, &Old::of(b""), b"").into_bytes();
        framed.extend_from_slice(junk);
        fs::write(&path, &framed).unwrap();
        assert!(read(&path, 1 << 20).is_none());
    }
}
