//! Unit tests of the graph's formats: hostile ids, types and errors stay inside their labels.

use super::*;

fn hostile() -> TaskGraph {
    TaskGraph {
        task: "t\"1".into(),
        state: "running",
        nodes: vec![
            Node {
                id: "a\"];\nevil -> x; //".into(),
                worker_type: "w<script>#1`".into(),
                state: NodeState::Failed,
                attempts: Some(3),
                error: Some("boom \\\" }\n digraph".into()),
            },
            Node {
                id: "b".into(),
                worker_type: "default".into(),
                state: NodeState::Pending,
                attempts: None,
                error: None,
            },
        ],
        edges: vec![Edge {
            from: "a\"];\nevil -> x; //".into(),
            to: "b".into(),
        }],
    }
}

/// Quotes in `line` not escaped by a backslash (a backslash escapes the character after it).
fn unescaped_quotes(line: &str) -> usize {
    let mut count = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => count += 1,
            _ => {}
        }
    }
    count
}

#[test]
fn dot_keeps_hostile_text_inside_quoted_labels() {
    let dot = to_dot(&hostile());
    // One line per statement: nothing a label holds starts a line of its own.
    let lines: Vec<&str> = dot.lines().collect();
    assert_eq!(lines.len(), 8, "{dot}");
    assert!(
        lines[4].starts_with("  n0 [label=\"a\\\"];\\\\nevil"),
        "{dot}"
    );
    assert_eq!(lines[6], "  n0 -> n1;");
    assert!(!dot.contains("\nevil"), "{dot}");
    // Every quote inside a label is escaped: an even count of unescaped quotes per line.
    for line in &lines {
        assert_eq!(unescaped_quotes(line) % 2, 0, "{line}");
    }
}

#[test]
fn mermaid_names_nodes_by_position_and_escapes_labels() {
    let mermaid = to_mermaid(&hostile());
    assert!(mermaid.starts_with("flowchart LR\n"));
    assert!(mermaid.contains("  n0 --> n1\n"), "{mermaid}");
    assert!(mermaid.contains("w#lt;script#gt;#35;1#96;"), "{mermaid}");
    assert!(mermaid.contains("a#quot;];\\nevil"), "{mermaid}");
    assert!(!mermaid.contains("<script>"), "{mermaid}");
    assert_eq!(mermaid.lines().count(), 1 + 2 + 1 + 5, "{mermaid}");
}

#[test]
fn json_names_states_in_lowercase() {
    let json = serde_json::to_value(hostile()).unwrap_or_default();
    assert_eq!(json["nodes"][0]["state"], "failed");
    assert_eq!(json["nodes"][1]["state"], "pending");
    assert_eq!(json["edges"][0]["to"], "b");
}
