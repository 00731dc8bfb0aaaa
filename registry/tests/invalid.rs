//! Invalid records in `spawned_pods.json` (issue 16): kept verbatim,
//! reported, never acted on; the rest of the file loads.

use std::fs;
use std::path::Path;

use pod_registry::{FileRegistry, Outcome, Registry, RegistrySnapshot, RECORDS_FILE};

use crate::common::{block_on, elements_on_disk, expected_elements, name, record};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/legacy-invalid/spawned_pods.json"
);

/// The element of the fixture named `worker 1`, exactly as written there.
fn fixture_invalid_text(text: &str) -> &str {
    let name = text.find("\"pod_name\": \"worker 1\"").unwrap();
    let start = text[..name].rfind('{').unwrap();
    // The element ends at the `}` that closes it: the one at its indent.
    let end = start + text[start..].find("\n  }").unwrap() + "\n  }".len();
    &text[start..end]
}

#[test]
fn a_legacy_file_with_an_invalid_record_loads_the_rest_and_keeps_it_byte_for_byte() {
    let text = fs::read_to_string(FIXTURE).unwrap();
    let raw = fixture_invalid_text(&text).to_owned();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(RECORDS_FILE), &text).unwrap();

    let registry = FileRegistry::open(dir.path()).unwrap();
    let names: Vec<String> = registry
        .list()
        .iter()
        .map(|r| r.pod_name.to_string())
        .collect();
    assert_eq!(names, ["worker-0", "worker-2"]);
    let invalid = registry.invalid_records();
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].index(), 1);
    assert_eq!(invalid[0].raw(), raw);
    assert_eq!(invalid[0].pod_name().as_deref(), Some("worker 1"));
    assert!(
        invalid[0].reason().contains("worker 1"),
        "{}",
        invalid[0].reason()
    );
    // Never matched: no record of that name, so nothing to remove.
    assert_eq!(registry.get("worker 1", None), None);
    // Open did not rewrite the file.
    assert_eq!(fs::read_to_string(registry.path()).unwrap(), text);

    block_on(async {
        let gone = registry.depart(name("worker-0"), None).await.unwrap();
        assert!(matches!(gone, Outcome::Removed { ref records, .. } if records.len() == 1));
        registry.add(record("worker-3", Some("i3"))).await.unwrap();
        // A legacy departure of every name: still never touches it.
        registry.remove(name("worker-2"), None).await.unwrap();
    });
    let written = fs::read_to_string(registry.path()).unwrap();
    assert!(written.contains(&raw), "{written}");
    assert_eq!(
        elements_on_disk(dir.path()),
        expected_elements(&[record("worker-3", Some("i3"))], &[&raw])
    );
    drop(registry);

    // Reopened, and read without owning: still there, still reported.
    let snapshot = RegistrySnapshot::load(dir.path()).unwrap();
    assert_eq!(snapshot.invalid_records().len(), 1);
    assert_eq!(snapshot.invalid_records()[0].raw(), raw);
    assert_eq!(snapshot.state().len(), 1);
    let registry = FileRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.invalid_records()[0].raw(), raw);
    assert_eq!(registry.invalid_records()[0].index(), 1);
    let shown = serde_json::to_value(&registry.invalid_records()[0]).unwrap();
    assert_eq!(shown["raw"]["pod_name"], "worker 1");
    assert_eq!(shown["index"], 1);
}

/// Opens `dir` whose records file holds the valid record `w1` and then
/// `element`; expects `element` to be kept as invalid with a reason
/// containing `reason`.
fn check_invalid(dir: &Path, element: &str, reason: &str) {
    let valid = serde_json::to_string(&record("w1", Some("a"))).unwrap();
    let text = format!("[{valid},\n{element}]");
    fs::write(dir.join(RECORDS_FILE), &text).unwrap();
    let registry = FileRegistry::open(dir).unwrap();
    assert_eq!(registry.list(), [record("w1", Some("a"))], "{element}");
    let invalid = registry.invalid_records();
    assert_eq!(invalid.len(), 1, "{element}");
    assert_eq!(invalid[0].raw(), element);
    assert!(
        invalid[0].reason().contains(reason),
        "{element}: {}",
        invalid[0].reason()
    );
    block_on(registry.add(record("w2", None))).unwrap();
    let expected = [record("w1", Some("a")), record("w2", None)];
    assert_eq!(
        elements_on_disk(dir),
        expected_elements(&expected, &[element])
    );
}

#[test]
fn every_kind_of_invalid_element_is_kept_with_its_reason() {
    let cases = [
        ("7", "expected struct Record"),
        ("null", "expected struct Record"),
        (r#"["w9"]"#, "expected struct Record"),
        (r#"{"pod_name":"w9"}"#, "missing field"),
        (
            r#"{"pod_name":"../x","socket_path":"/s","scope_delegated":[],"callback_address":""}"#,
            "../x",
        ),
        (
            r#"{"pod_name":"w9","socket_path":"relative/sock","scope_delegated":[],"callback_address":""}"#,
            "must be absolute",
        ),
        (
            r#"{"pod_name":"w9","socket_path":"/s","scope_delegated":[],"callback_address":"/a/../b"}"#,
            "`..`",
        ),
        (
            r#"{"pod_name":"w9","socket_path":"/s","scope_delegated":[{"target":"/srv/./x","permission":"write"}],"callback_address":""}"#,
            "`.`",
        ),
        (
            r#"{"pod_name":"w9","socket_path":"tls://","scope_delegated":[],"callback_address":""}"#,
            "tls://",
        ),
        // Odd spacing and number spelling survive: the text is kept, not
        // a re-encoding.
        (
            "{ \"pod_name\" : \"worker 1\" ,\n  \"n\": 1.50e0 }",
            "worker 1",
        ),
    ];
    for (element, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        check_invalid(dir.path(), element, reason);
    }
}

#[test]
fn addresses_of_every_supported_form_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = record("w1", None);
    tls.socket_path = "tls://pods.example:7443".into();
    tls.callback_address = "unix:/run/pods/parent.sock".into();
    fs::write(
        dir.path().join(RECORDS_FILE),
        serde_json::to_vec(&[tls.clone()]).unwrap(),
    )
    .unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.list(), [tls]);
    assert!(registry.invalid_records().is_empty());
}

/// A writer the test's subscriber logs into.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_owner_warns_of_each_invalid_record_at_open() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(FIXTURE, dir.path().join(RECORDS_FILE)).unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        FileRegistry::open(dir.path()).unwrap();
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(
        log.contains("WARN") && log.contains("invalid registry record"),
        "{log}"
    );
    assert!(log.contains("worker 1") && log.contains("index=1"), "{log}");
}
