//! RFC 6121 sections 3 and 4: presence broadcast, probes, directed
//! presence, and subscription handling. The subscription state machine is
//! `tributary_proto::subscription`; this module stores its results, pushes
//! roster changes and delivers the stanzas it says to deliver.

use super::{offline, roster, Session};
use crate::node::Node;
use crate::router::StoredPresence;
use jid::{BareJid, Jid};
use minidom::Element;
use tributary_proto::ns;
use tributary_proto::stanza;
use tributary_proto::subscription::{self, SubKind, SubState};
use tributary_store::RosterItem;

/// A presence stanza sent by a bound client.
pub async fn from_client(node: &Node, s: &mut Session, pres: Element) {
    let t = stanza::stanza_type(&pres).map(str::to_owned);
    let to = match stanza::to_jid(&pres) {
        Ok(to) => to,
        Err(_) => return,
    };
    let Some(to) = to else {
        match t.as_deref() {
            None => available(node, s, pres).await,
            Some("unavailable") => unavailable(node, s, Some(pres)).await,
            // Probes and subscription requests need a `to`; errors to the
            // server answer nothing we sent.
            _ => {}
        }
        return;
    };
    if let Some(kind) = t.as_deref().and_then(SubKind::parse) {
        return subscribe_outbound(node, s, &to.to_bare(), kind, Some(&pres)).await;
    }
    match t.as_deref() {
        Some("probe") => {
            let answers = probe(node, s, &to.to_bare()).await;
            s.replies.extend(answers);
        }
        None | Some("unavailable") | Some("error") => directed(node, s, &to, pres).await,
        _ => {}
    }
}

fn priority_of(pres: &Element) -> i8 {
    pres.get_child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0)
}

async fn roster_of(node: &Node, user: &str) -> Vec<RosterItem> {
    match node.store.roster(user).await {
        Ok((_, items)) => items,
        Err(e) => {
            tracing::error!(%user, "cannot read roster: {e}");
            Vec::new()
        }
    }
}

/// Delivers `pres` to every available session of a local bare JID,
/// unless either side blocks the other.
async fn to_available_sessions(node: &Node, from: &Jid, to: &BareJid, pres: &Element) {
    if to.domain().as_str() != node.domain() {
        return;
    }
    let Some(user) = to.node() else { return };
    let from_user = from.node().map(|n| n.to_string()).unwrap_or_default();
    if node.blocks(user.as_str(), from).await
        || node.blocks(&from_user, &Jid::from(to.clone())).await
    {
        return;
    }
    for e in node
        .router
        .sessions(user.as_str())
        .into_iter()
        .filter(|e| e.available)
    {
        let mut copy = pres.clone();
        stanza::set_attr(&mut copy, "to", format!("{to}/{}", e.resource));
        e.deliver(copy);
    }
}

/// Sends a presence of the session to the contacts subscribed to the user
/// and to the user's other available resources (RFC 6121 4.2.2, 4.4.2, 4.5.2).
async fn broadcast(node: &Node, s: &Session, items: &[RosterItem], pres: &Element) {
    super::components::observe_presence(node, pres).await;
    let from = Jid::from(s.jid.clone());
    for item in items.iter().filter(|i| i.subscription.has_from()) {
        if let Ok(contact) = BareJid::new(&item.jid) {
            to_available_sessions(node, &from, &contact, pres).await;
        }
    }
    for e in node.router.sessions(&s.user) {
        if e.resource != s.resource() && e.available {
            let mut copy = pres.clone();
            stanza::set_attr(&mut copy, "to", format!("{}/{}", s.bare, e.resource));
            e.deliver(copy);
        }
    }
}

/// Initial or updated available presence (RFC 6121 4.2 and 4.4).
async fn available(node: &Node, s: &mut Session, pres: Element) {
    let first = !s.available;
    s.available = true;
    let priority = priority_of(&pres);
    let stored = StoredPresence::new(&pres);
    node.router.update(&s.user, s.resource(), |e| {
        e.available = true;
        e.priority = priority;
        e.presence = Some(stored);
    });
    let items = roster_of(node, &s.user).await;
    broadcast(node, s, &items, &pres).await;
    // RFC 6121 4.2.2 and 4.4.2: the resource that sent it gets it too, which
    // tells the client its presence was broadcast.
    let mut echo = pres.clone();
    stanza::set_attr(&mut echo, "to", s.jid.to_string());
    s.replies.push(echo);
    if !first {
        return;
    }
    // Initial presence: probe contacts (answered locally), learn our own
    // other resources, and receive what waited for us.
    for item in items.iter().filter(|i| i.subscription.has_to()) {
        if let Ok(contact) = BareJid::new(&item.jid) {
            let answers = probe(node, s, &contact).await;
            s.replies.extend(answers);
        }
    }
    for e in node.router.sessions(&s.user) {
        if e.resource != s.resource() {
            if let Some(mut copy) = e.presence.as_ref().and_then(StoredPresence::element) {
                stanza::set_attr(&mut copy, "to", s.jid.to_string());
                s.replies.push(copy);
            }
        }
    }
    for item in items.iter().filter(|i| i.pending_in) {
        s.replies.push(stanza::element(
            "presence",
            ns::CLIENT,
            &[
                ("type", "subscribe"),
                ("from", &item.jid),
                ("to", &s.bare.to_string()),
            ],
        ));
    }
    offline::deliver(node, s).await;
}

/// The current presence of a local contact's available sessions, as the
/// answer to a probe from `s` (RFC 6121 4.3). Empty unless `s` is
/// subscribed to the contact.
async fn probe(node: &Node, s: &Session, contact: &BareJid) -> Vec<Element> {
    let mut out = Vec::new();
    if contact.domain().as_str() != node.domain() {
        return out;
    }
    let Some(cuser) = contact.node() else {
        return out;
    };
    let subscribed = match node.store.roster_item(&s.user, contact.as_str()).await {
        Ok(Some(item)) => item.subscription.has_to(),
        _ => false,
    };
    if !subscribed
        || node
            .blocks(cuser.as_str(), &Jid::from(s.bare.clone()))
            .await
    {
        return out;
    }
    for e in node.router.sessions(cuser.as_str()) {
        let stored = e.presence.as_ref().filter(|_| e.available);
        if let Some(mut copy) = stored.and_then(StoredPresence::element) {
            stanza::set_attr(&mut copy, "to", s.jid.to_string());
            out.push(copy);
        }
    }
    out
}

/// Unavailable presence, sent by the client or on its behalf at disconnect.
async fn unavailable(node: &Node, s: &mut Session, pres: Option<Element>) {
    if let Some(p) = &pres {
        // RFC 6121 4.5.2: echoed to the resource that sent it.
        let mut echo = p.clone();
        stanza::set_attr(&mut echo, "to", s.jid.to_string());
        s.replies.push(echo);
    }
    let pres = pres.unwrap_or_else(|| {
        stanza::element(
            "presence",
            ns::CLIENT,
            &[("type", "unavailable"), ("from", &s.jid.to_string())],
        )
    });
    let was_available = s.available;
    s.available = false;
    node.router.update(&s.user, s.resource(), |e| {
        e.available = false;
        e.presence = None;
    });
    let from = Jid::from(s.jid.clone());
    if was_available {
        let items = roster_of(node, &s.user).await;
        broadcast(node, s, &items, &pres).await;
    }
    for target in std::mem::take(&mut s.directed) {
        deliver_directed(node, &from, &target, &pres).await;
    }
}

/// The connection ended: RFC 6121 4.5.3 unavailable on the user's behalf.
pub async fn disconnected(node: &Node, s: &mut Session) {
    if s.available || !s.directed.is_empty() {
        unavailable(node, s, None).await;
    }
}

pub async fn deliver_directed(node: &Node, from: &Jid, to: &Jid, pres: &Element) {
    if to.domain().as_str() != node.domain() {
        // Presence carries no error back; a refusal is logged.
        let _ = super::components::to_component(node, to, pres).await;
        return;
    }
    match to.resource() {
        None => to_available_sessions(node, from, &to.to_bare(), pres).await,
        Some(r) => {
            let Some(user) = to.node() else { return };
            if node.blocks(user.as_str(), from).await {
                return;
            }
            if let Some(e) = node.router.session(user.as_str(), r.as_str()) {
                e.deliver(pres.clone());
            }
        }
    }
}

/// Presence sent to a specific JID (RFC 6121 4.6).
async fn directed(node: &Node, s: &mut Session, to: &Jid, pres: Element) {
    if node.blocks(&s.user, to).await {
        return;
    }
    let from = Jid::from(s.jid.clone());
    match stanza::stanza_type(&pres) {
        None if !s.directed.contains(to) => s.directed.push(to.clone()),
        Some("unavailable") => s.directed.retain(|j| j != to),
        _ => {}
    }
    deliver_directed(node, &from, to, &pres).await;
}

fn state_of(item: &RosterItem) -> SubState {
    SubState {
        subscription: item.subscription,
        ask: item.ask,
        pending_in: item.pending_in,
        approved: item.approved,
    }
}

/// Stores a transition's result; returns the new roster version if the
/// item is stored and visible (then it must be pushed).
async fn save(node: &Node, user: &str, item: &mut RosterItem, state: SubState) -> Option<u64> {
    item.subscription = state.subscription;
    item.ask = state.ask;
    item.pending_in = state.pending_in;
    item.approved = state.approved;
    let result = if !item.in_roster && state == SubState::NONE {
        // A hidden item with nothing left to remember is deleted.
        node.store
            .remove_roster_item(user, &item.jid)
            .await
            .map(|_| None)
    } else {
        node.store.put_roster_item(user, item).await.map(Some)
    };
    match result {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(%user, "cannot store roster item: {e}");
            None
        }
    }
}

async fn item_for(node: &Node, user: &str, contact: &str) -> RosterItem {
    match node.store.roster_item(user, contact).await {
        Ok(Some(item)) => item,
        Ok(None) => RosterItem {
            in_roster: false,
            ..RosterItem::new(contact)
        },
        Err(e) => {
            tracing::error!(%user, "cannot read roster item: {e}");
            RosterItem {
                in_roster: false,
                ..RosterItem::new(contact)
            }
        }
    }
}

/// A subscription stanza the user sends (also used for the implicit ones
/// of roster removal).
pub async fn send_subscription(node: &Node, s: &Session, contact: &BareJid, kind: SubKind) {
    subscribe_outbound(node, s, contact, kind, None).await;
}

async fn subscribe_outbound(
    node: &Node,
    s: &Session,
    contact: &BareJid,
    kind: SubKind,
    original: Option<&Element>,
) {
    if *contact == s.bare {
        return;
    }
    let mut item = item_for(node, &s.user, contact.as_str()).await;
    let o = subscription::outbound(state_of(&item), kind);
    // RFC 6121 3.1.2: a subscription request puts the contact in the
    // roster; 3.1.5: so does approving one (the item shows "from").
    let appears = !item.in_roster
        && (kind == SubKind::Subscribe || (kind == SubKind::Subscribed && o.forward));
    if appears {
        item.in_roster = true;
    }
    if o.changed || appears {
        if let Some(version) = save(node, &s.user, &mut item, o.state).await {
            roster::push(node, &s.user, &item, version, false);
        }
    }
    if !o.forward || contact.domain().as_str() != node.domain() {
        return;
    }
    let Some(cuser) = contact.node().map(|n| n.to_string()) else {
        return;
    };
    let exists = node.store.account_exists(&cuser).await.unwrap_or(false);
    if !exists {
        // RFC 6121 3.1.3: no such contact: the request is refused.
        if kind == SubKind::Subscribe {
            Box::pin(subscribe_inbound(
                node,
                &s.user,
                &s.bare,
                contact,
                SubKind::Unsubscribed,
                None,
            ))
            .await;
        }
        return;
    }
    if node.blocks(&cuser, &Jid::from(s.bare.clone())).await {
        return;
    }
    subscribe_inbound(node, &cuser, contact, &s.bare, kind, original).await;
    match kind {
        // Approval: the contact now receives our presence (RFC 6121 3.1.5).
        SubKind::Subscribed => send_current_presence(node, &s.user, &s.bare, contact, false).await,
        // Cancellation: the contact sees us go away (RFC 6121 3.2.2).
        SubKind::Unsubscribed => send_current_presence(node, &s.user, &s.bare, contact, true).await,
        _ => {}
    }
}

/// A subscription stanza from `from` arrives for local `user`.
async fn subscribe_inbound(
    node: &Node,
    user: &str,
    user_bare: &BareJid,
    from: &BareJid,
    kind: SubKind,
    original: Option<&Element>,
) {
    let mut item = item_for(node, user, from.as_str()).await;
    let i = subscription::inbound(state_of(&item), kind);
    if i.changed {
        if let Some(version) = save(node, user, &mut item, i.state).await {
            roster::push(node, user, &item, version, false);
        }
    }
    if i.forward {
        let mut pres = stanza::element(
            "presence",
            ns::CLIENT,
            &[
                ("type", kind.as_str()),
                ("from", from.as_str()),
                ("to", user_bare.as_str()),
            ],
        );
        if let Some(orig) = original {
            for child in orig.children() {
                pres.append_child(child.clone());
            }
        }
        for e in node
            .router
            .sessions(user)
            .into_iter()
            .filter(|e| e.available)
        {
            e.deliver(pres.clone());
        }
    }
    if i.auto_subscribed {
        // Already approved: answer `subscribed` for the user and share presence.
        if let Some(from_user) = from.node().map(|n| n.to_string()) {
            Box::pin(subscribe_inbound(
                node,
                &from_user,
                from,
                user_bare,
                SubKind::Subscribed,
                None,
            ))
            .await;
            send_current_presence(node, user, user_bare, from, false).await;
        }
    }
}

/// Sends the available (or, with `gone`, unavailable) presence of each of
/// `user`'s sessions to the available sessions of `contact`.
async fn send_current_presence(
    node: &Node,
    user: &str,
    user_bare: &BareJid,
    contact: &BareJid,
    gone: bool,
) {
    for e in node
        .router
        .sessions(user)
        .into_iter()
        .filter(|e| e.available)
    {
        let from = format!("{user_bare}/{}", e.resource);
        let pres = if gone {
            stanza::element(
                "presence",
                ns::CLIENT,
                &[("type", "unavailable"), ("from", &from)],
            )
        } else if let Some(p) = e.presence.as_ref().and_then(StoredPresence::element) {
            p
        } else {
            continue;
        };
        if let Ok(from_jid) = Jid::new(&from) {
            to_available_sessions(node, &from_jid, contact, &pres).await;
        }
    }
}

/// XEP-0191 3.3: a contact about to be blocked sees the user go offline.
/// Called before the block takes effect, or the presence would be blocked.
pub async fn hide_from(node: &Node, s: &Session, jids: &[String]) {
    for j in jids {
        if let Ok(contact) = BareJid::new(j) {
            send_current_presence(node, &s.user, &s.bare, &contact, true).await;
        }
    }
}

/// XEP-0191 3.4: an unblocked contact that is subscribed to the user sees
/// the user's presence again.
pub async fn show_to(node: &Node, s: &Session, jids: &[String]) {
    for j in jids {
        let Ok(contact) = BareJid::new(j) else {
            continue;
        };
        let subscribed = matches!(
            node.store.roster_item(&s.user, contact.as_str()).await,
            Ok(Some(item)) if item.subscription.has_from()
        );
        if subscribed {
            send_current_presence(node, &s.user, &s.bare, &contact, false).await;
        }
    }
}
