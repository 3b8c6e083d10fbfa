//! Differentially private aggregates (docs/analytics.md): from a query's aggregate, clamping
//! bounds, per-person contribution bound and ε, the sensitivity and noise scale of each part;
//! and the release of exact figures with noise drawn by OpenDP's Laplace mechanisms (discrete
//! over integers, over floats on a fine grid), never by a sampler of our own.
//!
//! Amounts of ε are accounted in integer millionths ([`MICRO`]): the budget ledger never rounds,
//! and the noise is drawn for exactly the ε that was charged.
//!
//! Neighbouring datasets differ by one person (the privacy unit) and everything they
//! contributed. A person contributes at most `contributions` rows (a uniformly random
//! `contributions` of theirs, chosen in one pass: [`Bounded`]), each value clamped into
//! `[lower, upper]`; so adding or removing
//! one person changes the vector of per-group counts by at most `contributions` in L1 norm, and
//! the vector of per-group sums by at most `contributions · max(|lower|, |upper|)`. The Laplace
//! mechanism with scale `sensitivity / ε` is then ε-differentially private. A mean is a noisy
//! sum over a noisy count, each with half the ε.

mod bound;

pub use bound::Bounded;
use serde::Serialize;

/// Millionths of ε per unit.
pub const MICRO: i64 = 1_000_000;
/// The most rows of one person a query counts.
pub const MAX_CONTRIBUTIONS: u32 = 1_000;
/// The most groups of a group-by.
pub const MAX_GROUPS: usize = 1_000;

/// What a query computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Count,
    Sum,
    Mean,
}

impl Aggregate {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "count" => Some(Self::Count),
            "sum" => Some(Self::Sum),
            "mean" => Some(Self::Mean),
            _ => None,
        }
    }

    /// Whether it needs a numeric column and clamping bounds.
    pub fn needs_column(self) -> bool {
        !matches!(self, Self::Count)
    }
}

/// Why a query cannot be planned: the field it names and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> PlanError {
    PlanError {
        field,
        message: message.into(),
    }
}

/// ε as a client sends it, in millionths: positive, finite, a whole number of millionths.
pub fn epsilon_micro(epsilon: f64) -> Result<i64, PlanError> {
    if !epsilon.is_finite() {
        return Err(refuse("epsilon", "must be a finite number"));
    }
    if epsilon <= 0.0 {
        return Err(refuse("epsilon", "must be greater than 0"));
    }
    if epsilon > 1_000_000.0 {
        return Err(refuse("epsilon", "is far over any budget"));
    }
    let micro = (epsilon * MICRO as f64).round();
    if micro < 1.0 || ((micro / MICRO as f64) - epsilon).abs() > 1e-12 * epsilon.max(1.0) {
        return Err(refuse(
            "epsilon",
            "must be a whole number of millionths (at least 0.000001)",
        ));
    }
    Ok(micro as i64)
}

/// ε in millionths as a number, for answers.
pub fn epsilon_of(micro: i64) -> f64 {
    micro as f64 / MICRO as f64
}

/// A planned query: what is computed, how each person's contribution is bounded, and the ε.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub aggregate: Aggregate,
    /// `[lower, upper]` for sums and means.
    pub bounds: Option<(f64, f64)>,
    pub contributions: u32,
    pub micro: i64,
}

/// One noisy part of a release: a count vector or a sum vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    Count,
    Sum,
}

/// A part's ε, L1 sensitivity and the Laplace scale that gives that ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Part {
    pub what: What,
    pub epsilon: f64,
    pub sensitivity: f64,
    pub scale: f64,
}

impl Plan {
    /// Check the pieces of a query; `bounds` only for sums and means.
    pub fn new(
        aggregate: Aggregate,
        bounds: Option<(f64, f64)>,
        contributions: u32,
        micro: i64,
    ) -> Result<Self, PlanError> {
        if !(1..=MAX_CONTRIBUTIONS).contains(&contributions) {
            return Err(refuse(
                "contributions",
                format!("must be 1 to {MAX_CONTRIBUTIONS}"),
            ));
        }
        if micro <= 0 {
            return Err(refuse("epsilon", "must be greater than 0"));
        }
        let bounds = match (aggregate.needs_column(), bounds) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(refuse("bounds", "a count has no bounds: leave them out"));
            }
            (true, None) => {
                return Err(refuse(
                    "bounds",
                    "a sum or mean needs clamping bounds [lower, upper], declared before seeing the data",
                ));
            }
            (true, Some((lo, hi))) => {
                if !lo.is_finite() || !hi.is_finite() {
                    return Err(refuse("bounds", "must be finite numbers"));
                }
                if lo >= hi {
                    return Err(refuse("bounds", "lower must be less than upper"));
                }
                if lo.abs().max(hi.abs()) > 1e12 {
                    return Err(refuse("bounds", "must lie within ±10^12"));
                }
                Some((lo, hi))
            }
        };
        Ok(Self {
            aggregate,
            bounds,
            contributions,
            micro,
        })
    }

    pub fn epsilon(&self) -> f64 {
        epsilon_of(self.micro)
    }

    /// The noisy parts and their scales: all of ε on the count or the sum; a mean splits it.
    pub fn parts(&self) -> Vec<Part> {
        let c = f64::from(self.contributions);
        let magnitude = self.bounds.map(|(lo, hi)| lo.abs().max(hi.abs()));
        let part = |what: What, epsilon: f64| {
            let sensitivity = match what {
                What::Count => c,
                What::Sum => c * magnitude.unwrap_or(0.0),
            };
            Part {
                what,
                epsilon,
                sensitivity,
                scale: sensitivity / epsilon,
            }
        };
        let e = self.epsilon();
        match self.aggregate {
            Aggregate::Count => vec![part(What::Count, e)],
            Aggregate::Sum => vec![part(What::Sum, e)],
            Aggregate::Mean => vec![part(What::Count, e / 2.0), part(What::Sum, e / 2.0)],
        }
    }
}

/// The exact figures of one group, from the database: rows kept after the contribution bound
/// and the sum of their clamped values.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Exact {
    pub count: i64,
    pub sum: f64,
}

/// Why noise could not be drawn.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoiseError {
    #[error(
        "this orgbase was built without differential privacy: build it with the `dp` feature (the default)"
    )]
    Disabled,
    #[error("the noise mechanism failed: {0}")]
    Mechanism(String),
}

/// A source of Laplace noise. Each call gets the values, the scale, and the sensitivity and ε
/// the scale was worked out from, so that an implementation can check the privacy loss itself;
/// it returns the noisy values and the scale it used (never smaller than asked).
pub trait Noise {
    fn counts(
        &mut self,
        values: &[i64],
        scale: f64,
        sensitivity: f64,
        epsilon: f64,
    ) -> Result<(Vec<i64>, f64), NoiseError>;

    fn sums(
        &mut self,
        values: &[f64],
        scale: f64,
        sensitivity: f64,
        epsilon: f64,
    ) -> Result<(Vec<f64>, f64), NoiseError>;
}

/// What a release answers: a value per group (in the order of the exact figures) and the scale
/// of each part as drawn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Released {
    pub values: Vec<f64>,
    pub parts: Vec<Part>,
}

/// Add noise to the exact figures of every group as `plan` says.
pub fn release(
    plan: &Plan,
    exact: &[Exact],
    noise: &mut dyn Noise,
) -> Result<Released, NoiseError> {
    let mut parts = plan.parts();
    let mut counts = None;
    let mut sums = None;
    for part in &mut parts {
        match part.what {
            What::Count => {
                let v: Vec<i64> = exact.iter().map(|e| e.count).collect();
                let (noisy, scale) =
                    noise.counts(&v, part.scale, part.sensitivity, part.epsilon)?;
                part.scale = scale;
                counts = Some(noisy);
            }
            What::Sum => {
                let v: Vec<f64> = exact.iter().map(|e| e.sum).collect();
                let (noisy, scale) = noise.sums(&v, part.scale, part.sensitivity, part.epsilon)?;
                part.scale = scale;
                sums = Some(noisy);
            }
        }
    }
    let values = match (plan.aggregate, counts, sums) {
        (Aggregate::Count, Some(c), _) => c.into_iter().map(|v| v as f64).collect(),
        (Aggregate::Sum, _, Some(s)) => s,
        (Aggregate::Mean, Some(c), Some(s)) => {
            let (lo, hi) = plan.bounds.unwrap_or((f64::MIN, f64::MAX));
            // Post-processing: a mean of a noisy sum over a noisy count of at least 1, kept
            // within the bounds every value was clamped to.
            c.iter()
                .zip(&s)
                .map(|(&n, &sum)| (sum / (n.max(1) as f64)).clamp(lo, hi))
                .collect()
        }
        _ => return Err(NoiseError::Mechanism("a part was not drawn".into())),
    };
    Ok(Released { values, parts })
}

/// The noise source of this build: OpenDP, or [`NoiseError::Disabled`].
pub fn noise() -> Result<Box<dyn Noise + Send>, NoiseError> {
    #[cfg(feature = "dp")]
    {
        Ok(Box::new(opendp_noise::OpenDp))
    }
    #[cfg(not(feature = "dp"))]
    {
        Err(NoiseError::Disabled)
    }
}

/// Whether this build can answer differentially private queries.
pub const ENABLED: bool = cfg!(feature = "dp");

#[cfg(feature = "dp")]
pub use opendp_noise::OpenDp;

#[cfg(feature = "dp")]
mod opendp_noise {
    use opendp::domains::{AtomDomain, VectorDomain};
    use opendp::measurements::make_laplace;
    use opendp::metrics::L1Distance;

    use super::{Noise, NoiseError};

    /// OpenDP's Laplace mechanism: discrete Laplace over integers; over floats, discrete
    /// Laplace on a grid finer than the scale, rounded (its float privacy map accounts the
    /// rounding). Each draw first asks OpenDP's own privacy map what the mechanism costs at the
    /// sensitivity, and widens the scale by the least amount until that is at most ε.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct OpenDp;

    fn failed(e: opendp::error::Error) -> NoiseError {
        NoiseError::Mechanism(e.to_string())
    }

    /// Widen `scale` until `loss(scale) <= epsilon` (OpenDP rounds its map up, so the exact
    /// `sensitivity / epsilon` can come out a hair over ε).
    fn fit(
        mut scale: f64,
        epsilon: f64,
        loss: impl Fn(f64) -> Result<f64, NoiseError>,
    ) -> Result<f64, NoiseError> {
        for _ in 0..64 {
            if loss(scale)? <= epsilon {
                return Ok(scale);
            }
            scale = (scale * (1.0 + 1e-9)).next_up();
        }
        Err(NoiseError::Mechanism(format!(
            "no scale near {scale} gives ε = {epsilon}"
        )))
    }

    impl Noise for OpenDp {
        fn counts(
            &mut self,
            values: &[i64],
            scale: f64,
            sensitivity: f64,
            epsilon: f64,
        ) -> Result<(Vec<i64>, f64), NoiseError> {
            let d_in = sensitivity.ceil() as i64;
            let make = |s: f64| {
                make_laplace(
                    VectorDomain::new(AtomDomain::<i64>::default()),
                    L1Distance::<i64>::default(),
                    s,
                    None,
                )
                .map_err(failed)
            };
            let scale = fit(scale, epsilon, |s| make(s)?.map(&d_in).map_err(failed))?;
            let noisy = make(scale)?.invoke(&values.to_vec()).map_err(failed)?;
            Ok((noisy, scale))
        }

        fn sums(
            &mut self,
            values: &[f64],
            scale: f64,
            sensitivity: f64,
            epsilon: f64,
        ) -> Result<(Vec<f64>, f64), NoiseError> {
            let make = |s: f64| {
                make_laplace(
                    VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
                    L1Distance::<f64>::default(),
                    s,
                    None,
                )
                .map_err(failed)
            };
            let scale = fit(scale, epsilon, |s| {
                make(s)?.map(&sensitivity).map_err(failed)
            })?;
            let noisy = make(scale)?.invoke(&values.to_vec()).map_err(failed)?;
            Ok((noisy, scale))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_is_counted_in_whole_millionths() {
        assert_eq!(epsilon_micro(1.0), Ok(1_000_000));
        assert_eq!(epsilon_micro(0.01), Ok(10_000));
        assert_eq!(epsilon_micro(0.000001), Ok(1));
        for bad in [
            0.0,
            -0.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e-7,
            0.0000015,
        ] {
            let e = epsilon_micro(bad).unwrap_err();
            assert_eq!(e.field, "epsilon", "{bad}");
        }
    }

    #[test]
    fn bounds_are_required_exactly_where_values_are_added() {
        assert!(Plan::new(Aggregate::Count, None, 1, 10).is_ok());
        assert_eq!(
            Plan::new(Aggregate::Count, Some((0.0, 1.0)), 1, 10)
                .unwrap_err()
                .field,
            "bounds"
        );
        for b in [
            None,
            Some((1.0, 1.0)),
            Some((2.0, 1.0)),
            Some((f64::NAN, 1.0)),
            Some((0.0, f64::INFINITY)),
            Some((0.0, 1e13)),
        ] {
            assert_eq!(
                Plan::new(Aggregate::Sum, b, 1, 10).unwrap_err().field,
                "bounds",
                "{b:?}"
            );
        }
        assert_eq!(
            Plan::new(Aggregate::Count, None, 0, 10).unwrap_err().field,
            "contributions"
        );
        assert_eq!(
            Plan::new(Aggregate::Count, None, MAX_CONTRIBUTIONS + 1, 10)
                .unwrap_err()
                .field,
            "contributions"
        );
    }
}
