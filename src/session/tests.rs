//! The session registry's tests, on SQLite and PostgreSQL.

use super::*;
use crate::capture::card::YearMonth;
use crate::capture::collector::{Collector, CollectorConfig};
use crate::media::telephone_event::Key;
use crate::merchant::MerchantId;
use crate::owner::OwnedBy;
use crate::vault::testing::TestDatabase;

/// A call of an inline route open to every agent of `default`.
fn open_route() -> Owner {
    Owner { merchant: MerchantId::default_merchant(), by: OwnedBy::Route { team: None } }
}

#[test]
fn session_ids_and_sip_users() {
    let id = SessionId::new();
    assert_eq!(SessionId::from_sip_user(&id.sip_user()), Some(id.clone()));
    assert_eq!(SessionId::from_sip_user("pay-../../etc"), None);
    assert_eq!(SessionId::parse("ABCDEF0123456789abcdef0123456789"), None);
}

/// Two nodes' registries on one vault database.
async fn two_nodes(db: &TestDatabase, dir: &std::path::Path) -> (crate::vault::Vault, Sessions, Sessions) {
    let vault = crate::vault::Vault::open(db.options(dir)).await.unwrap();
    let a = Sessions::new(vault.pool().clone(), vault.backend(), NodeId::new());
    let b = Sessions::new(vault.pool().clone(), vault.backend(), NodeId::new());
    (vault, a, b)
}

fn card_session(owner: Owner) -> NewSession {
    NewSession {
        plan: CapturePlan::card(vec![FieldName::Pan, FieldName::Expiry]),
        reference: "order-1".into(),
        agent_uri: None,
        after_capture: AfterCapture::Hangup,
        owner,
    }
}

#[tokio::test]
async fn progress_is_masked_and_every_node_reads_it() {
    for db in TestDatabase::both().await {
        let dir = tempfile::tempdir().unwrap();
        let (_vault, a, b) = two_nodes(&db, dir.path()).await;
        let owner = Owner {
            merchant: MerchantId::default_merchant(),
            by: OwnedBy::Principal { id: "key-1".into(), team: crate::owner::Team::named("blue") },
        };
        let v = a.create(card_session(owner.clone()), "127.0.0.1:5060", Holder::Nobody).await.unwrap();
        assert!(v.transfer_uri.starts_with("sip:pay-"));
        // Made through A, claimed by a call that reached B.
        assert_eq!(b.owner(&v.id).await.unwrap(), Some(owner));
        let attached = b.claim(&v.id, 3).await.unwrap();
        assert_eq!(attached.plan.fields, vec![FieldName::Pan, FieldName::Expiry]);
        assert_eq!(attached.after_capture, AfterCapture::Hangup);
        assert_eq!(a.claim(&v.id, 3).await.unwrap_err(), SessionError::NotWaiting(SessionState::Capturing));
        // The view is what the call's collector reports, as the call forwards it.
        let t = Instant::now();
        let mut c =
            Collector::new(attached.plan.clone(), CollectorConfig::default(), YearMonth { year: 2026, month: 12 }, t);
        let key = |c: &mut Collector, ch| {
            c.handle_key(Key::from_char(ch).unwrap(), t);
            while c.poll_event().is_some() {}
            b.apply(&v.id, &CallEvent::Progress { fields: c.progress() });
        };
        for ch in "411111".chars() {
            key(&mut c, ch);
        }
        b.apply(&v.id, &CallEvent::DigitEntered { field: FieldName::Pan, count: 6 });
        b.flush().await;
        assert_eq!(a.view(&v.id).await.unwrap().unwrap().fields[0].masked, "•••• ••");
        for ch in "1111111111#".chars() {
            key(&mut c, ch);
        }
        b.apply(
            &v.id,
            &CallEvent::FieldDone {
                field: FieldName::Pan,
                masked: "•••• •••• •••• 1111".into(),
                brand: Some(crate::capture::card::Brand::Visa),
                attempts_left: 3,
            },
        );
        b.flush().await;
        let now = a.view(&v.id).await.unwrap().unwrap();
        assert_eq!(now.fields[0].masked, "•••• •••• •••• 1111");
        assert_eq!((now.fields[0].state, now.fields[1].state), (FieldState::Done, FieldState::Entering));
        // A cancel through A must go to B, which holds the call.
        assert!(matches!(a.cancel(&v.id).await.unwrap(), Reach::HeldBy(n) if n == *b.node()));
        assert_eq!(b.cancel_held(&v.id).unwrap().state, SessionState::Cancelled);
        assert_eq!(b.cancel_held(&v.id).unwrap_err(), SessionError::Final(SessionState::Cancelled));
        b.apply(&v.id, &CallEvent::Ended(crate::call::EndReason::CallerHungUp));
        b.flush().await;
        assert_eq!(a.view(&v.id).await.unwrap().unwrap().state, SessionState::Cancelled);
        assert_eq!(a.cancel(&v.id).await.unwrap_err(), SessionError::Final(SessionState::Cancelled));
        // Nothing stored holds more than the last four digits.
        let (stored,): (String,) = sqlx::query_as("SELECT view FROM sessions WHERE id = $1")
            .bind(v.id.as_str())
            .fetch_one(a.pool())
            .await
            .unwrap();
        assert!(!stored.contains("411111"), "{stored}");
        let later = Instant::now() + Duration::from_secs(7200);
        b.forget_older_than(Duration::from_secs(3600), later).await.unwrap();
        assert!(b.held_view(&v.id).is_none());
        assert!(b.view(&v.id).await.unwrap().is_some(), "younger than an hour in the database");
        assert_eq!(b.forget_older_than(Duration::ZERO, later).await.unwrap(), 1);
        assert!(a.view(&v.id).await.unwrap().is_none());
    }
}

/// Two INVITEs for one session at once, on two nodes: exactly one call gets it; and a
/// cancel racing a claim leaves the session either cancelled or held, never both.
#[tokio::test]
async fn a_session_is_claimed_exactly_once() {
    for db in TestDatabase::both().await {
        let dir = tempfile::tempdir().unwrap();
        let (_vault, a, b) = two_nodes(&db, dir.path()).await;
        for _ in 0..20 {
            let v = a.create(card_session(open_route()), "h", Holder::Nobody).await.unwrap();
            let (x, y) = tokio::join!(a.claim(&v.id, 3), b.claim(&v.id, 3));
            assert_eq!(u8::from(x.is_ok()) + u8::from(y.is_ok()), 1, "{x:?} {y:?}");
            let v = a.create(card_session(open_route()), "h", Holder::Nobody).await.unwrap();
            let (claimed, cancelled) = tokio::join!(b.claim(&v.id, 3), a.cancel(&v.id));
            match (claimed, cancelled) {
                (Ok(_), Ok(Reach::HeldBy(n))) => assert_eq!(n, *b.node()),
                (Ok(_), Err(SessionError::NotWaiting(_))) => {}
                (
                    Err(SessionError::NotWaiting(SessionState::Cancelled | SessionState::Capturing)),
                    Ok(Reach::Here(v)),
                ) => {
                    assert_eq!(v.state, SessionState::Cancelled)
                }
                other => panic!("{other:?}"),
            }
        }
        // An inline call's session is held from its start: no INVITE can claim it.
        let v = a.create(card_session(open_route()), "h", Holder::Here).await.unwrap();
        assert!(b.claim(&v.id, 3).await.is_err());
        assert!(a.attach(&v.id, 3).is_ok());
    }
}

/// A node found lost: its captures fail as node_lost, whatever it writes later is refused,
/// and embed tokens work from any node.
#[tokio::test]
async fn a_lost_nodes_captures_fail_and_stay_failed() {
    for db in TestDatabase::both().await {
        let dir = tempfile::tempdir().unwrap();
        let (_vault, a, b) = two_nodes(&db, dir.path()).await;
        let v = a.create(card_session(open_route()), "h", Holder::Nobody).await.unwrap();
        let token = a.embed_token(&v.id, SystemTime::now() + Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(b.embedded(&token, SystemTime::now()).await.unwrap(), Some(v.id.clone()));
        assert_eq!(b.embedded(&token, SystemTime::now() + Duration::from_secs(61)).await.unwrap(), None);
        assert_eq!(b.embedded("twe_nope", SystemTime::now()).await.unwrap(), None);
        let waiting = a.create(card_session(open_route()), "h", Holder::Nobody).await.unwrap();
        a.claim(&v.id, 3).await.unwrap();
        let (_, mut events) = b.subscribe(&v.id).await.unwrap();
        assert_eq!(b.fail_lost(a.node()).await.unwrap(), vec![v.id.clone()]);
        assert_eq!(b.fail_lost(a.node()).await.unwrap(), vec![], "once");
        let update = events.recv().await.unwrap();
        assert_eq!((update.event, update.session.reason.as_deref()), (Change::NodeLost, Some("node_lost")));
        // The lost node was only slow: what it writes now must not bring the capture back.
        a.complete(
            &v.id,
            TokenRecord {
                token: "tok".into(),
                payment_method: Default::default(),
                brand: Some(crate::capture::card::Brand::Visa),
                last4: "1111".into(),
                expiry_month: None,
                expiry_year: None,
                account_type: None,
                postal_code: false,
                amount_confirmed: None,
            },
        );
        a.flush().await;
        let now = b.view(&v.id).await.unwrap().unwrap();
        assert_eq!((now.state, now.reason.as_deref(), now.result), (SessionState::Failed, Some("node_lost"), None));
        assert_eq!(b.view(&waiting.id).await.unwrap().unwrap().state, SessionState::Waiting, "no call held it");
        let counts = b.count_by_state().await.unwrap();
        assert_eq!((counts[&SessionState::Failed], counts[&SessionState::Waiting]), (1, 1));
    }
}
