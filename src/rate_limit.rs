//! A per-key sliding-window rate limiter (SMTP tests per token subject).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sliding-window limit per token subject.
pub struct RateLimiter {
    per_minute: usize,
    window: Duration,
    hits: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }

    fn with_window(per_minute: u32, window: Duration) -> Self {
        Self {
            per_minute: per_minute as usize,
            window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a call; Err(seconds to wait) when over the limit.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let window = self.window;
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        // Forget subjects whose calls have all left the window, so memory follows the number of
        // recent callers, not of every token subject ever seen.
        if hits.len() >= 64 {
            hits.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = hits.entry(key.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= self.per_minute {
            let oldest = q.front().copied().unwrap_or(now);
            return Err((window - now.duration_since(oldest)).as_secs().max(1));
        }
        q.push_back(now);
        Ok(())
    }

    /// How many subjects are remembered.
    pub fn tracked(&self) -> usize {
        self.hits.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_forgets_subjects_whose_calls_left_the_window() {
        let limiter = RateLimiter::with_window(10, Duration::ZERO);
        for i in 0..10_000 {
            limiter.check(&format!("subject-{i}")).unwrap();
        }
        assert!(
            limiter.tracked() <= 64,
            "{} subjects remembered",
            limiter.tracked()
        );
    }

    #[test]
    fn the_rate_limiter_refuses_the_call_over_the_limit() {
        let limiter = RateLimiter::new(2);
        assert!(limiter.check("a").is_ok() && limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
        assert!(limiter.check("b").is_ok());
    }
}
