//! Unit tests of the rate measurement's arithmetic.

use super::{most_in_window, summarize};

/// Samples every 0.05 s of a run whose `burst` calls start at 0.01 s and the rest one every
/// 0.1 s (600 a minute) after, until `calls` have started.
fn steady(burst: u64, calls: u64) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    for i in 0_u32.. {
        let t = f64::from(i) * 0.05;
        let seen = if t < 0.01 {
            0
        } else {
            (burst + ((t - 0.01) / 0.1).floor() as u64).min(calls)
        };
        samples.push((t, seen));
        if seen == calls {
            break;
        }
    }
    samples
}

#[test]
fn a_steady_rate_is_measured_as_itself() {
    let table = summarize(&steady(1, 301), 600, 1, 301, 30);
    assert!(
        (table.achieved_rpm - 600.0).abs() < 600.0 * 0.01,
        "{table:?}"
    );
    assert!(table.within_5_percent);
    assert!(table.windows.iter().all(|w| w.within), "{table:?}");
    assert_eq!(table.windows.last().map(|w| w.seconds), Some(30));
}

#[test]
fn the_burst_does_not_count_towards_the_rate() {
    // Its calls started before the first refill.
    let table = summarize(&steady(20, 320), 600, 20, 320, 30);
    assert!(
        (table.achieved_rpm - 600.0).abs() < 600.0 * 0.01,
        "{table:?}"
    );
    assert!(table.windows.iter().all(|w| w.within), "{table:?}");
}

#[test]
fn a_burst_above_the_allowance_is_reported() {
    // 20 calls at once, then the steady rate: 10 s hold 20 + 100, above 600 * 10 / 60 + 1.
    let table = summarize(&steady(20, 320), 600, 1, 320, 30);
    let ten = table
        .windows
        .iter()
        .find(|w| w.seconds == 10)
        .map(|w| w.within);
    assert_eq!(ten, Some(false), "{table:?}");
}

#[test]
fn windows_count_calls_between_polls_at_most_that_far_apart() {
    let samples = [(0.0, 0), (0.5, 5), (1.0, 6), (1.5, 20), (2.0, 21)];
    assert_eq!(most_in_window(&samples, 0.5), 14);
    assert_eq!(most_in_window(&samples, 1.0), 15);
    assert_eq!(most_in_window(&samples, 10.0), 21);
}
