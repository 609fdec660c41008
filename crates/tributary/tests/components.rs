//! External components (XEP-0114), as processors use them: handshake,
//! stanzas both ways with namespace translation, disco listing only
//! connected components, XEP-0198 on the component stream, and the
//! durable queue that keeps everything until a processor acknowledges it.

mod common;

use common::raw::{Raw, STANZAS};
use common::*;
use minidom::Element;
use std::time::Duration;
use tributary_server::config::ComponentConfig;
use tributary_server::Config;

const COMPONENT: &str = "jabber:component:accept";
const SM: &str = "urn:xmpp:sm:3";

fn collect(quota: u64, observe_presence: bool) -> ComponentConfig {
    ComponentConfig {
        domain: "collect.localhost".into(),
        secret: "s3cret".into(),
        observe_presence,
        quota,
        window: 256,
    }
}

fn with_component(c: &mut Config) {
    c.components = vec![collect(1_000_000, false)];
    c.stream_management.ack_request_every = 3;
}

async fn server() -> TestServer {
    let server = TestServer::start_with(with_component).await;
    server.add_user("alice", "a").await;
    server
}

async fn queue_depth(server: &TestServer) -> u64 {
    let depths = server
        .running
        .node
        .store
        .queue_depths()
        .await
        .expect("depths");
    depths.first().map_or(0, |d| d.depth)
}

async fn depth_becomes(server: &TestServer, n: u64) {
    within(async {
        while queue_depth(server).await != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn processor(server: &TestServer) -> Raw {
    Raw::component(&server.component(), "collect.localhost", "s3cret")
        .await
        .expect("handshake accepted")
}

fn report(n: u32) -> String {
    format!(
        "<message xmlns='jabber:client' to='collect.localhost' id='R-{n}'><body>reading {n}</body></message>"
    )
}

/// Next stanza on a component stream, skipping SM elements.
async fn next_stanza(raw: &mut Raw) -> Element {
    loop {
        let e = raw.element().await.expect("stanza");
        if !e.has_ns(SM) {
            return e;
        }
    }
}

async fn wait_connected(server: &TestServer, connected: bool) {
    within(async {
        while server.running.node.router.connected_components().is_empty() == connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn handshake_checks_domain_and_secret() {
    let server = server().await;
    assert_eq!(
        Raw::component(&server.component(), "collect.localhost", "guess")
            .await
            .err()
            .as_deref(),
        Some("not-authorized")
    );
    assert_eq!(
        Raw::component(&server.component(), "other.localhost", "s3cret")
            .await
            .err()
            .as_deref(),
        Some("host-unknown")
    );
    assert!(
        Raw::component(&server.component(), "collect.localhost", "s3cret")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn reports_reach_the_processor_and_answers_reach_the_user() {
    let server = server().await;
    let mut collect = processor(&server).await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    alice.send(&report(1)).await;
    let got = next_stanza(&mut collect).await;
    assert!(got.is("message", COMPONENT), "{}", String::from(&got));
    assert_eq!(got.attr("from"), Some("alice@localhost/raw"));
    assert_eq!(got.attr("id"), Some("R-1"));
    assert_eq!(
        got.get_child("body", COMPONENT).map(|b| b.text()),
        Some("reading 1".into())
    );

    collect
        .send("<message xmlns='jabber:component:accept' from='collect.localhost' to='alice@localhost/raw'>\
               <received xmlns='urn:xmpp:receipts' id='R-1'/><body>processed</body></message>")
        .await;
    let answer = alice.element().await.expect("answer");
    assert!(answer.is("message", "jabber:client"));
    assert_eq!(answer.attr("from"), Some("collect.localhost"));
    assert!(
        answer.has_child("body", "jabber:client"),
        "{}",
        String::from(&answer)
    );
    assert!(answer.has_child("received", "urn:xmpp:receipts"));
}

#[tokio::test]
async fn component_cannot_speak_for_others() {
    let server = server().await;
    let mut collect = processor(&server).await;
    collect
        .send("<message xmlns='jabber:component:accept' from='alice@localhost' to='alice@localhost'/>")
        .await;
    assert_eq!(collect.stream_error().await, "invalid-from");
}

#[tokio::test]
async fn disco_lists_only_connected_components() {
    let server = server().await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    let items = "<iq xmlns='jabber:client' type='get' id='i' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>";
    alice.send(items).await;
    let q = alice.element().await.expect("items");
    assert_eq!(
        q.children().next().map(|q| q.children().count()),
        Some(0),
        "{}",
        String::from(&q)
    );
    alice
        .send("<message xmlns='jabber:client' to='nowhere.example' id='x'><body>x</body></message>")
        .await;
    let err = alice.element().await.expect("error");
    assert!(err
        .get_child("error", "jabber:client")
        .is_some_and(|e| e.has_child("remote-server-not-found", STANZAS)));

    let collect = processor(&server).await;
    wait_connected(&server, true).await;
    alice.send(items).await;
    let q = alice.element().await.expect("items");
    let jids: Vec<String> = q
        .children()
        .flat_map(|q| q.children())
        .filter_map(|i| i.attr("jid").map(str::to_owned))
        .collect();
    assert_eq!(jids, ["collect.localhost"]);
    drop(collect);
    wait_connected(&server, false).await;
    alice.send(items).await;
    let q = alice.element().await.expect("items");
    assert_eq!(q.children().next().map(|q| q.children().count()), Some(0));
}

#[tokio::test]
async fn reports_sent_while_no_processor_exists_are_delivered_in_order_when_one_connects() {
    let server = server().await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    for n in 0..5 {
        alice.send(&report(n)).await;
    }
    depth_becomes(&server, 5).await;
    let mut collect = processor(&server).await;
    let mut ids = Vec::new();
    while ids.len() < 5 {
        ids.extend(
            next_stanza(&mut collect)
                .await
                .attr("id")
                .map(str::to_owned),
        );
    }
    assert_eq!(ids, ["R-0", "R-1", "R-2", "R-3", "R-4"]);
}

#[tokio::test]
async fn over_quota_the_sender_gets_resource_constraint_and_nothing_accepted_is_lost() {
    let server = TestServer::start_with(|c| c.components = vec![collect(3, false)]).await;
    server.add_user("alice", "a").await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    for n in 0..4 {
        alice.send(&report(n)).await;
    }
    let err = alice.element().await.expect("refusal");
    assert_eq!(err.attr("id"), Some("R-3"));
    assert!(err
        .get_child("error", "jabber:client")
        .is_some_and(|e| e.has_child("resource-constraint", STANZAS)));
    let mut collect = processor(&server).await;
    let mut ids = Vec::new();
    while ids.len() < 3 {
        ids.extend(
            next_stanza(&mut collect)
                .await
                .attr("id")
                .map(str::to_owned),
        );
    }
    assert_eq!(ids, ["R-0", "R-1", "R-2"]);
}

#[tokio::test]
async fn plain_processor_acknowledges_with_receipts_and_unanswered_reports_come_back() {
    let server = server().await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    for n in 0..2 {
        alice
            .send(&format!(
                "<message xmlns='jabber:client' to='collect.localhost' id='R-{n}'><body>{n}</body><request xmlns='urn:xmpp:receipts'/></message>"
            ))
            .await;
    }
    let mut collect = processor(&server).await;
    let first = next_stanza(&mut collect).await;
    next_stanza(&mut collect).await;
    assert_eq!(first.attr("id"), Some("R-0"));
    // The processor confirms R-0 only.
    collect
        .send("<message xmlns='jabber:component:accept' from='collect.localhost' to='alice@localhost/raw'><received xmlns='urn:xmpp:receipts' id='R-0'/></message>")
        .await;
    let receipt = alice.element().await.expect("receipt");
    assert!(receipt.has_child("received", "urn:xmpp:receipts"));
    depth_becomes(&server, 1).await;
    drop(collect);
    wait_connected(&server, false).await;
    // R-1 was never answered: it is delivered again.
    let mut again = processor(&server).await;
    assert_eq!(next_stanza(&mut again).await.attr("id"), Some("R-1"));
}

#[tokio::test]
async fn presence_changes_are_queued_for_observing_processors() {
    let server = TestServer::start_with(|c| c.components = vec![collect(100, true)]).await;
    server.add_user("alice", "a").await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    alice.send("<presence xmlns='jabber:client'><show>away</show><status>in the field</status></presence>").await;
    alice.element().await.expect("own presence echoed");
    drop(alice);
    depth_becomes(&server, 2).await;
    let mut collect = processor(&server).await;
    let online = next_stanza(&mut collect).await;
    assert!(
        online.is("presence", COMPONENT),
        "{}",
        String::from(&online)
    );
    assert_eq!(online.attr("from"), Some("alice@localhost/raw"));
    assert_eq!(
        online.get_child("status", COMPONENT).map(|s| s.text()),
        Some("in the field".into())
    );
    let offline = next_stanza(&mut collect).await;
    assert_eq!(offline.attr("type"), Some("unavailable"));
}

#[tokio::test]
async fn stream_management_on_the_component_stream() {
    let server = server().await;
    let mut collect = processor(&server).await;
    collect.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let enabled = collect.element().await.expect("enabled");
    assert!(enabled.is("enabled", SM), "{}", String::from(&enabled));
    assert_eq!(enabled.attr("resume"), None, "components do not resume");

    let mut alice = Raw::login(&server, "alice", "a").await;
    for n in 0..3 {
        alice.send(&report(n)).await;
    }
    // Three stanzas, then the server asks what the processor has taken.
    let mut seen = 0;
    loop {
        let e = collect.element().await.expect("element");
        if e.is("r", SM) {
            break;
        }
        seen += 1;
    }
    assert_eq!(seen, 3);
    collect.send("<a xmlns='urn:xmpp:sm:3' h='3'/>").await;
    depth_becomes(&server, 0).await;
    // And the processor learns what the server has handled of its own.
    collect
        .send("<message xmlns='jabber:component:accept' from='collect.localhost' to='alice@localhost/raw'><body>1</body></message>")
        .await;
    collect.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = collect.element().await.expect("ack");
    assert!(a.is("a", SM));
    assert_eq!(a.attr("h"), Some("1"));
    assert_eq!(
        server.running.node.router.connected_components(),
        ["collect.localhost"]
    );
}

#[tokio::test]
async fn unacknowledged_stanzas_of_a_dropped_connection_go_to_another() {
    let server = server().await;
    let mut first = processor(&server).await;
    first.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    first.element().await.expect("enabled");
    let mut alice = Raw::login(&server, "alice", "a").await;
    for n in 0..2 {
        alice.send(&report(n)).await;
    }
    for _ in 0..2 {
        next_stanza(&mut first).await;
    }
    // Taken but never acknowledged; then a second connection comes and
    // the first one dies.
    let mut second = processor(&server).await;
    drop(first);
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let e = next_stanza(&mut second).await;
        ids.extend(e.attr("id").map(str::to_owned));
    }
    ids.sort();
    assert_eq!(ids, ["R-0", "R-1"]);
}

#[tokio::test]
async fn unacknowledged_stanzas_with_no_other_connection_wait_for_the_next_one() {
    let server = server().await;
    let mut only = processor(&server).await;
    only.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    only.element().await.expect("enabled");
    let mut alice = Raw::login(&server, "alice", "a").await;
    alice.send(&report(7)).await;
    next_stanza(&mut only).await;
    drop(only);
    wait_connected(&server, false).await;
    assert_eq!(queue_depth(&server).await, 1, "kept, not bounced");
    let mut next = processor(&server).await;
    assert_eq!(next_stanza(&mut next).await.attr("id"), Some("R-7"));
}

fn report_with_receipt(n: u32) -> String {
    format!(
        "<message xmlns='jabber:client' to='collect.localhost' id='R-{n}'><body>{n}</body><request xmlns='urn:xmpp:receipts'/></message>"
    )
}

fn receipt(n: u32) -> String {
    format!(
        "<message xmlns='jabber:component:accept' from='collect.localhost' to='alice@localhost/raw'><received xmlns='urn:xmpp:receipts' id='R-{n}'/></message>"
    )
}

/// Reads stanzas for `wait`; returns them.
async fn stanzas_for(raw: &mut Raw, wait: Duration) -> Vec<Element> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, raw.element()).await {
        if !e.has_ns(SM) {
            out.push(e);
        }
    }
    out
}

#[tokio::test]
async fn an_answer_reaches_the_sender_once_when_the_processor_dies_before_its_ack() {
    let server = server().await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    let mut first = processor(&server).await;
    first.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    first.element().await.expect("enabled");
    alice.send(&report_with_receipt(1)).await;
    assert_eq!(next_stanza(&mut first).await.attr("id"), Some("R-1"));
    // Committed and answered, then killed before its ack: the report is
    // redelivered, so this receipt must not go out (the next one will).
    first.send(&receipt(1)).await;
    first.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    loop {
        let a = first.element().await.expect("ack");
        if a.is("a", SM) {
            assert_eq!(a.attr("h"), Some("1"), "the answer counts as handled");
            break;
        }
    }
    drop(first);
    wait_connected(&server, false).await;
    assert!(
        stanzas_for(&mut alice, Duration::from_millis(300))
            .await
            .is_empty(),
        "no receipt for a report that comes back"
    );
    // A plain processor this time: its receipt is its ack.
    let mut second = processor(&server).await;
    assert_eq!(next_stanza(&mut second).await.attr("id"), Some("R-1"));
    second.send(&receipt(1)).await;
    let got = stanzas_for(&mut alice, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "exactly one receipt");
    assert_eq!(
        got[0]
            .get_child("received", "urn:xmpp:receipts")
            .and_then(|r| r.attr("id")),
        Some("R-1")
    );
    depth_becomes(&server, 0).await;
}

#[tokio::test]
async fn a_report_sent_again_while_queued_is_processed_and_answered_once() {
    let server = server().await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    // The same report twice, as a collector that lost its link before the
    // ack does; then once more from another resource of the same account.
    alice.send(&report_with_receipt(5)).await;
    alice.send(&report_with_receipt(5)).await;
    let mut other = Raw::authenticate_at(&server, &server.c2s(), "alice", "a").await;
    other.bind("tablet").await;
    other.send(&report_with_receipt(5)).await;
    alice.send(&report_with_receipt(6)).await;
    depth_becomes(&server, 2).await;
    let mut collect = processor(&server).await;
    let got = stanzas_for(&mut collect, Duration::from_millis(500)).await;
    let ids: Vec<_> = got.iter().filter_map(|e| e.attr("id")).collect();
    assert_eq!(ids, ["R-5", "R-6"]);
    collect.send(&receipt(5)).await;
    let answers = stanzas_for(&mut alice, Duration::from_millis(500)).await;
    assert_eq!(answers.len(), 1, "one receipt");
    depth_becomes(&server, 1).await;
    // Just answered, a copy is merged too: its answer is on its way.
    alice.send(&report_with_receipt(5)).await;
    alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    assert!(stanzas_for(&mut collect, Duration::from_millis(300))
        .await
        .is_empty());
    assert_eq!(queue_depth(&server).await, 1);
}

/// Whitespace then an answer for alice from the processor, on a server
/// with these limits: how long the answer takes to reach her shows how
/// fast the node reads the component.
async fn answer_after_flood(flood_bytes: usize, limits: impl FnOnce(&mut Config)) -> Duration {
    let server = TestServer::start_with(|c| {
        with_component(c);
        limits(c);
    })
    .await;
    server.add_user("alice", "a").await;
    let mut collect = processor(&server).await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    let started = std::time::Instant::now();
    let chunk = " ".repeat(1000);
    for _ in 0..flood_bytes / 1000 {
        collect.send(&chunk).await;
    }
    collect
        .send("<message xmlns='jabber:component:accept' from='collect.localhost' to='alice@localhost/raw'>\
               <body>after the flood</body></message>")
        .await;
    let answer = alice.element().await.expect("answer");
    assert!(answer.has_child("body", "jabber:client"));
    started.elapsed()
}

#[tokio::test]
async fn a_component_connection_has_its_own_read_rate_limit() {
    // Limited to 20 KB/s with a 20 KB burst: 60 KB take two seconds to
    // read, never less than one.
    let took = answer_after_flood(60_000, |c| {
        c.limits.component_read_bytes_per_second = 20_000;
        c.limits.component_read_burst_bytes = 20_000;
    })
    .await;
    assert!(took >= Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn the_client_read_rate_limit_does_not_slow_a_component() {
    // The clients' limit would take at least five seconds over 120 KB;
    // the component's default reads them at once.
    let took = answer_after_flood(120_000, |c| {
        c.limits.read_bytes_per_second = 20_000;
        c.limits.read_burst_bytes = 20_000;
    })
    .await;
    assert!(took < Duration::from_secs(4), "{took:?}");
}

fn refusal(n: u32) -> String {
    format!(
        "<message xmlns='jabber:component:accept' type='error' from='collect.localhost' \
         to='alice@localhost/raw' id='R-{n}'><error type='modify'>\
         <not-acceptable xmlns='{STANZAS}'/></error></message>"
    )
}

/// (type, id, receipt id) of each stanza.
fn answers(got: &[Element]) -> Vec<(Option<&str>, Option<&str>, Option<&str>)> {
    got.iter()
        .map(|e| {
            let received = e
                .get_child("received", "urn:xmpp:receipts")
                .and_then(|r| r.attr("id"));
            (e.attr("type"), e.attr("id"), received)
        })
        .collect()
}

#[tokio::test]
async fn a_refused_report_is_answered_with_its_error_like_a_receipt() {
    let server = server().await;
    let mut alice = Raw::login(&server, "alice", "a").await;
    for n in 1..=2 {
        alice.send(&report_with_receipt(n)).await;
    }
    depth_becomes(&server, 2).await;
    let mut collect = processor(&server).await;
    collect.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert!(collect.element().await.expect("enabled").is("enabled", SM));
    for n in 1..=2 {
        let id = next_stanza(&mut collect)
            .await
            .attr("id")
            .map(str::to_owned);
        assert_eq!(id, Some(format!("R-{n}")));
    }
    // With SM, the refusal waits for the ack that deletes its report, as
    // a receipt does.
    collect.send(&receipt(1)).await;
    collect.send(&refusal(2)).await;
    assert!(stanzas_for(&mut alice, Duration::from_millis(300))
        .await
        .is_empty());
    collect.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    let got = stanzas_for(&mut alice, Duration::from_millis(500)).await;
    assert_eq!(
        answers(&got),
        [
            (None, None, Some("R-1")),
            (Some("error"), Some("R-2"), None)
        ]
    );
    depth_becomes(&server, 0).await;
    drop(collect);
    wait_connected(&server, false).await;

    // Without SM the refusal is the report's acknowledgement.
    alice.send(&report_with_receipt(3)).await;
    depth_becomes(&server, 1).await;
    let mut plain = processor(&server).await;
    assert_eq!(next_stanza(&mut plain).await.attr("id"), Some("R-3"));
    plain.send(&refusal(3)).await;
    depth_becomes(&server, 0).await;
    let got = stanzas_for(&mut alice, Duration::from_millis(500)).await;
    assert_eq!(answers(&got), [(Some("error"), Some("R-3"), None)]);
}
