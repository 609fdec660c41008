//! The real server driven by tokio-xmpp, a client library written by
//! others: logins over each transport, chat, subscriptions, presence,
//! offline messages, carbons, and the server's own iq services.

mod common;

use common::*;
use futures::StreamExt;
use minidom::Element;
use tokio_xmpp::parsers::jid::Jid;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, IqRequest, IqResponse, Stanza};
use xmpp_parsers::presence::Presence;

fn el(xml: &str) -> Element {
    xml.parse().expect("test XML")
}

async fn send(client: &mut Client, xml: &str) {
    let stanza = Stanza::try_from(el(xml)).expect("valid stanza");
    client.send_stanza(stanza).await.expect("sent");
}

async fn send_presence(client: &mut Client) {
    client
        .send_stanza(Presence::available().into())
        .await
        .expect("presence sent");
}

fn element(s: &Stanza) -> Element {
    xso::transform(s).expect("stanza converts to an element")
}

fn is_message_with_body(s: &Stanza) -> bool {
    let e = element(s);
    e.name() == "message" && e.get_child("body", "jabber:client").is_some()
}

async fn iq(client: &mut Client, to: &str, get: bool, payload: &str) -> IqResponse {
    let to = Jid::new(to).expect("jid");
    let req = if get {
        IqRequest::Get(el(payload))
    } else {
        IqRequest::Set(el(payload))
    };
    within(within(client.send_iq(Some(to), req)).await)
        .await
        .expect("iq answered")
}

#[tokio::test]
async fn login_over_starttls_with_scram_sha256() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    let (client, jid) = server.client("alice@localhost", "secret").await;
    assert_eq!(jid.to_bare().as_str(), "alice@localhost");
    assert!(jid.resource().is_some(), "server generated a resource");
    drop(client);
    server.running.shutdown().await;
}

#[tokio::test]
async fn login_over_direct_tls_with_and_without_channel_binding() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    for plus in [true, false] {
        let connector = LocalDirectTls {
            addr: server.c2s_tls(),
            tls: server.tls.clone(),
            plus,
        };
        let (_client, jid) = online(Client::new_with_connector(
            jid::BareJid::new("alice@localhost").expect("jid"),
            "secret".to_owned(),
            connector,
            Timeouts::tight(),
        ))
        .await;
        assert_eq!(jid.to_bare().as_str(), "alice@localhost", "plus={plus}");
    }
}

#[tokio::test]
async fn wrong_password_is_refused_for_each_mechanism() {
    use tokio_xmpp::connect::ServerConnector;
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        let connector = LocalStartTls {
            addr: server.c2s(),
            tls: server.tls.clone(),
        };
        let jid = Jid::new("alice@localhost").expect("jid");
        let (pending, cb) = connector
            .connect(&jid, "jabber:client", Timeouts::tight())
            .await
            .expect("connected");
        let (_features, stream) = pending
            .recv_features::<tokio_xmpp::xmlstream::FallibleStreamElement>()
            .await
            .expect("features");
        let creds = sasl::common::Credentials::default()
            .with_username("alice")
            .with_password("wrong")
            .with_channel_binding(cb);
        let result = within(tokio_xmpp::client_login(
            stream,
            [mech.to_string()].into(),
            creds,
        ))
        .await;
        assert!(
            matches!(result, Err(tokio_xmpp::Error::Auth(_))),
            "{mech}: expected an authentication failure, got {:?}",
            result.err()
        );
    }
}

#[tokio::test]
async fn chat_between_two_users() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    let (mut bob, bob_jid) = server.client("bob@localhost", "b").await;
    send_presence(&mut alice).await;
    send_presence(&mut bob).await;
    send(&mut alice, "<message xmlns='jabber:client' type='chat' to='bob@localhost' id='m1'><body>hello bob</body></message>").await;
    let got = element(&next_stanza(&mut bob, is_message_with_body).await);
    assert_eq!(
        got.get_child("body", "jabber:client").map(|b| b.text()),
        Some("hello bob".into())
    );
    assert!(got
        .attr("from")
        .is_some_and(|f| f.starts_with("alice@localhost/")));
    assert_eq!(got.attr("to"), Some("bob@localhost"));
    // And back to alice's full JID from bob's.
    let alice_full = got.attr("from").expect("from").to_owned();
    send(&mut bob, &format!("<message xmlns='jabber:client' type='chat' to='{alice_full}'><body>hi alice</body></message>")).await;
    let got = element(&next_stanza(&mut alice, is_message_with_body).await);
    assert_eq!(got.attr("from"), Some(bob_jid.to_string().as_str()));
}

#[tokio::test]
async fn message_to_unknown_user_gets_service_unavailable() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    send_presence(&mut alice).await;
    send(&mut alice, "<message xmlns='jabber:client' type='chat' to='nobody@localhost' id='x1'><body>hi</body></message>").await;
    let err = element(&next_stanza(&mut alice, |s| element(s).attr("type") == Some("error")).await);
    assert_eq!(err.attr("id"), Some("x1"));
    let error = err
        .get_child("error", "jabber:client")
        .expect("error child");
    assert!(error.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"));
}

#[tokio::test]
async fn subscription_handshake_and_presence() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    let (mut bob, bob_jid) = server.client("bob@localhost", "b").await;
    // Both fetch their rosters (so they get pushes) and go online.
    let IqResponse::Result(Some(roster)) = iq(
        &mut alice,
        "alice@localhost",
        true,
        "<query xmlns='jabber:iq:roster'/>",
    )
    .await
    else {
        panic!("roster result expected")
    };
    assert_eq!(roster.children().count(), 0);
    iq(
        &mut bob,
        "bob@localhost",
        true,
        "<query xmlns='jabber:iq:roster'/>",
    )
    .await;
    send_presence(&mut alice).await;
    send_presence(&mut bob).await;

    send(
        &mut alice,
        "<presence xmlns='jabber:client' type='subscribe' to='bob@localhost'/>",
    )
    .await;
    let req =
        element(&next_stanza(&mut bob, |s| element(s).attr("type") == Some("subscribe")).await);
    assert_eq!(req.attr("from"), Some("alice@localhost"));
    send(
        &mut bob,
        "<presence xmlns='jabber:client' type='subscribed' to='alice@localhost'/>",
    )
    .await;

    // Alice sees bob come online as her contact.
    let seen = element(
        &next_stanza(&mut alice, |s| {
            let e = element(s);
            e.name() == "presence"
                && e.attr("type").is_none()
                && e.attr("from") == Some(bob_jid.to_string().as_str())
        })
        .await,
    );
    assert!(seen
        .attr("to")
        .is_some_and(|t| t.starts_with("alice@localhost/")));
    let IqResponse::Result(Some(roster)) = iq(
        &mut alice,
        "alice@localhost",
        true,
        "<query xmlns='jabber:iq:roster'/>",
    )
    .await
    else {
        panic!("roster result expected")
    };
    let item = roster.children().next().expect("bob is in alice's roster");
    assert_eq!(item.attr("jid"), Some("bob@localhost"));
    assert_eq!(item.attr("subscription"), Some("to"));
    let IqResponse::Result(Some(roster)) = iq(
        &mut bob,
        "bob@localhost",
        true,
        "<query xmlns='jabber:iq:roster'/>",
    )
    .await
    else {
        panic!("roster result expected")
    };
    // RFC 6121 3.1.5: approving put alice in bob's roster as "from".
    let item = roster.children().next().expect("alice in bob's roster");
    assert_eq!(item.attr("jid"), Some("alice@localhost"));
    assert_eq!(item.attr("subscription"), Some("from"));
    // Naming the item keeps its subscription.
    iq(
        &mut bob,
        "bob@localhost",
        false,
        "<query xmlns='jabber:iq:roster'><item jid='alice@localhost' name='Alice'/></query>",
    )
    .await;
    let IqResponse::Result(Some(roster)) = iq(
        &mut bob,
        "bob@localhost",
        true,
        "<query xmlns='jabber:iq:roster'/>",
    )
    .await
    else {
        panic!("roster result expected")
    };
    let item = roster.children().next().expect("alice in bob's roster");
    assert_eq!(item.attr("subscription"), Some("from"));
    assert_eq!(item.attr("name"), Some("Alice"));
}

#[tokio::test]
async fn offline_message_is_delivered_at_next_login() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    send_presence(&mut alice).await;
    send(&mut alice, "<message xmlns='jabber:client' type='chat' to='bob@localhost' id='off1'><body>while you were away</body></message>").await;
    // Wait until it is stored, then bob logs in.
    within(async {
        while server.offline_count("bob").await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let (mut bob, _) = server.client("bob@localhost", "b").await;
    send_presence(&mut bob).await;
    let got = element(&next_stanza(&mut bob, is_message_with_body).await);
    assert_eq!(
        got.get_child("body", "jabber:client").map(|b| b.text()),
        Some("while you were away".into())
    );
    assert!(
        got.has_child("delay", "urn:xmpp:delay"),
        "offline message carries a delay stamp"
    );
    assert_eq!(server.offline_count("bob").await, 0);
}

#[tokio::test]
async fn carbons_copy_between_two_resources() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let (mut a1, a1_jid) = server.client("alice@localhost", "a").await;
    let (mut a2, _) = server.client("alice@localhost", "a").await;
    let (mut bob, _) = server.client("bob@localhost", "b").await;
    for c in [&mut a1, &mut a2] {
        assert!(matches!(
            iq(
                c,
                "alice@localhost",
                false,
                "<enable xmlns='urn:xmpp:carbons:2'/>"
            )
            .await,
            IqResponse::Result(_)
        ));
        send_presence(c).await;
    }
    send_presence(&mut bob).await;
    // Bob writes to a1's full JID: a2 gets a received carbon.
    send(
        &mut bob,
        &format!(
            "<message xmlns='jabber:client' type='chat' to='{a1_jid}'><body>to a1</body></message>"
        ),
    )
    .await;
    let carbon = element(
        &next_stanza(&mut a2, |s| {
            element(s).has_child("received", "urn:xmpp:carbons:2")
        })
        .await,
    );
    let fwd = carbon
        .get_child("received", "urn:xmpp:carbons:2")
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .expect("forwarded message");
    assert_eq!(
        fwd.get_child("body", "jabber:client").map(|b| b.text()),
        Some("to a1".into())
    );
    // a1 writes to bob: a2 gets a sent carbon.
    send(&mut a1, "<message xmlns='jabber:client' type='chat' to='bob@localhost'><body>from a1</body></message>").await;
    let carbon = element(
        &next_stanza(&mut a2, |s| {
            element(s).has_child("sent", "urn:xmpp:carbons:2")
        })
        .await,
    );
    assert_eq!(carbon.attr("from"), Some("alice@localhost"));
}

#[tokio::test]
async fn disco_ping_version_time_are_answered() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    let IqResponse::Result(Some(info)) = iq(
        &mut alice,
        "localhost",
        true,
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await
    else {
        panic!("disco#info result expected")
    };
    let features: Vec<String> = info
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect();
    for f in [
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
        "urn:xmpp:carbons:2",
        "urn:xmpp:blocking",
        "vcard-temp",
        "msgoffline",
    ] {
        assert!(
            features.iter().any(|x| x == f),
            "missing feature {f}: {features:?}"
        );
    }
    assert!(matches!(
        iq(
            &mut alice,
            "localhost",
            true,
            "<ping xmlns='urn:xmpp:ping'/>"
        )
        .await,
        IqResponse::Result(None)
    ));
    let IqResponse::Result(Some(version)) = iq(
        &mut alice,
        "localhost",
        true,
        "<query xmlns='jabber:iq:version'/>",
    )
    .await
    else {
        panic!("version result expected")
    };
    assert_eq!(
        version
            .get_child("name", "jabber:iq:version")
            .map(|n| n.text()),
        Some("Tributary".into())
    );
    let IqResponse::Result(Some(time)) = iq(
        &mut alice,
        "localhost",
        true,
        "<time xmlns='urn:xmpp:time'/>",
    )
    .await
    else {
        panic!("time result expected")
    };
    assert!(time
        .get_child("utc", "urn:xmpp:time")
        .is_some_and(|u| u.text().ends_with('Z')));
}

#[tokio::test]
async fn admin_adds_a_user_with_xep0133() {
    let server = TestServer::start().await;
    server.add_user("admin", "root").await;
    server.add_user("alice", "a").await;
    let (mut admin, _) = server.client("admin@localhost", "root").await;
    let form = "<command xmlns='http://jabber.org/protocol/commands' node='http://jabber.org/protocol/admin#add-user' action='execute'/>";
    let IqResponse::Result(Some(cmd)) = iq(&mut admin, "localhost", false, form).await else {
        panic!("command form expected")
    };
    assert_eq!(cmd.attr("status"), Some("executing"));
    let session = cmd.attr("sessionid").expect("session id").to_owned();
    let submit = format!(
        "<command xmlns='http://jabber.org/protocol/commands' node='http://jabber.org/protocol/admin#add-user' sessionid='{session}' action='complete'>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/admin</value></field>\
         <field var='accountjid'><value>carol@localhost</value></field>\
         <field var='password'><value>c-pass</value></field>\
         <field var='password-verify'><value>c-pass</value></field></x></command>"
    );
    let IqResponse::Result(Some(done)) = iq(&mut admin, "localhost", false, &submit).await else {
        panic!("completion expected")
    };
    assert_eq!(done.attr("status"), Some("completed"));
    let (_carol, jid) = server.client("carol@localhost", "c-pass").await;
    assert_eq!(jid.to_bare().as_str(), "carol@localhost");

    // A non-admin may not run it.
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    assert!(matches!(
        iq(&mut alice, "localhost", false, form).await,
        IqResponse::Error(_)
    ));
}

#[tokio::test]
async fn shutdown_closes_sessions_with_system_shutdown() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    let TestServer {
        running, dir: _dir, ..
    } = server;
    within(running.shutdown()).await;
    // The client sees its stream end (tokio-xmpp then tries to reconnect).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), alice.next()).await;
}

#[tokio::test]
async fn blocking_drops_messages_both_ways_until_unblocked() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    let (mut bob, _) = server.client("bob@localhost", "b").await;
    send_presence(&mut alice).await;
    send_presence(&mut bob).await;
    let block = "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>";
    assert!(matches!(
        iq(&mut alice, "alice@localhost", false, block).await,
        IqResponse::Result(None)
    ));
    let IqResponse::Result(Some(list)) = iq(
        &mut alice,
        "alice@localhost",
        true,
        "<blocklist xmlns='urn:xmpp:blocking'/>",
    )
    .await
    else {
        panic!("blocklist expected")
    };
    assert_eq!(
        list.children()
            .filter_map(|i| i.attr("jid"))
            .collect::<Vec<_>>(),
        ["bob@localhost"]
    );

    // Alice writing to bob gets the XEP-0191 error.
    send(&mut alice, "<message xmlns='jabber:client' type='chat' to='bob@localhost' id='b1'><body>x</body></message>").await;
    let err = element(&next_stanza(&mut alice, |s| element(s).attr("id") == Some("b1")).await);
    let error = err.get_child("error", "jabber:client").expect("error");
    assert!(error.has_child("not-acceptable", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    assert!(error.has_child("blocked", "urn:xmpp:blocking:errors"));

    // Bob's message is dropped; after unblocking, the next one arrives.
    send(&mut bob, "<message xmlns='jabber:client' type='chat' to='alice@localhost'><body>dropped</body></message>").await;
    let unblock = "<unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock>";
    assert!(matches!(
        iq(&mut alice, "alice@localhost", false, unblock).await,
        IqResponse::Result(None)
    ));
    send(&mut bob, "<message xmlns='jabber:client' type='chat' to='alice@localhost'><body>delivered</body></message>").await;
    let got = element(&next_stanza(&mut alice, is_message_with_body).await);
    assert_eq!(
        got.get_child("body", "jabber:client").map(|b| b.text()),
        Some("delivered".into())
    );
}

#[tokio::test]
async fn vcard_and_private_storage_round_trip() {
    let server = TestServer::start().await;
    server.add_user("alice", "a").await;
    server.add_user("bob", "b").await;
    let (mut alice, _) = server.client("alice@localhost", "a").await;
    let (mut bob, _) = server.client("bob@localhost", "b").await;
    let vcard = "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN></vCard>";
    assert!(matches!(
        iq(&mut alice, "alice@localhost", false, vcard).await,
        IqResponse::Result(_)
    ));
    let IqResponse::Result(Some(card)) = iq(
        &mut bob,
        "alice@localhost",
        true,
        "<vCard xmlns='vcard-temp'/>",
    )
    .await
    else {
        panic!("vCard expected")
    };
    assert_eq!(
        card.get_child("FN", "vcard-temp").map(|f| f.text()),
        Some("Alice Liddell".into())
    );
    // Bob cannot overwrite it.
    assert!(matches!(
        iq(&mut bob, "alice@localhost", false, vcard).await,
        IqResponse::Error(_)
    ));

    let store = "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs></query>";
    assert!(matches!(
        iq(&mut alice, "alice@localhost", false, store).await,
        IqResponse::Result(_)
    ));
    let IqResponse::Result(Some(q)) = iq(
        &mut alice,
        "alice@localhost",
        true,
        "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>",
    )
    .await
    else {
        panic!("private data expected")
    };
    let theme = q
        .get_child("prefs", "urn:example:prefs")
        .and_then(|p| p.get_child("theme", "urn:example:prefs"))
        .map(|t| t.text());
    assert_eq!(theme, Some("dark".into()));
}
