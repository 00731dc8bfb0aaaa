//! Socket addresses: parsing, display, and the socket fields of events.

use std::net::{Ipv4Addr, Ipv6Addr};

use pod_protocol::{Address, AddressError, Host, PodEvent, ScopeRule, ValidationError};
use proptest::prelude::*;

fn check(text: &str, expected: Address, shown: &str) {
    let address: Address = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(address, expected, "{text}");
    assert_eq!(address.to_string(), shown, "{text}");
    assert_eq!(shown.parse::<Address>().unwrap(), address, "{shown}");
}

fn tls(host: Host, port: u16) -> Address {
    Address::Tls { host, port }
}

#[test]
fn every_form_parses_and_displays() {
    let unix = || Address::Unix("/run/pods/w/sock".into());
    check("/run/pods/w/sock", unix(), "/run/pods/w/sock");
    check("unix:/run/pods/w/sock", unix(), "/run/pods/w/sock");
    check("/", Address::Unix("/".into()), "/");
    let dns = |name: &str| Host::Dns(name.into());
    check(
        "tls://pods.example:7443",
        tls(dns("pods.example"), 7443),
        "tls://pods.example:7443",
    );
    check(
        "tls://localhost:1",
        tls(dns("localhost"), 1),
        "tls://localhost:1",
    );
    check(
        "tls://a-1.B2.c:65535",
        tls(dns("a-1.B2.c"), 65535),
        "tls://a-1.B2.c:65535",
    );
    check(
        "tls://10.0.0.7:443",
        tls(Host::Ipv4(Ipv4Addr::new(10, 0, 0, 7)), 443),
        "tls://10.0.0.7:443",
    );
    check(
        "tls://[::1]:443",
        tls(Host::Ipv6(Ipv6Addr::LOCALHOST), 443),
        "tls://[::1]:443",
    );
    // Display is canonical: the address, not the spelling.
    check(
        "tls://[2001:DB8:0:0:0:0:0:1]:8443",
        tls(Host::Ipv6("2001:db8::1".parse().unwrap()), 8443),
        "tls://[2001:db8::1]:8443",
    );
}

#[test]
fn each_bad_form_is_a_typed_error() {
    let bad = |text: &str| text.parse::<Address>().unwrap_err();
    for text in [
        "",
        "run/sock",
        "tcp://h:1",
        "tls:/h:1",
        "TLS://h:1",
        "unix:relative",
    ] {
        let error = bad(text);
        let expected = if text.starts_with("unix:") {
            matches!(error, AddressError::Path { .. })
        } else {
            error == AddressError::UnknownScheme
        };
        assert!(expected, "{text:?}: {error:?}");
    }
    for text in ["/a/../b", "unix:/a//b", "/a/", "unix:/a/./b", "/a\0b"] {
        assert!(matches!(bad(text), AddressError::Path { .. }), "{text:?}");
    }
    for text in ["tls://host", "tls://[::1]", "tls://[::1]443"] {
        assert_eq!(bad(text), AddressError::MissingPort, "{text:?}");
    }
    for text in [
        "tls://h:0",
        "tls://h:65536",
        "tls://h:",
        "tls://h:+1",
        "tls://h:1/x",
        "tls://h:-1",
        "tls://h: 1",
    ] {
        assert!(matches!(bad(text), AddressError::Port { .. }), "{text:?}");
    }
    let long_label = format!("tls://{}.example:1", "a".repeat(64));
    let long_name = format!("tls://{}:1", ["abcdefghi"; 26].join("."));
    for text in [
        "tls://:1",
        "tls://::1:443",
        "tls://[::1:443",
        "tls://[nope]:443",
        "tls://[10.0.0.1]:443",
        "tls://[fe80::1%eth0]:443",
        "tls://1.2.3:443",
        "tls://01.2.3.4:443",
        "tls://256.0.0.1:443",
        "tls://a..b:1",
        "tls://.a:1",
        "tls://a.:1",
        "tls://-a.b:1",
        "tls://a-.b:1",
        "tls://a_b:1",
        "tls://a b:1",
        "tls://user@h:1",
        "tls://é.example:1",
        &long_label,
        &long_name,
    ] {
        assert!(
            matches!(bad(text), AddressError::Host { .. }),
            "{text:?}: {:?}",
            bad(text)
        );
    }
    // Messages say what to write instead.
    assert!(bad("tcp://h:1").to_string().contains("tls://host:port"));
}

fn sub(socket: &str, spawner: Option<&str>) -> PodEvent {
    PodEvent::ScopeSubDelegated {
        parent_pod: "c".into(),
        sub_pod: "g".into(),
        sub_socket: socket.into(),
        scope: vec![ScopeRule::write("/a")],
        sub_incarnation: None,
        spawner_socket: spawner.map(Into::into),
    }
}

#[test]
fn socket_fields_take_any_address_and_paths_validate_as_before() {
    for good in [
        "/run/g.sock",
        "unix:/run/g.sock",
        "tls://g.pods.example:7443",
        "tls://[::1]:1",
    ] {
        assert_eq!(sub(good, Some(good)).validate(), Ok(()), "{good}");
    }
    // A bare path is checked exactly as before: the same typed error.
    for path in ["run/g.sock", "/a/../b", "/a//b", ""] {
        assert!(
            matches!(
                sub(path, None).validate(),
                Err(ValidationError::Path {
                    field: "sub_socket",
                    ..
                })
            ),
            "{path:?}"
        );
        assert!(
            matches!(
                sub("/s", Some(path)).validate(),
                Err(ValidationError::Path {
                    field: "spawner_socket",
                    ..
                })
            ),
            "{path:?}"
        );
    }
    assert_eq!(
        sub("tls://g:0", None).validate(),
        Err(ValidationError::Address {
            field: "sub_socket",
            address: "tls://g:0".into(),
            source: AddressError::Port { port: "0".into() },
        })
    );
    assert!(matches!(
        sub("/s", Some("unix:/a/../b")).validate(),
        Err(ValidationError::Address {
            field: "spawner_socket",
            source: AddressError::Path { .. },
            ..
        })
    ));
}

fn arb_label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?"
}

fn arb_address() -> impl Strategy<Value = Address> {
    let host = prop_oneof![
        (
            proptest::collection::vec(arb_label(), 0..4),
            "[a-z][a-z0-9-]{0,6}[a-z]"
        )
            .prop_map(|(mut labels, last)| {
                labels.push(last);
                Host::Dns(labels.join("."))
            }),
        any::<[u8; 4]>().prop_map(|o| Host::Ipv4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| Host::Ipv6(Ipv6Addr::from(s))),
    ];
    prop_oneof![
        "(/[a-z0-9._-]{1,8}){0,4}".prop_filter_map("a normal path", |p| {
            let path = if p.is_empty() { "/".to_owned() } else { p };
            let normal = path.split('/').all(|c| c != "." && c != "..");
            normal.then_some(Address::Unix(path))
        }),
        (host, 1u16..).prop_map(|(host, port)| Address::Tls { host, port }),
    ]
}

proptest! {
    #[test]
    fn display_then_parse_is_identity(address in arb_address()) {
        let text = address.to_string();
        prop_assert_eq!(text.parse::<Address>(), Ok(address.clone()));
        if let Address::Unix(path) = &address {
            prop_assert_eq!(format!("unix:{path}").parse::<Address>(), Ok(address.clone()));
        }
    }

    #[test]
    fn parsing_never_panics(text in "(unix:|tls://|/)?[\\[\\]:/a-z0-9.%@-]{0,24}") {
        if let Ok(address) = text.parse::<Address>() {
            prop_assert_eq!(address.to_string().parse::<Address>(), Ok(address));
        }
    }
}
