//! The tokio side of a Tributary node: listeners, connections, the session
//! router, and the feature modules that answer and route stanzas.

pub mod component;
pub mod config;
pub mod connection;
pub mod limits;
pub mod listener;
pub mod modules;
pub mod node;
pub mod queue;
pub mod router;
pub mod stream;
pub mod tls;

pub use config::Config;
pub use listener::{serve, Running};
pub use node::Node;
