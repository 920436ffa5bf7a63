//! Parsing of rate limit flags.

use super::*;

#[test]
fn limits_parse() {
    let limit: RateLimit = "api=50".parse().expect("parse");
    assert_eq!(limit.worker_type, "api");
    assert!((limit.rate - 50.0).abs() < f64::EPSILON);
    assert_eq!(limit.burst, 1);
    assert_eq!("gpu=0.5:3".parse::<RateLimit>().expect("burst").burst, 3);
    for bad in ["api", "api=0", "api=-1", "API=1", "api=1:0", "api=x"] {
        assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
    }
}
