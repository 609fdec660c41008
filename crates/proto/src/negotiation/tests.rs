//! Stream negotiation driven event by event, without sockets.

use super::*;
use crate::stanza;
use crate::xml::Framer;

fn settings() -> C2sSettings {
    C2sSettings {
        domain: "localhost".into(),
        tls_required: true,
        starttls_available: true,
        max_auth_failures: 3,
    }
}

fn header() -> Frame {
    Frame::StreamOpen(StreamHeader {
        id: None,
        to: Some("localhost".into()),
        from: None,
        version: Some("1.0".into()),
        lang: None,
    })
}

fn el(xml: &str) -> Frame {
    Frame::Element(xml.parse().expect("test XML"))
}

fn run(n: &mut C2sNegotiator, input: Input) -> Vec<Action> {
    let mut out = Vec::new();
    n.handle(input, &mut out);
    out
}

fn writes(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Write(s) => Some(s.clone()),
            Action::Reply(el) => Some(stanza::to_string(el)),
            _ => None,
        })
        .collect()
}

fn tls_link() -> LinkSecurity {
    LinkSecurity {
        tls: true,
        tls_exporter: None,
    }
}

/// Drives a negotiator through STARTTLS to an authenticated, bound session.
fn bound(user: &str) -> C2sNegotiator {
    let mut n = C2sNegotiator::new(settings());
    run(&mut n, Input::Frame(header()));
    let a = run(
        &mut n,
        Input::Frame(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
    );
    assert!(a.contains(&Action::StartTls));
    run(&mut n, Input::TlsEstablished(tls_link()));
    run(&mut n, Input::Frame(header()));
    let creds = Credentials::new("secret").expect("valid");
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0secret"));
    let a = run(
        &mut n,
        Input::Frame(el(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))),
    );
    assert_eq!(a, vec![Action::LookupCredentials(user.into())]);
    let a = run(&mut n, Input::Credentials(Some(creds)));
    assert!(writes(&a).starts_with("<success"), "{a:?}");
    assert!(a.contains(&Action::ResetFramer));
    run(&mut n, Input::Frame(header()));
    let a = run(
        &mut n,
        Input::Frame(el(
            "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
        )),
    );
    assert_eq!(
        a,
        vec![Action::Bind {
            requested: Some("phone".into())
        }]
    );
    let full: FullJid = format!("{user}@localhost/phone").parse().expect("jid");
    let a = run(&mut n, Input::Bound(Ok(full.clone())));
    assert!(writes(&a).contains(&format!("<jid>{full}</jid>")), "{a:?}");
    assert!(a.contains(&Action::SessionStarted(full)));
    n
}

#[test]
fn features_before_tls_require_starttls_and_hide_mechanisms() {
    let mut n = C2sNegotiator::new(settings());
    let w = writes(&run(&mut n, Input::Frame(header())));
    assert!(w.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"));
    assert!(!w.contains("<mechanisms"));
}

#[test]
fn auth_before_tls_gets_encryption_required() {
    let mut n = C2sNegotiator::new(settings());
    run(&mut n, Input::Frame(header()));
    let a = run(
        &mut n,
        Input::Frame(el(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        )),
    );
    assert_eq!(
        writes(&a),
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>"
    );
}

#[test]
fn mechanisms_after_tls_include_plain() {
    let mut n = C2sNegotiator::new(settings());
    run(&mut n, Input::Frame(header()));
    run(
        &mut n,
        Input::Frame(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
    );
    run(&mut n, Input::TlsEstablished(tls_link()));
    let w = writes(&run(&mut n, Input::Frame(header())));
    assert!(!w.contains("starttls"));
    assert!(w.contains("<mechanism>SCRAM-SHA-256</mechanism>"));
    assert!(w.contains("<mechanism>PLAIN</mechanism>"));
}

#[test]
fn wrong_host_gets_header_then_host_unknown() {
    let mut n = C2sNegotiator::new(settings());
    let a = run(
        &mut n,
        Input::Frame(Frame::StreamOpen(StreamHeader {
            to: Some("example.org".into()),
            version: Some("1.0".into()),
            ..Default::default()
        })),
    );
    assert!(writes(&a).starts_with("<?xml version='1.0'?><stream:stream"));
    assert!(matches!(
        a.last(),
        Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::HostUnknown
    ));
}

#[test]
fn missing_version_is_unsupported() {
    let mut n = C2sNegotiator::new(settings());
    let a = run(
        &mut n,
        Input::Frame(Frame::StreamOpen(StreamHeader::default())),
    );
    assert!(matches!(
        a.last(),
        Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::UnsupportedVersion
    ));
}

#[test]
fn stanza_before_auth_is_not_authorized() {
    let mut n = C2sNegotiator::new(settings());
    run(&mut n, Input::Frame(header()));
    let a = run(
        &mut n,
        Input::Frame(el("<message xmlns='jabber:client' to='a@localhost'/>")),
    );
    assert!(matches!(
        a.last(),
        Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::NotAuthorized
    ));
}

#[test]
fn failed_logins_are_counted_and_close_the_stream() {
    let mut n = C2sNegotiator::new(settings());
    run(&mut n, Input::Frame(header()));
    run(
        &mut n,
        Input::Frame(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
    );
    run(&mut n, Input::TlsEstablished(tls_link()));
    run(&mut n, Input::Frame(header()));
    let creds = Credentials::new("secret").expect("valid");
    let bad = base64::engine::general_purpose::STANDARD.encode("\0alice\0nope");
    let auth =
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{bad}</auth>");
    for attempt in 1..=3 {
        run(&mut n, Input::Frame(el(&auth)));
        let a = run(&mut n, Input::Credentials(Some(creds.clone())));
        assert!(a.contains(&Action::AuthFailed { authcid: None }));
        assert!(writes(&a).contains("<not-authorized/>"));
        let closed = matches!(a.last(), Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::PolicyViolation);
        assert_eq!(closed, attempt == 3, "attempt {attempt}");
    }
}

#[test]
fn scram_exchange_through_rsasl_client() {
    use rsasl::prelude::{Mechname, SASLClient, SASLConfig, State};
    let mut n = C2sNegotiator::new(settings());
    run(&mut n, Input::Frame(header()));
    run(
        &mut n,
        Input::Frame(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
    );
    run(&mut n, Input::TlsEstablished(tls_link()));
    run(&mut n, Input::Frame(header()));

    let config =
        SASLConfig::with_credentials(None, "alice".into(), "secret".into()).expect("config");
    let mut client = SASLClient::new(config)
        .start_suggested(&[Mechname::parse(b"SCRAM-SHA-256").expect("name")])
        .expect("client session");
    let mut first = Vec::new();
    client.step(None, &mut first).expect("client first");
    let b64 = base64::engine::general_purpose::STANDARD;
    let a = run(
        &mut n,
        Input::Frame(el(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            b64.encode(&first)
        ))),
    );
    assert_eq!(a, vec![Action::LookupCredentials("alice".into())]);
    let a = run(
        &mut n,
        Input::Credentials(Some(Credentials::new("secret").expect("valid"))),
    );
    let challenge: Element = writes(&a).parse().expect("challenge XML");
    assert_eq!(challenge.name(), "challenge");
    let mut second = Vec::new();
    let server_first = b64.decode(challenge.text()).expect("base64");
    client
        .step(Some(&server_first), &mut second)
        .expect("client final");
    let a = run(
        &mut n,
        Input::Frame(el(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64.encode(&second)
        ))),
    );
    let success: Element = writes(&a).parse().expect("success XML");
    assert_eq!(success.name(), "success");
    let mut none = Vec::new();
    let state = client
        .step(
            Some(&b64.decode(success.text()).expect("base64")),
            &mut none,
        )
        .expect("server signature verifies");
    assert!(matches!(state, State::Finished(_)));
    assert!(a.contains(&Action::Authenticated(
        "alice@localhost".parse().expect("jid")
    )));
}

#[test]
fn bound_session_stamps_from() {
    let mut n = bound("alice");
    let a = run(
        &mut n,
        Input::Frame(el(
            "<message xmlns='jabber:client' to='bob@localhost'><body>x</body></message>",
        )),
    );
    let [Action::Stanza(m)] = a.as_slice() else {
        panic!("{a:?}")
    };
    assert_eq!(m.attr("from"), Some("alice@localhost/phone"));
}

#[test]
fn spoofed_from_is_invalid_from() {
    let mut n = bound("alice");
    let a = run(
        &mut n,
        Input::Frame(el(
            "<message xmlns='jabber:client' from='bob@localhost/x' to='carol@localhost'/>",
        )),
    );
    assert!(matches!(
        a.last(),
        Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::InvalidFrom
    ));
}

#[test]
fn malformed_to_is_jid_malformed() {
    let mut n = bound("alice");
    let a = run(
        &mut n,
        Input::Frame(el("<message xmlns='jabber:client' to='@@bad' id='m1'/>")),
    );
    assert!(writes(&a).contains("<jid-malformed"), "{a:?}");
}

#[test]
fn unknown_top_level_element_is_unsupported_stanza_type() {
    let mut n = bound("alice");
    let a = run(&mut n, Input::Frame(el("<foo xmlns='jabber:client'/>")));
    assert!(matches!(
        a.last(),
        Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::UnsupportedStanzaType
    ));
}

#[test]
fn stanza_in_wrong_namespace_is_invalid_namespace() {
    let mut n = bound("alice");
    let a = run(
        &mut n,
        Input::Frame(el("<message xmlns='jabber:server' to='b@localhost'/>")),
    );
    assert!(matches!(
        a.last(),
        Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::InvalidNamespace
    ));
}

#[test]
fn bind_conflict_is_reported_and_retry_allowed() {
    let mut n = C2sNegotiator::new(settings());
    n.stage = Stage::PostAuth;
    n.link = tls_link();
    run(&mut n, Input::Frame(header()));
    let bind = "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";
    assert_eq!(
        run(&mut n, Input::Frame(el(bind))),
        vec![Action::Bind { requested: None }]
    );
    let a = run(&mut n, Input::Bound(Err(BindError::Conflict)));
    assert!(writes(&a).contains("<conflict"));
    assert_eq!(
        run(&mut n, Input::Frame(el(bind))),
        vec![Action::Bind { requested: None }]
    );
}

#[test]
fn legacy_session_iq_is_answered() {
    let mut n = bound("alice");
    let a = run(
        &mut n,
        Input::Frame(el("<iq xmlns='jabber:client' type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")),
    );
    let reply: Element = writes(&a).parse().expect("xml");
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(reply.attr("id"), Some("s1"));
}

#[test]
fn framer_and_negotiator_together_reject_oversized_stanza() {
    let mut f = Framer::new(64);
    let input = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><message><body>0123456789012345678901234567890123456789012345678901234567890123456789</body></message>";
    let mut buf = input.as_bytes();
    let mut n = C2sNegotiator::new(settings());
    let mut out = Vec::new();
    loop {
        match f.next_frame(&mut buf) {
            Ok(Some(frame)) => n.handle(Input::Frame(frame), &mut out),
            Ok(None) => panic!("limit not enforced"),
            Err(e) => {
                n.fail(e, &mut out);
                break;
            }
        }
    }
    assert!(matches!(
        out.last(),
        Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::PolicyViolation
    ));
}

#[test]
fn stream_management_nonzas_become_actions() {
    let mut n = bound("alice");
    let a = run(
        &mut n,
        Input::Frame(el("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")),
    );
    assert_eq!(
        a,
        vec![Action::EnableSm {
            resume: true,
            max: None
        }]
    );
    assert_eq!(
        run(&mut n, Input::Frame(el("<r xmlns='urn:xmpp:sm:3'/>"))),
        vec![Action::AckRequested]
    );
    assert_eq!(
        run(&mut n, Input::Frame(el("<a xmlns='urn:xmpp:sm:3' h='7'/>"))),
        vec![Action::Acked(7)]
    );
    let a = run(
        &mut n,
        Input::Frame(el("<a xmlns='urn:xmpp:sm:3' h='-1'/>")),
    );
    assert!(
        matches!(a.last(), Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::BadFormat)
    );
}

#[test]
fn client_state_indication_becomes_actions() {
    let mut n = bound("alice");
    assert_eq!(
        run(
            &mut n,
            Input::Frame(el("<inactive xmlns='urn:xmpp:csi:0'/>"))
        ),
        vec![Action::ClientState { active: false }]
    );
    assert_eq!(
        run(&mut n, Input::Frame(el("<active xmlns='urn:xmpp:csi:0'/>"))),
        vec![Action::ClientState { active: true }]
    );
}

fn authenticated() -> C2sNegotiator {
    let mut n = C2sNegotiator::new(settings());
    n.stage = Stage::PostAuth;
    n.link = tls_link();
    let w = writes(&run(&mut n, Input::Frame(header())));
    assert!(w.contains("<sm xmlns='urn:xmpp:sm:3'/>"), "{w}");
    assert!(w.contains("<csi xmlns='urn:xmpp:csi:0'/>"), "{w}");
    n
}

#[test]
fn resume_instead_of_bind() {
    let mut n = authenticated();
    let a = run(
        &mut n,
        Input::Frame(el("<resume xmlns='urn:xmpp:sm:3' previd='abc' h='4'/>")),
    );
    assert_eq!(
        a,
        vec![Action::Resume {
            previd: "abc".into(),
            h: 4
        }]
    );
    let full: FullJid = "alice@localhost/phone".parse().expect("jid");
    let a = run(&mut n, Input::Resumed(Ok((full.clone(), 9))));
    assert_eq!(
        writes(&a),
        "<resumed xmlns='urn:xmpp:sm:3' previd='abc' h='9'/>"
    );
    assert!(a.contains(&Action::SessionResumed(full)));
    // The resumed stream carries stanzas at once.
    let a = run(
        &mut n,
        Input::Frame(el("<message xmlns='jabber:client' to='bob@localhost'/>")),
    );
    assert!(matches!(a.as_slice(), [Action::Stanza(_)]));
}

#[test]
fn failed_resume_reports_h_and_allows_bind() {
    let mut n = authenticated();
    run(
        &mut n,
        Input::Frame(el("<resume xmlns='urn:xmpp:sm:3' previd='gone' h='0'/>")),
    );
    let a = run(&mut n, Input::Resumed(Err(Some(12))));
    assert_eq!(
        writes(&a),
        "<failed xmlns='urn:xmpp:sm:3' h='12'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    let bind = "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";
    assert_eq!(
        run(&mut n, Input::Frame(el(bind))),
        vec![Action::Bind { requested: None }]
    );
}

#[test]
fn stanzas_answered_by_the_core_count_as_handled() {
    let mut n = bound("alice");
    let a = run(
        &mut n,
        Input::Frame(el("<message xmlns='jabber:client' to='@@bad' id='m1'/>")),
    );
    assert!(
        matches!(a.as_slice(), [Action::Reply(_), Action::Handled]),
        "{a:?}"
    );
}
