//! Unit tests of the node order; connecting to a real cluster is tested in
//! `tests/tests/amqp_nodes.rs` and `tests/tests/faults_cluster.rs`.

use super::*;

#[test]
fn every_node_is_tried_once_from_the_start_wrapping_around() {
    assert_eq!(attempt_order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(attempt_order(1, 3).collect::<Vec<_>>(), [1, 2, 0]);
    assert_eq!(attempt_order(5, 3).collect::<Vec<_>>(), [2, 0, 1]);
    assert_eq!(attempt_order(7, 1).collect::<Vec<_>>(), [0]);
    assert_eq!(attempt_order(0, 0).count(), 0);
}

#[test]
fn nodes_are_logged_without_passwords() {
    let nodes = [
        Endpoint::new("amqp://svc:s3cret@n1:5672/%2f"),
        Endpoint::new("amqp://n2:5672/%2f"),
    ];
    assert_eq!(
        redacted_nodes(&nodes),
        "amqp://svc:***@n1:5672/%2f,amqp://n2:5672/%2f"
    );
}

#[tokio::test]
async fn an_empty_list_is_a_settings_error() {
    let error = connect_any(&[], 0, "test", Duration::from_secs(1))
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(error.as_deref(), Some("--amqp-url: no URL"));
}
