//! Exponential backoff with jitter, for everything that reconnects.

use std::time::Duration;

use rand::RngExt;

#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    /// The delay before the next attempt: doubles each time up to `max`, with
    /// up to 25% of jitter so that many clients do not retry in step.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::rng().random_range(0.0..0.25);
        base.mul_f64(1.0 + jitter)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(100) && d[0] <= Duration::from_millis(125));
        assert!(d[1] >= Duration::from_millis(200) && d[1] <= Duration::from_millis(250));
        assert!(d[5] >= Duration::from_secs(1) && d[5] <= Duration::from_millis(1250));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
