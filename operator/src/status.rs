//! Conditions and phase. `lastTransitionTime` moves only when a condition's
//! status flips, and nothing in the status changes on every pass, so a
//! reconcile of unchanged state computes an identical status and writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as computed now (without a transition time yet).
pub struct Wanted<'a> {
    pub kind: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Merges `wanted` into `old`, keeping `lastTransitionTime` unless the status flipped.
pub fn merge_conditions(old: &[Condition], wanted: &[Wanted], generation: Option<i64>, now: Time) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" }.to_string();
            let previous = old.iter().find(|c| c.type_ == w.kind);
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: w.kind.to_string(),
                status,
                reason: w.reason.to_string(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = merge_conditions(
            &[],
            &[Wanted { kind: "Ready", status: false, reason: "A", message: "m".into() }],
            Some(1),
            t(100),
        );
        let same = merge_conditions(
            &first,
            &[Wanted { kind: "Ready", status: false, reason: "B", message: "n".into() }],
            Some(2),
            t(200),
        );
        assert_eq!(same[0].last_transition_time, t(100));
        assert_eq!(same[0].reason, "B");
        let flipped = merge_conditions(
            &same,
            &[Wanted { kind: "Ready", status: true, reason: "C", message: "o".into() }],
            Some(2),
            t(300),
        );
        assert_eq!(flipped[0].last_transition_time, t(300));
    }
}
