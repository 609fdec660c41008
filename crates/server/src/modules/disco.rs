//! XEP-0030 Service Discovery for the server and for account bare JIDs.
//!
//! What the server announces is assembled from the modules (each exports
//! its `FEATURES`, gathered by [`super::server_features`]), so a feature
//! cannot be advertised without the module that implements it. The
//! XEP-0050 command list is discoverable here too, restricted to the
//! commands the requester may run, as XEP-0050 section 2.2 asks.

use super::{adhoc, IqRequest, IqResult, Session, Target};
use crate::node::Node;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza::{element, set_attr};

/// Disco features of this module.
pub const FEATURES: &[&str] = &[ns::DISCO_INFO, ns::DISCO_ITEMS];

/// A command a requester may run: (XEP-0050 node, human-readable name).
type Command = (&'static str, &'static str);

pub async fn handle(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    // XEP-0030 defines only `get`; a `set` or a stray element in these
    // namespaces does not follow the schema.
    if req.is_set() || req.payload.name() != "query" {
        return Err(StanzaErrorCondition::BadRequest);
    }
    let items = req.payload.has_ns(ns::DISCO_ITEMS);
    let at = req.payload.attr("node");
    match &req.target {
        Target::Server => {
            let commands = adhoc::commands_for(node, s);
            if items {
                server_items(
                    node.domain(),
                    at,
                    &commands,
                    &node.router.connected_components(),
                )
            } else {
                server_info(at, &commands)
            }
        }
        Target::Account(bare) => {
            // The server answers for accounts (RFC 6121 8.5.2.1.3). A user
            // always learns about their own account; for others, RFC 6121
            // 8.5.1 has a missing account look exactly like an unsupported
            // request, so nothing is revealed about names that do not exist.
            if !req.is_self(s) {
                let Some(local) = bare.node() else {
                    return Err(StanzaErrorCondition::ServiceUnavailable);
                };
                match node.store.account_exists(local.as_str()).await {
                    Ok(true) => {}
                    Ok(false) => return Err(StanzaErrorCondition::ServiceUnavailable),
                    Err(e) => {
                        tracing::warn!(%bare, "disco: cannot look up account: {e}");
                        return Err(StanzaErrorCondition::InternalServerError);
                    }
                }
            }
            account(items, at)
        }
    }
}

/// disco#info of the domain, of its command list node, or of one command.
fn server_info(at: Option<&str>, commands: &[Command]) -> IqResult {
    let mut q = query(ns::DISCO_INFO, at);
    match at {
        None => {
            q.append_child(identity("server", "im", Some(super::version::NAME)));
            let mut features = super::server_features();
            // Already among server_features(); added again so that this
            // answer stays right even if the registry forgets this module.
            features.extend_from_slice(FEATURES);
            features.sort_unstable();
            features.dedup();
            for f in features {
                q.append_child(feature(f));
            }
        }
        // XEP-0050 section 2.2: the node listing the commands.
        Some(ns::COMMANDS) => {
            q.append_child(identity("automation", "command-list", Some("Commands")));
        }
        // XEP-0050 section 2.3: one command, which takes data forms.
        Some(n) => {
            let (_, name) = find(commands, n).ok_or(StanzaErrorCondition::ItemNotFound)?;
            q.append_child(identity("automation", "command-node", Some(name)));
            q.append_child(feature(ns::COMMANDS));
            q.append_child(feature(ns::DATA_FORMS));
        }
    }
    Ok(Some(q))
}

/// disco#items of the domain, or the commands the requester may run.
fn server_items(
    domain: &str,
    at: Option<&str>,
    commands: &[Command],
    components: &[String],
) -> IqResult {
    let mut q = query(ns::DISCO_ITEMS, at);
    match at {
        None => {
            for item in component_items(components) {
                q.append_child(item);
            }
        }
        Some(ns::COMMANDS) => {
            for (node, name) in commands {
                q.append_child(element(
                    "item",
                    ns::DISCO_ITEMS,
                    &[("jid", domain), ("node", node), ("name", name)],
                ));
            }
        }
        // A command node has no items of its own.
        Some(n) if find(commands, n).is_some() => {}
        Some(_) => return Err(StanzaErrorCondition::ItemNotFound),
    }
    Ok(Some(q))
}

/// Items listed under the domain itself: the external components
/// (XEP-0114) that are connected now, and only those, so that clients
/// never discover a service that would not answer.
fn component_items(components: &[String]) -> Vec<Element> {
    components
        .iter()
        .map(|d| element("item", ns::DISCO_ITEMS, &[("jid", d)]))
        .collect()
}

/// disco of an account's bare JID; accounts have no nodes (no PEP yet).
fn account(items: bool, at: Option<&str>) -> IqResult {
    if at.is_some() {
        return Err(StanzaErrorCondition::ItemNotFound);
    }
    if items {
        return Ok(Some(query(ns::DISCO_ITEMS, None)));
    }
    let mut q = query(ns::DISCO_INFO, None);
    q.append_child(identity("account", "registered", None));
    q.append_child(feature(ns::DISCO_INFO));
    Ok(Some(q))
}

fn find<'a>(commands: &'a [Command], node: &str) -> Option<&'a Command> {
    commands.iter().find(|(n, _)| *n == node)
}

/// `<query/>` in `namespace`, echoing the requested node as XEP-0030
/// section 3.2 requires of answers about a node.
fn query(namespace: &str, at: Option<&str>) -> Element {
    let mut q = Element::bare("query", namespace);
    if let Some(n) = at {
        set_attr(&mut q, "node", n);
    }
    q
}

fn identity(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut el = element(
        "identity",
        ns::DISCO_INFO,
        &[("category", category), ("type", kind)],
    );
    if let Some(name) = name {
        set_attr(&mut el, "name", name);
    }
    el
}

fn feature(var: &str) -> Element {
    element("feature", ns::DISCO_INFO, &[("var", var)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADD: Command = ("http://jabber.org/protocol/admin#add-user", "Add User");

    fn vars(q: &Element) -> Vec<String> {
        q.children()
            .filter(|c| c.is("feature", ns::DISCO_INFO))
            .filter_map(|c| c.attr("var").map(str::to_owned))
            .collect()
    }

    fn identities(q: &Element) -> Vec<(String, String, Option<String>)> {
        q.children()
            .filter(|c| c.is("identity", ns::DISCO_INFO))
            .map(|c| {
                (
                    c.attr("category").unwrap_or_default().to_owned(),
                    c.attr("type").unwrap_or_default().to_owned(),
                    c.attr("name").map(str::to_owned),
                )
            })
            .collect()
    }

    fn answered(r: IqResult) -> Element {
        r.expect("answered").expect("with a payload")
    }

    #[test]
    fn server_info_lists_identity_and_every_module_feature() {
        let q = answered(server_info(None, &[]));
        assert!(q.is("query", ns::DISCO_INFO));
        assert_eq!(q.attr("node"), None);
        assert_eq!(
            identities(&q),
            vec![("server".into(), "im".into(), Some("Tributary".into()))]
        );
        let v = vars(&q);
        for f in [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::VERSION,
            ns::TIME,
            ns::COMMANDS,
        ] {
            assert!(v.iter().any(|x| x == f), "missing {f} in {v:?}");
        }
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(v, sorted, "features are sorted and unique");
    }

    #[test]
    fn command_list_node_is_an_automation_identity() {
        let q = answered(server_info(Some(ns::COMMANDS), &[]));
        assert_eq!(q.attr("node"), Some(ns::COMMANDS));
        assert_eq!(
            identities(&q),
            vec![(
                "automation".into(),
                "command-list".into(),
                Some("Commands".into())
            )]
        );
    }

    #[test]
    fn command_node_info_only_for_allowed_commands() {
        let q = answered(server_info(Some(ADD.0), &[ADD]));
        assert_eq!(q.attr("node"), Some(ADD.0));
        assert_eq!(
            identities(&q),
            vec![(
                "automation".into(),
                "command-node".into(),
                Some("Add User".into())
            )]
        );
        assert_eq!(
            vars(&q),
            vec![ns::COMMANDS.to_owned(), ns::DATA_FORMS.to_owned()]
        );
        // Someone who may not run it (an empty list) does not see it.
        assert_eq!(
            server_info(Some(ADD.0), &[]),
            Err(StanzaErrorCondition::ItemNotFound)
        );
        assert_eq!(
            server_info(Some("nope"), &[ADD]),
            Err(StanzaErrorCondition::ItemNotFound)
        );
    }

    #[test]
    fn server_items_are_empty_and_commands_are_listed() {
        let q = answered(server_items("example.org", None, &[ADD], &[]));
        assert!(q.is("query", ns::DISCO_ITEMS));
        assert_eq!(q.children().count(), 0);

        let q = answered(server_items("example.org", Some(ns::COMMANDS), &[ADD], &[]));
        assert_eq!(q.attr("node"), Some(ns::COMMANDS));
        let items: Vec<_> = q.children().collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is("item", ns::DISCO_ITEMS));
        assert_eq!(items[0].attr("jid"), Some("example.org"));
        assert_eq!(items[0].attr("node"), Some(ADD.0));
        assert_eq!(items[0].attr("name"), Some("Add User"));

        let q = answered(server_items("example.org", Some(ns::COMMANDS), &[], &[]));
        assert_eq!(q.children().count(), 0, "non-admins get no commands");

        assert_eq!(
            server_items("example.org", Some("nope"), &[ADD], &[]),
            Err(StanzaErrorCondition::ItemNotFound)
        );
    }

    #[test]
    fn account_answers() {
        let q = answered(account(false, None));
        assert_eq!(
            identities(&q),
            vec![("account".into(), "registered".into(), None)]
        );
        assert_eq!(vars(&q), vec![ns::DISCO_INFO.to_owned()]);
        let q = answered(account(true, None));
        assert!(q.is("query", ns::DISCO_ITEMS));
        assert_eq!(q.children().count(), 0);
        assert_eq!(
            account(false, Some("x")),
            Err(StanzaErrorCondition::ItemNotFound)
        );
    }
}
