//! Feature modules, one per RFC section or XEP, and the one place where
//! they are registered: [`handle_stanza`] dispatches every stanza a bound
//! client sends, and [`server_iq`] / [`account_iq`] map payload
//! namespaces to the module that answers them.

pub mod adhoc;
pub mod blocking;
pub mod carbons;
pub mod components;
pub mod disco;
pub mod message;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod private;
pub mod roster;
pub mod time;
pub mod vcard;
pub mod version;

use crate::node::Node;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza::{self, StanzaKind};

/// The connection-side state of one bound session, owned by its task.
#[derive(Debug)]
pub struct Session {
    pub jid: FullJid,
    pub bare: BareJid,
    /// Local part: the key of the account in the store and router.
    pub user: String,
    pub conn_id: u64,
    /// Stanzas for this client produced while handling its own stanza;
    /// the connection writes them after the handler returns.
    pub replies: Vec<Element>,
    /// The stanza just handled is committing to a component's queue: the
    /// connection counts it as handled (and answers a refusal) when the
    /// commit resolves, while it goes on reading.
    pub committing: Option<(components::PendingCommit, Element)>,
    /// Sent initial presence (RFC 6121 4.2).
    pub available: bool,
    /// JIDs that received directed presence, told when we go unavailable.
    pub directed: Vec<Jid>,
}

impl Session {
    pub fn new(jid: FullJid, conn_id: u64) -> Session {
        let bare = jid.to_bare();
        let user = bare.node().map(|n| n.to_string()).unwrap_or_default();
        Session {
            jid,
            bare,
            user,
            conn_id,
            replies: Vec::new(),
            committing: None,
            available: false,
            directed: Vec::new(),
        }
    }

    pub fn resource(&self) -> &str {
        self.jid.resource().as_str()
    }
}

/// Who an iq addressed to this node is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The server itself (`to` is the domain).
    Server,
    /// An account's bare JID: the sender's own (or no `to`), or another's.
    Account(BareJid),
}

/// An iq get or set that the server answers itself.
pub struct IqRequest<'a> {
    pub iq: &'a Element,
    /// The single child element (RFC 6120 8.2.3).
    pub payload: &'a Element,
    pub target: Target,
    /// "get" or "set".
    pub kind: &'a str,
}

impl IqRequest<'_> {
    pub fn is_set(&self) -> bool {
        self.kind == "set"
    }

    /// True when the iq is about the sender's own account.
    pub fn is_self(&self, s: &Session) -> bool {
        matches!(&self.target, Target::Account(b) if *b == s.bare)
    }
}

/// The payload of an iq result, or the error to answer with.
pub type IqResult = Result<Option<Element>, StanzaErrorCondition>;

pub use components::from_component;

/// Handles one stanza from a bound client (already `from`-stamped).
pub async fn handle_stanza(node: &Node, s: &mut Session, el: Element) {
    match StanzaKind::of(&el, ns::CLIENT) {
        Some(StanzaKind::Message) => message::from_client(node, s, el).await,
        Some(StanzaKind::Presence) => presence::from_client(node, s, el).await,
        Some(StanzaKind::Iq) => iq_from_client(node, s, el).await,
        None => {}
    }
}

async fn iq_from_client(node: &Node, s: &mut Session, iq: Element) {
    let kind = stanza::stanza_type(&iq).unwrap_or_default().to_owned();
    let to = match stanza::to_jid(&iq) {
        Ok(to) => to,
        Err(_) => return,
    };
    let target = match &to {
        None => Some(Target::Account(s.bare.clone())),
        Some(j)
            if j.node().is_none()
                && j.resource().is_none()
                && j.domain().as_str() == node.domain() =>
        {
            Some(Target::Server)
        }
        Some(j) if j.resource().is_none() && j.domain().as_str() == node.domain() => {
            Some(Target::Account(j.to_bare()))
        }
        _ => None,
    };
    let Some(target) = target else {
        // A full JID or another domain: routed like any stanza.
        return message::route_iq(node, s, iq).await;
    };
    if kind != "get" && kind != "set" {
        // Results and errors addressed to the server or an account are
        // answers to nothing we sent; RFC 6120 8.2.3 says ignore them.
        return;
    }
    let Some(payload) = iq.children().next() else {
        return;
    };
    if let Target::Account(b) = &target {
        if *b != s.bare && node.blocks(&s.user, &Jid::from(b.clone())).await {
            s.replies.push(blocking::blocked_error(&iq));
            return;
        }
    }
    let req = IqRequest {
        iq: &iq,
        payload,
        target: target.clone(),
        kind: &kind,
    };
    let result = match target {
        Target::Server => server_iq(node, s, &req).await,
        Target::Account(_) => account_iq(node, s, &req).await,
    };
    let reply = match result {
        Ok(payload) => stanza::iq_result(&iq, payload),
        Err(cond) => stanza::error_reply(&iq, cond, None),
    };
    s.replies.push(reply);
}

/// Iqs to the domain, by payload namespace.
pub async fn server_iq(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    match req.payload.ns().as_str() {
        ns::DISCO_INFO | ns::DISCO_ITEMS => disco::handle(node, s, req).await,
        ns::PING => ping::handle(node, s, req).await,
        ns::VERSION => version::handle(node, s, req).await,
        ns::TIME => time::handle(node, s, req).await,
        ns::COMMANDS => adhoc::handle(node, s, req).await,
        // Clients often address account-level namespaces to the domain.
        ns::CARBONS => carbons::handle(node, s, req).await,
        _ => Err(StanzaErrorCondition::ServiceUnavailable),
    }
}

/// Iqs to a bare JID: the sender's own account or another user's.
pub async fn account_iq(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    let own = req.is_self(s);
    match req.payload.ns().as_str() {
        ns::ROSTER if own => roster::handle(node, s, req).await,
        ns::VCARD => vcard::handle(node, s, req).await,
        ns::PRIVATE if own => private::handle(node, s, req).await,
        ns::BLOCKING if own => blocking::handle(node, s, req).await,
        ns::CARBONS if own => carbons::handle(node, s, req).await,
        ns::DISCO_INFO | ns::DISCO_ITEMS => disco::handle(node, s, req).await,
        ns::PING if own => Ok(None),
        // RFC 6121 8.5.2.1.3 / 8.5.2.2.3: the server answers for the account.
        _ if own => Err(StanzaErrorCondition::FeatureNotImplemented),
        _ => Err(StanzaErrorCondition::ServiceUnavailable),
    }
}

/// Features the server announces in disco#info, gathered from the modules.
pub fn server_features() -> Vec<&'static str> {
    let mut f: Vec<&'static str> = [
        disco::FEATURES,
        ping::FEATURES,
        version::FEATURES,
        time::FEATURES,
        offline::FEATURES,
        carbons::FEATURES,
        blocking::FEATURES,
        vcard::FEATURES,
        private::FEATURES,
        adhoc::FEATURES,
        roster::FEATURES,
    ]
    .concat();
    f.sort_unstable();
    f.dedup();
    f
}
