//! What only the dom0 peer adds on top of the shared host session
//! ([`xenplug_channel::host`], where framing, the handshake, nonces, reply matching, guest-string
//! sanitising and the host's frame bounds live): the command names it uses and how it reads the
//! applied configuration from a reply.

use serde_json::Value;

pub use xenplug_channel::frame::Limits;
pub use xenplug_channel::host::{sanitize, MAX_GUEST_STRING};

/// An error reply from an agent, class and description sanitised.
pub type AgentError = xenplug_channel::ErrorBody;

/// Command names (from `xenplug-channel`).
pub mod commands {
    pub use xenplug_channel::qga::{
        GUEST_GET_HOST_NAME, GUEST_GET_OSINFO, GUEST_GET_TIME, GUEST_INFO,
        GUEST_NETWORK_GET_INTERFACES, GUEST_PING, GUEST_SSH_GET_AUTHORIZED_KEYS,
        GUEST_SYNC_DELIMITED,
    };
    /// Apply a configuration document: `{"config": {…}}`.
    pub const APPLY_CONFIG: &str = xenplug_channel::qga::XENPLUG_APPLY_CONFIG;
    /// Which configuration is applied: `{"instance-id": …, "generation": N}` (both absent when
    /// none is).
    pub const GET_CONFIG_GENERATION: &str = xenplug_channel::qga::XENPLUG_GET_CONFIG_GENERATION;
}

/// The applied configuration a reply reports: `(instance-id, generation)`, each `None` when
/// absent.
pub fn reply_applied(value: &Value) -> (Option<String>, Option<u64>) {
    (
        value
            .get("instance-id")
            .and_then(Value::as_str)
            .map(sanitize),
        value.get("generation").and_then(Value::as_u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applied_from_reply() {
        assert_eq!(
            reply_applied(&json!({"instance-id": "i\u{7}", "generation": 3})),
            (Some("i\u{fffd}".into()), Some(3))
        );
        assert_eq!(reply_applied(&json!({})), (None, None));
    }
}
