//! `primes`: counts the primes below `limit`, in `parts` slices — a kind written outside Chorus.

use std::collections::BTreeSet;

use chorus_shared::kinds::{HandlerContext, Kind, KindError, Plan};
use serde::{Deserialize, Serialize};

/// The kind. `revision` names this definition of it: services announce it as the kind's
/// fingerprint (`rust:primes:<revision>`), so that while a changed `primes` is rolled out one
/// service at a time, each task's subtasks run on the definition it was planned with.
pub struct Primes {
    /// Bumped whenever a build changes what `primes` computes.
    pub revision: String,
}

impl Default for Primes {
    fn default() -> Self {
        Self {
            revision: "1".to_owned(),
        }
    }
}

/// Task input.
#[derive(Deserialize)]
pub struct PrimesInput {
    /// Count primes in `[0, limit)`.
    pub limit: u64,
    /// Number of subtasks.
    pub parts: u64,
}

/// One slice `[from, to)`.
#[derive(Serialize, Deserialize)]
pub struct Range {
    from: u64,
    to: u64,
}

/// Primes found in a slice, and the revision of the handler that counted them.
#[derive(Serialize, Deserialize)]
pub struct Count {
    primes: u64,
    #[serde(default)]
    revision: String,
}

/// The task's result.
#[derive(Serialize)]
pub struct Total {
    /// Primes below `limit`.
    pub primes: u64,
    /// Revisions of the handlers that counted them: one, unless a roll-out retired the
    /// definition the task was planned with while it ran.
    pub revisions: BTreeSet<String>,
    /// Revision of the synthesis.
    pub synthesized_by: String,
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

impl Kind for Primes {
    type Input = PrimesInput;
    type Subtask = Range;
    type Output = Count;
    type Final = Total;
    // Planning and synthesis only compute: small ones run on the services' own thread.
    const INLINE: bool = true;

    fn name(&self) -> &str {
        "primes"
    }

    fn small_plan(&self, input: &PrimesInput) -> bool {
        input.parts <= 1_000
    }

    fn plan(&self, input: &PrimesInput) -> Result<Plan<Range>, KindError> {
        if input.parts == 0 || input.parts > 10_000 {
            return Err(KindError::fatal("parts must be between 1 and 10000"));
        }
        let step = input.limit.div_ceil(input.parts).max(1);
        let ranges: Vec<Range> = (0..input.parts)
            .map(|i| Range {
                from: (i * step).min(input.limit),
                to: ((i + 1) * step).min(input.limit),
            })
            .collect();
        Ok(ranges.into())
    }

    async fn handle(&self, range: Range, _context: HandlerContext) -> Result<Count, KindError> {
        Ok(Count {
            primes: (range.from..range.to).filter(|&n| is_prime(n)).count() as u64,
            revision: self.revision.clone(),
        })
    }

    fn synthesize(
        &self,
        _input: &PrimesInput,
        outputs: Vec<(String, Count)>,
    ) -> Result<Total, KindError> {
        Ok(Total {
            primes: outputs.iter().map(|(_, count)| count.primes).sum(),
            revisions: outputs.iter().map(|(_, c)| c.revision.clone()).collect(),
            synthesized_by: self.revision.clone(),
        })
    }

    fn fingerprint(&self) -> String {
        format!("rust:primes:{}", self.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_the_primes_below_a_hundred() {
        let input = PrimesInput {
            limit: 100,
            parts: 7,
        };
        let mut outputs = Vec::new();
        let primes = Primes::default();
        for (i, range) in primes
            .plan(&input)
            .expect("plan")
            .into_subtasks()
            .into_iter()
            .enumerate()
        {
            let context = HandlerContext {
                task: "t".into(),
                subtask: i.to_string(),
                attempt: 1,
                max_attempts: 1,
                ..HandlerContext::default()
            };
            outputs.push((
                i.to_string(),
                primes.handle(range, context).await.expect("handle"),
            ));
        }
        assert_eq!(
            primes
                .synthesize(&input, outputs)
                .expect("synthesize")
                .primes,
            25
        );
    }
}
