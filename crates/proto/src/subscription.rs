//! The RFC 6121 presence subscription state machine (section 3 and
//! Appendix A), as pure functions over one roster item's state.
//!
//! "User" is the account whose roster item this is; "contact" the peer.
//! Outbound: the user sent the subscription stanza. Inbound: it arrived
//! for the user from the contact.

/// Subscription state of a roster item, from the user's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<Subscription> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }

    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    fn with(self, to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

/// The part of a roster item the state machine reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubState {
    pub subscription: Subscription,
    /// Pending Out.
    pub ask: bool,
    /// Pending In.
    pub pending_in: bool,
    /// Pre-approved (RFC 6121 3.4).
    pub approved: bool,
}

impl SubState {
    pub const NONE: SubState = SubState {
        subscription: Subscription::None,
        ask: false,
        pending_in: false,
        approved: false,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubKind {
    pub fn parse(presence_type: &str) -> Option<SubKind> {
        Some(match presence_type {
            "subscribe" => SubKind::Subscribe,
            "subscribed" => SubKind::Subscribed,
            "unsubscribe" => SubKind::Unsubscribe,
            "unsubscribed" => SubKind::Unsubscribed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubKind::Subscribe => "subscribe",
            SubKind::Subscribed => "subscribed",
            SubKind::Unsubscribe => "unsubscribe",
            SubKind::Unsubscribed => "unsubscribed",
        }
    }
}

/// What to do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub state: SubState,
    /// The state changed: store it and push the item (if visible).
    pub changed: bool,
    /// Outbound: route the stanza to the contact. Inbound: deliver it to the
    /// user's available resources.
    pub forward: bool,
    /// Inbound subscribe that is already approved: the user's server answers
    /// `subscribed` on the user's behalf (RFC 6121 3.1.3).
    pub auto_subscribed: bool,
}

fn outcome(before: SubState, state: SubState, forward: bool) -> Outcome {
    Outcome {
        state,
        changed: state != before,
        forward,
        auto_subscribed: false,
    }
}

/// The user sends `kind` to the contact (RFC 6121 3.1.2, 3.2.2, 3.3.2, 3.4).
pub fn outbound(s: SubState, kind: SubKind) -> Outcome {
    let sub = s.subscription;
    match kind {
        SubKind::Subscribe => {
            if sub.has_to() {
                outcome(s, s, true)
            } else {
                outcome(s, SubState { ask: true, ..s }, true)
            }
        }
        SubKind::Subscribed => {
            if s.pending_in {
                let state = SubState {
                    subscription: sub.with(sub.has_to(), true),
                    pending_in: false,
                    approved: false,
                    ..s
                };
                outcome(s, state, true)
            } else if sub.has_from() {
                outcome(s, s, false)
            } else {
                // Pre-approval: remembered, not routed.
                outcome(
                    s,
                    SubState {
                        approved: true,
                        ..s
                    },
                    false,
                )
            }
        }
        SubKind::Unsubscribe => {
            let state = SubState {
                subscription: sub.with(false, sub.has_from()),
                ask: false,
                ..s
            };
            outcome(s, state, sub.has_to() || s.ask)
        }
        SubKind::Unsubscribed => {
            let state = SubState {
                subscription: sub.with(sub.has_to(), false),
                pending_in: false,
                approved: false,
                ..s
            };
            outcome(s, state, sub.has_from() || s.pending_in || s.approved)
        }
    }
}

/// The contact's `kind` arrives for the user (RFC 6121 3.1.3, 3.1.6, 3.2.3, 3.3.3).
pub fn inbound(s: SubState, kind: SubKind) -> Outcome {
    let sub = s.subscription;
    match kind {
        SubKind::Subscribe => {
            if sub.has_from() {
                Outcome {
                    auto_subscribed: true,
                    ..outcome(s, s, false)
                }
            } else if s.approved {
                let state = SubState {
                    subscription: sub.with(sub.has_to(), true),
                    approved: false,
                    ..s
                };
                Outcome {
                    auto_subscribed: true,
                    ..outcome(s, state, false)
                }
            } else {
                outcome(
                    s,
                    SubState {
                        pending_in: true,
                        ..s
                    },
                    true,
                )
            }
        }
        SubKind::Subscribed => {
            if s.ask && !sub.has_to() {
                let state = SubState {
                    subscription: sub.with(true, sub.has_from()),
                    ask: false,
                    ..s
                };
                outcome(s, state, true)
            } else {
                outcome(s, s, false)
            }
        }
        SubKind::Unsubscribe => {
            if sub.has_from() || s.pending_in {
                let state = SubState {
                    subscription: sub.with(sub.has_to(), false),
                    pending_in: false,
                    ..s
                };
                outcome(s, state, true)
            } else {
                outcome(s, s, false)
            }
        }
        SubKind::Unsubscribed => {
            if sub.has_to() || s.ask {
                let state = SubState {
                    subscription: sub.with(false, sub.has_from()),
                    ask: false,
                    ..s
                };
                outcome(s, state, true)
            } else {
                outcome(s, s, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubKind::*;
    use Subscription as S;

    fn st(subscription: Subscription, ask: bool, pending_in: bool) -> SubState {
        SubState {
            subscription,
            ask,
            pending_in,
            approved: false,
        }
    }

    #[test]
    fn full_handshake_reaches_both_on_each_side() {
        // alice subscribes to bob; bob approves; bob subscribes back; alice approves.
        let (mut alice, mut bob) = (SubState::NONE, SubState::NONE);
        let o = outbound(alice, Subscribe);
        assert!(o.forward);
        alice = o.state;
        assert_eq!(alice, st(S::None, true, false));
        let i = inbound(bob, Subscribe);
        assert!(i.forward);
        bob = i.state;
        assert_eq!(bob, st(S::None, false, true));

        let o = outbound(bob, Subscribed);
        assert!(o.forward);
        bob = o.state;
        assert_eq!(bob.subscription, S::From);
        let i = inbound(alice, Subscribed);
        assert!(i.forward && i.changed);
        alice = i.state;
        assert_eq!(alice, st(S::To, false, false));

        bob = outbound(bob, Subscribe).state;
        alice = inbound(alice, Subscribe).state;
        alice = outbound(alice, Subscribed).state;
        bob = inbound(bob, Subscribed).state;
        assert_eq!(alice.subscription, S::Both);
        assert_eq!(bob.subscription, S::Both);
        assert!(!alice.ask && !alice.pending_in && !bob.ask && !bob.pending_in);
    }

    #[test]
    fn unsolicited_subscribed_is_ignored() {
        let i = inbound(SubState::NONE, Subscribed);
        assert!(!i.forward && !i.changed);
    }

    #[test]
    fn already_subscribed_contact_is_answered_by_the_server() {
        let i = inbound(st(S::From, false, false), Subscribe);
        assert!(i.auto_subscribed && !i.forward && !i.changed);
    }

    #[test]
    fn pre_approval_is_consumed_by_the_next_subscribe() {
        let o = outbound(SubState::NONE, Subscribed);
        assert!(!o.forward);
        assert!(o.state.approved);
        let i = inbound(o.state, Subscribe);
        assert!(i.auto_subscribed && !i.forward);
        assert_eq!(i.state.subscription, S::From);
        assert!(!i.state.approved);
    }

    #[test]
    fn unsubscribe_and_unsubscribed_tear_down_each_direction() {
        let both = st(S::Both, false, false);
        let o = outbound(both, Unsubscribe);
        assert!(o.forward);
        assert_eq!(o.state.subscription, S::From);
        let i = inbound(both, Unsubscribe);
        assert!(i.forward);
        assert_eq!(i.state.subscription, S::To);
        let o = outbound(both, Unsubscribed);
        assert_eq!(o.state.subscription, S::To);
        let i = inbound(both, Unsubscribed);
        assert_eq!(i.state.subscription, S::From);
    }

    #[test]
    fn unsubscribed_cancels_pending_request() {
        let o = outbound(st(S::None, false, true), Unsubscribed);
        assert!(o.forward);
        assert!(!o.state.pending_in);
        let i = inbound(st(S::None, true, false), Unsubscribed);
        assert!(i.forward);
        assert!(!i.state.ask);
    }

    #[test]
    fn duplicate_inbound_unsubscribe_is_not_forwarded() {
        let i = inbound(st(S::To, false, false), Unsubscribe);
        assert!(!i.forward && !i.changed);
    }
}
