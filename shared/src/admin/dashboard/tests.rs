//! Unit tests of the dashboard's rendering: templates compile, text from tasks is escaped in
//! every page, links percent-encode ids, and the graph's SVG carries the state classes.

#![allow(clippy::unwrap_used)]

use super::{pages::task_href, svg, templates};
use crate::admin::graph::{Edge, Node, NodeState, TaskGraph};

const HOSTILE: &str = "<script>alert(1)</script>\"'&";

#[test]
fn templates_compile_and_escape_task_text() {
    let env = templates().unwrap();
    let html = env
        .get_template("tasks.html")
        .unwrap()
        .render(minijinja::context! {
            title => "Tasks",
            rows => vec![minijinja::context! {
                id => HOSTILE, href => task_href(HOSTILE), kind => HOSTILE, status => "running",
                submitted => "t", finished => Option::<String>::None, settled => 1, subtasks => 2,
            }],
            statuses => ["running"],
            kind => HOSTILE,
            limit => 10,
        })
        .unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{html}"
    );
    let error = env
        .get_template("error.html")
        .unwrap()
        .render(minijinja::context! { title => "Error", message => HOSTILE })
        .unwrap();
    assert!(!error.contains("<script>"), "{error}");
}

#[test]
fn links_percent_encode_ids() {
    assert_eq!(task_href("a-b_c.9~"), "/tasks/a-b_c.9~");
    assert_eq!(task_href("x/../\"y z"), "/tasks/x%2F..%2F%22y%20z");
}

fn graph(nodes: usize) -> TaskGraph {
    TaskGraph {
        task: "t".into(),
        state: "running",
        nodes: (0..nodes)
            .map(|i| Node {
                id: if i == 0 {
                    HOSTILE.into()
                } else {
                    format!("s{i}")
                },
                worker_type: "default".into(),
                state: if i == 0 {
                    NodeState::Failed
                } else {
                    NodeState::Pending
                },
                attempts: None,
                error: None,
            })
            .collect(),
        edges: (1..nodes)
            .map(|i| Edge {
                from: if i == 1 {
                    HOSTILE.into()
                } else {
                    format!("s{}", i - 1)
                },
                to: format!("s{i}"),
            })
            .collect(),
    }
}

#[test]
fn svg_nodes_carry_state_classes_and_escaped_labels() {
    let drawn = svg::draw(&graph(3)).unwrap();
    assert!(
        drawn.contains("class=\"node st-failed\" data-node=\"0\""),
        "{drawn}"
    );
    assert!(
        drawn.contains("class=\"node st-pending\" data-node=\"2\""),
        "{drawn}"
    );
    assert!(!drawn.contains("<script>"), "{drawn}");
    assert!(svg::draw(&graph(0)).is_none());
}

#[test]
fn svg_draws_at_most_max_drawn_nodes() {
    let drawn = svg::draw(&graph(svg::MAX_DRAWN + 20)).unwrap();
    assert!(drawn.contains(&format!("data-node=\"{}\"", svg::MAX_DRAWN - 1)));
    assert!(!drawn.contains(&format!("data-node=\"{}\"", svg::MAX_DRAWN)));
}
