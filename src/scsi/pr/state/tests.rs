use super::*;
use PrType::*;

fn n(i: u8) -> NexusId {
    NexusId {
        initiator: format!("iqn.2024-01.test:host{i}"),
        isid: [0x40, 0, 0, 0, 0, i],
        tpgt: 1,
    }
}

fn keys(key: u64, sa_key: u64) -> Keys {
    Keys {
        key,
        sa_key,
        aptpl: false,
    }
}

const REGISTER: Prout = Prout::Register {
    ignore_existing: false,
    all_tg_pt: false,
};
const REGISTER_IGNORE: Prout = Prout::Register {
    ignore_existing: true,
    all_tg_pt: false,
};

/// Applies a request that must succeed and change the state.
fn apply(s: &PrState, who: u8, req: Prout, k: Keys) -> Change {
    s.prout(&n(who), &req, &k)
        .unwrap_or_else(|e| panic!("{req:?} refused: {e:?}"))
        .unwrap_or_else(|| panic!("{req:?} changed nothing"))
}

/// A state where nexus i (1-based) is registered with key 0x10 * i.
fn registered(count: u8) -> PrState {
    let mut s = PrState::default();
    for i in 1..=count {
        s = apply(&s, i, REGISTER, keys(0, 0x10 * u64::from(i))).state;
    }
    s
}

fn reserved(count: u8, kind: PrType) -> PrState {
    apply(&registered(count), 1, Prout::Reserve(kind), keys(0x10, 0)).state
}

fn uas(c: &Change) -> Vec<(NexusId, AscCode)> {
    c.events
        .iter()
        .map(|e| match e {
            SharedEvent::UnitAttention { nexus, asc } => (nexus.clone(), *asc),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

fn sense_asc(r: Outcome) -> AscCode {
    match r {
        Err(PrError::Sense(s)) => s.asc,
        other => panic!("expected a sense, got {other:?}"),
    }
}

#[test]
fn register_rules() {
    let s = PrState::default();
    // An unregistered nexus must give key 0 with REGISTER, anything with IGNORE.
    assert_eq!(
        s.prout(&n(1), &REGISTER, &keys(5, 6)),
        Err(PrError::Conflict)
    );
    assert_eq!(s.prout(&n(1), &REGISTER, &keys(0, 0)), Ok(None));
    let c = apply(&s, 1, REGISTER_IGNORE, keys(5, 6));
    assert_eq!(c.state.registrations[0].key, 6);
    assert_eq!(c.state.generation, 1);
    // A registered nexus must give its key with REGISTER.
    let s = c.state;
    assert_eq!(
        s.prout(&n(1), &REGISTER, &keys(7, 8)),
        Err(PrError::Conflict)
    );
    let s = apply(&s, 1, REGISTER, keys(6, 8)).state;
    assert_eq!(s.registrations[0].key, 8);
    let s = apply(&s, 1, REGISTER_IGNORE, keys(0, 9)).state;
    assert_eq!(
        (s.registrations.len(), s.registrations[0].key, s.generation),
        (1, 9, 3)
    );
    let s = apply(&s, 1, REGISTER, keys(9, 0)).state;
    assert!(s.registrations.is_empty());
    assert_eq!(s.generation, 4);
}

#[test]
fn aptpl_is_kept_from_the_last_register() {
    let s = PrState::default();
    let k = Keys {
        key: 0,
        sa_key: 1,
        aptpl: true,
    };
    let s = apply(&s, 1, REGISTER, k).state;
    assert!(s.aptpl);
    let s = apply(&s, 1, REGISTER, keys(1, 2)).state;
    assert!(!s.aptpl);
}

#[test]
fn all_tg_pt_registers_the_initiator_port_on_every_target_port() {
    let s = PrState::default();
    let req = Prout::Register {
        ignore_existing: false,
        all_tg_pt: true,
    };
    let s = apply(&s, 1, req, keys(0, 3)).state;
    let other_port = NexusId { tpgt: 9, ..n(1) };
    assert_eq!(s.registration(&other_port), Some(0));
    let s = s
        .prout(&other_port, &Prout::Reserve(ExclusiveAccess), &keys(3, 0))
        .unwrap()
        .unwrap()
        .state;
    assert!(s.permits(&n(1), Access::Write));
    assert!(!s.permits(&n(2), Access::Read));
    // Without ALL_TG_PT another target port is another nexus.
    let s = registered(1);
    assert_eq!(s.registration(&other_port), None);
}

#[test]
fn service_actions_other_than_register_need_a_registration_and_its_key() {
    let s = registered(1);
    for req in [
        Prout::Reserve(WriteExclusive),
        Prout::Release { scope: 0, code: 1 },
        Prout::Clear,
        Prout::Preempt {
            kind: WriteExclusive,
            abort: false,
        },
    ] {
        assert_eq!(s.prout(&n(2), &req, &keys(0, 0x10)), Err(PrError::Conflict));
        assert_eq!(
            s.prout(&n(1), &req, &keys(0x11, 0x10)),
            Err(PrError::Conflict)
        );
    }
}

#[test]
fn reserve_is_idempotent_for_the_holder_and_conflicts_for_others() {
    let s = reserved(2, WriteExclusive);
    assert_eq!(s.generation, 2, "RESERVE does not count");
    assert_eq!(s.holder_key(), Some(0x10));
    assert_eq!(
        s.prout(&n(1), &Prout::Reserve(WriteExclusive), &keys(0x10, 0)),
        Ok(None)
    );
    assert_eq!(
        s.prout(&n(1), &Prout::Reserve(ExclusiveAccess), &keys(0x10, 0)),
        Err(PrError::Conflict)
    );
    assert_eq!(
        s.prout(&n(2), &Prout::Reserve(WriteExclusive), &keys(0x20, 0)),
        Err(PrError::Conflict)
    );
    // All registrants: every registrant holds it, so reserving again is a no-op.
    let s = reserved(2, ExclusiveAccessAllRegistrants);
    assert_eq!(s.holder_key(), Some(0));
    assert_eq!(
        s.prout(
            &n(2),
            &Prout::Reserve(ExclusiveAccessAllRegistrants),
            &keys(0x20, 0)
        ),
        Ok(None)
    );
}

#[test]
fn release_rules() {
    let s = reserved(3, WriteExclusive);
    // Not the holder: GOOD, nothing happens.
    assert_eq!(
        s.prout(&n(2), &Prout::Release { scope: 0, code: 1 }, &keys(0x20, 0)),
        Ok(None)
    );
    // The holder with the wrong type.
    assert_eq!(
        sense_asc(s.prout(&n(1), &Prout::Release { scope: 0, code: 3 }, &keys(0x10, 0))),
        asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
    );
    assert_eq!(
        sense_asc(s.prout(&n(1), &Prout::Release { scope: 1, code: 1 }, &keys(0x10, 0))),
        asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
    );
    let c = apply(&s, 1, Prout::Release { scope: 0, code: 1 }, keys(0x10, 0));
    assert_eq!(c.state.reservation, None);
    assert!(c.events.is_empty(), "no UA for Write Exclusive");
    assert_eq!(c.state.generation, s.generation);
    // Registrants only: the other registrants learn RESERVATIONS RELEASED.
    let s = reserved(3, ExclusiveAccessRegistrantsOnly);
    let c = apply(&s, 1, Prout::Release { scope: 0, code: 6 }, keys(0x10, 0));
    assert_eq!(
        uas(&c),
        vec![
            (n(2), asc::RESERVATIONS_RELEASED),
            (n(3), asc::RESERVATIONS_RELEASED)
        ]
    );
    // All registrants: any registrant releases it for everyone.
    let s = reserved(3, WriteExclusiveAllRegistrants);
    let c = apply(&s, 3, Prout::Release { scope: 0, code: 7 }, keys(0x30, 0));
    assert_eq!(c.state.reservation, None);
    assert_eq!(
        uas(&c),
        vec![
            (n(1), asc::RESERVATIONS_RELEASED),
            (n(2), asc::RESERVATIONS_RELEASED)
        ]
    );
    // Nothing reserved: GOOD.
    assert_eq!(
        registered(1).prout(&n(1), &Prout::Release { scope: 0, code: 1 }, &keys(0x10, 0)),
        Ok(None)
    );
}

#[test]
fn unregistering_the_holder_releases() {
    let s = reserved(2, ExclusiveAccess);
    let c = apply(&s, 1, REGISTER, keys(0x10, 0));
    assert_eq!(c.state.reservation, None);
    assert!(c.events.is_empty());
    let s = reserved(2, WriteExclusiveRegistrantsOnly);
    let c = apply(&s, 1, REGISTER, keys(0x10, 0));
    assert_eq!(c.state.reservation, None);
    assert_eq!(uas(&c), vec![(n(2), asc::RESERVATIONS_RELEASED)]);
    // Another registrant leaving changes nothing about the reservation.
    let s = reserved(2, ExclusiveAccess);
    let c = apply(&s, 2, REGISTER, keys(0x20, 0));
    assert_eq!(c.state.holder_key(), Some(0x10));
}

#[test]
fn all_registrants_reservations_last_as_long_as_a_registrant() {
    let s = reserved(2, ExclusiveAccessAllRegistrants);
    let s = apply(&s, 1, REGISTER, keys(0x10, 0)).state;
    assert!(s.reservation.is_some());
    assert!(s.permits(&n(2), Access::Write));
    assert!(!s.permits(&n(1), Access::Read));
    let s = apply(&s, 2, REGISTER, keys(0x20, 0)).state;
    assert_eq!(s.reservation, None);
}

#[test]
fn clear_removes_everything_and_tells_the_others() {
    let s = reserved(3, ExclusiveAccess);
    let c = apply(&s, 2, Prout::Clear, keys(0x20, 0));
    assert!(c.state.registrations.is_empty());
    assert_eq!(c.state.reservation, None);
    assert_eq!(c.state.generation, s.generation + 1);
    assert_eq!(
        uas(&c),
        vec![
            (n(1), asc::RESERVATIONS_PREEMPTED),
            (n(3), asc::RESERVATIONS_PREEMPTED)
        ]
    );
}

fn preempt(kind: PrType) -> Prout {
    Prout::Preempt { kind, abort: false }
}

#[test]
fn preempt_without_a_reservation_removes_registrations() {
    let s = registered(3);
    let c = apply(&s, 2, preempt(ExclusiveAccess), keys(0x20, 0x10));
    assert_eq!(c.state.registrations.len(), 2);
    assert_eq!(c.state.registration(&n(1)), None);
    assert_eq!(c.state.reservation, None);
    assert_eq!(c.state.generation, s.generation + 1);
    assert_eq!(uas(&c), vec![(n(1), asc::REGISTRATIONS_PREEMPTED)]);
    // A key nobody holds, or zero.
    assert_eq!(
        s.prout(&n(2), &preempt(ExclusiveAccess), &keys(0x20, 0x99)),
        Err(PrError::Conflict)
    );
    assert_eq!(
        sense_asc(s.prout(&n(2), &preempt(ExclusiveAccess), &keys(0x20, 0))),
        asc::INVALID_FIELD_IN_PARAMETER_LIST
    );
}

#[test]
fn preempting_the_holder_takes_its_reservation() {
    let s = reserved(3, WriteExclusive);
    let c = apply(
        &s,
        2,
        preempt(ExclusiveAccessRegistrantsOnly),
        keys(0x20, 0x10),
    );
    assert_eq!(c.state.holder_key(), Some(0x20));
    assert_eq!(
        c.state.reservation.as_ref().unwrap().kind,
        ExclusiveAccessRegistrantsOnly
    );
    assert_eq!(c.state.registration(&n(1)), None);
    // The holder lost its registration; the type changed, so the remaining
    // registrants other than the preempter hear RESERVATIONS RELEASED.
    assert_eq!(
        uas(&c),
        vec![
            (n(1), asc::REGISTRATIONS_PREEMPTED),
            (n(3), asc::RESERVATIONS_RELEASED)
        ]
    );
    // Same type: no RESERVATIONS RELEASED.
    let c = apply(&s, 2, preempt(WriteExclusive), keys(0x20, 0x10));
    assert_eq!(uas(&c), vec![(n(1), asc::REGISTRATIONS_PREEMPTED)]);
    // The holder may preempt itself to change the type and keeps its registration.
    let c = apply(&s, 1, preempt(ExclusiveAccess), keys(0x10, 0x10));
    assert_eq!(c.state.holder_key(), Some(0x10));
    assert_eq!(c.state.registrations.len(), 3);
    // A non-holder's key only removes that registration.
    let c = apply(&s, 2, preempt(ExclusiveAccess), keys(0x20, 0x30));
    assert_eq!(c.state.holder_key(), Some(0x10));
    assert_eq!(c.state.reservation.as_ref().unwrap().kind, WriteExclusive);
    assert_eq!(uas(&c), vec![(n(3), asc::REGISTRATIONS_PREEMPTED)]);
}

#[test]
fn preempt_under_all_registrants() {
    let s = reserved(3, WriteExclusiveAllRegistrants);
    // Key zero: everyone else goes, the preempter reserves with the new type.
    let c = apply(&s, 2, preempt(ExclusiveAccess), keys(0x20, 0));
    assert_eq!(c.state.registrations.len(), 1);
    assert_eq!(c.state.holder_key(), Some(0x20));
    assert_eq!(
        uas(&c),
        vec![
            (n(1), asc::REGISTRATIONS_PREEMPTED),
            (n(3), asc::REGISTRATIONS_PREEMPTED)
        ]
    );
    // A key: only that registration goes; the reservation stays.
    let c = apply(&s, 2, preempt(ExclusiveAccess), keys(0x20, 0x30));
    assert_eq!(c.state.registrations.len(), 2);
    assert_eq!(
        c.state.reservation.as_ref().unwrap().kind,
        WriteExclusiveAllRegistrants
    );
    // PREEMPT AND ABORT follows the same rules.
    let abort = Prout::Preempt {
        kind: ExclusiveAccess,
        abort: true,
    };
    assert_eq!(apply(&s, 2, abort, keys(0x20, 0)).state, c_zero(&s));
}

fn c_zero(s: &PrState) -> PrState {
    apply(s, 2, preempt(ExclusiveAccess), keys(0x20, 0)).state
}

fn to(i: u8, tpgt: u16) -> NexusId {
    NexusId { tpgt, ..n(i) }
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let s = reserved(2, ExclusiveAccess);
    let mv = |dest: NexusId, unreg| Prout::RegisterAndMove { dest, unreg };
    let c = apply(&s, 1, mv(to(3, 2), false), keys(0x10, 0x33));
    assert_eq!(c.state.holder_key(), Some(0x33));
    assert_eq!(c.state.reservation.as_ref().unwrap().holder, to(3, 2));
    assert_eq!(c.state.registrations.len(), 3);
    assert_eq!(c.state.generation, s.generation + 1);
    assert!(c.state.permits(&to(3, 2), Access::Write));
    assert!(!c.state.permits(&n(1), Access::Read));
    // UNREG drops the mover; an existing registration gets the new key.
    let c = apply(&s, 1, mv(n(2), true), keys(0x10, 0x22));
    assert_eq!(c.state.registrations.len(), 1);
    assert_eq!(c.state.holder_key(), Some(0x22));
    // Only the holder, only with a reservation that is not all registrants.
    assert_eq!(
        s.prout(&n(2), &mv(n(3), false), &keys(0x20, 0x33)),
        Err(PrError::Conflict)
    );
    assert_eq!(
        registered(1).prout(&n(1), &mv(n(3), false), &keys(0x10, 0x33)),
        Err(PrError::Conflict)
    );
    let ar = reserved(2, WriteExclusiveAllRegistrants);
    assert_eq!(
        ar.prout(&n(1), &mv(n(3), false), &keys(0x10, 0x33)),
        Err(PrError::Conflict)
    );
    // Not to our own initiator port, not with key zero.
    assert_eq!(
        sense_asc(s.prout(&n(1), &mv(to(1, 5), false), &keys(0x10, 0x33))),
        asc::INVALID_FIELD_IN_PARAMETER_LIST
    );
    assert_eq!(
        sense_asc(s.prout(&n(1), &mv(n(3), false), &keys(0x10, 0))),
        asc::INVALID_FIELD_IN_PARAMETER_LIST
    );
}

/// Expected (read, write) for the holder, a registered non-holder and an
/// unregistered nexus, per SPC-4 5.13.1 / SBC-3 table 13.
#[test]
fn access_tables_per_type() {
    type Row = (PrType, [(bool, bool); 3]);
    let table: [Row; 6] = [
        (WriteExclusive, [(true, true), (true, false), (true, false)]),
        (
            ExclusiveAccess,
            [(true, true), (false, false), (false, false)],
        ),
        (
            WriteExclusiveRegistrantsOnly,
            [(true, true), (true, true), (true, false)],
        ),
        (
            ExclusiveAccessRegistrantsOnly,
            [(true, true), (true, true), (false, false)],
        ),
        (
            WriteExclusiveAllRegistrants,
            [(true, true), (true, true), (true, false)],
        ),
        (
            ExclusiveAccessAllRegistrants,
            [(true, true), (true, true), (false, false)],
        ),
    ];
    for (kind, rows) in table {
        let s = reserved(2, kind);
        for (who, (read, write)) in [1, 2, 3].into_iter().zip(rows) {
            assert_eq!(
                s.permits(&n(who), Access::Read),
                read,
                "{kind:?} read by {who}"
            );
            assert_eq!(
                s.permits(&n(who), Access::Write),
                write,
                "{kind:?} write by {who}"
            );
            for a in [Access::Any, Access::Status, Access::Own] {
                assert!(s.permits(&n(who), a), "{kind:?} {a:?} by {who}");
            }
        }
    }
    // Registrations alone fence nothing.
    let s = registered(2);
    assert!(s.unreserved());
    assert!(s.permits(&n(3), Access::Write));
}

#[test]
fn spc2_reserve_and_release() {
    let s = PrState::default();
    let s = s.reserve_spc2(&n(1)).unwrap().unwrap().state;
    assert_eq!(s.reserve_spc2(&n(1)), Ok(None));
    assert_eq!(s.reserve_spc2(&n(2)), Err(PrError::Conflict));
    // Releasing someone else's reservation is a no-op.
    assert_eq!(s.release_spc2(&n(2)), Ok(None));
    // Only INQUIRY-like commands pass for the others; the holder may do anything.
    assert!(s.permits(&n(2), Access::Any));
    for a in [Access::Status, Access::Read, Access::Write] {
        assert!(!s.permits(&n(2), a));
        assert!(s.permits(&n(1), a));
    }
    // Persistent reservation commands conflict for everyone meanwhile.
    assert_eq!(s.prin_allowed(), Err(PrError::Conflict));
    assert_eq!(
        s.prout(&n(1), &REGISTER, &keys(0, 1)),
        Err(PrError::Conflict)
    );
    let released = s.release_spc2(&n(1)).unwrap().unwrap().state;
    assert_eq!(released.reserved_by, None);
}

#[test]
fn spc2_reservations_end_with_their_nexus_or_a_reset() {
    let s = PrState::default()
        .reserve_spc2(&n(1))
        .unwrap()
        .unwrap()
        .state;
    assert_eq!(s.drop_spc2(Some(&n(2))), None);
    assert_eq!(s.drop_spc2(Some(&n(1))).unwrap().state.reserved_by, None);
    assert_eq!(s.drop_spc2(None).unwrap().state.reserved_by, None);
    assert_eq!(PrState::default().drop_spc2(None), None);
}

#[test]
fn spc2_commands_under_persistent_registrations_follow_crh() {
    // Registered, nothing reserved: RESERVE/RELEASE conflict for everyone.
    let s = registered(2);
    assert_eq!(s.reserve_spc2(&n(1)), Err(PrError::Conflict));
    assert_eq!(s.release_spc2(&n(3)), Err(PrError::Conflict));
    // The holder gets GOOD without effect; others conflict.
    let s = reserved(2, ExclusiveAccess);
    assert_eq!(s.reserve_spc2(&n(1)), Ok(None));
    assert_eq!(s.release_spc2(&n(1)), Ok(None));
    assert_eq!(s.reserve_spc2(&n(2)), Err(PrError::Conflict));
    // Registrants of a registrants only reservation count as exempt too.
    let s = reserved(2, WriteExclusiveRegistrantsOnly);
    assert_eq!(s.reserve_spc2(&n(2)), Ok(None));
    assert_eq!(s.release_spc2(&n(3)), Err(PrError::Conflict));
}

#[test]
fn state_survives_json() {
    let s = reserved(2, ExclusiveAccessRegistrantsOnly);
    let back: PrState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    // Fields added later default when absent.
    let empty: PrState = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, PrState::default());
}
