//! Reconnect delays: exponential with jitter, and a give-up time.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::{secs, JoinConfig};
use crate::error::{NetError, Result};

pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    give_up: Duration,
    next: Duration,
    since: Option<Instant>,
    attempts: u32,
}

impl Backoff {
    pub(super) fn new(cfg: &JoinConfig) -> Result<Self> {
        let initial = secs("backoff_initial_s", cfg.backoff_initial_s)?;
        Ok(Self {
            initial,
            max: secs("backoff_max_s", cfg.backoff_max_s)?,
            give_up: secs("give_up_after_s", cfg.give_up_after_s)?,
            next: initial,
            since: None,
            attempts: 0,
        })
    }

    pub(super) fn reset(&mut self) {
        self.next = self.initial;
        self.since = None;
        self.attempts = 0;
    }

    pub(super) async fn wait(&mut self, why: &str) -> Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.attempts += 1;
        if since.elapsed() >= self.give_up {
            return Err(NetError::Unreachable {
                attempts: self.attempts,
                last: why.to_string(),
            });
        }
        let jitter = 0.5 + rand::random::<f64>() * 0.5;
        let d = self.next.mul_f64(jitter);
        warn!("{why}; retrying in {:.1} s", d.as_secs_f64());
        tokio::time::sleep(d).await;
        self.next = (self.next * 2).min(self.max).max(self.initial);
        Ok(())
    }
}
