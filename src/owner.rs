//! Who a session or a call belongs to, and who may see it (PCI DSS 7.2.1, 7.2.2: access by
//! job and need to know). A session belongs to the key or person that created it, and to
//! its team; an inline call to its route's team (every agent's when the route names none).
//! Admins see everything. Anyone else gets 404 for what is not theirs, the same answer as
//! for what does not exist, so ids cannot be probed.

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Made by a key or person (`id`), shared with its team.
    Principal { id: String, team: Option<Team> },
    /// A call an inline route brought in: its team's, or, with none, every agent's.
    Route { team: Option<Team> },
    /// A call for a session that does not exist (it is about to be refused): admins only.
    Unclaimed,
}

/// An owner as the `sessions` and `calls` tables store it: a kind, an id and a team.
pub struct StoredOwner {
    pub kind: &'static str,
    pub id: Option<String>,
    pub team: Option<String>,
}

impl Owner {
    pub fn to_stored(&self) -> StoredOwner {
        let team = |t: &Option<Team>| t.as_ref().map(|t| t.0.clone());
        match self {
            Owner::Principal { id, team: t } => StoredOwner { kind: "principal", id: Some(id.clone()), team: team(t) },
            Owner::Route { team: t } => StoredOwner { kind: "route", id: None, team: team(t) },
            Owner::Unclaimed => StoredOwner { kind: "unclaimed", id: None, team: None },
        }
    }

    /// The owner a row names; anything unknown is `Unclaimed` (admins only).
    pub fn from_stored(kind: &str, id: Option<&str>, team: Option<&str>) -> Owner {
        let team = team.and_then(Team::named);
        match (kind, id) {
            ("principal", Some(id)) => Owner::Principal { id: id.to_string(), team },
            ("route", _) => Owner::Route { team },
            _ => Owner::Unclaimed,
        }
    }
}

/// Whoever asks: a key or person with a team, or an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub id: String,
    pub team: Option<Team>,
    pub admin: bool,
}

impl Viewer {
    pub fn sees(&self, owner: &Owner) -> bool {
        let same_team = |team: &Option<Team>| team.is_some() && *team == self.team;
        self.admin
            || match owner {
                Owner::Principal { id, team } => *id == self.id || same_team(team),
                Owner::Route { team: None } => true,
                Owner::Route { team } => same_team(team),
                Owner::Unclaimed => false,
            }
    }

    /// What this viewer creates belongs to it and its team.
    pub fn owner(&self) -> Owner {
        Owner::Principal { id: self.id.clone(), team: self.team.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(id: &str, team: &str) -> Viewer {
        Viewer { id: id.into(), team: Team::named(team), admin: false }
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
        let support_route = Owner::Route { team: Team::named("support") };
        assert!(c.sees(&support_route) && !a.sees(&support_route) && admin.sees(&support_route));
        let open_route = Owner::Route { team: None };
        assert!(a.sees(&open_route) && loner.sees(&open_route));
        assert!(!a.sees(&Owner::Unclaimed) && admin.sees(&Owner::Unclaimed));
        assert_eq!(Team::named("  "), None);
    }
}
