//! XEP-0198 stream management, hibernation, dead-peer detection and
//! XEP-0352, against the real server, with links broken by the
//! fault-injection proxy.

mod common;

use common::proxy::Proxy;
use common::raw::{Raw, STREAMS};
use common::*;
use futures::StreamExt;
use minidom::Element;
use std::time::Duration;
use tokio_xmpp::parsers::jid::Jid;
use tokio_xmpp::stanzastream::StanzaStage;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, Stanza};
use tributary_server::Config;
use tributary_store::{RosterItem, Subscription};

const SM: &str = "urn:xmpp:sm:3";

/// Short timers so tests see detection and expiry in seconds.
fn fast(c: &mut Config) {
    c.keepalive.idle_ping = 1;
    c.keepalive.dead_after = 1;
    c.stream_management.resume_timeout = 2;
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", "jabber:client").map(|b| b.text())
}

fn chat(to: &str, text: &str) -> String {
    format!("<message xmlns='jabber:client' type='chat' to='{to}'><body>{text}</body></message>")
}

/// Enables resumable SM on a raw session; returns the resumption id.
async fn enable(raw: &mut Raw) -> String {
    raw.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = raw.element().await.expect("enabled");
    assert!(enabled.is("enabled", SM), "{}", String::from(&enabled));
    assert_eq!(enabled.attr("resume"), Some("true"));
    enabled.attr("id").expect("resumption id").to_owned()
}

/// Sends `<r/>` and waits for the answer, which proves the server has
/// handled everything sent before it.
async fn sync(raw: &mut Raw, h: &mut u32) -> u32 {
    raw.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    loop {
        let e = raw.stanza_answering_acks(h).await.expect("answer");
        if e.is("a", SM) {
            return e.attr("h").and_then(|h| h.parse().ok()).expect("h");
        }
    }
}

/// Alice logs in, sends one chat message and makes sure it was handled.
/// (A fresh connection each time: with the tests' one-second keepalive an
/// idle raw client that never answers pings is rightly dropped.)
async fn alice_sends(server: &TestServer, to: &str, text: &str) {
    let mut alice = Raw::login(server, "alice", "a").await;
    alice.send(&chat(to, text)).await;
    let mut h = 0;
    roundtrip(&mut alice, &mut h).await;
}

/// A ping round trip: everything sent before it has been handled.
async fn roundtrip(raw: &mut Raw, h: &mut u32) {
    raw.send("<iq xmlns='jabber:client' type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    loop {
        let e = raw.stanza_answering_acks(h).await.expect("pong");
        if e.attr("id") == Some("sync") {
            return;
        }
    }
}

/// Waits (5 s at most) until the session of `user/resource` has lost its
/// link and is held for resumption.
async fn detached(server: &TestServer, user: &str, resource: &str) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !server
            .running
            .node
            .router
            .session(user, resource)
            .is_some_and(|s| s.hibernating)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("session detached");
}

/// Waits until `user` has `n` offline messages, then checks no more come.
async fn offline_settles_at(server: &TestServer, user: &str, n: usize) {
    tokio::time::timeout(Duration::from_secs(15), async {
        while server.offline_count(user).await < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("offline messages stored");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.offline_count(user).await, n, "stored exactly once");
}

/// Logs in fresh, goes available and returns the bodies of the messages
/// that were waiting, in order.
async fn fresh_login_bodies(
    server: &TestServer,
    user: &str,
    password: &str,
    expect: usize,
) -> Vec<String> {
    let mut raw = Raw::login(server, user, password).await;
    raw.send("<presence xmlns='jabber:client'/>").await;
    let mut out = Vec::new();
    let mut h = 0;
    while out.len() < expect {
        let e = raw.stanza_answering_acks(&mut h).await.expect("stanza");
        if let Some(b) = body(&e) {
            out.push(b);
        }
    }
    out
}

#[tokio::test]
async fn thousand_messages_across_repeated_cuts_arrive_once_in_order() {
    let server = TestServer::start_with(|c| c.stream_management.resume_timeout = 60).await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let proxy = Proxy::start(server.c2s()).await;
    let (mut alice, _) = online(Client::new_with_connector(
        jid::BareJid::new("alice@localhost").expect("jid"),
        "a".to_owned(),
        LocalStartTls {
            addr: proxy.addr(),
            tls: server.tls.clone(),
        },
        Timeouts::tight(),
    ))
    .await;
    let (mut bob, bob_jid) = server.client("bob@localhost", "b").await;
    let to = Jid::new(&bob_jid.to_string()).expect("jid");

    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 1000 {
            let ev = tokio::time::timeout(Duration::from_secs(60), bob.next()).await;
            match ev {
                Ok(Some(Event::Stanza(s))) => {
                    let e: Element = xso::transform(&s).expect("element");
                    if let Some(b) = body(&e) {
                        got.push(b);
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        got
    });
    for i in 0..1000 {
        let msg = xmpp_parsers::message::Message::chat(Some(to.clone()))
            .with_body(Default::default(), format!("m-{i}"));
        alice.send_stanza(Stanza::from(msg)).await.expect("queued");
        if i % 250 == 120 {
            proxy.cut();
        }
        // Keep alice's stream polled so it notices cuts and resumes.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(0), alice.next()).await {
        }
    }
    let pump = tokio::spawn(async move {
        loop {
            if alice.next().await.is_none() {
                break;
            }
        }
    });
    let got = tokio::time::timeout(Duration::from_secs(90), receiver)
        .await
        .expect("all delivered in time")
        .expect("receiver task");
    pump.abort();
    let expected: Vec<String> = (0..1000).map(|i| format!("m-{i}")).collect();
    assert_eq!(got.len(), 1000, "received {} messages", got.len());
    assert_eq!(got, expected, "each exactly once, in order");
    assert!(
        proxy.connections() >= 4,
        "the link was cut and resumed: {} connections",
        proxy.connections()
    );
}

#[tokio::test]
async fn resume_after_cut_resends_only_what_was_not_acknowledged() {
    let server = TestServer::start_with(|c| c.stream_management.resume_timeout = 30).await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let proxy = Proxy::start(server.c2s()).await;
    let mut bob = Raw::login_at(&server, &proxy.addr(), "bob", "b").await;
    let id = enable(&mut bob).await;
    let mut h = 0;
    bob.send("<presence xmlns='jabber:client'/>").await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    for i in 1..=2 {
        alice
            .send(&chat("bob@localhost/raw", &format!("acked-{i}")))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = bob.stanza_answering_acks(&mut h).await.expect("stanza");
        seen.extend(body(&e));
    }
    let server_h = sync(&mut bob, &mut h).await;
    assert_eq!(server_h, 1, "bob sent one stanza (presence)");
    bob.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>"))
        .await;
    sync(&mut bob, &mut h).await;
    proxy.cut();
    for i in 1..=3 {
        alice
            .send(&chat("bob@localhost/raw", &format!("later-{i}")))
            .await;
    }
    let mut ah = 0;
    roundtrip(&mut alice, &mut ah).await;

    let mut bob2 = Raw::authenticate_at(&server, &server.c2s(), "bob", "b").await;
    bob2.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{h}'/>"
    ))
    .await;
    let resumed = bob2.element().await.expect("resumed");
    assert!(resumed.is("resumed", SM), "{}", String::from(&resumed));
    assert_eq!(resumed.attr("h"), Some("1"));
    let mut later = Vec::new();
    while later.len() < 3 {
        let e = bob2.stanza_answering_acks(&mut h).await.expect("stanza");
        later.extend(body(&e));
    }
    assert_eq!(later, ["later-1", "later-2", "later-3"]);
    // Nothing else was queued: the acknowledged ones are not resent.
    bob2.send("<iq xmlns='jabber:client' type='get' id='end' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let next = bob2.stanza_answering_acks(&mut h).await.expect("pong");
    assert_eq!(
        next.attr("id"),
        Some("end"),
        "unexpected {}",
        String::from(&next)
    );
}

#[tokio::test]
async fn vanished_client_messages_go_offline_exactly_once_and_resume_then_fails() {
    let server = TestServer::start_with(|c| {
        fast(c);
        c.stream_management.ack_request_every = 1;
    })
    .await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let proxy = Proxy::start(server.c2s()).await;
    let mut bob = Raw::login_at(&server, &proxy.addr(), "bob", "b").await;
    let id = enable(&mut bob).await;
    let mut h = 0;
    bob.send("<presence xmlns='jabber:client'/>").await;
    alice_sends(&server, "bob@localhost/raw", "seen-1").await;
    alice_sends(&server, "bob@localhost/raw", "seen-2").await;
    let mut seen = 0;
    while seen < 2 {
        let e = bob.stanza_answering_acks(&mut h).await.expect("stanza");
        seen += usize::from(body(&e).is_some());
    }
    bob.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>"))
        .await;
    sync(&mut bob, &mut h).await;

    // The phone goes into a tunnel: nothing more gets through either way.
    proxy.blackhole();
    alice_sends(&server, "bob@localhost/raw", "lost-1").await;
    alice_sends(&server, "bob@localhost/raw", "lost-2").await;
    // Detected as dead and detached within idle_ping + dead_after.
    detached(&server, "bob", "raw").await;
    alice_sends(&server, "bob@localhost/raw", "held-3").await;
    offline_settles_at(&server, "bob", 3).await;

    let mut late = Raw::authenticate_at(&server, &server.c2s(), "bob", "b").await;
    late.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{h}'/>"
    ))
    .await;
    let failed = late.element().await.expect("failed");
    assert!(failed.is("failed", SM), "{}", String::from(&failed));
    assert_eq!(
        failed.attr("h"),
        Some("1"),
        "the server reports what it handled"
    );
    assert!(failed.has_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    drop(late);

    let bodies = fresh_login_bodies(&server, "bob", "b", 3).await;
    assert_eq!(bodies, ["lost-1", "lost-2", "held-3"]);
}

#[tokio::test]
async fn bare_jid_message_goes_to_the_live_resource_and_is_never_stored_again() {
    // The phone's link is cut outright, so no keepalive is needed here
    // (and the idle desk client is not pinged away).
    let server = TestServer::start_with(|c| c.stream_management.resume_timeout = 2).await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let proxy = Proxy::start(server.c2s()).await;
    let mut phone = Raw::login_at(&server, &proxy.addr(), "bob", "b").await;
    enable(&mut phone).await;
    phone
        .send("<presence xmlns='jabber:client'><priority>5</priority></presence>")
        .await;
    let mut desk = Raw::authenticate_at(&server, &server.c2s(), "bob", "b").await;
    desk.bind("desk").await;
    desk.send("<presence xmlns='jabber:client'/>").await;
    let mut dh = 0;
    roundtrip(&mut desk, &mut dh).await;
    proxy.cut();
    detached(&server, "bob", "raw").await;

    // Despite its higher priority, the detached phone is passed over.
    alice_sends(&server, "bob@localhost", "to-bare").await;
    let got = loop {
        let e = desk.stanza_answering_acks(&mut dh).await.expect("stanza");
        if let Some(b) = body(&e) {
            break b;
        }
    };
    assert_eq!(got, "to-bare");
    // When the phone's session expires nothing is stored for it.
    tokio::time::timeout(Duration::from_secs(6), async {
        while server.running.node.router.session("bob", "raw").is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("phone session expired");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.offline_count("bob").await, 0);
}

#[tokio::test]
async fn bare_jid_message_with_only_a_detached_resource_is_held_then_stored_once() {
    let server = TestServer::start_with(fast).await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let proxy = Proxy::start(server.c2s()).await;
    let mut phone = Raw::login_at(&server, &proxy.addr(), "bob", "b").await;
    enable(&mut phone).await;
    phone.send("<presence xmlns='jabber:client'/>").await;
    let mut h = 0;
    sync(&mut phone, &mut h).await;
    proxy.blackhole();
    detached(&server, "bob", "raw").await;
    alice_sends(&server, "bob@localhost", "held").await;
    offline_settles_at(&server, "bob", 1).await;
    assert_eq!(fresh_login_bodies(&server, "bob", "b", 1).await, ["held"]);
}

#[tokio::test]
async fn client_that_never_acks_is_closed_and_nothing_is_lost() {
    let server = TestServer::start_with(|c| c.stream_management.max_unacked = 5).await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let mut bob = Raw::login(&server, "bob", "b").await;
    enable(&mut bob).await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    for i in 0..10 {
        alice
            .send(&chat("bob@localhost/raw", &format!("n-{i}")))
            .await;
    }
    assert_eq!(bob.stream_error().await, "policy-violation");
    offline_settles_at(&server, "bob", 10).await;
    let expected: Vec<String> = (0..10).map(|i| format!("n-{i}")).collect();
    assert_eq!(fresh_login_bodies(&server, "bob", "b", 10).await, expected);
}

#[tokio::test]
async fn ack_for_more_than_was_sent_is_a_stream_error() {
    let server = TestServer::start().await;
    server.add_user("bob", "b").await;
    let mut bob = Raw::login(&server, "bob", "b").await;
    enable(&mut bob).await;
    bob.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
    let err = loop {
        let e = bob.element().await.expect("stream error");
        if e.name() == "error" {
            break e;
        }
    };
    assert!(err.has_child("undefined-condition", STREAMS));
    let app = err
        .get_child("handled-count-too-high", SM)
        .expect("XEP-0198 condition");
    assert_eq!(app.attr("h"), Some("5"));
    assert_eq!(app.attr("send-count"), Some("0"));
}

#[tokio::test]
async fn silent_peer_without_sm_is_pinged_then_dropped() {
    let server = TestServer::start_with(fast).await;
    server.add_user("bob", "b").await;
    let proxy = Proxy::start(server.c2s()).await;
    let _bob = Raw::login_at(&server, &proxy.addr(), "bob", "b").await;
    assert!(server.running.node.router.is_online("bob"));
    proxy.blackhole();
    // idle_ping (1 s) + dead_after (1 s), with margin for a slow machine.
    tokio::time::timeout(Duration::from_secs(8), async {
        while server.running.node.router.is_online("bob") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("dead peer detected");
}

#[tokio::test]
async fn inactive_client_gets_only_the_latest_presence_and_messages_at_once() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let store = &server.running.node.store;
    for (user, contact) in [("alice", "bob@localhost"), ("bob", "alice@localhost")] {
        let mut item = RosterItem::new(contact);
        item.subscription = Subscription::Both;
        store.put_roster_item(user, &item).await.expect("roster");
    }
    let mut bob = Raw::login(&server, "bob", "b").await;
    bob.send("<presence xmlns='jabber:client'/>").await;
    bob.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    let mut bh = 0;
    roundtrip(&mut bob, &mut bh).await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    for show in ["away", "xa", "dnd"] {
        alice
            .send(&format!(
                "<presence xmlns='jabber:client'><show>{show}</show></presence>"
            ))
            .await;
    }
    alice.send(&chat("bob@localhost", "urgent")).await;
    // The message comes at once, before any of the held presences.
    let first = loop {
        let e = bob.stanza_answering_acks(&mut bh).await.expect("stanza");
        if e.name() != "presence" || e.attr("from") != Some("bob@localhost/raw") {
            break e;
        }
    };
    assert_eq!(
        body(&first).as_deref(),
        Some("urgent"),
        "{}",
        String::from(&first)
    );
    bob.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    bob.send("<iq xmlns='jabber:client' type='get' id='end' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let mut presences = Vec::new();
    loop {
        let e = bob.stanza_answering_acks(&mut bh).await.expect("stanza");
        if e.attr("id") == Some("end") {
            break;
        }
        if e.name() == "presence" {
            presences.push(e.get_child("show", "jabber:client").map(|s| s.text()));
        }
    }
    assert_eq!(
        presences,
        [Some("dnd".to_owned())],
        "only the latest presence"
    );
}

#[tokio::test]
async fn tokio_xmpp_stanza_token_reaches_acked() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    let (_bob, bob_jid) = server.client("bob@localhost", "b").await;
    let msg = xmpp_parsers::message::Message::chat(Some(bob_jid))
        .with_body(Default::default(), "ack me".into());
    let mut token = alice.send_stanza(Stanza::from(msg)).await.expect("queued");
    let pump = async {
        loop {
            let _ = alice.next().await;
        }
    };
    tokio::select! {
        state = token.wait_for(StanzaStage::Acked) => assert!(state.is_some(), "acknowledged by the server"),
        _ = pump => unreachable!(),
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("never acknowledged"),
    }
}
