//! The hand-written `PodEvent` decoder against a derived reference.
//!
//! `Reference` is what `PodEvent` was before its `Deserialize` was written
//! by hand: serde's derive for an internally tagged enum (plus the later
//! dialect's field aliases). On every generated line, both must give the
//! same value or both fail, and fail with the same `missing field` (the
//! only part of the message `DecodeError`'s classification reads), so
//! `decode` classifies every line as it did.

use pod_protocol::{decode, DecodeError, Dialect, Method, PodEvent, ScopeRule};
use proptest::prelude::*;
use serde::Deserialize;

use crate::arb_event;

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Reference {
    TurnEnded {
        #[serde(alias = "worker_name")]
        pod_name: String,
        #[serde(default)]
        incarnation: Option<String>,
    },
    Errored {
        #[serde(alias = "worker_name")]
        pod_name: String,
        message: String,
        #[serde(default)]
        incarnation: Option<String>,
    },
    ShutDown {
        #[serde(alias = "worker_name")]
        pod_name: String,
        #[serde(default)]
        incarnation: Option<String>,
    },
    ScopeSubDelegated {
        #[serde(alias = "parent_worker")]
        parent_pod: String,
        #[serde(alias = "sub_worker")]
        sub_pod: String,
        sub_socket: String,
        scope: Vec<ScopeRule>,
        #[serde(default)]
        sub_incarnation: Option<String>,
        #[serde(default)]
        spawner_socket: Option<String>,
    },
}

impl From<Reference> for PodEvent {
    fn from(event: Reference) -> Self {
        match event {
            Reference::TurnEnded {
                pod_name,
                incarnation,
            } => PodEvent::TurnEnded {
                pod_name,
                incarnation,
            },
            Reference::Errored {
                pod_name,
                message,
                incarnation,
            } => PodEvent::Errored {
                pod_name,
                message,
                incarnation,
            },
            Reference::ShutDown {
                pod_name,
                incarnation,
            } => PodEvent::ShutDown {
                pod_name,
                incarnation,
            },
            Reference::ScopeSubDelegated {
                parent_pod,
                sub_pod,
                sub_socket,
                scope,
                sub_incarnation,
                spawner_socket,
            } => PodEvent::ScopeSubDelegated {
                parent_pod,
                sub_pod,
                sub_socket,
                scope,
                sub_incarnation,
                spawner_socket,
            },
        }
    }
}

/// `Method` with the reference event inside (its own derive is unchanged).
#[derive(Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
enum ReferenceMethod {
    #[serde(alias = "worker_event")]
    PodEvent(Reference),
}

/// The field a `missing field` error names, if it is one.
fn missing(error: &serde_json::Error) -> Option<String> {
    let message = error.to_string();
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Same value, or both errors naming the same missing field (or none).
fn agree<T: PartialEq + std::fmt::Debug>(
    ours: Result<T, serde_json::Error>,
    reference: Result<T, serde_json::Error>,
    input: &str,
) -> Result<(), TestCaseError> {
    match (ours, reference) {
        (Ok(ours), Ok(reference)) => prop_assert_eq!(ours, reference, "{}", input),
        (Err(ours), Err(reference)) => {
            prop_assert_eq!(
                missing(&ours),
                missing(&reference),
                "{} / {}: {}",
                ours,
                reference,
                input
            )
        }
        (ours, reference) => prop_assert!(
            false,
            "disagree on {}:\n  ours:      {:?}\n  reference: {:?}",
            input,
            ours,
            reference.map(|_| "Ok")
        ),
    }
    Ok(())
}

/// Checks `params` (JSON text) as an event, alone and inside a method,
/// from text and from a parsed `serde_json::Value`.
fn check(params: &str) -> Result<(), TestCaseError> {
    agree(
        serde_json::from_str::<PodEvent>(params),
        serde_json::from_str::<Reference>(params).map(PodEvent::from),
        params,
    )?;
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(params) {
        agree(
            serde_json::from_value::<PodEvent>(value.clone()),
            serde_json::from_value::<Reference>(value).map(PodEvent::from),
            params,
        )?;
    }
    // `params` before `method` makes the derived `Method` buffer the
    // params and hand the event decoder buffered content.
    for line in [
        format!(r#"{{"method":"pod_event","params":{params}}}"#),
        format!(r#"{{"params":{params},"method":"worker_event"}}"#),
    ] {
        let reference = serde_json::from_str::<ReferenceMethod>(&line)
            .map(|ReferenceMethod::PodEvent(event)| Method::PodEvent(event.into()));
        agree(serde_json::from_str::<Method>(&line), reference, &line)?;
    }
    Ok(())
}

const KEYS: &[&str] = &[
    "kind",
    "pod_name",
    "worker_name",
    "message",
    "incarnation",
    "parent_pod",
    "parent_worker",
    "sub_pod",
    "sub_worker",
    "sub_socket",
    "scope",
    "sub_incarnation",
    "spawner_socket",
    "future",
    r"pod\u005fname",
    r"ki\u006ed",
];

const KINDS: &[&str] = &[
    r#""turn_ended""#,
    r#""errored""#,
    r#""shut_down""#,
    r#""scope_sub_delegated""#,
    r#""scope_sub\u005fdelegated""#,
    r#""exploded""#,
    "0",
    "3",
    "null",
];

/// Values a field may hold: right and wrong types, and rules in every
/// shape the derive accepts or refuses.
const VALUES: &[&str] = &[
    r#""w""#,
    r#""/run/s""#,
    r#""a\nb\u00e9""#,
    "null",
    "7",
    "-1",
    "1.5",
    "true",
    "[]",
    "{}",
    r#"{"a":[1,{"b":null}]}"#,
    r#"[{"target":"/a","permission":"read"}]"#,
    r#"[{"target":"/a","permission":"write","recursive":false},{"permission":"read","target":"/b"}]"#,
    r#"[{"target":"/a","permission":{"write":null}}]"#,
    r#"[{"target":"/a","permission":{"write":{}}}]"#,
    r#"[{"target":"/a","permission":{"write":[]}}]"#,
    r#"[{"target":"/a","permission":{"write":null,"read":null}}]"#,
    r#"[{"target":"/a","target":"/b","permission":"read"}]"#,
    r#"[{"target":"/a","permission":"exec"}]"#,
    r#"[{"permission":"read"}]"#,
    r#"[{"target":"/a","permission":"read","recursive":1}]"#,
    r#"[{"target":"/a","permission":"read","x":[{"y":{}}]}]"#,
    r#"[["/a","read"]]"#,
    r#"[["/a","write",false]]"#,
    r#"[["/a","read",true,1]]"#,
    r#"[["/a"]]"#,
    r#"{"target":"/a","permission":"read"}"#,
];

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(VALUES).prop_map(str::to_owned),
        1 => proptest::sample::select(KINDS).prop_map(str::to_owned),
        1 => "[a-z/]{0,6}".prop_map(|s| format!("{s:?}")),
    ]
}

/// An object: entries in any order, keys possibly repeated, `kind`
/// usually present (anywhere).
fn arb_object() -> impl Strategy<Value = String> {
    let entry = prop_oneof![
        1 => proptest::sample::select(KINDS).prop_map(|kind| ("kind".to_owned(), kind.to_owned())),
        4 => (proptest::sample::select(KEYS), arb_value()).prop_map(|(k, v)| (k.to_owned(), v)),
    ];
    proptest::collection::vec(entry, 0..9).prop_map(|entries| {
        let body: Vec<String> = entries
            .iter()
            .map(|(key, value)| format!("\"{key}\":{value}"))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

/// The sequence form: the kind, then values in declaration order.
fn arb_sequence() -> impl Strategy<Value = String> {
    (
        proptest::option::of(proptest::sample::select(KINDS)),
        proptest::collection::vec(arb_value(), 0..8),
    )
        .prop_map(|(kind, values)| {
            let items: Vec<String> = kind.map(str::to_owned).into_iter().chain(values).collect();
            format!("[{}]", items.join(","))
        })
}

/// A complete object of `kind` with its fields in a shuffled order and
/// some extra ones, so the typical lines are exercised, not only broken
/// ones.
fn arb_complete() -> impl Strategy<Value = String> {
    (arb_event(), any::<bool>(), any::<u64>()).prop_map(|(event, worker, seed)| {
        let dialect = if worker {
            Dialect::Worker
        } else {
            Dialect::Original
        };
        let line = dialect.encode(&Method::PodEvent(event));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let params = value["params"].as_object().unwrap();
        let mut entries: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
            .collect();
        entries.push(r#""future":{"nested":[1,2]}"#.to_owned());
        // A deterministic shuffle from the generated seed.
        let mut state = seed | 1;
        for i in (1..entries.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            entries.swap(i, (state % (i as u64 + 1)) as usize);
        }
        format!("{{{}}}", entries.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn agrees_with_the_derive_on_arbitrary_objects(params in arb_object()) {
        check(&params)?;
    }

    #[test]
    fn agrees_with_the_derive_on_the_sequence_form(params in arb_sequence()) {
        check(&params)?;
    }

    #[test]
    fn agrees_with_the_derive_on_shuffled_complete_events(params in arb_complete()) {
        check(&params)?;
    }

    #[test]
    fn decodes_generated_events_in_both_dialects(event in arb_event()) {
        for &dialect in Dialect::ALL {
            let method = Method::PodEvent(event.clone());
            let line = dialect.encode(&method);
            let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
            prop_assert_eq!(&decode(text.as_bytes()).unwrap(), &method);
            let params = serde_json::from_str::<serde_json::Value>(text).unwrap()["params"].to_string();
            prop_assert_eq!(
                PodEvent::from(serde_json::from_str::<Reference>(&params).unwrap()),
                event.clone()
            );
            check(&params)?;
        }
    }
}

/// Ignored values are parsed, not skipped, as the derive's buffering
/// parsed them: nesting past serde_json's recursion limit and numbers out
/// of range are still errors (a differential run of `decode` against the
/// derive found the number case).
#[test]
fn an_ignored_field_is_held_to_the_derive_rules() {
    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    for future in [deep.as_str(), "1e400", "[1,{\"a\":-1e999}]"] {
        for params in [
            format!(r#"{{"kind":"shut_down","pod_name":"w","future":{future}}}"#),
            format!(r#"{{"kind":"shut_down","pod_name":"w","message":{future}}}"#),
            format!(r#"{{"future":{future},"kind":"shut_down","pod_name":"w"}}"#),
            format!(r#"["shut_down","w",null,{future}]"#),
        ] {
            assert!(
                serde_json::from_str::<Reference>(&params).is_err(),
                "{params}"
            );
            assert!(
                serde_json::from_str::<PodEvent>(&params).is_err(),
                "{params}"
            );
        }
    }
    let fine = r#"{"kind":"shut_down","pod_name":"w","future":[1e300,{"a":[[[null]]]}]}"#;
    assert_eq!(
        serde_json::from_str::<PodEvent>(fine).unwrap(),
        PodEvent::ShutDown {
            pod_name: "w".into(),
            incarnation: None
        }
    );
}

#[test]
fn duplicates_are_errors_only_for_fields_the_event_has() {
    let ok = |params: &str| serde_json::from_str::<PodEvent>(params).is_ok();
    assert!(!ok(
        r#"{"kind":"shut_down","kind":"shut_down","pod_name":"w"}"#
    ));
    assert!(!ok(r#"{"kind":"shut_down","pod_name":"w","pod_name":"v"}"#));
    assert!(!ok(
        r#"{"kind":"shut_down","pod_name":"w","worker_name":"v"}"#
    ));
    assert!(!ok(r#"{"pod_name":"w","pod_name":"v","kind":"shut_down"}"#));
    assert!(ok(
        r#"{"kind":"shut_down","pod_name":"w","message":1,"message":2}"#
    ));
    assert!(ok(
        r#"{"message":1,"message":2,"kind":"shut_down","pod_name":"w"}"#
    ));
}

/// Found by `agrees_with_the_derive_on_arbitrary_objects`: the derive
/// checked for a duplicate `kind` before typing any field, so a rule
/// missing its target before the duplicate is `Malformed`, not
/// `MissingField`.
#[test]
fn a_duplicate_kind_wins_over_an_earlier_bad_rule() {
    for params in [
        r#"{"scope":[{"permission":"read"}],"kind":"scope_sub_delegated","kind":"turn_ended"}"#,
        r#"{"kind":"scope_sub_delegated","scope":[{"permission":"read"}],"kind":"turn_ended"}"#,
    ] {
        let line = format!(r#"{{"method":"pod_event","params":{params}}}"#);
        assert!(
            matches!(decode(line.as_bytes()), Err(DecodeError::Malformed { .. })),
            "{line}"
        );
    }
    let line = r#"{"method":"pod_event","params":{"kind":"scope_sub_delegated","scope":[{"permission":"read"}]}}"#;
    assert_eq!(
        decode(line.as_bytes()),
        Err(DecodeError::MissingField {
            field: "target".into()
        })
    );
}

/// JSON text is UTF-8: a byte that is not is refused even where decoding
/// ignores the value (it used to pass at the top level).
#[test]
fn invalid_utf8_is_refused_even_in_an_ignored_field() {
    assert_eq!(
        decode(b"{\"method\":\"shutdown\",\"x\":\"\xff\"}"),
        Err(DecodeError::NotUtf8 { valid_up_to: 26 })
    );
}
