//! Unit tests of the listener's settings and the dead-letter reason classes.
#![allow(clippy::unwrap_used)]

use super::{metrics::reason_class, HttpArgs, Listen};

#[test]
fn listen_settings() {
    let args = |value: Option<&str>| HttpArgs {
        http_listen: value.map(str::to_owned),
    };
    let default = "127.0.0.1:9611";
    assert_eq!(
        args(None).listen(default),
        Ok(Listen::Default(default.parse().unwrap()))
    );
    assert_eq!(args(Some("off")).listen(default), Ok(Listen::Off));
    assert_eq!(
        args(Some("0.0.0.0:9700")).listen(default),
        Ok(Listen::Explicit("0.0.0.0:9700".parse().unwrap()))
    );
    assert!(args(Some("localhost")).listen(default).is_err());
    assert!(args(Some("1.2.3.4:99999")).listen(default).is_err());
}

#[test]
fn reason_classes_are_bounded() {
    for (reason, class) in [
        ("cannot decode body: x", "malformed"),
        ("body is 9 bytes, over the limit of 1 bytes", "oversized"),
        ("unknown kind \"x\"; this deployment knows: a", "unknown-kind"),
        ("failed after 3 attempt(s): boom", "failed"),
        ("failed after 1 attempt(s): injected poison", "failed"),
        (
            "failed after 3 attempt(s): started 3 times without finishing: its handler keeps crashing",
            "poison",
        ),
        ("anything else", "invalid"),
    ] {
        assert_eq!(reason_class(reason), class, "{reason}");
    }
}
