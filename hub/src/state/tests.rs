//! Tests of the replicated state machine: every command applied to a state in memory.

use super::*;
use vigo_common::enrollment::Denied;

fn state_with_spoke() -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(Command::RegisterSpoke {
        id: "a".into(),
        address: "127.0.0.1:1".into(),
        weight: 1,
        at_ms: 1,
    });
    s.apply(enroll_token([1; 32], "t", 2, 100, false));
    s
}

fn enroll_token(hash: [u8; 32], name: &str, uses: u64, expires_ms: u64, rekey: bool) -> Command {
    Command::CreateToken {
        hash,
        token: Token {
            name: name.into(),
            uses,
            used: 0,
            expires_ms,
            allow_rekey: rekey,
            revoked: false,
            hostnames: Vec::new(),
        },
    }
}

fn entry(id: u64, host: &str, key: u8, at_ms: u64) -> EnrollEntry {
    EnrollEntry {
        envoy_id: id,
        hostname: host.into(),
        key: [key; 32],
        spoke: "a".into(),
        token: [1; 32],
        at_ms,
    }
}

#[test]
fn enrollment_counts_uses_and_is_idempotent() {
    let mut s = state_with_spoke();
    let r = s.apply(Command::Enroll(vec![
        entry(10, "h1", 7, 5),
        entry(11, "h1", 7, 5),
        entry(12, "h2", 8, 5),
        entry(13, "h3", 9, 5),
        entry(14, "h1", 6, 5),
    ]));
    let Applied::Enrolled(results) = r else {
        panic!("{r:?}")
    };
    assert_eq!(results[0], Ok(10));
    assert_eq!(results[1], Ok(10), "retry: same hostname and key, same pin");
    assert_eq!(results[2], Ok(12));
    let spent = Err(Rejection::Enroll(Denied::TokenSpent("t".into())));
    assert_eq!(results[3], spent);
    assert_eq!(results[4], spent);
    assert_eq!(s.pins.len(), 2);
    assert_eq!(s.tokens[&[1; 32]].used, 2);
}

#[test]
fn refused_enrollments_leave_no_trace() {
    let mut s = state_with_spoke();
    let before = s.clone();
    let mut late = entry(20, "h9", 1, 100);
    let Applied::Enrolled(r) = s.apply(Command::Enroll(vec![late.clone()])) else {
        panic!()
    };
    assert_eq!(
        r[0],
        Err(Rejection::Enroll(Denied::TokenExpired("t".into())))
    );
    late.at_ms = 1;
    late.token = [2; 32];
    late.envoy_id = 21;
    s.apply(Command::Enroll(vec![late]));
    let mut elsewhere = entry(22, "h9", 1, 1);
    elsewhere.spoke = "nowhere".into();
    s.apply(Command::Enroll(vec![elsewhere]));
    assert_eq!(s, before);
    assert!(matches!(
        s.apply(Command::SetOverrides(vec![Override {
            pattern: "db-*".into(),
            spoke: "nowhere".into()
        }])),
        Applied::Refused(_)
    ));
    assert_eq!(s, before);
}

#[test]
fn moves_are_all_or_nothing_and_a_spoke_with_pins_stays() {
    let mut s = state_with_spoke();
    s.apply(Command::RegisterSpoke {
        id: "b".into(),
        address: "127.0.0.1:2".into(),
        weight: 1,
        at_ms: 1,
    });
    s.apply(Command::Enroll(vec![
        entry(10, "h1", 7, 5),
        entry(12, "h2", 8, 5),
    ]));
    let before = s.clone();
    let partly_unknown = s.apply(Command::MovePins(vec![(10, "b".into()), (99, "b".into())]));
    assert!(matches!(partly_unknown, Applied::Refused(_)));
    assert_eq!(s, before, "nothing moved");
    let refused = s.apply(Command::SetSpokeState {
        id: "a".into(),
        state: SpokeState::Removed,
    });
    assert!(matches!(refused, Applied::Refused(_)));
    s.apply(Command::MovePins(vec![(10, "b".into()), (12, "b".into())]));
    assert!(s.pins.values().all(|p| p.spoke == "b"));
    s.apply(Command::SetOverrides(vec![Override {
        pattern: "H*".into(),
        spoke: "a".into(),
    }]));
    assert_eq!(
        s.place("h9", &s.ring()).as_deref(),
        Some("a"),
        "overrides ignore case"
    );
    s.apply(Command::SetSpokeState {
        id: "a".into(),
        state: SpokeState::Draining,
    });
    assert_eq!(
        s.place("h9", &s.ring()).as_deref(),
        Some("b"),
        "an override to a draining spoke falls back to the ring"
    );
    assert_eq!(
        s.apply(Command::SetSpokeState {
            id: "a".into(),
            state: SpokeState::Removed,
        }),
        Applied::Done
    );
    assert!(
        s.overrides.is_empty(),
        "overrides to a removed spoke go with it"
    );
}

#[test]
fn the_ring_is_built_once_per_change_of_the_spokes() {
    let mut s = state_with_spoke();
    let first = s.ring();
    s.apply(Command::Heartbeat {
        id: "a".into(),
        config_version: String::new(),
        at_ms: 2,
    });
    assert!(Arc::ptr_eq(&first, &s.ring()), "a heartbeat keeps the ring");
    s.apply(Command::RegisterSpoke {
        id: "b".into(),
        address: "127.0.0.1:2".into(),
        weight: 100,
        at_ms: 2,
    });
    let second = s.ring();
    assert!(!Arc::ptr_eq(&first, &second), "a new spoke rebuilds it");
    let placed: std::collections::BTreeSet<_> = (0..200)
        .filter_map(|i| s.place(&format!("h{i}"), &second))
        .collect();
    assert!(placed.contains("b"), "the new spoke takes envoys");
    assert!(Arc::ptr_eq(&second, &s.ring()));
}

/// A founded state whose bundle keys sign with the key made from `seed`.
fn founded(seed: u8) -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(Command::Found {
        ca_cert_pem: "ca".into(),
        bundle_keys: BundleKeys::founding([seed; 32], 1),
    });
    s
}

/// A seal under the keys in force (no signatures: the state machine checks the keys).
fn seal_now(s: &ClusterState) -> ConfigSeal {
    ConfigSeal {
        key: s.bundle_keys.signer().unwrap().verifying_key().to_bytes(),
        trusted: s.bundle_keys.trusted(),
        signatures: Vec::new(),
    }
}

fn publish(s: &mut ClusterState, v: &str, seal: ConfigSeal) -> Applied {
    let generation = s.next_config_generation(0);
    s.apply(Command::PublishConfig {
        entry: ConfigEntry {
            version: v.into(),
            author: "me".into(),
            published_ms: 0,
            message: String::new(),
            files: BTreeMap::new(),
            generation,
            seal,
        },
        keep: 3,
    })
}

#[test]
fn config_history_keeps_the_versions_made_current_last() {
    let mut s = founded(1);
    let publish = |s: &mut ClusterState, v: &str| {
        let sealed = seal_now(s);
        publish(s, v, sealed)
    };
    for v in ["v1", "v2", "v3", "v4", "v5"] {
        publish(&mut s, v);
    }
    let kept = |s: &ClusterState| {
        s.configs
            .iter()
            .map(|c| c.version.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&s), ["v3", "v4", "v5"]);
    assert!(s.config("v1").is_none(), "pruned");
    let refused = s.apply(Command::Rollback {
        version: "v1".into(),
        generation: s.next_config_generation(0),
        seal: seal_now(&s),
    });
    assert!(matches!(refused, Applied::Refused(_)));
    // A rollback makes v3 the most recent; the next publish prunes v4.
    let generation = s.next_config_generation(0);
    s.apply(Command::Rollback {
        version: "v3".into(),
        generation,
        seal: seal_now(&s),
    });
    publish(&mut s, "v6");
    assert_eq!(kept(&s), ["v3", "v5", "v6"]);
    assert_eq!(s.current_config, "v6");
}

#[test]
fn revoked_and_duplicate_tokens() {
    let mut s = state_with_spoke();
    let dup = s.apply(Command::CreateApiToken {
        hash: [9; 32],
        token: ApiToken {
            name: "t".into(),
            role: ApiRole::Viewer,
            expires_ms: 0,
            revoked: false,
        },
    });
    assert!(
        matches!(dup, Applied::Refused(_)),
        "names are unique across kinds"
    );
    s.apply(Command::RevokeToken { name: "t".into() });
    let Applied::Enrolled(r) = s.apply(Command::Enroll(vec![entry(10, "h1", 7, 5)])) else {
        panic!()
    };
    assert_eq!(
        r[0],
        Err(Rejection::Enroll(Denied::TokenRevoked("t".into())))
    );
    assert!(s.pins.is_empty());
}

fn rekey_token(s: &mut ClusterState) {
    s.apply(enroll_token([3; 32], "rekey", 10, 0, true));
}

fn enroll_one(s: &mut ClusterState, e: EnrollEntry) -> Result<u64, Rejection> {
    match s.apply(Command::Enroll(vec![e])) {
        Applied::Enrolled(mut r) => r.remove(0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rekey_revokes_the_envoy_it_replaces_in_the_same_entry() {
    let mut s = state_with_spoke();
    rekey_token(&mut s);
    assert_eq!(enroll_one(&mut s, entry(10, "h1", 7, 5)), Ok(10));
    let rekey = EnrollEntry {
        token: [3; 32],
        ..entry(11, "h1", 8, 6)
    };
    assert_eq!(enroll_one(&mut s, rekey), Ok(11));
    assert!(s.is_envoy_revoked(10));
    assert!(!s.is_envoy_revoked(11));
    assert_eq!(s.revocations.seq(), 1);
    assert_eq!(s.hostnames["h1"], 11, "one hostname, one active envoy");
    // The revoked key never enrolls again, whatever the token.
    let back = EnrollEntry {
        token: [3; 32],
        ..entry(12, "h1", 7, 7)
    };
    assert_eq!(
        enroll_one(&mut s, back),
        Ok(12),
        "h1's active key is 8: 7 re-keys it"
    );
    assert!(s.is_envoy_revoked(11));
}

#[test]
fn an_admin_revoked_envoy_cannot_come_back_with_its_key() {
    let mut s = state_with_spoke();
    rekey_token(&mut s);
    assert_eq!(enroll_one(&mut s, entry(10, "h1", 7, 5)), Ok(10));
    let revoke = Command::Revoke {
        target: Revoked::Envoy(10),
        at_ms: 6,
        reason: "stolen".into(),
        by: "ops".into(),
    };
    assert_eq!(s.apply(revoke.clone()), Applied::Done);
    assert_eq!(
        s.apply(revoke),
        Applied::Done,
        "revoking again changes nothing"
    );
    assert_eq!(s.revocations.seq(), 1);
    let again = EnrollEntry {
        token: [3; 32],
        ..entry(11, "h1", 7, 7)
    };
    assert_eq!(enroll_one(&mut s, again), Err(Rejection::EnvoyRevoked(10)));
    // A new key for the hostname is a new machine: it enrolls.
    let fresh = EnrollEntry {
        token: [3; 32],
        ..entry(12, "h1", 9, 7)
    };
    assert_eq!(enroll_one(&mut s, fresh), Ok(12));
    let unknown = s.apply(Command::Revoke {
        target: Revoked::Envoy(999),
        at_ms: 8,
        reason: String::new(),
        by: "ops".into(),
    });
    assert_eq!(unknown, Applied::Refused(Rejection::NotPinned(999)));
}

#[test]
fn revocations_survive_a_snapshot_in_order() {
    let mut s = state_with_spoke();
    for (n, target) in [
        Revoked::Certificate("ab12".into()),
        Revoked::Certificate("cd34".into()),
    ]
    .into_iter()
    .enumerate()
    {
        s.apply(Command::Revoke {
            target,
            at_ms: n as u64,
            reason: "lost laptop".into(),
            by: "ops".into(),
        });
    }
    // As a snapshot stores it.
    let bytes = postcard::to_allocvec(&s).unwrap();
    let back: ClusterState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    assert!(back.is_certificate_revoked("cd34"));
    assert!(!back.is_certificate_revoked("ef56"));
    let later: Vec<u64> = back
        .revocations
        .since(1, 10)
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(later, vec![2]);
    assert!(back.revocations.since(5, 10).is_empty());
}

fn token_named(name: &str) -> Command {
    Command::CreateApiToken {
        hash: [name.len() as u8; 32],
        token: ApiToken {
            name: name.into(),
            role: ApiRole::Viewer,
            expires_ms: 0,
            revoked: false,
        },
    }
}

#[test]
fn a_retried_request_gets_its_first_outcome_and_changes_nothing() {
    let mut s = ClusterState::default();
    let ops = RequestTag {
        request: "r1".into(),
        by: "ops".into(),
        digest: [0; 32],
    };
    assert_eq!(s.apply(token_named("a").once(&ops, "token")), Applied::Done);
    let after_first = s.clone();
    // The same request again: the first outcome, not "a token named a exists".
    assert_eq!(s.apply(token_named("a").once(&ops, "token")), Applied::Done);
    assert_eq!(s, after_first);
    // One id names one request: the same id asking for something else is refused.
    let reused = RequestTag {
        digest: [1; 32],
        ..ops.clone()
    };
    assert_eq!(
        s.apply(token_named("b").once(&reused, "token")),
        Applied::Refused(Rejection::RequestIdReused("r1/token".into()))
    );
    // Another caller cannot replay someone else's request id.
    let other = RequestTag {
        request: "r1".into(),
        by: "mallory".into(),
        digest: [0; 32],
    };
    assert_eq!(
        s.apply(token_named("b").once(&other, "token")),
        Applied::Refused(Rejection::RequestIdTaken("r1/token".into()))
    );
    // A refusal is an outcome too: the retry is refused the same way.
    let r2 = RequestTag {
        request: "r2".into(),
        by: "ops".into(),
        digest: [0; 32],
    };
    let refused = s.apply(token_named("a").once(&r2, "token"));
    assert_eq!(
        refused,
        Applied::Refused(Rejection::TokenNameTaken("a".into()))
    );
    assert_eq!(s.apply(token_named("a").once(&r2, "token")), refused);
    // Outcomes survive a snapshot.
    let back: ClusterState = postcard::from_bytes(&postcard::to_allocvec(&s).unwrap()).unwrap();
    assert_eq!(back.requests.get("r1/token").unwrap().by, "ops");
}

#[test]
fn only_the_latest_request_ids_are_remembered() {
    let mut s = ClusterState::default();
    for n in 0..requests::KEEP + 5 {
        let tag = RequestTag {
            request: format!("r{n}"),
            by: "ops".into(),
            digest: [0; 32],
        };
        s.apply(Command::SetOverrides(Vec::new()).once(&tag, "o"));
    }
    assert_eq!(s.requests.len(), requests::KEEP);
    assert!(s.requests.get("r0/o").is_none(), "the oldest is forgotten");
    assert!(s.requests.get("r4/o").is_none());
    assert!(s.requests.get("r5/o").is_some());
    let last = format!("r{}/o", requests::KEEP + 4);
    assert!(s.requests.get(&last).is_some());
}

fn two_spokes_one_envoy() -> ClusterState {
    let mut s = state_with_spoke();
    for id in ["b", "c"] {
        s.apply(Command::RegisterSpoke {
            id: id.into(),
            address: "127.0.0.1:2".into(),
            weight: 1,
            at_ms: 1,
        });
    }
    assert_eq!(enroll_one(&mut s, entry(10, "h1", 7, 5)), Ok(10));
    s
}

fn begin(envoy: u64, from: &str, to: &str) -> Command {
    Command::BeginMove {
        envoys: vec![envoy],
        from: from.into(),
        to: to.into(),
        at_ms: 9,
    }
}

#[test]
fn one_open_move_per_envoy_resumed_from_its_phase() {
    let mut s = two_spokes_one_envoy();
    assert_eq!(s.apply(begin(10, "a", "b")), Applied::Done);
    assert_eq!(s.moves[&10].phase, MovePhase::Copying);
    // The same move again (a resume) is fine.
    assert_eq!(s.apply(begin(10, "a", "b")), Applied::Done);
    let elsewhere = Rejection::MoveOpen {
        envoy: 10,
        from: "a".into(),
        to: "b".into(),
    };
    // Pins go only where the open move goes.
    assert_eq!(
        s.apply(Command::MovePins(vec![(10, "c".into())])),
        Applied::Refused(elsewhere.clone())
    );
    // Before its pin moved, a move elsewhere replaces it (b died, say)...
    assert_eq!(s.apply(begin(10, "a", "c")), Applied::Done);
    assert_eq!(s.moves[&10].to, "c");
    assert_eq!(s.apply(begin(10, "a", "b")), Applied::Done);
    assert_eq!(
        s.apply(Command::MovePins(vec![(10, "b".into())])),
        Applied::Done
    );
    assert_eq!(s.moves[&10].phase, MovePhase::Pinned);
    // ... after, it is refused: the old spoke has yet to hand the envoy off.
    assert_eq!(s.apply(begin(10, "a", "c")), Applied::Refused(elsewhere));
    assert_eq!(s.pins[&10].spoke, "b");
    // Pinned on b, not yet handed off by a: resuming the same move is still allowed.
    assert_eq!(s.apply(begin(10, "a", "b")), Applied::Done);
    assert_eq!(s.moves[&10].phase, MovePhase::Pinned);
    s.apply(Command::EndMove { envoys: vec![10] });
    assert!(s.moves.is_empty());
    // A new move starts from where the pin is.
    assert!(matches!(
        s.apply(begin(10, "a", "c")),
        Applied::Refused(Rejection::NotOnSpoke { .. })
    ));
    assert_eq!(s.apply(begin(10, "b", "c")), Applied::Done);
}

#[test]
fn a_config_is_current_only_when_sealed_under_the_keys_in_force() {
    let mut s = founded(1);
    let mut other = seal_now(&s);
    other.key = [9; 32];
    assert_eq!(
        publish(&mut s, "v1", other),
        Applied::Refused(Rejection::StaleSeal)
    );
    assert!(s.configs.is_empty() && s.current_config.is_empty());
    let sealed = seal_now(&s);
    assert_eq!(publish(&mut s, "v1", sealed), Applied::Done);
    // A seal made before a key was added is stale after.
    let before = seal_now(&s);
    let add = KeyChange::Add {
        secret: Secret([2; 32]),
        at_ms: 2,
        by: "ops".into(),
    };
    let mut after = s.bundle_keys.clone();
    after.apply(&add).unwrap();
    let resign = |version: &str, keys: &BundleKeys| Resign {
        version: version.into(),
        generation: 99,
        seal: ConfigSeal {
            key: keys.signer().unwrap().verifying_key().to_bytes(),
            trusted: keys.trusted(),
            signatures: Vec::new(),
        },
    };
    // With a current version, a key change must re-sign it under the new set.
    for wrong in [
        None,
        Some(resign("v1", &s.bundle_keys)),
        Some(resign("v0", &after)),
    ] {
        let applied = s.apply(Command::ChangeBundleKeys {
            change: add.clone(),
            resign: wrong,
        });
        assert_eq!(applied, Applied::Refused(Rejection::StaleSeal));
        assert_eq!(s.bundle_keys.keys().len(), 1, "nothing changed");
    }
    let applied = s.apply(Command::ChangeBundleKeys {
        change: add,
        resign: Some(resign("v1", &after)),
    });
    assert_eq!(applied, Applied::Done);
    assert_eq!(s.bundle_keys.keys().len(), 2);
    let v1 = s.config("").unwrap();
    assert_eq!((v1.generation, v1.seal.trusted.len()), (99, 2));
    assert_eq!(
        publish(&mut s, "v2", before),
        Applied::Refused(Rejection::StaleSeal)
    );
}

#[test]
fn rotation_adds_uses_then_retires_and_never_retires_the_signing_key() {
    let mut keys = BundleKeys::founding([1; 32], 1);
    let first = keys.trusted()[0];
    keys.apply(&KeyChange::Add {
        secret: Secret([2; 32]),
        at_ms: 2,
        by: "ops".into(),
    })
    .unwrap();
    let second = keys.trusted()[1];
    assert_eq!(keys.signer().unwrap().verifying_key().to_bytes(), first);
    assert_eq!(
        keys.apply(&KeyChange::Retire(first)),
        Err(Rejection::BundleKeySigning(hex::encode(first)))
    );
    let again = KeyChange::Add {
        secret: Secret([2; 32]),
        at_ms: 3,
        by: "ops".into(),
    };
    assert!(matches!(
        keys.apply(&again),
        Err(Rejection::BundleKeyExists(_))
    ));
    keys.apply(&KeyChange::Use(second)).unwrap();
    assert_eq!(keys.signer().unwrap().verifying_key().to_bytes(), second);
    keys.apply(&KeyChange::Retire(first)).unwrap();
    assert_eq!(keys.trusted(), vec![second]);
    assert!(matches!(
        keys.apply(&KeyChange::Use(first)),
        Err(Rejection::NoSuchBundleKey(_))
    ));
    // Named by a prefix of 8 hex digits or more, never a shorter or ambiguous one.
    let named = hex::encode(second);
    assert_eq!(keys.find(&named[..8]), Ok(second));
    assert_eq!(keys.find(&named.to_uppercase()), Ok(second));
    assert!(keys.find(&named[..7]).is_err());
    for n in 3..=super::bundle_keys::MAX_KEYS as u8 + 1 {
        keys.apply(&KeyChange::Add {
            secret: Secret([n; 32]),
            at_ms: 4,
            by: "ops".into(),
        })
        .unwrap();
    }
    assert_eq!(
        keys.apply(&KeyChange::Add {
            secret: Secret([99; 32]),
            at_ms: 5,
            by: "ops".into(),
        }),
        Err(Rejection::TooManyBundleKeys(super::bundle_keys::MAX_KEYS))
    );
    assert!(
        !format!("{keys:?}").contains("[2, 2, 2"),
        "secrets are not printed"
    );
}
