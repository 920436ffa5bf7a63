//! Unit tests of the AMQP helpers that need no broker.

use super::*;
use lapin::types::FieldTable;

#[test]
fn integer_headers_of_any_width_are_read() {
    // Quorum queues send x-delivery-count as a signed long long; others use other widths.
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("a"), AMQPValue::LongLongInt(7));
    headers.insert(ShortString::from("b"), AMQPValue::ShortUInt(8));
    headers.insert(
        ShortString::from("c"),
        AMQPValue::LongString(LongString::from(b"9".to_vec())),
    );
    headers.insert(ShortString::from("d"), AMQPValue::LongInt(-1));
    let properties = BasicProperties::default().with_headers(headers);
    assert_eq!(header_u64(&properties, "a"), Some(7));
    assert_eq!(header_u64(&properties, "b"), Some(8));
    assert_eq!(header_u64(&properties, "c"), None);
    assert_eq!(header_u64(&properties, "d"), None);
    assert_eq!(header_str(&properties, "c").as_deref(), Some("9"));
    assert_eq!(header_u64(&properties, "missing"), None);
}

#[test]
fn short_ids_are_cut_at_a_character_boundary() {
    assert_eq!(short_id("task-1").as_str(), "task-1");
    // 254 ASCII bytes then a two-byte character straddling the limit.
    let long = format!("{}é", "a".repeat(SHORT_STRING_MAX_BYTES - 1));
    assert_eq!(
        short_id(&long).as_str(),
        "a".repeat(SHORT_STRING_MAX_BYTES - 1)
    );
    let longer = "b".repeat(SHORT_STRING_MAX_BYTES + 10);
    assert_eq!(short_id(&longer).as_str().len(), SHORT_STRING_MAX_BYTES);
}

mod reply {
    use crate::{
        amqp::{encode_reply, is_chorus_queue, reply_message, reply_target},
        protocol::{self, Encoding, Outcome, ReplyTarget},
    };
    use lapin::{types::ShortString, BasicProperties};
    use rmpv::Value;

    fn waiter(encoding: Encoding) -> ReplyTarget {
        ReplyTarget {
            reply_to: "replies".into(),
            correlation_id: "corr".into(),
            encoding,
        }
    }

    #[test]
    fn the_correlation_id_defaults_to_the_task_id() {
        let properties = BasicProperties::default().with_reply_to(ShortString::from("replies"));
        assert_eq!(
            reply_target(&properties, "t1", Encoding::Json),
            Some(ReplyTarget {
                reply_to: "replies".into(),
                correlation_id: "t1".into(),
                encoding: Encoding::Json,
            })
        );
        let properties = properties.with_correlation_id(ShortString::from("c9"));
        let target = reply_target(&properties, "t1", Encoding::Msgpack);
        assert_eq!(target.map(|t| t.correlation_id), Some("c9".to_owned()));
    }

    #[test]
    fn no_reply_to_means_no_reply() {
        let properties = BasicProperties::default().with_correlation_id(ShortString::from("c9"));
        assert_eq!(reply_target(&properties, "t1", Encoding::Json), None);
    }

    #[test]
    fn chorus_queues_are_never_reply_targets() {
        for queue in [
            "chorus.results",
            "chorus.tasks",
            "chorus.subtasks.gpu",
            "chorus.dead",
        ] {
            let properties = BasicProperties::default().with_reply_to(ShortString::from(queue));
            assert_eq!(
                reply_target(&properties, "t1", Encoding::Json),
                None,
                "{queue}"
            );
        }
        assert!(!is_chorus_queue("amq.gen-abc"));
        assert!(!is_chorus_queue("chorusreplies"));
    }

    #[test]
    fn replies_go_in_the_waiters_encoding() {
        let outcome = Outcome::rejected("t1", "bad");
        let msgpack =
            protocol::encode(&outcome).unwrap_or_else(|e| panic!("an outcome encodes: {e}"));
        let json = Encoding::Json
            .encode(&outcome)
            .unwrap_or_else(|e| panic!("an outcome encodes: {e}"));
        let to_json = waiter(Encoding::Json);
        assert_eq!(
            encode_reply(&to_json, &outcome, &msgpack),
            (Encoding::Json, json)
        );
        let to_msgpack = waiter(Encoding::Msgpack);
        assert_eq!(
            encode_reply(&to_msgpack, &outcome, &msgpack),
            (Encoding::Msgpack, msgpack.clone())
        );
    }

    #[test]
    fn an_outcome_json_cannot_carry_goes_as_msgpack() {
        let mut outcome = Outcome::rejected("t1", "bad");
        // JSON object keys are strings: an array key has no JSON form.
        outcome.output = Value::Map(vec![(Value::Array(vec![]), Value::from(1))]);
        let msgpack =
            protocol::encode(&outcome).unwrap_or_else(|e| panic!("an outcome encodes: {e}"));
        assert_eq!(
            encode_reply(&waiter(Encoding::Json), &outcome, &msgpack),
            (Encoding::Msgpack, msgpack.clone())
        );
    }

    #[test]
    fn a_reply_message_goes_to_the_reply_queue_with_its_correlation_id() {
        let to = waiter(Encoding::Json);
        let message = reply_message(&to, Encoding::Json, b"{}");
        assert_eq!(message.exchange, "");
        assert_eq!(message.routing_key, "replies");
        assert!(!message.mandatory);
        assert_eq!(
            message
                .properties
                .content_type()
                .as_ref()
                .map(ShortString::as_str),
            Some(protocol::JSON)
        );
        assert_eq!(
            message
                .properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("corr")
        );
        assert_eq!(
            message.properties.delivery_mode(),
            &Some(crate::amqp::PERSISTENT)
        );
    }
}
