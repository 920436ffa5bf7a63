//! The roll-out decisions, as plain functions.

use super::*;

fn announcement(role: Role, kinds: &[(&str, &str)], types: &[&str]) -> Announcement {
    Announcement {
        role,
        kinds: kinds
            .iter()
            .map(|(k, f)| ((*k).to_owned(), (*f).to_owned()))
            .collect(),
        steps: BTreeMap::new(),
        worker_types: types.iter().map(|t| (*t).to_owned()).collect(),
        slots: BTreeMap::new(),
        expires_at_ms: u64::MAX,
    }
}

#[test]
fn a_worker_lacking_a_kind_defers_only_while_someone_live_has_it() {
    let peers = [announcement(Role::Worker, &[("primes", "a")], &["default"])];
    assert_eq!(
        place_subtask(None, Some("a"), "primes", "default", &peers, 0),
        Placement::Defer
    );
    // An orchestrator that has it is enough: the roll-out is under way.
    let orchestrator = [announcement(Role::Orchestrator, &[("primes", "a")], &[])];
    assert_eq!(
        place_subtask(None, None, "primes", "default", &orchestrator, 0),
        Placement::Defer
    );
    assert_eq!(
        place_subtask(None, Some("a"), "nope", "default", &peers, 0),
        Placement::Unknown
    );
    assert_eq!(
        place_subtask(None, Some("a"), "primes", "default", &peers, MAX_DEFERRALS),
        Placement::Unknown
    );
}

#[test]
fn another_definition_defers_to_a_live_worker_of_the_type_with_the_planned_one() {
    let peers = [
        announcement(Role::Worker, &[("primes", "new")], &["gpu"]),
        announcement(Role::Orchestrator, &[("primes", "new")], &[]),
    ];
    // Nobody runs "new" for type default: rolled forward, run here.
    assert_eq!(
        place_subtask(Some("old"), Some("new"), "primes", "default", &peers, 0),
        Placement::Run
    );
    assert_eq!(
        place_subtask(Some("old"), Some("new"), "primes", "gpu", &peers, 0),
        Placement::Defer
    );
    assert_eq!(
        place_subtask(
            Some("old"),
            Some("new"),
            "primes",
            "gpu",
            &peers,
            MAX_DEFERRALS
        ),
        Placement::Run
    );
    // Same definition, or a message of a version without fingerprints: run, no read needed.
    assert!(!needs_peers(Some("new"), Some("new")));
    assert!(!needs_peers(Some("old"), None));
    assert!(needs_peers(None, None));
    assert_eq!(
        place_subtask(Some("new"), Some("new"), "primes", "gpu", &peers, 0),
        Placement::Run
    );
}

#[test]
fn an_orchestrator_refuses_at_once_a_kind_nobody_live_has() {
    let peers = [announcement(Role::Worker, &[("primes", "a")], &["default"])];
    assert_eq!(place_task(true, "x", &[], 0), Placement::Run);
    assert_eq!(place_task(false, "primes", &peers, 0), Placement::Defer);
    assert_eq!(place_task(false, "nope", &peers, 0), Placement::Unknown);
    assert_eq!(
        place_task(false, "primes", &peers, MAX_DEFERRALS),
        Placement::Unknown
    );
}

#[test]
fn a_synthesis_is_left_to_a_live_synthesizer_with_the_planned_definition() {
    let peers = [
        announcement(Role::Synthesizer, &[("primes", "new")], &[]),
        announcement(Role::Worker, &[("other", "x")], &["default"]),
    ];
    assert_eq!(
        place_synthesis(None, Some("old"), "primes", &peers, 0),
        Placement::Defer
    );
    assert_eq!(
        place_synthesis(Some("old"), Some("new"), "primes", &peers, 0),
        Placement::Defer
    );
    assert_eq!(
        place_synthesis(Some("new"), Some("old"), "primes", &peers, 0),
        Placement::Run
    );
    // Lacking the kind, a worker having it is enough: its synthesizer may be on its way.
    assert_eq!(
        place_synthesis(None, None, "other", &peers, 0),
        Placement::Defer
    );
    assert_eq!(
        place_synthesis(None, None, "nope", &peers, 0),
        Placement::Run
    );
    // Another definition waits only for a synthesizer with the planned one.
    assert_eq!(
        place_synthesis(Some("x2"), Some("x"), "other", &peers, 0),
        Placement::Run
    );
    assert_eq!(
        place_synthesis(None, None, "primes", &peers, MAX_DEFERRALS),
        Placement::Run
    );
}

#[test]
fn known_kinds_are_this_process_s_and_its_role_s_peers() {
    let peers = [
        announcement(Role::Orchestrator, &[("primes", "a")], &[]),
        announcement(Role::Worker, &[("secret", "b")], &["default"]),
    ];
    assert_eq!(
        known_kinds(&["range-sum".to_owned()], &peers, Role::Orchestrator),
        ["primes", "range-sum"]
    );
}

#[test]
fn an_announcement_round_trips_and_expires() {
    let mut a = announcement(Role::Worker, &[("primes", "a")], &["default"]);
    a.expires_at_ms = 10;
    let body = protocol::encode(&a).unwrap_or_default();
    let back: Announcement = protocol::decode(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, a);
    assert!(a.is_live(9));
    assert!(!a.is_live(10));
}

#[test]
fn the_catalogue_shows_each_definition_and_who_serves_it() {
    let mut worker = announcement(
        Role::Worker,
        &[("primes", "b"), ("range-sum", "r")],
        &["default"],
    );
    worker
        .steps
        .insert("primes".into(), vec![("handle".into(), "rust".into())]);
    let live = vec![
        (
            "o1".to_owned(),
            announcement(
                Role::Orchestrator,
                &[("primes", "a"), ("range-sum", "r")],
                &[],
            ),
        ),
        ("w1".to_owned(), worker),
        (
            "s1".to_owned(),
            announcement(Role::Synthesizer, &[("range-sum", "r")], &[]),
        ),
    ];
    let catalogue = catalogue(&live);
    assert_eq!(catalogue.services, 3);
    let names: Vec<&str> = catalogue.kinds.iter().map(|k| k.kind.as_str()).collect();
    assert_eq!(names, ["primes", "range-sum"]);
    let primes = &catalogue.kinds[0];
    assert_eq!(primes.definitions.len(), 2);
    assert!(primes.warning.is_some());
    assert_eq!(primes.missing_roles, [Role::Synthesizer]);
    assert_eq!(primes.definitions[1].served_by[0].instance, "w1");
    assert_eq!(primes.definitions[1].steps["handle"], "rust");
    let range_sum = &catalogue.kinds[1];
    assert!(range_sum.warning.is_none() && range_sum.missing_roles.is_empty());
    assert_eq!(range_sum.definitions[0].served_by.len(), 3);
}
