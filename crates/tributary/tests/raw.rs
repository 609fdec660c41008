//! Bad input on a raw socket, one RFC 6120 condition per test, asserting
//! the exact error element; and the configured limits.

mod common;

use base64::Engine;
use common::raw::{Raw, HEADER, STANZAS};
use common::*;
use std::time::{Duration, Instant};

/// Opens a plaintext stream and reads the features.
async fn opened(server: &TestServer) -> Raw {
    let mut raw = Raw::connect(&server.c2s()).await;
    raw.send(HEADER).await;
    raw.features().await;
    raw
}

async fn server_with_users() -> TestServer {
    let server = TestServer::start_with(|c| {
        c.limits.max_stanza_bytes = 4096;
    })
    .await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    server
}

/// A second, well-behaved session is still served after another one broke.
async fn bystander_still_served(bystander: &mut Raw) {
    bystander.send("<iq xmlns='jabber:client' type='get' id='still' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let pong = bystander.element().await.expect("ping answered");
    assert_eq!(pong.attr("id"), Some("still"));
    assert_eq!(pong.attr("type"), Some("result"));
}

// RFC 6120 4.9.3.13
#[tokio::test]
async fn not_well_formed_xml_is_not_well_formed() {
    let server = server_with_users().await;
    let mut bystander = Raw::login(&server, "bob", "b").await;
    let mut raw = opened(&server).await;
    raw.send("<message><body>x</presence>").await;
    assert_eq!(raw.stream_error().await, "not-well-formed");
    bystander_still_served(&mut bystander).await;
}

// RFC 6120 4.9.3.18 (and 11.1: no DTDs, entities, PIs or comments)
#[tokio::test]
async fn dtd_entity_pi_and_comment_are_restricted_xml() {
    let server = server_with_users().await;
    let mut raw = Raw::connect(&server.c2s()).await;
    raw.send("<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'boom'>]>")
        .await;
    assert_eq!(raw.stream_error().await, "restricted-xml");
    for bad in [
        "<message>&x;</message>",
        "<?php echo 1; ?>",
        "<!-- hello -->",
    ] {
        let mut raw = opened(&server).await;
        raw.send(bad).await;
        assert_eq!(raw.stream_error().await, "restricted-xml", "{bad}");
    }
}

// RFC 6120 4.9.3.10
#[tokio::test]
async fn wrong_stream_namespace_is_invalid_namespace() {
    let server = server_with_users().await;
    let mut raw = Raw::connect(&server.c2s()).await;
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='urn:example:wrong' to='localhost' version='1.0'>").await;
    assert_eq!(raw.stream_error().await, "invalid-namespace");
}

// RFC 6120 4.9.3.10 for a stanza in the wrong content namespace.
#[tokio::test]
async fn stanza_in_server_namespace_is_invalid_namespace() {
    let server = server_with_users().await;
    let mut raw = Raw::login(&server, "alice", "a").await;
    raw.send("<message xmlns='jabber:server' to='bob@localhost'><body>x</body></message>")
        .await;
    assert_eq!(raw.stream_error().await, "invalid-namespace");
}

// RFC 6120 4.9.3.6
#[tokio::test]
async fn unknown_host_is_host_unknown() {
    let server = server_with_users().await;
    let mut raw = Raw::connect(&server.c2s()).await;
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>").await;
    assert_eq!(raw.stream_error().await, "host-unknown");
}

// RFC 6120 4.9.3.25
#[tokio::test]
async fn missing_version_is_unsupported_version() {
    let server = server_with_users().await;
    let mut raw = Raw::connect(&server.c2s()).await;
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>").await;
    assert_eq!(raw.stream_error().await, "unsupported-version");
}

// RFC 6120 4.9.3.12: stanzas before authentication.
#[tokio::test]
async fn stanza_before_authentication_is_not_authorized() {
    let server = server_with_users().await;
    let mut raw = opened(&server).await;
    raw.send("<message xmlns='jabber:client' to='bob@localhost'><body>x</body></message>")
        .await;
    assert_eq!(raw.stream_error().await, "not-authorized");
    assert_eq!(server.offline_count("bob").await, 0);
}

// RFC 6120 5.3.1 / 6.4.5: TLS is required before SASL.
#[tokio::test]
async fn plaintext_auth_is_refused_with_encryption_required() {
    let server = server_with_users().await;
    let mut raw = Raw::connect(&server.c2s()).await;
    raw.send(HEADER).await;
    let features = raw.features().await;
    let starttls = features
        .get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .expect("STARTTLS offered");
    assert!(starttls.has_child("required", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(!features.has_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl"));
    raw.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGE=</auth>",
    )
    .await;
    let failure = raw.element().await.expect("failure");
    assert_eq!(failure.name(), "failure");
    assert!(failure.has_child("encryption-required", "urn:ietf:params:xml:ns:xmpp-sasl"));
}

// RFC 6120 4.9.3.16 with the configured max_stanza_bytes.
#[tokio::test]
async fn oversized_stanza_is_policy_violation() {
    let server = server_with_users().await;
    let mut bystander = Raw::login(&server, "bob", "b").await;
    let mut raw = Raw::login(&server, "alice", "a").await;
    let body = "x".repeat(8192);
    raw.send(&format!(
        "<message xmlns='jabber:client' to='bob@localhost'><body>{body}</body></message>"
    ))
    .await;
    assert_eq!(raw.stream_error().await, "policy-violation");
    bystander_still_served(&mut bystander).await;
}

// RFC 6120 4.9.3.22
#[tokio::test]
async fn unknown_top_level_element_is_unsupported_stanza_type() {
    let server = server_with_users().await;
    let mut raw = Raw::login(&server, "alice", "a").await;
    raw.send("<foo xmlns='jabber:client'/>").await;
    assert_eq!(raw.stream_error().await, "unsupported-stanza-type");
}

// RFC 6120 4.9.3.9 / 8.1.2.1: a `from` that is not the bound JID.
#[tokio::test]
async fn spoofed_from_is_invalid_from() {
    let server = server_with_users().await;
    let mut raw = Raw::login(&server, "alice", "a").await;
    raw.send("<message xmlns='jabber:client' from='bob@localhost/x' to='alice@localhost'><body>x</body></message>").await;
    assert_eq!(raw.stream_error().await, "invalid-from");
}

// RFC 6120 8.3.3.8
#[tokio::test]
async fn malformed_to_is_jid_malformed_stanza_error() {
    let server = server_with_users().await;
    let mut raw = Raw::login(&server, "alice", "a").await;
    raw.send("<message xmlns='jabber:client' id='m1' to='a@b@c'><body>x</body></message>")
        .await;
    let err = raw.element().await.expect("error reply");
    assert_eq!(err.attr("type"), Some("error"));
    assert_eq!(err.attr("id"), Some("m1"));
    let error = err
        .get_child("error", "jabber:client")
        .expect("error element");
    assert!(error.has_child("jid-malformed", STANZAS));
}

// RFC 6120 8.2.3: an iq get needs exactly one payload element.
#[tokio::test]
async fn iq_without_payload_is_bad_request() {
    let server = server_with_users().await;
    let mut raw = Raw::login(&server, "alice", "a").await;
    raw.send("<iq xmlns='jabber:client' type='get' id='q1' to='localhost'/>")
        .await;
    let err = raw.element().await.expect("error reply");
    assert!(err
        .get_child("error", "jabber:client")
        .is_some_and(|e| e.has_child("bad-request", STANZAS)));
}

// RFC 6120 4.9.3.4: a connection that never authenticates is closed.
#[tokio::test]
async fn idle_unauthenticated_connection_times_out() {
    let server = TestServer::start_with(|c| c.limits.login_timeout = 1).await;
    let mut raw = opened(&server).await;
    assert_eq!(raw.stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn connection_cap_refuses_extra_connections() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let _a = opened(&server).await;
    let _b = opened(&server).await;
    let mut c = Raw::connect(&server.c2s()).await;
    let _ = c.write(HEADER.as_bytes()).await;
    assert!(
        c.frame().await.is_none(),
        "third connection is closed at once"
    );
    drop(_a);
    // A slot frees up once a connection ends.
    within(async {
        loop {
            let mut d = Raw::connect(&server.c2s()).await;
            let _ = d.write(HEADER.as_bytes()).await;
            if d.frame().await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn repeated_failed_logins_are_delayed_then_closed() {
    let server = TestServer::start_with(|c| {
        c.limits.auth_failure_delay_ms = 200;
        c.limits.auth_failure_delay_max_ms = 400;
        c.limits.max_auth_failures = 3;
    })
    .await;
    server.add_user("alice", "a").await;
    let mut raw = opened(&server).await.starttls(&server).await;
    raw.send(HEADER).await;
    raw.features().await;
    let bad = base64::engine::general_purpose::STANDARD.encode("\0alice\0wrong");
    let started = Instant::now();
    for _ in 0..3 {
        raw.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{bad}</auth>"
        ))
        .await;
        let failure = raw.element().await.expect("failure");
        assert!(failure.has_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl"));
    }
    // 200 + 400 + 400 ms of back-off at least: a lower bound, not a speed test.
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(raw.stream_error().await, "policy-violation");
}

#[tokio::test]
async fn read_rate_limit_slows_a_flooding_client() {
    let server = TestServer::start_with(|c| {
        c.limits.read_bytes_per_second = 20_000;
        c.limits.read_burst_bytes = 20_000;
    })
    .await;
    server.add_user("alice", "a").await;
    let mut raw = Raw::login(&server, "alice", "a").await;
    // 60 KB of whitespace keepalives, then a ping: the server may read the
    // burst at once but the rest only at 20 KB/s, so the answer comes
    // after about two seconds, never before one.
    let started = Instant::now();
    let chunk = " ".repeat(1000);
    for _ in 0..60 {
        raw.send(&chunk).await;
    }
    raw.send("<iq xmlns='jabber:client' type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let pong = raw.element().await.expect("pong");
    assert_eq!(pong.attr("id"), Some("p"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn client_that_stops_reading_is_disconnected_and_others_go_on() {
    let server = TestServer::start_with(|c| {
        c.limits.session_queue = 8;
        c.limits.max_stanza_bytes = 70_000;
    })
    .await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    server.add_user("carol", "c").await;
    let mut bob = Raw::login(&server, "bob", "b").await;
    bob.send("<presence xmlns='jabber:client'/>").await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    let mut carol = Raw::login(&server, "carol", "c").await;
    // Bob never reads again. Alice floods him until the server gives up on him.
    let body = "y".repeat(60_000);
    within(async {
        let mut sent = 0;
        while server.running.node.router.is_online("bob") {
            alice
                .send(&format!("<message xmlns='jabber:client' type='chat' to='bob@localhost/raw'><body>{body}</body></message>"))
                .await;
            sent += 1;
            assert!(sent < 2000, "bob was never disconnected");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    bystander_still_served(&mut carol).await;
    bystander_still_served(&mut alice).await;
}
