//! Who the audit trail names (PCI DSS 10.2.1, 10.2.2): an API key and its role (7.2 least
//! privilege), a call capturing a card, tonewall itself, or a request no key vouched for.

use serde::{Deserialize, Serialize};

use super::audit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Processor,
    Qa,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Processor => "processor",
            Role::Qa => "qa",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Agent, Role::Processor, Role::Qa, Role::Admin].into_iter().find(|r| r.as_str() == s)
    }
}

/// The role an audit record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorRole {
    /// An API key of this role.
    Key(Role),
    /// A call's capture, tokenizing the card its caller keyed.
    Call,
    /// tonewall's own upkeep (key rotation, expiry).
    System,
    /// A request that presented no valid key.
    Unauthenticated,
}

impl ActorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorRole::Key(r) => r.as_str(),
            ActorRole::Call => "call",
            ActorRole::System => "system",
            ActorRole::Unauthenticated => "none",
        }
    }
}

/// Who asks, from where, for what: the audit record's who, origin and resource.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub id: &'a str,
    pub role: ActorRole,
    pub origin: &'a str,
    /// The merchant it acts for; None for tonewall's own upkeep and unknown callers.
    pub merchant: Option<&'a str>,
}

impl Actor<'_> {
    /// The audit record of this actor doing `action` to `resource`.
    pub fn did<'b>(&'b self, action: &'b str, outcome: &'b str, resource: &'b str) -> audit::Event<'b> {
        audit::Event {
            actor: self.id,
            role: self.role.as_str(),
            origin: self.origin,
            action,
            outcome,
            resource,
            detail: "",
            merchant: self.merchant,
        }
    }
}
