//! Both dialects, and byte compatibility of the methods without params.

use pod_protocol::{
    decode, encode, DecodeError, Dialect, Method, PodEvent, ScopeRule, UnknownDialect,
};

const ORIGINAL: &str = include_str!("../fixtures/original.jsonl");
const WORKER: &str = include_str!("../fixtures/worker.jsonl");

/// Decodes every line of a fixture, checks it validates and re-encodes in
/// `dialect` to the same bytes.
fn check_fixture(text: &str, dialect: Dialect) -> Vec<Method> {
    text.lines()
        .map(|line| {
            let method = decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
            method.validate().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                String::from_utf8(dialect.encode(&method)).unwrap(),
                format!("{line}\n"),
                "{dialect} re-encoding"
            );
            method
        })
        .collect()
}

#[test]
fn each_fixture_round_trips_in_its_dialect() {
    let original = check_fixture(ORIGINAL, Dialect::Original);
    let worker = check_fixture(WORKER, Dialect::Worker);
    assert_eq!(original.len(), 14);
    // The worker file is the original one in the later names, plus a
    // notify that turns `auto_run` off.
    assert_eq!(worker[..original.len()], original[..]);
    assert_eq!(
        worker[original.len()..],
        [Method::Notify {
            message: "text".into(),
            auto_run: false
        }]
    );
}

#[test]
fn the_fixtures_decode_to_the_expected_values() {
    let original = check_fixture(ORIGINAL, Dialect::Original);
    let mut docs = ScopeRule::read("/srv/docs");
    docs.recursive = false;
    assert_eq!(
        original[..6],
        [
            Method::PodEvent(PodEvent::TurnEnded {
                pod_name: "child".into(),
                incarnation: None
            }),
            Method::PodEvent(PodEvent::Errored {
                pod_name: "child".into(),
                message: "boom".into(),
                incarnation: None
            }),
            Method::PodEvent(PodEvent::ShutDown {
                pod_name: "child".into(),
                incarnation: None
            }),
            Method::PodEvent(PodEvent::ScopeSubDelegated {
                parent_pod: "child".into(),
                sub_pod: "gc".into(),
                sub_socket: "/run/pods/gc/sock".into(),
                scope: vec![ScopeRule::write("/srv/repo/a"), docs],
                sub_incarnation: None,
                spawner_socket: None,
            }),
            Method::notify("text"),
            Method::Shutdown,
        ]
    );
}

#[test]
fn one_line_may_mix_the_dialects_but_not_name_a_field_twice() {
    let mixed = br#"{"method":"pod_event","params":{"kind":"scope_sub_delegated","parent_worker":"c","sub_pod":"g","sub_socket":"/s","scope":[]}}"#;
    let Method::PodEvent(PodEvent::ScopeSubDelegated {
        parent_pod,
        sub_pod,
        ..
    }) = decode(mixed).unwrap()
    else {
        panic!("wrong variant")
    };
    assert_eq!((parent_pod.as_str(), sub_pod.as_str()), ("c", "g"));
    let twice = br#"{"method":"worker_event","params":{"kind":"shut_down","pod_name":"a","worker_name":"b"}}"#;
    assert!(matches!(decode(twice), Err(DecodeError::Malformed { .. })));
    // Errors name the original field, whichever dialect the line used.
    assert_eq!(
        decode(br#"{"method":"worker_event","params":{"kind":"shut_down"}}"#),
        Err(DecodeError::MissingField {
            field: "pod_name".into()
        })
    );
    assert_eq!(
        decode(br#"{"method":"worker_event","params":{"kind":"nope"}}"#),
        Err(DecodeError::UnknownKind {
            kind: "nope".into()
        })
    );
    assert_eq!(
        decode(br#"{"method":"worker_event"}"#),
        Err(DecodeError::MissingField {
            field: "params".into()
        })
    );
}

#[test]
fn extension_fields_travel_in_the_worker_dialect_too() {
    let event = Method::PodEvent(PodEvent::ScopeSubDelegated {
        parent_pod: "c".into(),
        sub_pod: "g".into(),
        sub_socket: "/s".into(),
        scope: vec![ScopeRule::write("/a")],
        sub_incarnation: Some("i".into()),
        spawner_socket: Some("/c.sock".into()),
    });
    let line = String::from_utf8(Dialect::Worker.encode(&event)).unwrap();
    assert_eq!(
        line,
        "{\"method\":\"worker_event\",\"params\":{\"kind\":\"scope_sub_delegated\",\"parent_worker\":\"c\",\"sub_worker\":\"g\",\"sub_socket\":\"/s\",\"scope\":[{\"target\":\"/a\",\"permission\":\"write\",\"recursive\":true}],\"sub_incarnation\":\"i\",\"spawner_socket\":\"/c.sock\"}}\n"
    );
    assert_eq!(decode(line.trim_end().as_bytes()).unwrap(), event);
}

#[test]
fn auto_run_is_written_only_when_false_and_round_trips() {
    for (line, auto_run, encoded) in [
        (
            r#"{"method":"notify","params":{"message":"m"}}"#,
            true,
            None,
        ),
        (
            r#"{"method":"notify","params":{"message":"m","auto_run":false}}"#,
            false,
            None,
        ),
        (
            r#"{"method":"notify","params":{"auto_run":true,"message":"m"}}"#,
            true,
            Some(r#"{"method":"notify","params":{"message":"m"}}"#),
        ),
    ] {
        let method = decode(line.as_bytes()).unwrap();
        assert_eq!(
            method,
            Method::Notify {
                message: "m".into(),
                auto_run
            }
        );
        for &dialect in Dialect::ALL {
            let expected = format!("{}\n", encoded.unwrap_or(line));
            assert_eq!(
                String::from_utf8(dialect.encode(&method)).unwrap(),
                expected
            );
        }
    }
    assert!(matches!(
        decode(br#"{"method":"notify","params":{"message":"m","auto_run":"no"}}"#),
        Err(DecodeError::Malformed { .. })
    ));
}

/// Issue 16 item 5: a relay passes every method without params on byte
/// for byte, never as `"params":null`.
#[test]
fn methods_without_params_re_encode_exactly() {
    for name in [
        "shutdown",
        "run",
        "resume",
        "cancel",
        "pause",
        "get_history",
    ] {
        let line = format!(r#"{{"method":"{name}"}}"#);
        let method = decode(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(method.name(), name);
        for &dialect in Dialect::ALL {
            assert_eq!(
                String::from_utf8(dialect.encode(&method)).unwrap(),
                format!("{line}\n")
            );
        }
        // `"params":null` means the same; it is written the bare way.
        let with_null = format!(r#"{{"method":"{name}","params":null}}"#);
        assert_eq!(decode(with_null.as_bytes()).unwrap(), method);
    }
    // Parameters that are present are written, whatever they hold.
    let run = Method::Run(Some(serde_json::json!({"prompt": "go"})));
    assert_eq!(
        encode(&run),
        b"{\"method\":\"run\",\"params\":{\"prompt\":\"go\"}}\n"
    );
}

#[test]
fn dialects_parse_from_their_names() {
    for &dialect in Dialect::ALL {
        assert_eq!(dialect.to_string().parse::<Dialect>(), Ok(dialect));
    }
    assert_eq!(Dialect::default(), Dialect::Original);
    assert_eq!(
        "Worker".parse::<Dialect>(),
        Err(UnknownDialect {
            name: "Worker".into()
        })
    );
    let event = Method::PodEvent(PodEvent::ShutDown {
        pod_name: "w".into(),
        incarnation: None,
    });
    assert_eq!(Dialect::Worker.method_name(&event), "worker_event");
    assert_eq!(Dialect::Original.method_name(&event), "pod_event");
    assert_eq!(Dialect::Worker.method_name(&Method::Pause), "pause");
}
