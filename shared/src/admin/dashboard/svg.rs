//! A task's subtask graph drawn as SVG on the server by layout-rs (a Rust implementation of
//! Graphviz's `dot` layout), so the page needs no JavaScript library and no build step. Each
//! node is a `<g class="node st-<state>" data-node="<index>">`: the page's stylesheet colours
//! it by state and its script recolours it live by index. Labels are escaped by layout-rs's
//! SVG writer; the only attributes written by us hold a state name and a number, never text
//! from a task.

use layout::{
    backends::svg::SVGWriter,
    core::{base::Orientation, color::Color, geometry::get_size_for_str, style::StyleAttr},
    std_shapes::shapes::{Arrow, Element, ShapeKind},
    topo::layout::VisualGraph,
};

use crate::{
    admin::graph::{NodeState, TaskGraph},
    text,
};

/// Most subtasks drawn: the layout's cost grows faster than linearly, and a page of more boxes
/// is not readable anyway; the page says "graph of the first N subtasks" past it.
pub const MAX_DRAWN: usize = 150;
/// Longest id or worker type in a box, in bytes.
const MAX_LABEL_BYTES: usize = 40;
/// Font size of the labels, in px.
const FONT_SIZE: usize = 14;

/// The class of a node in `state` (`st-released`, ...), matched by the stylesheet and script.
pub fn state_class(state: NodeState) -> String {
    format!("st-{}", state.as_str())
}

/// The SVG of the first [`MAX_DRAWN`] subtasks of `graph` and the edges between them; `None`
/// for a graph without subtasks, or should the layout fail (it panics on some inputs it does
/// not support; the page then shows the table of subtasks alone).
pub fn draw(graph: &TaskGraph) -> Option<String> {
    if graph.nodes.is_empty() {
        return None;
    }
    let graph = graph.clone();
    std::panic::catch_unwind(move || layout(&graph)).ok()
}

fn layout(graph: &TaskGraph) -> String {
    let mut visual = VisualGraph::new(Orientation::TopToBottom);
    let drawn = &graph.nodes[..graph.nodes.len().min(MAX_DRAWN)];
    let mut handles = std::collections::HashMap::new();
    for (index, node) in drawn.iter().enumerate() {
        let label = format!(
            "{}\n{}",
            text::bounded(&node.id, MAX_LABEL_BYTES),
            text::bounded(&node.worker_type, MAX_LABEL_BYTES)
        );
        let size = get_size_for_str(&label, FONT_SIZE);
        let look = StyleAttr::new(
            Color::new(0x000000ff),
            1,
            Some(Color::new(0xe0e0e0ff)),
            4,
            FONT_SIZE,
        );
        let properties = format!(
            "class=\"node {}\" data-node=\"{index}\"",
            state_class(node.state)
        );
        let element = Element::create_with_properties(
            ShapeKind::new_box(&label),
            look,
            Orientation::LeftToRight,
            size,
            properties,
        );
        handles.insert(node.id.as_str(), visual.add_node(element));
    }
    for edge in &graph.edges {
        if let (Some(from), Some(to)) = (
            handles.get(edge.from.as_str()),
            handles.get(edge.to.as_str()),
        ) {
            visual.add_edge(Arrow::simple(""), *from, *to);
        }
    }
    let mut writer = SVGWriter::new();
    visual.do_it(false, false, false, &mut writer);
    writer.finalize()
}
