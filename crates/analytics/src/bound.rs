//! The per-person contribution bound: of each person's rows, a query counts at most
//! `contributions`, chosen uniformly at random, in one pass over the rows as they arrive from
//! the database (reservoir sampling), so that no sort of all the rows is needed.

use std::collections::HashMap;

use rand::Rng;

use crate::Exact;

/// The rows a query keeps, at most `limit` of each person's.
#[derive(Debug)]
pub struct Bounded<R> {
    limit: usize,
    groups: usize,
    rng: R,
    people: HashMap<Option<u128>, Kept>,
}

/// One person's kept rows (group index, clamped value) and how many of theirs were seen.
#[derive(Debug, Default)]
struct Kept {
    seen: u64,
    rows: Vec<(usize, f64)>,
}

impl<R: Rng> Bounded<R> {
    /// A bound of `limit` rows per person over `groups` groups (1 without a group-by).
    pub fn new(limit: u32, groups: usize, rng: R) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX).max(1),
            groups: groups.max(1),
            rng,
            people: HashMap::new(),
        }
    }

    /// One row of `person` (None: rows without a person count as one person) in group `group`
    /// with its clamped `value`. A group out of range is ignored.
    pub fn add(&mut self, person: Option<u128>, group: usize, value: f64) {
        if group >= self.groups {
            return;
        }
        let kept = self.people.entry(person).or_default();
        kept.seen += 1;
        if kept.rows.len() < self.limit {
            kept.rows.push((group, value));
            return;
        }
        // Algorithm R: the n-th row replaces a kept one with probability limit / n, which
        // leaves every limit-subset of the rows seen equally likely.
        let j = self.rng.random_range(0..kept.seen);
        if let Some(slot) = usize::try_from(j).ok().and_then(|j| kept.rows.get_mut(j)) {
            *slot = (group, value);
        }
    }

    /// The exact figures of each group over the kept rows.
    pub fn exact(self) -> Vec<Exact> {
        let mut out = vec![Exact::default(); self.groups];
        for kept in self.people.into_values() {
            for (group, value) in kept.rows {
                out[group].count += 1;
                out[group].sum += value;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn each_person_keeps_at_most_the_limit_and_light_people_keep_everything() {
        let mut b = Bounded::new(2, 2, StdRng::seed_from_u64(7));
        for _ in 0..5 {
            b.add(Some(1), 0, 100.0);
        }
        b.add(Some(2), 1, 0.0);
        b.add(None, 1, 3.0);
        b.add(None, 7, 3.0);
        assert_eq!(
            b.exact(),
            vec![
                Exact {
                    count: 2,
                    sum: 200.0
                },
                Exact { count: 2, sum: 3.0 }
            ]
        );
    }

    #[test]
    fn the_kept_rows_are_a_uniform_choice_of_each_persons() {
        // One person, 10 rows in 10 groups, 3 kept: each row is kept with probability 3/10.
        let mut hits = [0u32; 10];
        let mut rng = StdRng::seed_from_u64(11);
        let trials = 20_000;
        for _ in 0..trials {
            let mut b = Bounded::new(3, 10, &mut rng);
            for g in 0..10 {
                b.add(Some(9), g, 1.0);
            }
            for (g, e) in b.exact().iter().enumerate() {
                hits[g] += u32::try_from(e.count).unwrap_or(0);
            }
        }
        // Binomial(20000, 0.3): mean 6000, sd 64.8; 5 sd either side.
        for (g, h) in hits.iter().enumerate() {
            assert!((5676..=6324).contains(h), "row {g} kept {h} times");
        }
    }
}
