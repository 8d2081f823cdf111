//! How often an idle worker asks its queue for jobs.
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use tokio::time::{Instant, Sleep};

/// Wakes the worker every `period` so that it looks for new jobs.
///
/// CAUTION: this replaces apalis 1.0's `poll_with_interval`, which loses its timer: when
/// its interval fires it creates the next timer without polling it, so nothing is set to
/// wake the worker again. If the fetch that follows finds the queue empty in that same
/// poll, the worker parks until its next heartbeat (30 s on PostgreSQL), and jobs pushed
/// meanwhile wait that long. Seen in CI as notices arriving 30 s late. Here the next
/// timer is polled as soon as it is set, so a wake-up is always armed.
pub struct EveryPeriod {
    period: Duration,
    next: Pin<Box<Sleep>>,
}

impl EveryPeriod {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            next: Box::pin(tokio::time::sleep(period)),
        }
    }
}

impl Clone for EveryPeriod {
    fn clone(&self) -> Self {
        Self::new(self.period)
    }
}

impl PollStrategy for EveryPeriod {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        if self.next.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // A period past what `Instant` can hold (the settings' bounds keep it far from
        // that) polls once a day instead of panicking.
        let now = Instant::now();
        let next = now
            .checked_add(self.period)
            .unwrap_or(now + std::time::Duration::from_secs(86_400));
        self.next.as_mut().reset(next);
        // Registers `cx`'s waker with the new deadline: it is pending, just set.
        let _ = self.next.as_mut().poll(cx);
        Poll::Ready(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_is_armed_after_every_tick() {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut strategy = EveryPeriod::new(Duration::from_millis(50));
        let snapshot = PollSnapshot::default();
        let woken = || counter.0.load(Ordering::SeqCst);

        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending());
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(woken(), 1, "the first tick wakes the worker");
        // The poll that sees a tick may be the last before the worker parks (its fetch
        // found nothing): no further poll comes, yet the next tick must still wake it.
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(woken(), 2, "the second tick wakes the parked worker");
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(woken(), 3, "and so does every later one");
    }
}
