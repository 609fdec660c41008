//! Tributary's protocol core: everything about XMPP that can be decided
//! without touching a socket.
//!
//! The types here take events (bytes read, a stanza parsed, a credential
//! looked up) and return actions (bytes to write, a lookup to perform). The
//! tokio layer in `tributary-server` only moves bytes and performs lookups;
//! this keeps every protocol decision testable without I/O.

pub mod component;
pub mod csi;
pub mod error;
pub mod negotiation;
pub mod ns;
pub mod pacing;
pub mod routing;
pub mod sasl;
pub mod scram;
pub mod sm;
pub mod stanza;
pub mod subscription;
pub mod xml;

pub use jid;
pub use minidom;
pub use minidom::Element;
