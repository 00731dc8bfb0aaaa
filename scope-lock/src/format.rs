//! The on-disk format of the table: `{"version":1,"allocations":[...]}`,
//! one allocation per line, sorted by name.

use std::collections::HashSet;

use serde::Deserialize;

use crate::table::{Allocation, Table};

/// The only format version this build reads and writes.
pub(crate) const VERSION: u64 = 1;

/// Why stored bytes are not a table.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Not JSON of the expected shape.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// Another format version.
    Version(u64),
    /// Parses, but breaks a rule of the table.
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    /// Existing Pods write no version: theirs is version 1.
    #[serde(default = "legacy_version")]
    version: u64,
    allocations: Vec<Allocation>,
}

#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default = "legacy_version")]
    version: u64,
}

fn legacy_version() -> u64 {
    VERSION
}

/// Serializes `table`: compact, one allocation per line, so a human can read
/// and diff it and a parse error points at the allocation.
pub(crate) fn encode(table: &Table) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_size_hint(table));
    out.extend_from_slice(b"{\"version\":1,\"allocations\":[");
    for (i, allocation) in table.allocations().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'\n');
        // Serializing plain structs into a Vec cannot fail.
        serde_json::to_writer(&mut out, allocation).unwrap_or_default();
    }
    out.extend_from_slice(b"\n]}\n");
    out
}

/// About the size of [`encode`]'s output, a little more unless strings need
/// escaping: one pass over lengths, so that the buffer is not regrown
/// (and copied) while a large table is written.
fn encoded_size_hint(table: &Table) -> usize {
    64 + table
        .allocations()
        .map(|a| {
            // Keys, quotes and punctuation: under 160 bytes per allocation
            // and 60 per rule; pid and start time: at most 20 digits each.
            160 + 40
                + a.pod_name.as_str().len()
                + a.socket.len()
                + a.incarnation.as_ref().map_or(0, String::len)
                + a.pending_until.map_or(0, |_| 40)
                + if a.reparented == 0 { 0 } else { 40 }
                + a.delegated_from.as_ref().map_or(0, |p| p.as_str().len())
                + a.scope_allow
                    .iter()
                    .map(|r| 60 + r.target.len())
                    .sum::<usize>()
        })
        .sum::<usize>()
}

/// serde_json appends " at line L column C" to its messages; the error
/// type reports the position in fields of its own.
fn strip_position(message: &str, line: usize, column: usize) -> String {
    let suffix = format!(" at line {line} column {column}");
    message.strip_suffix(&suffix).unwrap_or(message).to_owned()
}

/// Parses and checks stored bytes: the format, valid names and paths,
/// unique names, and [`Table::check_invariant`].
pub(crate) fn decode(bytes: &[u8]) -> Result<Table, DecodeError> {
    let file: TableFile = match serde_json::from_slice(bytes) {
        Ok(file) => file,
        Err(error) => {
            if let Ok(VersionOnly { version }) = serde_json::from_slice(bytes) {
                if version != VERSION {
                    return Err(DecodeError::Version(version));
                }
            }
            return Err(DecodeError::Syntax {
                line: error.line(),
                column: error.column(),
                message: strip_position(&error.to_string(), error.line(), error.column()),
            });
        }
    };
    if file.version != VERSION {
        return Err(DecodeError::Version(file.version));
    }
    let count = file.allocations.len();
    let table: Table = file.allocations.into_iter().collect();
    if table.len() != count {
        return Err(DecodeError::Invalid(duplicate_message(bytes)));
    }
    table.check_invariant().map_err(DecodeError::Invalid)?;
    Ok(table)
}

/// Names the first pod with two allocations (only on the error path).
fn duplicate_message(bytes: &[u8]) -> String {
    let mut seen = HashSet::new();
    let duplicate = serde_json::from_slice::<TableFile>(bytes)
        .ok()
        .and_then(|file| {
            file.allocations
                .into_iter()
                .find(|a| !seen.insert(a.pod_name.clone()))
        });
    match duplicate {
        Some(a) => format!("pod `{}` has two allocations", a.pod_name),
        None => "a pod has two allocations".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pod_protocol::{PodName, ScopeRule};

    #[test]
    fn the_size_hint_covers_the_output_and_decode_reads_it_back() {
        let name = |s: &str| PodName::new(s).unwrap();
        let table: Table = (0..50u32)
            .map(|i| Allocation {
                pod_name: name(&format!("pod{i}")),
                pid: u32::MAX - i,
                start_time: (i % 3 != 0).then(|| u64::MAX - u64::from(i)),
                socket: format!("/run/pods/pod{i}.sock"),
                scope_allow: vec![
                    ScopeRule::write(if i == 0 {
                        "/srv".to_owned()
                    } else {
                        format!("/srv/{i}")
                    }),
                    ScopeRule {
                        recursive: false,
                        ..ScopeRule::read("/usr")
                    },
                ],
                delegated_from: (i > 0).then(|| name("pod0")),
                incarnation: (i % 3 != 0).then(|| "0123456789abcdef0123456789abcdef".into()),
                pending_until: (i % 4 == 1).then(|| u64::MAX - u64::from(i)),
                reparented: u64::MAX / 4 * u64::from(i % 5),
            })
            .collect();
        let bytes = encode(&table);
        assert!(bytes.len() <= encoded_size_hint(&table));
        assert_eq!(decode(&bytes).unwrap(), table);
        assert!(encode(&Table::new()).len() <= encoded_size_hint(&Table::new()));
    }
}
