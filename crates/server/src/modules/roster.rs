//! RFC 6121 section 2: roster get, set, remove, pushes and versioning.
//!
//! Versions are a per-user counter bumped by every change. A client whose
//! `ver` is current gets an empty result; any other gets the whole roster
//! (RFC 6121 2.6.3 allows either; whole rosters keep the server simple).

use super::{presence, IqRequest, IqResult, Session};
use crate::node::Node;
use minidom::Element;
use rand::Rng;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza;
use tributary_proto::subscription::SubKind;
use tributary_store::RosterItem;

pub const FEATURES: &[&str] = &[];

/// Longest accepted item name or group name, in bytes.
const MAX_NAME: usize = 1024;
/// Most groups one item may be in.
const MAX_GROUPS: usize = 64;

pub async fn handle(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    if req.is_set() {
        set(node, s, req.payload).await
    } else {
        get(node, s, req.payload).await
    }
}

async fn get(node: &Node, s: &mut Session, query: &Element) -> IqResult {
    node.router
        .update(&s.user, s.resource(), |e| e.interested = true);
    let (version, items) = node.store.roster(&s.user).await.map_err(internal)?;
    let current = version.to_string();
    if query.attr("ver") == Some(current.as_str()) {
        return Ok(None);
    }
    let mut out = stanza::element("query", ns::ROSTER, &[("ver", &current)]);
    for item in items.iter().filter(|i| i.in_roster) {
        out.append_child(item_element(item));
    }
    Ok(Some(out))
}

async fn set(node: &Node, s: &mut Session, query: &Element) -> IqResult {
    let mut items = query.children().filter(|c| c.is("item", ns::ROSTER));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaErrorCondition::BadRequest);
    };
    let contact = item
        .attr("jid")
        .and_then(|j| jid::Jid::new(j).ok())
        .ok_or(StanzaErrorCondition::BadRequest)?;
    if contact.resource().is_some() {
        return Err(StanzaErrorCondition::BadRequest);
    }
    let contact = contact.to_bare();
    if contact == s.bare {
        return Err(StanzaErrorCondition::NotAllowed);
    }
    let key = contact.to_string();
    let existing = node
        .store
        .roster_item(&s.user, &key)
        .await
        .map_err(internal)?;
    if item.attr("subscription") == Some("remove") {
        let Some(old) = existing.filter(|i| i.in_roster) else {
            return Err(StanzaErrorCondition::ItemNotFound);
        };
        // RFC 6121 2.5.2: removing an item cancels both subscriptions.
        if old.subscription.has_from() || old.pending_in {
            presence::send_subscription(node, s, &contact, SubKind::Unsubscribed).await;
        }
        if old.subscription.has_to() || old.ask {
            presence::send_subscription(node, s, &contact, SubKind::Unsubscribe).await;
        }
        if let Some(version) = node
            .store
            .remove_roster_item(&s.user, &key)
            .await
            .map_err(internal)?
        {
            let mut removed = RosterItem::new(key);
            removed.in_roster = true;
            push(node, &s.user, &removed, version, true);
        }
        return Ok(None);
    }
    let mut groups = Vec::new();
    for g in item.children().filter(|c| c.is("group", ns::ROSTER)) {
        let name = g.text();
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(StanzaErrorCondition::NotAcceptable);
        }
        if groups.contains(&name) {
            return Err(StanzaErrorCondition::BadRequest);
        }
        groups.push(name);
    }
    if groups.len() > MAX_GROUPS {
        return Err(StanzaErrorCondition::PolicyViolation);
    }
    let name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
        return Err(StanzaErrorCondition::NotAcceptable);
    }
    // Subscription attributes in a set are ignored (RFC 6121 2.1.2.5).
    let mut updated = existing.unwrap_or_else(|| RosterItem::new(key));
    updated.name = name;
    updated.groups = groups;
    updated.in_roster = true;
    let version = node
        .store
        .put_roster_item(&s.user, &updated)
        .await
        .map_err(internal)?;
    push(node, &s.user, &updated, version, false);
    Ok(None)
}

fn internal(e: tributary_store::StoreError) -> StanzaErrorCondition {
    tracing::error!("roster storage failed: {e}");
    StanzaErrorCondition::InternalServerError
}

/// The `<item/>` a client sees.
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = stanza::element(
        "item",
        ns::ROSTER,
        &[
            ("jid", &item.jid),
            ("subscription", item.subscription.as_str()),
        ],
    );
    if let Some(name) = &item.name {
        stanza::set_attr(&mut el, "name", name.as_str());
    }
    if item.ask {
        stanza::set_attr(&mut el, "ask", "subscribe");
    }
    if item.approved {
        stanza::set_attr(&mut el, "approved", "true");
    }
    for g in &item.groups {
        el.append_child(stanza::text_element("group", ns::ROSTER, g));
    }
    el
}

/// Sends a roster push to every session of `user` that asked for the
/// roster (RFC 6121 2.1.6). Hidden items are never pushed.
pub fn push(node: &Node, user: &str, item: &RosterItem, version: u64, removed: bool) {
    if !item.in_roster {
        return;
    }
    let mut el = item_element(item);
    if removed {
        el = stanza::element(
            "item",
            ns::ROSTER,
            &[("jid", &item.jid), ("subscription", "remove")],
        );
    }
    let mut query = stanza::element("query", ns::ROSTER, &[("ver", &version.to_string())]);
    query.append_child(el);
    for session in node
        .router
        .sessions(user)
        .into_iter()
        .filter(|e| e.interested)
    {
        let id = format!("push-{:x}", rand::thread_rng().gen::<u64>());
        let mut iq = stanza::element(
            "iq",
            ns::CLIENT,
            &[
                ("type", "set"),
                ("id", &id),
                (
                    "to",
                    &format!("{user}@{}/{}", node.domain(), session.resource),
                ),
            ],
        );
        iq.append_child(query.clone());
        session.deliver(iq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_proto::subscription::Subscription;

    #[test]
    fn item_element_shows_pending_out_and_groups() {
        let mut item = RosterItem::new("bob@localhost");
        item.subscription = Subscription::From;
        item.ask = true;
        item.name = Some("Bob".into());
        item.groups = vec!["Friends".into()];
        let el = item_element(&item);
        assert_eq!(el.attr("subscription"), Some("from"));
        assert_eq!(el.attr("ask"), Some("subscribe"));
        assert_eq!(el.attr("name"), Some("Bob"));
        assert_eq!(
            el.get_child("group", ns::ROSTER).map(|g| g.text()),
            Some("Friends".into())
        );
    }
}
