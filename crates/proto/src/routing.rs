//! Message delivery rules for local users (RFC 6121 section 8.5), as pure
//! functions over the user's sessions.

use crate::error::StanzaErrorCondition;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Normal,
    Chat,
    Headline,
    Groupchat,
    Error,
}

impl MessageType {
    /// RFC 6121 5.2.2: a missing or unknown type is `normal`.
    pub fn parse(t: Option<&str>) -> MessageType {
        match t {
            Some("chat") => MessageType::Chat,
            Some("headline") => MessageType::Headline,
            Some("groupchat") => MessageType::Groupchat,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }
}

/// What routing needs to know about one session of the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceView<'a> {
    pub resource: &'a str,
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    pub priority: i8,
    /// Detached, waiting for XEP-0198 resumption: it only gets bare-JID
    /// messages when no live resource can take them.
    pub hibernating: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Deliver to these sessions (indices into the slice given).
    Deliver(Vec<usize>),
    /// Keep for later delivery (XEP-0160).
    Offline,
    /// Bounce with this error.
    Error(StanzaErrorCondition),
    /// Discard silently.
    Drop,
}

/// A message to `user@domain` (RFC 6121 8.5.2.1).
pub fn to_bare(t: MessageType, sessions: &[ResourceView<'_>]) -> Disposition {
    let eligible = |s: &ResourceView<'_>| s.available && s.priority >= 0;
    let any_live = sessions.iter().any(|s| eligible(s) && !s.hibernating);
    // Live resources first; a hibernating one holds the message only when
    // it is the only candidate (it reaches offline storage if it expires).
    let candidate = |s: &ResourceView<'_>| eligible(s) && (!any_live || !s.hibernating);
    match t {
        MessageType::Error => Disposition::Drop,
        MessageType::Groupchat => Disposition::Error(StanzaErrorCondition::ServiceUnavailable),
        MessageType::Headline => {
            let all: Vec<usize> = (0..sessions.len())
                .filter(|&i| candidate(&sessions[i]))
                .collect();
            if all.is_empty() {
                Disposition::Drop
            } else {
                Disposition::Deliver(all)
            }
        }
        MessageType::Normal | MessageType::Chat => {
            let best = sessions
                .iter()
                .filter(|s| candidate(s))
                .map(|s| s.priority)
                .max();
            match best {
                None => Disposition::Offline,
                Some(p) => Disposition::Deliver(
                    (0..sessions.len())
                        .filter(|&i| candidate(&sessions[i]) && sessions[i].priority == p)
                        .collect(),
                ),
            }
        }
    }
}

/// A message to `user@domain/resource` (RFC 6121 8.5.3).
pub fn to_full(t: MessageType, resource: &str, sessions: &[ResourceView<'_>]) -> Disposition {
    if let Some(i) = sessions.iter().position(|s| s.resource == resource) {
        return Disposition::Deliver(vec![i]);
    }
    match t {
        MessageType::Error | MessageType::Headline => Disposition::Drop,
        MessageType::Groupchat => Disposition::Error(StanzaErrorCondition::ServiceUnavailable),
        MessageType::Normal | MessageType::Chat => to_bare(t, sessions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(resource: &str, available: bool, priority: i8) -> ResourceView<'_> {
        ResourceView {
            resource,
            available,
            priority,
            hibernating: false,
        }
    }

    fn hibernating(resource: &str, priority: i8) -> ResourceView<'_> {
        ResourceView {
            resource,
            available: true,
            priority,
            hibernating: true,
        }
    }

    #[test]
    fn bare_messages_prefer_live_resources_over_hibernating_ones() {
        let s = [hibernating("old", 10), r("live", true, 0)];
        assert_eq!(
            to_bare(MessageType::Chat, &s),
            Disposition::Deliver(vec![1])
        );
        // Only a hibernating resource: it holds the message.
        let s = [hibernating("old", 0)];
        assert_eq!(
            to_bare(MessageType::Chat, &s),
            Disposition::Deliver(vec![0])
        );
        // Full-JID messages still go to the hibernating session itself.
        let s = [hibernating("old", 0), r("live", true, 0)];
        assert_eq!(
            to_full(MessageType::Chat, "old", &s),
            Disposition::Deliver(vec![0])
        );
    }

    #[test]
    fn chat_to_bare_goes_to_highest_priority_resources() {
        let s = [
            r("a", true, 1),
            r("b", true, 5),
            r("c", true, 5),
            r("d", false, 9),
        ];
        assert_eq!(
            to_bare(MessageType::Chat, &s),
            Disposition::Deliver(vec![1, 2])
        );
    }

    #[test]
    fn negative_priority_and_unavailable_mean_offline() {
        let s = [r("a", true, -1), r("b", false, 3)];
        assert_eq!(to_bare(MessageType::Normal, &s), Disposition::Offline);
        assert_eq!(to_bare(MessageType::Chat, &[]), Disposition::Offline);
    }

    #[test]
    fn headline_to_bare_goes_to_all_or_nowhere() {
        let s = [r("a", true, 0), r("b", true, 2)];
        assert_eq!(
            to_bare(MessageType::Headline, &s),
            Disposition::Deliver(vec![0, 1])
        );
        assert_eq!(to_bare(MessageType::Headline, &[]), Disposition::Drop);
    }

    #[test]
    fn groupchat_to_user_is_an_error_and_errors_are_dropped() {
        assert_eq!(
            to_bare(MessageType::Groupchat, &[r("a", true, 0)]),
            Disposition::Error(StanzaErrorCondition::ServiceUnavailable)
        );
        assert_eq!(
            to_bare(MessageType::Error, &[r("a", true, 0)]),
            Disposition::Drop
        );
    }

    #[test]
    fn full_jid_exact_match_even_if_unavailable() {
        let s = [r("a", false, 0), r("b", true, 0)];
        assert_eq!(
            to_full(MessageType::Chat, "a", &s),
            Disposition::Deliver(vec![0])
        );
    }

    #[test]
    fn full_jid_without_session_falls_back_per_type() {
        let s = [r("b", true, 0)];
        assert_eq!(
            to_full(MessageType::Chat, "x", &s),
            Disposition::Deliver(vec![0])
        );
        assert_eq!(to_full(MessageType::Normal, "x", &[]), Disposition::Offline);
        assert_eq!(to_full(MessageType::Headline, "x", &s), Disposition::Drop);
        assert_eq!(
            to_full(MessageType::Groupchat, "x", &s),
            Disposition::Error(StanzaErrorCondition::ServiceUnavailable)
        );
    }
}
