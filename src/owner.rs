//! Who a session or a call belongs to, and who may see it (PCI DSS 7.2.1, 7.2.2: access by
//! job and need to know). Everything belongs to one merchant (`crate::merchant`), and no one
//! sees another merchant's. Within it, a session belongs to the key or person that created
//! it, and to its team; an inline call to its route's team (every agent's when the route
//! names none). A merchant's admins see all of its own. Anyone else gets 404 for what is not
//! theirs, the same answer as for what does not exist, so ids cannot be probed.

use crate::merchant::MerchantId;

/// A team name, as keys (`api-key create --team`) and routes (`sip.routes[].team`) carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Team(pub String);

impl Team {
    /// None for an empty name.
    pub fn named(name: &str) -> Option<Team> {
        let name = name.trim();
        (!name.is_empty()).then(|| Team(name.to_string()))
    }
}

/// The merchant something belongs to, and who within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub merchant: MerchantId,
    pub by: OwnedBy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedBy {
    /// Made by a key or person (`id`), shared with its team.
    Principal { id: String, team: Option<Team> },
    /// A call an inline route brought in: its team's, or, with none, every agent's.
    Route { team: Option<Team> },
    /// A call for a session that does not exist (it is about to be refused): admins only.
    Unclaimed,
}

/// An owner as the `sessions` and `calls` tables store it: a merchant, a kind, an id and a
/// team.
pub struct StoredOwner {
    pub merchant: String,
    pub kind: &'static str,
    pub id: Option<String>,
    pub team: Option<String>,
}

impl Owner {
    pub fn to_stored(&self) -> StoredOwner {
        let team = |t: &Option<Team>| t.as_ref().map(|t| t.0.clone());
        let (kind, id, team) = match &self.by {
            OwnedBy::Principal { id, team: t } => ("principal", Some(id.clone()), team(t)),
            OwnedBy::Route { team: t } => ("route", None, team(t)),
            OwnedBy::Unclaimed => ("unclaimed", None, None),
        };
        StoredOwner { merchant: self.merchant.as_str().to_string(), kind, id, team }
    }

    /// The owner a row names; an unknown kind is `Unclaimed` (its merchant's admins only).
    pub fn from_stored(merchant: String, kind: &str, id: Option<&str>, team: Option<&str>) -> Owner {
        let team = team.and_then(Team::named);
        let by = match (kind, id) {
            ("principal", Some(id)) => OwnedBy::Principal { id: id.to_string(), team },
            ("route", _) => OwnedBy::Route { team },
            _ => OwnedBy::Unclaimed,
        };
        Owner { merchant: MerchantId::from_stored(merchant), by }
    }

    /// A call for a session that does not exist (it is about to be refused).
    pub fn unclaimed() -> Owner {
        Owner { merchant: MerchantId::default_merchant(), by: OwnedBy::Unclaimed }
    }
}

/// Whoever asks: a key or person of a merchant, with a team, or its merchant's admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub id: String,
    pub merchant: MerchantId,
    pub team: Option<Team>,
    pub admin: bool,
}

impl Viewer {
    pub fn sees(&self, owner: &Owner) -> bool {
        let same_team = |team: &Option<Team>| team.is_some() && *team == self.team;
        owner.merchant == self.merchant
            && (self.admin
                || match &owner.by {
                    OwnedBy::Principal { id, team } => *id == self.id || same_team(team),
                    OwnedBy::Route { team: None } => true,
                    OwnedBy::Route { team } => same_team(team),
                    OwnedBy::Unclaimed => false,
                })
    }

    /// What this viewer creates belongs to its merchant, and to it and its team.
    pub fn owner(&self) -> Owner {
        Owner {
            merchant: self.merchant.clone(),
            by: OwnedBy::Principal { id: self.id.clone(), team: self.team.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(id: &str, team: &str) -> Viewer {
        Viewer { id: id.into(), merchant: MerchantId::default_merchant(), team: Team::named(team), admin: false }
    }

    fn route(team: &str) -> Owner {
        Owner { merchant: MerchantId::default_merchant(), by: OwnedBy::Route { team: Team::named(team) } }
    }

    #[test]
    fn a_session_is_its_creators_and_its_teams_and_an_admins() {
        let a = viewer("key-a", "sales");
        let b = viewer("key-b", "sales");
        let c = viewer("key-c", "support");
        let loner = viewer("key-d", "");
        let admin = Viewer { admin: true, ..viewer("key-z", "") };
        let sales_session = a.owner();
        assert!(a.sees(&sales_session) && b.sees(&sales_session) && admin.sees(&sales_session));
        assert!(!c.sees(&sales_session) && !loner.sees(&sales_session));
        let own = loner.owner();
        assert!(loner.sees(&own) && admin.sees(&own));
        assert!(!viewer("key-e", "").sees(&own), "no team is not one shared team");
        let support_route = route("support");
        assert!(c.sees(&support_route) && !a.sees(&support_route) && admin.sees(&support_route));
        let open_route = route("");
        assert!(a.sees(&open_route) && loner.sees(&open_route));
        assert!(!a.sees(&Owner::unclaimed()) && admin.sees(&Owner::unclaimed()));
        assert_eq!(Team::named("  "), None);
    }

    #[test]
    fn no_one_sees_another_merchants() {
        let acme = MerchantId::parse("acme").unwrap();
        let other = Viewer { merchant: acme.clone(), ..viewer("key-o", "sales") };
        let other_admin = Viewer { admin: true, ..other.clone() };
        let sales = viewer("key-a", "sales");
        for owned in [sales.owner(), route(""), Owner::unclaimed()] {
            assert!(!other.sees(&owned) && !other_admin.sees(&owned), "{owned:?}");
        }
        assert!(other.sees(&other.owner()) && other_admin.sees(&other.owner()));
        assert!(!sales.sees(&other.owner()) && !Viewer { admin: true, ..sales }.sees(&other.owner()));
        let stored = other.owner().to_stored();
        let back = Owner::from_stored(stored.merchant, stored.kind, stored.id.as_deref(), stored.team.as_deref());
        assert_eq!(back, other.owner());
    }
}
