//! The worker scaling decision: KEDA's RabbitMQ scaler (`QueueLength` mode) driving an HPA with
//! default behaviour, folded into one pure state machine so users get what they already know.
//!
//! Pure and deterministic: no I/O, no async, the clock is injected. Once per polling interval
//! the runner reads the queue depth (ready + unacknowledged messages) and `spec.replicas` from
//! the worker's `/scale`, calls [`Scaler::evaluate`], and writes [`Decision::desired`] back when it
//! differs from the current count. Each rule names the KEDA or HPA code whose behaviour it mirrors:
//! KEDA `pkg/scaling/executor/scale_scaledobjects.go` (0 ↔ 1, cooldown), `pkg/fallback/fallback.go`
//! (fallback), and kube-controller-manager `pkg/controller/podautoscaler/` (`replica_calculator.go`
//! for the tolerance, `horizontal.go` for stabilization and scaling policies).

use std::cmp::Ordering;
use std::ops::Add;
use std::time::Duration;

/// Kubernetes replica counts are `int32`; a larger maximum could not be written to `/scale`.
const MAX_KUBERNETES_REPLICAS: u32 = 2_147_483_647;

/// A point in time: milliseconds since an epoch the caller picks (for example the operator's start,
/// `Millis::from(started.elapsed())`). Injected so that decisions are reproducible in tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<Duration> for Millis {
    fn from(since_epoch: Duration) -> Self {
        Millis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Add<Duration> for Millis {
    type Output = Millis;

    fn add(self, rhs: Duration) -> Millis {
        Millis(self.0.saturating_add(Millis::from(rhs).0))
    }
}

/// HPA `behavior.scaleUp` with its default shape: `selectPolicy: Max` over a `Percent` and a `Pods`
/// policy sharing one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleUpPolicy {
    /// May add this percentage of the replicas counted at the start of the period (HPA default 100).
    pub percent: u32,
    /// May add this many pods per period (HPA default 4).
    pub pods: u32,
    /// `periodSeconds` of both policies (HPA default 15 s).
    pub period: Duration,
}

impl Default for ScaleUpPolicy {
    fn default() -> Self {
        ScaleUpPolicy { percent: 100, pods: 4, period: Duration::from_secs(15) }
    }
}

/// Scaler settings. Defaults are KEDA's and the HPA's, so an empty spec behaves like a bare
/// `ScaledObject` with a RabbitMQ trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// KEDA `minReplicaCount` (default 0, which allows scaling to zero).
    pub min_replicas: u32,
    /// KEDA `maxReplicaCount` (default 100).
    pub max_replicas: u32,
    /// KEDA trigger `value` in `QueueLength` mode: messages per replica (default 20); must be > 0.
    pub target_per_replica: u64,
    /// KEDA `activationValue`: the queue is active when its depth is above this (default 0).
    pub activation_threshold: u64,
    /// HPA `--horizontal-pod-autoscaler-tolerance` (default 0.1).
    pub tolerance: f64,
    /// HPA `behavior.scaleDown.stabilizationWindowSeconds` (default 300 s).
    pub scale_down_stabilization: Duration,
    /// HPA `behavior.scaleUp` policies (default: +100 % or +4 pods per 15 s, whichever is larger).
    pub scale_up: ScaleUpPolicy,
    /// KEDA `cooldownPeriod` (default 300 s): how long the queue must stay inactive before → 0.
    pub cooldown_period: Duration,
    /// KEDA `fallback.failureThreshold` (default 3): fallback starts with the next failure after this many.
    pub failure_threshold: u32,
    /// KEDA `fallback.replicas`, clamped to `[min, max]`; `None` keeps `max(min, current)`.
    pub fallback_replicas: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_replicas: 0,
            max_replicas: 100,
            target_per_replica: 20,
            activation_threshold: 0,
            tolerance: 0.1,
            scale_down_stabilization: Duration::from_secs(300),
            scale_up: ScaleUpPolicy::default(),
            cooldown_period: Duration::from_secs(300),
            failure_threshold: 3,
            fallback_replicas: None,
        }
    }
}

impl Config {
    /// Rejects settings that have no sensible meaning (the CRD's CEL rules should stop them first).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.target_per_replica == 0 {
            return Err(ConfigError::ZeroTarget);
        }
        if self.max_replicas == 0 {
            return Err(ConfigError::ZeroMax);
        }
        if self.max_replicas > MAX_KUBERNETES_REPLICAS {
            return Err(ConfigError::MaxTooLarge(self.max_replicas));
        }
        if self.min_replicas > self.max_replicas {
            return Err(ConfigError::MinAboveMax { min: self.min_replicas, max: self.max_replicas });
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(ConfigError::Tolerance(self.tolerance));
        }
        if self.scale_up.percent == 0 && self.scale_up.pods == 0 {
            return Err(ConfigError::NoScaleUp);
        }
        Ok(())
    }
}

/// Why a [`Config`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("target per replica must be greater than 0")]
    ZeroTarget,
    #[error("max replicas must be at least 1")]
    ZeroMax,
    #[error("max replicas {0} exceeds the Kubernetes limit of {MAX_KUBERNETES_REPLICAS}")]
    MaxTooLarge(u32),
    #[error("min replicas {min} is greater than max replicas {max}")]
    MinAboveMax { min: u32, max: u32 },
    #[error("tolerance must be a finite number >= 0, got {0}")]
    Tolerance(f64),
    #[error("the scale-up policy allows no growth: percent and pods are both 0")]
    NoScaleUp,
}

/// What one evaluation decided, for `/scale`, the status, Events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The replica count to write to `/scale` (unchanged when the reason is a hold).
    pub desired: u32,
    pub reason: Reason,
    /// True while the depth has failed to read more than `failure_threshold` times in a row.
    pub fallback: bool,
    /// The observed queue depth; `None` when the read failed.
    pub depth: Option<u64>,
    /// `ceil(depth / target_per_replica)` before tolerance, stabilization, policy and bounds; the
    /// fallback count in fallback; the current count after a failed read.
    pub raw_recommendation: u32,
}

/// Why the count changed or did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// More replicas: demand rose (at most as fast as the scale-up policy), or the count was below min.
    ScaleUp,
    /// Fewer replicas: every recommendation of the stabilization window was lower, or the count was above max.
    ScaleDown,
    /// No change.
    Hold(HoldReason),
    /// 0 → 1 because the depth rose above the activation threshold (KEDA `scaleFromZero`).
    Activate,
    /// → 0 because the queue stayed inactive for longer than the cooldown (KEDA `scaleToZero`).
    Deactivate,
    /// Driven by the fallback count because the depth could not be read (KEDA `fallback`).
    Fallback,
}

/// Why the count did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// Messages per replica are within `tolerance` of the target.
    WithinTolerance,
    /// The recommendation is the current count.
    Steady,
    /// A lower recommendation is held up by a higher one within the stabilization window.
    Stabilized,
    /// A higher recommendation, but this period's scale-up allowance is already used.
    PolicyLimited,
    /// A lower recommendation, but the count is already at its minimum.
    AtMinimum,
    /// A higher recommendation, but the count is already at its maximum.
    AtMaximum,
    /// At zero and the depth is not above the activation threshold.
    Idle,
    /// The queue is inactive and min is 0: waiting for the cooldown before scaling to zero.
    CoolingDown,
    /// The depth could not be read, not yet more than `failure_threshold` times in a row.
    ReadError,
}

impl Reason {
    /// A stable, unique name for Events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaleUp => "ScaleUp",
            Reason::ScaleDown => "ScaleDown",
            Reason::Hold(hold) => hold.as_str(),
            Reason::Activate => "Activate",
            Reason::Deactivate => "Deactivate",
            Reason::Fallback => "Fallback",
        }
    }
}

impl HoldReason {
    /// A stable, unique name for Events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::WithinTolerance => "WithinTolerance",
            HoldReason::Steady => "Steady",
            HoldReason::Stabilized => "Stabilized",
            HoldReason::PolicyLimited => "PolicyLimited",
            HoldReason::AtMinimum => "AtMinimum",
            HoldReason::AtMaximum => "AtMaximum",
            HoldReason::Idle => "Idle",
            HoldReason::CoolingDown => "CoolingDown",
            HoldReason::ReadError => "ReadError",
        }
    }
}

/// The decision engine with the memory KEDA and the HPA keep between evaluations.
#[derive(Debug, Clone)]
pub struct Scaler {
    config: Config,
    /// HPA `recommendations`: time-stamped, unstabilized recommendations, pruned to the window.
    recommendations: Vec<(Millis, u32)>,
    /// HPA `scaleUpEvents`/`scaleDownEvents`: our own signed changes, pruned to the policy period.
    scale_events: Vec<(Millis, i64)>,
    /// KEDA `status.lastActiveTime`; `None` until the first evaluation.
    last_active: Option<Millis>,
    /// KEDA `status.health[..].numberOfFailures`: consecutive failed reads.
    failures: u32,
}

impl Scaler {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Scaler { config, recommendations: Vec::new(), scale_events: Vec::new(), last_active: None, failures: 0 })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies a changed spec and keeps the history, as the HPA keeps its recommendations when an
    /// HPA is edited (a new `Scaler` would start over: safe, but forgetful).
    pub fn set_config(&mut self, config: Config) -> Result<(), ConfigError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// One evaluation. `observation` is the queue depth (ready + unacknowledged) or the read error
    /// (its content is not used; log it before), `current` is `spec.replicas` from `/scale`.
    /// Like the HPA, the scaler assumes a changed `desired` gets written: it records the change
    /// for the scale-up policy.
    pub fn evaluate<E>(&mut self, now: Millis, observation: Result<u64, E>, current: u32) -> Decision {
        self.prune(now);
        if self.last_active.is_none() {
            // The HPA seeds a new autoscaler's window with the current count, so an operator restart
            // never scales down at once. KEDA keeps `lastActiveTime` in status across restarts; we keep
            // it in memory, so the cooldown restarts too instead of allowing an immediate → 0.
            self.recommendations.push((now, current));
            self.last_active = Some(now);
        }

        let depth = observation.ok();
        let mut active = false;
        match depth {
            Some(depth) => {
                // KEDA resets the failure count on every good read, which also ends fallback.
                self.failures = 0;
                // KEDA RabbitMQ scaler: active = messages > activationValue; `lastActiveTime`
                // advances on every active evaluation.
                active = depth > self.config.activation_threshold;
                if active {
                    self.last_active = Some(now);
                }
            }
            None => self.failures = self.failures.saturating_add(1),
        }
        // KEDA `GetMetricsWithFallback`: `numberOfFailures > failureThreshold`.
        let fallback = depth.is_none() && self.failures > self.config.failure_threshold;
        let (min, max) = (self.config.min_replicas, self.config.max_replicas);
        let raw = match depth {
            Some(depth) => saturate(depth.div_ceil(self.config.target_per_replica)),
            None if fallback => self.config.fallback_replicas.unwrap_or(current.max(min)).clamp(min, max),
            None => current,
        };

        let (desired, reason) = self.decide(now, current, depth, active, fallback, raw);

        // The HPA records its own rescales (not KEDA's moves to and from zero) for the policy limit.
        if current > 0 && desired > 0 && desired != current {
            self.scale_events.push((now, i64::from(desired) - i64::from(current)));
        }
        Decision { desired, reason, fallback, depth, raw_recommendation: raw }
    }

    fn decide(
        &mut self,
        now: Millis,
        current: u32,
        depth: Option<u64>,
        active: bool,
        fallback: bool,
        raw: u32,
    ) -> (u32, Reason) {
        let (min, max) = (self.config.min_replicas, self.config.max_replicas);
        // Out-of-range counts are fixed at once, before any metric is needed: the HPA does this for
        // `current > max` and `current < min`, KEDA (`scaleToMinReplicas`, `scaleFromZero`) for 0 < min.
        if current > max {
            return (max, Reason::ScaleDown);
        }
        if current < min {
            return (min, Reason::ScaleUp);
        }
        if current == 0 {
            // min is 0 here. The HPA is disabled at zero replicas; only KEDA acts.
            return match depth {
                // KEDA `doFallbackScaling`: at zero the fallback count is written directly.
                None if fallback => (raw, Reason::Fallback),
                None => (0, Reason::Hold(HoldReason::ReadError)),
                // KEDA `scaleFromZero`: to max(minReplicaCount, 1), then the HPA takes over.
                Some(_) if active => (1, Reason::Activate),
                Some(_) => (0, Reason::Hold(HoldReason::Idle)),
            };
        }
        let usage_ratio = match depth {
            Some(depth) => depth as f64 / (self.config.target_per_replica as f64 * f64::from(current)),
            // KEDA `doFallback` hands the HPA a synthetic metric of fallback × target, so the HPA's
            // tolerance, stabilization and policy still shape the move to the fallback count.
            None if fallback => f64::from(raw) / f64::from(current),
            // The HPA does not scale without a metric (`ScalingActive: False`).
            None => return (current, Reason::Hold(HoldReason::ReadError)),
        };
        // KEDA `scaleToZero`: with min 0 and no active trigger, → 0 from any count once
        // `lastActiveTime + cooldownPeriod` is strictly in the past.
        let cooling_down = min == 0 && depth.is_some() && !active;
        let last_active = self.last_active.unwrap_or(now);
        if cooling_down && now.since(last_active) > self.config.cooldown_period {
            return (0, Reason::Deactivate);
        }

        let (desired, reason) = self.hpa(now, current, raw, usage_ratio);
        let reason = match reason {
            _ if fallback => Reason::Fallback,
            // KEDA sets its `Active` condition to `ScalerCooldown` while it waits.
            Reason::Hold(_) if cooling_down => Reason::Hold(HoldReason::CoolingDown),
            other => other,
        };
        (desired, reason)
    }

    /// One HPA sync for an `AverageValue` external metric, `1 <= current <= max`.
    fn hpa(&mut self, now: Millis, current: u32, raw: u32, usage_ratio: f64) -> (u32, Reason) {
        // KEDA hands the HPA max(minReplicaCount, 1); 1 → 0 is KEDA's alone.
        let floor = self.config.min_replicas.max(1);
        let max = self.config.max_replicas;

        // `GetExternalPerPodMetricReplicas`: no change while |usage / (target × current) − 1| <= tolerance.
        let within_tolerance = (1.0 - usage_ratio).abs() <= self.config.tolerance;
        let recommendation = if within_tolerance { current } else { raw };

        // `stabilizeRecommendationWithBehaviors`: the scale-up window is 0 (act at once); a scale-down
        // goes only to the highest recommendation of the window (this one included), never past the
        // current count. Entries exactly one window old no longer count (`timestamp.After(cutoff)`).
        let window = self.config.scale_down_stabilization;
        let highest = self
            .recommendations
            .iter()
            .filter(|(at, _)| now.since(*at) < window)
            .map(|&(_, r)| r)
            .fold(recommendation, u32::max);
        self.recommendations.push((now, recommendation));
        let stabilized = current.max(recommendation).min(highest);

        // `convertDesiredReplicasWithBehaviorRate`: scale-up bounded by the policy and max; scale-down
        // bounded by the floor (the default scale-down policy, 100 % per 15 s, never binds).
        let desired = match stabilized.cmp(&current) {
            Ordering::Greater => stabilized.min(self.scale_up_limit(now, current)).min(max),
            Ordering::Less => stabilized.max(floor),
            Ordering::Equal => current,
        };

        let reason = match desired.cmp(&current) {
            Ordering::Greater => Reason::ScaleUp,
            Ordering::Less => Reason::ScaleDown,
            Ordering::Equal => Reason::Hold(match recommendation.cmp(&current) {
                Ordering::Equal if within_tolerance => HoldReason::WithinTolerance,
                Ordering::Equal => HoldReason::Steady,
                Ordering::Greater if current >= max => HoldReason::AtMaximum,
                Ordering::Greater => HoldReason::PolicyLimited,
                Ordering::Less if current <= floor => HoldReason::AtMinimum,
                Ordering::Less => HoldReason::Stabilized,
            }),
        };
        (desired, reason)
    }

    /// `calculateScaleUpLimitWithScalingRules` with `selectPolicy: Max`: the larger of
    /// `ceil(start × (1 + percent / 100))` and `start + pods`, where `start` is the count at the start
    /// of the period (the current count minus our own changes within it), and never below the
    /// current count ("we shouldn't scale up further until the scaleUpEvents will be cleaned up").
    fn scale_up_limit(&self, now: Millis, current: u32) -> u32 {
        let policy = self.config.scale_up;
        let changed: i128 = self
            .scale_events
            .iter()
            .filter(|(at, _)| now.since(*at) < policy.period)
            .map(|&(_, delta)| i128::from(delta))
            .sum();
        let start = i128::from(current) - changed;
        let by_percent = ceil_div(start * (100 + i128::from(policy.percent)), 100);
        let by_pods = start + i128::from(policy.pods);
        let limit = by_percent.max(by_pods).clamp(i128::from(current), i128::from(u32::MAX));
        u32::try_from(limit).unwrap_or(u32::MAX)
    }

    /// Forgets what no rule can look at any more, so memory stays bounded by the polling rate.
    fn prune(&mut self, now: Millis) {
        let window = self.config.scale_down_stabilization;
        self.recommendations.retain(|(at, _)| now.since(*at) < window);
        let period = self.config.scale_up.period;
        self.scale_events.retain(|(at, _)| now.since(*at) < period);
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `ceil(a / b)` for `b > 0`, also for negative `a`.
fn ceil_div(a: i128, b: i128) -> i128 {
    a.div_euclid(b) + i128::from(a.rem_euclid(b) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use HoldReason::*;

    fn at(secs: u64) -> Millis {
        Millis(secs * 1000)
    }

    fn ok(depth: u64) -> Result<u64, ()> {
        Ok(depth)
    }

    fn err() -> Result<u64, ()> {
        Err(())
    }

    /// The design document's example: 1..=20 workers, 50 messages each.
    fn config() -> Config {
        Config { min_replicas: 1, max_replicas: 20, target_per_replica: 50, ..Config::default() }
    }

    fn scaler(config: Config) -> Scaler {
        Scaler::new(config).expect("valid config")
    }

    /// A scaler that saw `current` replicas fully busy at t = 0, evaluated next at t = 301 s, when
    /// every window and the cooldown have passed.
    fn settled(config: Config, current: u32) -> (Scaler, Millis) {
        let mut s = scaler(config);
        let busy = u64::from(current) * s.config().target_per_replica;
        s.evaluate(at(0), ok(busy), current);
        (s, at(301))
    }

    fn step(s: &mut Scaler, t: u64, observation: Result<u64, ()>, current: u32) -> (u32, Reason) {
        let d = s.evaluate(at(t), observation, current);
        (d.desired, d.reason)
    }

    #[test]
    fn table_of_depth_and_current() {
        // (min, depth, current, desired, reason); max 20, target 50, all windows passed.
        let rows: &[(u32, u64, u32, u32, Reason)] = &[
            (1, 0, 1, 1, Reason::Hold(AtMinimum)),
            (1, 50, 1, 1, Reason::Hold(WithinTolerance)),
            (1, 54, 1, 1, Reason::Hold(WithinTolerance)), // 1.08
            (1, 56, 1, 2, Reason::ScaleUp),               // 1.12
            (1, 5_000, 1, 5, Reason::ScaleUp),            // +4 pods beats +100 %
            (1, 240, 2, 5, Reason::ScaleUp),
            (1, 1_000, 2, 6, Reason::ScaleUp),
            (1, 1_000, 10, 20, Reason::ScaleUp), // +100 % beats +4 pods
            (1, 5_000, 20, 20, Reason::Hold(AtMaximum)),
            (1, 460, 10, 10, Reason::Hold(WithinTolerance)), // 0.92
            (1, 440, 10, 9, Reason::ScaleDown),              // 0.88
            (1, 100, 10, 2, Reason::ScaleDown),
            (1, 0, 5, 1, Reason::ScaleDown),
            (3, 0, 5, 3, Reason::ScaleDown),
            (1, 0, 25, 20, Reason::ScaleDown), // above max
            (1, 5_000, 0, 1, Reason::ScaleUp), // below min
            (3, 5_000, 1, 3, Reason::ScaleUp),
            (0, 0, 0, 0, Reason::Hold(Idle)),
            (0, 1, 0, 1, Reason::Activate),
            (0, 5_000, 0, 1, Reason::Activate),
            (0, 0, 3, 0, Reason::Deactivate),
            (0, 100, 3, 2, Reason::ScaleDown),
        ];
        for &(min, depth, current, desired, reason) in rows {
            let (mut s, now) = settled(Config { min_replicas: min, ..config() }, current);
            let d = s.evaluate(now, ok(depth), current);
            let row = format!("min {min}, depth {depth}, current {current}");
            assert_eq!((d.desired, d.reason), (desired, reason), "{row}");
            assert_eq!(d.raw_recommendation, saturate(depth.div_ceil(50)), "{row}");
            assert_eq!((d.depth, d.fallback), (Some(depth), false), "{row}");
        }
    }

    #[test]
    fn tolerance_keeps_the_count_within_ten_percent_either_way() {
        for (depth, desired, reason) in [
            (440, 9, Reason::ScaleDown),
            (451, 10, Reason::Hold(WithinTolerance)),
            (549, 10, Reason::Hold(WithinTolerance)),
            (560, 12, Reason::ScaleUp),
        ] {
            let (mut s, now) = settled(config(), 10);
            let d = s.evaluate(now, ok(depth), 10);
            assert_eq!((d.desired, d.reason), (desired, reason), "depth {depth}");
        }
        // Zero tolerance follows every change of the raw recommendation.
        let (mut s, now) = settled(Config { tolerance: 0.0, ..config() }, 10);
        assert_eq!(step(&mut s, now.0 / 1000, ok(549), 10), (11, Reason::ScaleUp));
    }

    #[test]
    fn a_fresh_scaler_never_scales_down_at_once() {
        // The HPA seeds its window with the current count, so a restart cannot drop replicas.
        let mut s = scaler(config());
        assert_eq!(step(&mut s, 0, ok(0), 10), (10, Reason::Hold(Stabilized)));
        assert_eq!(step(&mut s, 299, ok(0), 10), (10, Reason::Hold(Stabilized)));
        assert_eq!(step(&mut s, 300, ok(0), 10), (1, Reason::ScaleDown));
    }

    #[test]
    fn scale_down_goes_to_the_highest_recommendation_of_the_window() {
        let mut s = scaler(config());
        assert_eq!(step(&mut s, 0, ok(500), 10), (10, Reason::Hold(WithinTolerance)));
        assert_eq!(step(&mut s, 100, ok(300), 10), (10, Reason::Hold(Stabilized))); // recommends 6
        for t in (115..300).step_by(15) {
            assert_eq!(step(&mut s, t, ok(100), 10), (10, Reason::Hold(Stabilized)), "t = {t}");
            // recommends 2
        }
        // The t = 0 recommendation of 10 leaves the window; the highest left is 6 (t = 100).
        assert_eq!(step(&mut s, 300, ok(100), 10), (6, Reason::ScaleDown));
        for t in (315..400).step_by(15) {
            assert_eq!(step(&mut s, t, ok(100), 6), (6, Reason::Hold(Stabilized)), "t = {t}");
        }
        assert_eq!(step(&mut s, 400, ok(100), 6), (2, Reason::ScaleDown));
    }

    #[test]
    fn a_spike_within_the_window_holds_the_count_again() {
        let mut s = scaler(config());
        step(&mut s, 0, ok(400), 8);
        step(&mut s, 200, ok(0), 8);
        assert_eq!(step(&mut s, 250, ok(400), 8), (8, Reason::Hold(WithinTolerance)));
        assert_eq!(step(&mut s, 500, ok(0), 8), (8, Reason::Hold(Stabilized)));
        assert_eq!(step(&mut s, 550, ok(0), 8), (1, Reason::ScaleDown));
    }

    #[test]
    fn scale_up_is_limited_per_period_from_the_count_at_its_start() {
        let mut s = scaler(Config { max_replicas: 100, ..config() });
        let backlog = ok(10_000); // recommends 200
        assert_eq!(step(&mut s, 0, backlog, 2), (6, Reason::ScaleUp)); // 2 + 4 pods > 2 × 2
        assert_eq!(step(&mut s, 5, backlog, 6), (6, Reason::Hold(PolicyLimited)));
        assert_eq!(step(&mut s, 14, backlog, 6), (6, Reason::Hold(PolicyLimited)));
        assert_eq!(step(&mut s, 15, backlog, 6), (12, Reason::ScaleUp)); // 6 × 2 > 6 + 4
        assert_eq!(step(&mut s, 30, backlog, 12), (24, Reason::ScaleUp));
        assert_eq!(step(&mut s, 45, backlog, 24), (48, Reason::ScaleUp));
        assert_eq!(step(&mut s, 60, backlog, 48), (96, Reason::ScaleUp));
        assert_eq!(step(&mut s, 75, backlog, 96), (100, Reason::ScaleUp));
        assert_eq!(step(&mut s, 90, backlog, 100), (100, Reason::Hold(AtMaximum)));
    }

    #[test]
    fn scale_up_within_a_period_uses_the_remaining_allowance() {
        let mut s = scaler(Config { max_replicas: 100, ..config() });
        assert_eq!(step(&mut s, 0, ok(200), 2), (4, Reason::ScaleUp)); // wants 4, may reach 6
        assert_eq!(step(&mut s, 5, ok(5_000), 4), (6, Reason::ScaleUp)); // the period started at 2
        assert_eq!(step(&mut s, 10, ok(5_000), 6), (6, Reason::Hold(PolicyLimited)));
        assert_eq!(step(&mut s, 16, ok(5_000), 6), (8, Reason::ScaleUp)); // only t = 5 counts: from 4
    }

    #[test]
    fn activation_threshold_gates_zero_to_one() {
        let mut s = scaler(Config { min_replicas: 0, activation_threshold: 10, ..config() });
        assert_eq!(step(&mut s, 0, ok(0), 0), (0, Reason::Hold(Idle)));
        assert_eq!(step(&mut s, 15, ok(10), 0), (0, Reason::Hold(Idle)));
        let d = s.evaluate(at(30), ok(11), 0);
        assert_eq!((d.desired, d.reason, d.raw_recommendation), (1, Reason::Activate, 1));
        // Then the HPA takes over, bounded by the policy: 1 → max(2, 5).
        assert_eq!(step(&mut s, 45, ok(500), 1), (5, Reason::ScaleUp));
        // Activation only matters at zero: with min > 0 a depth of 1 still counts.
        let mut s = scaler(Config { activation_threshold: 10, ..config() });
        assert_eq!(step(&mut s, 0, ok(0), 0), (1, Reason::ScaleUp));
    }

    #[test]
    fn cooldown_must_pass_after_the_last_active_observation_before_zero() {
        let mut s = scaler(Config { min_replicas: 0, ..config() });
        assert_eq!(step(&mut s, 0, ok(20), 1), (1, Reason::Hold(Steady)));
        for t in (15..=300).step_by(15) {
            assert_eq!(step(&mut s, t, ok(0), 1), (1, Reason::Hold(CoolingDown)), "t = {t}");
        }
        assert_eq!(step(&mut s, 301, ok(0), 1), (0, Reason::Deactivate)); // strictly after 300 s
        assert_eq!(step(&mut s, 315, ok(0), 0), (0, Reason::Hold(Idle)));

        // An active observation restarts the cooldown; a failed read neither restarts nor ends it.
        let mut s = scaler(Config { min_replicas: 0, ..config() });
        step(&mut s, 0, ok(20), 1);
        assert_eq!(step(&mut s, 200, ok(30), 1), (1, Reason::Hold(Steady)));
        assert_eq!(step(&mut s, 400, ok(0), 1), (1, Reason::Hold(CoolingDown)));
        assert_eq!(step(&mut s, 501, err(), 1), (1, Reason::Hold(ReadError)));
        assert_eq!(step(&mut s, 502, ok(0), 1), (0, Reason::Deactivate));
    }

    #[test]
    fn scale_to_zero_skips_the_stabilization_window_like_keda() {
        // KEDA writes 0 from any count once the cooldown passed, independently of the HPA.
        let mut s = scaler(Config { min_replicas: 0, activation_threshold: 200, ..config() });
        assert_eq!(step(&mut s, 0, ok(150), 3), (3, Reason::Hold(CoolingDown))); // inactive, 3 busy
        assert_eq!(step(&mut s, 301, ok(150), 3), (0, Reason::Deactivate));
        assert_eq!(step(&mut s, 316, ok(150), 0), (0, Reason::Hold(Idle)));
    }

    #[test]
    fn never_below_a_nonzero_min() {
        let mut s = scaler(config());
        for t in (0..3_600).step_by(15) {
            assert_eq!(step(&mut s, t, ok(0), 1), (1, Reason::Hold(AtMinimum)), "t = {t}");
        }
    }

    #[test]
    fn out_of_range_counts_are_fixed_even_without_a_depth() {
        let mut s = scaler(Config { min_replicas: 2, ..config() });
        assert_eq!(step(&mut s, 0, err(), 30), (20, Reason::ScaleDown));
        assert_eq!(step(&mut s, 15, err(), 0), (2, Reason::ScaleUp));
        assert_eq!(step(&mut s, 30, err(), 1), (2, Reason::ScaleUp));
    }

    #[test]
    fn fallback_after_more_than_failure_threshold_failures_then_recovery() {
        let mut s = scaler(Config { fallback_replicas: Some(5), ..config() });
        assert_eq!(step(&mut s, 0, ok(100), 2), (2, Reason::Hold(WithinTolerance)));
        for t in [15, 30, 45] {
            let d = s.evaluate(at(t), err(), 2);
            assert_eq!((d.desired, d.reason, d.fallback, d.depth), (2, Reason::Hold(ReadError), false, None));
            assert_eq!(d.raw_recommendation, 2);
        }
        let d = s.evaluate(at(60), err(), 2);
        assert_eq!((d.desired, d.reason, d.fallback, d.raw_recommendation), (5, Reason::Fallback, true, 5));
        let d = s.evaluate(at(75), err(), 5);
        assert_eq!((d.desired, d.reason, d.fallback), (5, Reason::Fallback, true));
        // A good read ends fallback at once; the way down is stabilized as usual.
        let d = s.evaluate(at(90), ok(100), 5);
        assert_eq!((d.desired, d.reason, d.fallback, d.depth), (5, Reason::Hold(Stabilized), false, Some(100)));
        assert_eq!(step(&mut s, 376, ok(100), 5), (2, Reason::ScaleDown));
    }

    #[test]
    fn fallback_count_defaults_to_the_current_one_and_is_clamped() {
        let mut s = scaler(config());
        for t in 0..4 {
            step(&mut s, t, err(), 7);
        }
        let d = s.evaluate(at(4), err(), 7);
        assert_eq!((d.desired, d.reason, d.fallback, d.raw_recommendation), (7, Reason::Fallback, true, 7));

        let mut s = scaler(Config { fallback_replicas: Some(50), ..config() });
        for t in 0..3 {
            step(&mut s, t, err(), 20);
        }
        let d = s.evaluate(at(3), err(), 20);
        assert_eq!((d.desired, d.raw_recommendation, d.fallback), (20, 20, true));
    }

    #[test]
    fn fallback_counts_consecutive_failures_only() {
        let mut s = scaler(Config { fallback_replicas: Some(5), ..config() });
        for t in 0..3 {
            step(&mut s, t, err(), 2);
        }
        step(&mut s, 3, ok(100), 2);
        for t in 4..7 {
            let d = s.evaluate(at(t), err(), 2);
            assert_eq!((d.desired, d.fallback), (2, false), "t = {t}");
        }
        assert!(s.evaluate(at(7), err(), 2).fallback);
    }

    #[test]
    fn fallback_at_zero_writes_the_fallback_count_directly() {
        let mut s = scaler(Config { min_replicas: 0, fallback_replicas: Some(3), failure_threshold: 0, ..config() });
        assert_eq!(step(&mut s, 0, err(), 0), (3, Reason::Fallback));
        // Without a configured count, fallback at zero stays at zero.
        let mut s = scaler(Config { min_replicas: 0, failure_threshold: 0, ..config() });
        let d = s.evaluate(at(0), err(), 0);
        assert_eq!((d.desired, d.reason, d.fallback), (0, Reason::Fallback, true));
    }

    #[test]
    fn huge_depths_saturate_instead_of_overflowing() {
        let mut s = scaler(Config { target_per_replica: 1, max_replicas: MAX_KUBERNETES_REPLICAS, ..config() });
        let d = s.evaluate(at(0), ok(u64::MAX), 1);
        assert_eq!((d.desired, d.raw_recommendation), (5, u32::MAX));
    }

    #[test]
    fn set_config_validates_and_keeps_the_history() {
        let mut s = scaler(config());
        step(&mut s, 0, ok(500), 10);
        assert_eq!(
            s.set_config(Config { min_replicas: 30, ..config() }),
            Err(ConfigError::MinAboveMax { min: 30, max: 20 })
        );
        s.set_config(Config { max_replicas: 40, ..config() }).unwrap();
        assert_eq!(s.config().max_replicas, 40);
        assert_eq!(step(&mut s, 100, ok(0), 10), (10, Reason::Hold(Stabilized)));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let cases = [
            (Config { target_per_replica: 0, ..config() }, ConfigError::ZeroTarget),
            (Config { min_replicas: 0, max_replicas: 0, ..config() }, ConfigError::ZeroMax),
            (Config { max_replicas: u32::MAX, ..config() }, ConfigError::MaxTooLarge(u32::MAX)),
            (Config { min_replicas: 21, ..config() }, ConfigError::MinAboveMax { min: 21, max: 20 }),
            (Config { tolerance: -0.1, ..config() }, ConfigError::Tolerance(-0.1)),
            (
                Config { scale_up: ScaleUpPolicy { percent: 0, pods: 0, ..Default::default() }, ..config() },
                ConfigError::NoScaleUp,
            ),
        ];
        for (config, error) in cases {
            assert_eq!(Scaler::new(config).err(), Some(error));
        }
        assert!(Config { tolerance: f64::NAN, ..config() }.validate().is_err());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn reason_names_are_unique() {
        let holds =
            [WithinTolerance, Steady, Stabilized, PolicyLimited, AtMinimum, AtMaximum, Idle, CoolingDown, ReadError];
        let mut names: Vec<_> =
            [Reason::ScaleUp, Reason::ScaleDown, Reason::Activate, Reason::Deactivate, Reason::Fallback]
                .into_iter()
                .chain(holds.into_iter().map(Reason::Hold))
                .map(Reason::as_str)
                .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all);
    }

    #[test]
    fn millis_arithmetic_saturates() {
        assert_eq!(at(10).since(at(4)), Duration::from_secs(6));
        assert_eq!(at(4).since(at(10)), Duration::ZERO);
        assert_eq!(at(1) + Duration::from_millis(1_500), Millis(2_500));
        assert_eq!(Millis(u64::MAX) + Duration::from_secs(1), Millis(u64::MAX));
        assert_eq!(Millis::from(Duration::from_secs(3)), at(3));
    }

    // Property tests: random configs and random observation sequences, with the runner applying
    // every decision (and, sometimes, someone else scaling the Deployment in between).

    fn any_config() -> impl Strategy<Value = Config> {
        (0u32..=4, 1u32..=30, 1u64..=100, 0u64..=60, 0u32..=4, proptest::option::of(0u32..=40)).prop_map(
            |(min, span, target, activation, failure_threshold, fallback_replicas)| Config {
                min_replicas: min,
                max_replicas: min.max(1) + span - 1,
                target_per_replica: target,
                activation_threshold: activation,
                failure_threshold,
                fallback_replicas,
                ..Config::default()
            },
        )
    }

    /// (seconds since the previous evaluation, depth or a failed read, someone else's replica count)
    type Step = (u64, Option<u64>, Option<u32>);

    fn any_steps() -> impl Strategy<Value = Vec<Step>> {
        let observation = prop_oneof![
            6 => (0u64..3_000).prop_map(Some),
            1 => any::<u64>().prop_map(Some),
            2 => Just(None),
        ];
        vec((1u64..=60, observation, proptest::option::weighted(0.05, 0u32..=40)), 1..150)
    }

    /// Runs `steps` and hands each (now, observation, current, decision) to `check`.
    fn run(
        config: &Config,
        start: u32,
        steps: &[Step],
        mut check: impl FnMut(Millis, Option<u64>, u32, Decision) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let mut s = Scaler::new(config.clone()).expect("valid config");
        let (mut now, mut current) = (Millis(0), start);
        for &(dt, observation, external) in steps {
            now = now + Duration::from_secs(dt);
            current = external.unwrap_or(current);
            let decision = s.evaluate(now, observation.ok_or(()), current);
            check(now, observation, current, decision)?;
            current = decision.desired;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn desired_stays_within_min_and_max(config in any_config(), start in 0u32..=40, steps in any_steps()) {
            let mut failures = 0u32;
            run(&config, start, &steps, |_, observation, current, d| {
                // u32: desired >= min also means 0 only when min == 0.
                prop_assert!(d.desired >= config.min_replicas && d.desired <= config.max_replicas, "{d:?}");
                failures = if observation.is_some() { 0 } else { failures + 1 };
                prop_assert_eq!(d.fallback, failures > config.failure_threshold);
                prop_assert_eq!(d.depth, observation);
                match d.reason {
                    Reason::ScaleUp => prop_assert!(d.desired > current),
                    Reason::ScaleDown => prop_assert!(d.desired < current),
                    Reason::Hold(_) => prop_assert_eq!(d.desired, current),
                    Reason::Activate => prop_assert!(current == 0 && d.desired == 1),
                    Reason::Deactivate => prop_assert!(current > 0 && d.desired == 0 && config.min_replicas == 0),
                    Reason::Fallback => prop_assert!(d.fallback),
                }
                Ok(())
            })?;
        }

        #[test]
        fn decisions_are_deterministic(config in any_config(), start in 0u32..=40, steps in any_steps()) {
            let mut first = Vec::new();
            run(&config, start, &steps, |_, _, _, d| { first.push(d); Ok(()) })?;
            let mut second = Vec::new();
            run(&config, start, &steps, |_, _, _, d| { second.push(d); Ok(()) })?;
            prop_assert_eq!(first, second);
        }

        #[test]
        fn no_scale_down_below_a_recommendation_of_the_window(
            config in any_config(), start in 0u32..=40, steps in any_steps(),
        ) {
            // Zero tolerance makes each recorded recommendation exactly ceil(depth / target).
            let config = Config { tolerance: 0.0, ..config };
            let (floor, window) = (config.min_replicas.max(1), config.scale_down_stabilization);
            let mut seen: Vec<(Millis, u32)> = Vec::new();
            let mut active_at: Vec<Millis> = Vec::new();
            let mut first = None;
            run(&config, start, &steps, |now, observation, current, d| {
                let first = *first.get_or_insert(now);
                let in_range = (floor..=config.max_replicas).contains(&current);
                if d.desired < current && d.desired > 0 && in_range {
                    for &(at, recommended) in seen.iter().filter(|(at, _)| now.since(*at) < window) {
                        prop_assert!(
                            d.desired >= recommended.min(current),
                            "scaled {current} -> {} at {now:?} despite {recommended} at {at:?}", d.desired,
                        );
                    }
                }
                if d.reason == Reason::Deactivate {
                    prop_assert!(now.since(first) > config.cooldown_period);
                    for &at in &active_at {
                        prop_assert!(now.since(at) > config.cooldown_period, "active at {at:?}, zero at {now:?}");
                    }
                }
                if let Some(depth) = observation {
                    if in_range && d.reason != Reason::Deactivate {
                        seen.push((now, saturate(depth.div_ceil(config.target_per_replica))));
                    }
                    if depth > config.activation_threshold {
                        active_at.push(now);
                    }
                }
                Ok(())
            })?;
        }

        #[test]
        fn scale_up_never_exceeds_the_policy_limit(config in any_config(), start in 0u32..=40, steps in any_steps()) {
            let (floor, period) = (config.min_replicas.max(1), config.scale_up.period);
            // Our own changes, as the HPA counts them: between nonzero counts.
            let mut changes: Vec<(Millis, i64)> = Vec::new();
            run(&config, start, &steps, |now, _, current, d| {
                let in_range = (floor..=config.max_replicas).contains(&current);
                if d.desired > current && in_range {
                    let changed: i64 = changes.iter().filter(|(at, _)| now.since(*at) < period).map(|c| c.1).sum();
                    let start = i64::from(current) - changed;
                    let limit = (2 * start).max(start + 4);
                    prop_assert!(i64::from(d.desired) <= limit, "{current} -> {} with the period starting at {start}", d.desired);
                }
                if current > 0 && d.desired > 0 && d.desired != current {
                    changes.push((now, i64::from(d.desired) - i64::from(current)));
                }
                Ok(())
            })?;
        }

        #[test]
        fn a_constant_depth_converges_to_its_recommendation(
            config in any_config(), start in 0u32..=34, depth in 0u64..3_000,
        ) {
            let config = Config { tolerance: 0.0, ..config };
            let expected = if config.min_replicas == 0 && depth <= config.activation_threshold {
                0
            } else {
                saturate(depth.div_ceil(config.target_per_replica)).clamp(config.min_replicas.max(1), config.max_replicas)
            };
            let steps = vec![(15, Some(depth), None); 80];
            let mut last = Vec::new();
            run(&config, start.min(config.max_replicas), &steps, |_, _, _, d| { last.push(d); Ok(()) })?;
            let tail = &last[last.len() - 2..];
            prop_assert_eq!(tail[0].desired, expected);
            prop_assert_eq!(tail[1].desired, expected);
            prop_assert!(matches!(tail[1].reason, Reason::Hold(_)), "{:?}", tail[1]);
        }

        #[test]
        fn a_constant_depth_settles_within_tolerance(
            config in any_config(), start in 0u32..=34, depth in 0u64..3_000,
        ) {
            let floor = config.min_replicas.max(1);
            let exact = saturate(depth.div_ceil(config.target_per_replica)).clamp(floor, config.max_replicas);
            let inactive_zero = config.min_replicas == 0 && depth <= config.activation_threshold;
            let steps = vec![(15, Some(depth), None); 80];
            let mut last = Vec::new();
            run(&config, start.min(config.max_replicas), &steps, |_, _, _, d| { last.push(d); Ok(()) })?;
            let settled = last[last.len() - 1].desired;
            prop_assert_eq!(last[last.len() - 2].desired, settled);
            if inactive_zero {
                prop_assert_eq!(settled, 0);
            } else {
                let ratio = depth as f64 / (config.target_per_replica as f64 * f64::from(settled));
                prop_assert!(
                    settled == exact || (settled >= floor && (1.0 - ratio).abs() <= config.tolerance),
                    "settled at {settled}, expected {exact}",
                );
            }
        }
    }
}
