//! Login throttling: password guessing is slowed per account and per client address, without
//! letting an attacker lock a person out for long.
//!
//! - **Per account and address.** After [`FREE_FAILURES`] failed logins in a row for one account
//!   from one address, that pair waits 1 s, then 2, 4 … at most [`MAX_WAIT`] before each next
//!   try; a success clears it. Keyed by the pair, so failures from an attacker's address never
//!   lock the person out from theirs.
//! - **Per address.** At most [`ADDRESS_FAILURES`] failed logins per minute from one address,
//!   whatever the accounts, then it waits for the minute to end.
//!
//! A refused attempt answers 429 `too-many-requests` with `Retry-After`, before any password is
//! hashed (argon2 is the expensive part of a login). The state is in memory, per server
//! process: several servers behind a load balancer each count their own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row for one account from one address before it has to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait of an account and address.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Failed logins per minute from one address.
pub const ADDRESS_FAILURES: u32 = 30;
const WINDOW: Duration = Duration::from_secs(60);
/// Entries kept before the expired ones are dropped.
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Default)]
struct Pair {
    failures: u32,
    until: Option<Instant>,
}

#[derive(Debug)]
struct Address {
    since: Instant,
    failures: u32,
}

#[derive(Debug, Default)]
struct State {
    pairs: HashMap<(Vec<u8>, Option<IpAddr>), Pair>,
    addresses: HashMap<Option<IpAddr>, Address>,
}

/// The login throttle of one server.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    state: Mutex<State>,
}

impl LoginThrottle {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a login for `account` (its blind index) from `ip` may be tried now; else how
    /// long to wait.
    pub fn check(&self, account: &[u8], ip: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let s = self.state();
        if let Some(a) = s.addresses.get(&ip)
            && a.failures >= ADDRESS_FAILURES
            && now < a.since + WINDOW
        {
            return Err(a.since + WINDOW - now);
        }
        match s.pairs.get(&(account.to_vec(), ip)).and_then(|p| p.until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// A failed login (unknown account, wrong password or code).
    pub fn failed(&self, account: &[u8], ip: Option<IpAddr>, now: Instant) {
        let mut s = self.state();
        if s.pairs.len() + s.addresses.len() > PRUNE_AT {
            s.addresses.retain(|_, a| now < a.since + WINDOW);
            if s.pairs.len() > PRUNE_AT {
                s.pairs.retain(|_, p| p.until.is_some_and(|u| u > now));
            }
        }
        let a = s.addresses.entry(ip).or_insert(Address {
            since: now,
            failures: 0,
        });
        if now >= a.since + WINDOW {
            *a = Address {
                since: now,
                failures: 0,
            };
        }
        a.failures += 1;
        let p = s.pairs.entry((account.to_vec(), ip)).or_default();
        p.failures += 1;
        if p.failures >= FREE_FAILURES {
            let doublings = (p.failures - FREE_FAILURES).min(6);
            let wait = (Duration::from_secs(1) * 2u32.pow(doublings)).min(MAX_WAIT);
            p.until = Some(now + wait);
        }
    }

    /// A successful login: the account's count from that address starts over.
    pub fn succeeded(&self, account: &[u8], ip: Option<IpAddr>) {
        self.state().pairs.remove(&(account.to_vec(), ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_waits_after_repeated_failures_from_one_address_only() {
        let t = LoginThrottle::default();
        let (me, attacker) = ("10.0.0.1".parse().ok(), "10.0.0.2".parse().ok());
        let now = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed(b"ada", attacker, now);
            assert!(t.check(b"ada", attacker, now).is_ok());
        }
        t.failed(b"ada", attacker, now);
        assert_eq!(t.check(b"ada", attacker, now), Err(Duration::from_secs(1)));
        assert!(
            t.check(b"ada", me, now).is_ok(),
            "the person's own address is not locked"
        );
        // Each failure after the free ones doubles the wait, to the cap.
        for _ in 0..10 {
            t.failed(b"ada", attacker, now);
        }
        assert_eq!(t.check(b"ada", attacker, now), Err(MAX_WAIT));
        assert!(
            t.check(b"ada", attacker, now + MAX_WAIT).is_ok(),
            "the wait ends"
        );
        t.succeeded(b"ada", attacker);
        assert!(t.check(b"ada", attacker, now).is_ok());
    }

    #[test]
    fn an_address_is_limited_across_accounts_for_a_minute() {
        let t = LoginThrottle::default();
        let ip = "192.0.2.7".parse().ok();
        let now = Instant::now();
        for i in 0..ADDRESS_FAILURES {
            assert!(t.check(format!("u{i}").as_bytes(), ip, now).is_ok());
            t.failed(format!("u{i}").as_bytes(), ip, now);
        }
        assert!(t.check(b"someone-else", ip, now).is_err());
        assert!(t.check(b"someone-else", ip, now + WINDOW).is_ok());
        assert!(
            t.check(b"someone-else", "192.0.2.8".parse().ok(), now)
                .is_ok()
        );
    }
}
