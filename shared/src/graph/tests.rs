//! Unit tests of plan checks and the first wave.

use super::*;
use serde_bytes::ByteBuf;

fn entry(id: &str, deps: &[&str]) -> PlanEntry {
    PlanEntry {
        id: id.into(),
        worker_type: protocol::DEFAULT_WORKER_TYPE.into(),
        depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
        depth: 0,
        payload: ByteBuf::new(),
        child: None,
    }
}

#[test]
fn acyclic_plans_pass() {
    let plan = [entry("a", &[]), entry("b", &["a"]), entry("c", &["a", "b"])];
    assert_eq!(check_plan(&plan), Ok(()));
}

#[test]
fn cycles_are_named() {
    let plan = [
        entry("a", &[]),
        entry("b", &["d"]),
        entry("c", &["b"]),
        entry("d", &["c"]),
    ];
    let error = check_plan(&plan).expect_err("cycle");
    assert_eq!(error, "dependency cycle: b → d → c → b");
}

#[test]
fn unknown_duplicate_and_self_dependencies_are_refused() {
    let unknown = check_plan(&[entry("a", &["zz"])]).expect_err("unknown");
    assert!(unknown.contains("unknown subtask \"zz\""), "{unknown}");
    assert!(check_plan(&[entry("a", &[]), entry("a", &[])])
        .expect_err("dup")
        .contains("used twice"));
    assert!(check_plan(&[entry("a", &["a"])])
        .expect_err("self")
        .contains("itself"));
    let mut typed = entry("a", &[]);
    typed.worker_type = "GPU!".into();
    assert!(check_plan(&[typed]).is_err());
}

#[test]
fn bad_subtask_ids_are_refused_naming_the_rule_within_bounds() {
    // Too long: the error says so and quotes the id cut to the name bound.
    let long = "k".repeat(10_000);
    for error in [
        check_plan(&[entry(&long, &[])]),
        check_spawned(&[entry(&long, &[])]),
        check_plan(&[entry("a", &[&long])]),
    ] {
        let error = error.expect_err("long");
        assert!(
            error.contains("is 10000 bytes long; the limit is 200"),
            "{error}"
        );
        assert!(
            error.len() < 2 * crate::text::MAX_NAME_BYTES,
            "{} bytes",
            error.len()
        );
    }
    // Control characters, line separators, invisible format characters: refused, escaped.
    for (id, shown) in [
        ("a\nb", "a\\nb"),
        ("a\u{2028}b", "a\\u{2028}b"),
        ("ad\u{200b}min", "ad\\u{200b}min"),
        ("x\u{202e}y", "x\\u{202e}y"),
    ] {
        let additions = check_additions(&[entry(id, &[])], &HashSet::new());
        for error in [check_plan(&[entry(id, &[])]), additions] {
            let error = error.expect_err(id);
            assert!(
                error.contains(&format!("subtask id \"{shown}\" must not contain whitespace, control or format characters")),
                "{error}"
            );
        }
    }
    let dependency = check_spawned(&[entry("a", &["b\u{0}"])]).expect_err("dependency");
    assert!(
        dependency.starts_with("dependency of subtask \"a\": subtask id \"b\\u{0}\" must not"),
        "{dependency}"
    );
}

#[test]
fn additions_may_only_look_back() {
    let existing: HashSet<String> = ["x".to_owned()].into();
    assert_eq!(
        check_additions(&[entry("n1", &["x"]), entry("n2", &["n1"])], &existing),
        Ok(())
    );
    assert!(check_additions(&[entry("n1", &["n2"]), entry("n2", &[])], &existing).is_err());
    assert!(check_spawned(&[entry("n1", &["elsewhere"]), entry("n2", &["n1"])]).is_ok());
    assert!(check_spawned(&[entry("n1", &["n2"]), entry("n2", &[])]).is_err());
}

#[test]
fn first_wave_respects_the_cap_and_dependencies() {
    let plan = [
        entry("a", &[]),
        entry("b", &["a"]),
        entry("c", &[]),
        entry("d", &[]),
    ];
    assert_eq!(
        first_wave(&plan, 2),
        FirstWave {
            release: vec![0, 2],
            ready: vec![3]
        }
    );
    assert_eq!(first_wave(&plan, 0).release, vec![0, 2, 3]);
}
