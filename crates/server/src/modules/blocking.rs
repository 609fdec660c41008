//! XEP-0191 Blocking Command: a user's list of JIDs whose stanzas the
//! server drops, and the iqs to read and change it.
//!
//! The list lives in the store; while a user has a session it is also
//! cached in `Node::blocklists` (see [`load`] and [`unload`]) so the
//! routing path checks it without a database read. Every change is pushed
//! to the user's sessions (section 3.3), so each client's view of the list
//! stays current. The XEP addresses the pushes to the resources that
//! fetched the list; the router does not record which did, so every
//! session gets them, which a client that never asked can ignore.

use super::{IqRequest, IqResult, Session};
use crate::node::Node;
use jid::Jid;
use minidom::Element;
use std::collections::HashSet;
use std::sync::Arc;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza;

pub const FEATURES: &[&str] = &[ns::BLOCKING];

/// Answers `<blocklist/>` gets and `<block/>` / `<unblock/>` sets.
pub async fn handle(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    match (req.kind, req.payload.name()) {
        ("get", "blocklist") => get(node, s).await,
        ("set", "block") => {
            let jids = parse_items(req.payload)?;
            // Section 3.3: a block must name at least one JID.
            if jids.is_empty() {
                return Err(StanzaErrorCondition::BadRequest);
            }
            change(node, s, "block", jids).await
        }
        // Sections 3.4 and 3.5: an unblock without items empties the list.
        ("set", "unblock") => change(node, s, "unblock", parse_items(req.payload)?).await,
        _ => Err(StanzaErrorCondition::BadRequest),
    }
}

async fn get(node: &Node, s: &Session) -> IqResult {
    match node.store.blocklist(&s.user).await {
        Ok(jids) => Ok(Some(list_element("blocklist", &jids))),
        Err(e) => {
            tracing::warn!(user = %s.user, "cannot read block list: {e}");
            Err(StanzaErrorCondition::InternalServerError)
        }
    }
}

/// Applies a block or unblock, refreshes the cache and pushes the change.
async fn change(node: &Node, s: &Session, op: &str, jids: Vec<String>) -> IqResult {
    // Presence effects need the list as it was: unblocking everything names
    // no JIDs, and a block must be announced before it hides the presence.
    let affected = if op == "unblock" && jids.is_empty() {
        node.store.blocklist(&s.user).await.unwrap_or_default()
    } else {
        jids.clone()
    };
    if op == "block" {
        super::presence::hide_from(node, s, &affected).await;
    }
    let stored = if op == "block" {
        node.store.block(&s.user, &jids).await
    } else {
        node.store.unblock(&s.user, &jids).await
    };
    if let Err(e) = stored {
        tracing::warn!(user = %s.user, "cannot {op}: {e}");
        return Err(StanzaErrorCondition::InternalServerError);
    }
    refresh(node, &s.user).await;
    if op == "unblock" {
        super::presence::show_to(node, s, &affected).await;
    }
    let payload = list_element(op, &jids);
    for entry in node.router.sessions(&s.user) {
        let to = format!("{}/{}", s.bare, entry.resource);
        // A stuck session is killed by `deliver`; its client refetches the
        // list when it reconnects, so a lost push needs no retry.
        entry.deliver(push(&to, &payload));
    }
    Ok(None)
}

/// Re-reads the list after a change, so the cache matches what was
/// stored (including JIDs blocked twice or unblocked but never blocked).
async fn refresh(node: &Node, user: &str) {
    match node.store.blocklist(user).await {
        Ok(list) => {
            node.blocklists
                .insert(user.to_owned(), Arc::new(list.into_iter().collect()));
        }
        Err(e) => {
            // Without a cache entry `Node::blocks` reads the store itself,
            // which is slower but never stale.
            tracing::warn!(%user, "cannot reload block list: {e}");
            node.blocklists.remove(user);
        }
    }
}

/// The JIDs of the `<item jid=.../>` children, normalised (so that the
/// routing check, which compares strings, matches however the client
/// spelled them) and without duplicates, in the order given.
fn parse_items(payload: &Element) -> Result<Vec<String>, StanzaErrorCondition> {
    let mut jids: Vec<String> = Vec::new();
    // A set, not `Vec::contains`: a stanza can hold thousands of items,
    // and a quadratic scan would let one client burn server CPU.
    let mut seen: HashSet<String> = HashSet::new();
    for item in payload.children().filter(|c| c.is("item", ns::BLOCKING)) {
        let raw = item.attr("jid").ok_or(StanzaErrorCondition::BadRequest)?;
        let jid = Jid::new(raw).map_err(|_| StanzaErrorCondition::JidMalformed)?;
        let jid = jid.to_string();
        if seen.insert(jid.clone()) {
            jids.push(jid);
        }
    }
    Ok(jids)
}

/// `<{name} xmlns='urn:xmpp:blocking'><item jid=.../>...</{name}>`, the
/// shape of the list result and of both pushes.
fn list_element(name: &str, jids: &[String]) -> Element {
    let mut el = Element::bare(name, ns::BLOCKING);
    for j in jids {
        el.append_child(stanza::element("item", ns::BLOCKING, &[("jid", j)]));
    }
    el
}

/// A block or unblock push (sections 3.3 to 3.5): an iq set from the
/// account itself, so it carries no `from` (RFC 6120 8.1.2.1 treats that
/// as from the user's bare JID).
fn push(to: &str, payload: &Element) -> Element {
    let id = format!("push-{:016x}", rand::random::<u64>());
    let mut iq = stanza::element(
        "iq",
        ns::CLIENT,
        &[("type", "set"), ("id", &id), ("to", to)],
    );
    iq.append_child(payload.clone());
    iq
}

/// The error a user gets when sending to a JID they blocked (section
/// 3.3): `<not-acceptable/>` plus the `<blocked/>` application condition,
/// which tells the client why.
pub fn blocked_error(req: &Element) -> Element {
    let mut reply = stanza::error_reply(req, StanzaErrorCondition::NotAcceptable, None);
    // `error_reply` drops any `<error/>` the request carried, so the only
    // one left is the one it just added.
    if let Some(err) = reply.get_child_mut("error", ns::CLIENT) {
        // The XEP's example uses type "cancel" rather than the "modify"
        // RFC 6120 suggests for not-acceptable: resending the same stanza
        // cannot succeed until the user unblocks the contact.
        stanza::set_attr(err, "type", "cancel");
        err.append_child(Element::bare("blocked", ns::BLOCKING_ERRORS));
    }
    reply
}

/// Caches a user's block list when a session starts. On a store error the
/// cache holds an empty list, so routing does not retry the failing read
/// for every stanza; the failure is logged.
pub async fn load(node: &Node, user: &str) {
    let list: HashSet<String> = match node.store.blocklist(user).await {
        Ok(l) => l.into_iter().collect(),
        Err(e) => {
            tracing::warn!(%user, "cannot load block list: {e}");
            HashSet::new()
        }
    };
    node.blocklists.insert(user.to_owned(), Arc::new(list));
}

/// Drops the cached list once the user's last session has gone. Losing a
/// race with a new login only costs that session store reads, since
/// `Node::blocks` falls back to the store when nothing is cached.
pub fn unload(node: &Node, user: &str) {
    if !node.router.is_online(user) {
        node.blocklists.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().expect("test XML parses")
    }

    #[test]
    fn items_are_normalised_and_deduplicated() {
        let block = parse(
            "<block xmlns='urn:xmpp:blocking'>\
             <item jid='Romeo@Example.COM'/><item jid='romeo@example.com'/>\
             <item jid='example.net'/><item jid='a@b/Res'/>\
             <other xmlns='urn:example' jid='ignored@x'/></block>",
        );
        assert_eq!(
            parse_items(&block),
            Ok(vec![
                "romeo@example.com".to_owned(),
                "example.net".to_owned(),
                "a@b/Res".to_owned()
            ])
        );
    }

    #[test]
    fn bad_items_are_refused() {
        let no_jid = parse("<block xmlns='urn:xmpp:blocking'><item/></block>");
        assert_eq!(parse_items(&no_jid), Err(StanzaErrorCondition::BadRequest));
        let malformed = parse("<block xmlns='urn:xmpp:blocking'><item jid='@nodomain'/></block>");
        assert_eq!(
            parse_items(&malformed),
            Err(StanzaErrorCondition::JidMalformed)
        );
        let empty = parse("<unblock xmlns='urn:xmpp:blocking'/>");
        assert_eq!(parse_items(&empty), Ok(vec![]));
    }

    #[test]
    fn list_and_push_shape() {
        let jids = vec!["a@b".to_owned(), "c.d".to_owned()];
        let list = list_element("blocklist", &jids);
        assert!(list.is("blocklist", ns::BLOCKING));
        let got: Vec<&str> = list.children().filter_map(|i| i.attr("jid")).collect();
        assert_eq!(got, ["a@b", "c.d"]);

        let p = push("u@localhost/r", &list_element("unblock", &[]));
        assert!(p.is("iq", ns::CLIENT));
        assert_eq!(p.attr("type"), Some("set"));
        assert_eq!(p.attr("to"), Some("u@localhost/r"));
        assert_eq!(p.attr("from"), None);
        assert!(p.attr("id").is_some_and(|id| id.starts_with("push-")));
        let unblock = p.get_child("unblock", ns::BLOCKING).expect("payload");
        assert_eq!(unblock.children().count(), 0);
    }

    #[test]
    fn blocked_error_carries_the_application_condition() {
        let msg = parse(
            "<message xmlns='jabber:client' id='m1' from='u@localhost/r' to='x@example.com' type='chat'>\
             <body>hi</body></message>",
        );
        let err = blocked_error(&msg);
        assert!(err.is("message", ns::CLIENT));
        assert_eq!(err.attr("type"), Some("error"));
        assert_eq!(err.attr("to"), Some("u@localhost/r"));
        assert_eq!(err.attr("from"), Some("x@example.com"));
        assert_eq!(err.attr("id"), Some("m1"));
        let e = err.get_child("error", ns::CLIENT).expect("error child");
        assert_eq!(e.attr("type"), Some("cancel"));
        assert!(e.has_child("not-acceptable", ns::STANZAS_ERR));
        assert!(e.has_child("blocked", ns::BLOCKING_ERRORS));
    }
}
