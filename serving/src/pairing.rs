//! Joining the two halves of an exchange (a request and its response) that
//! arrive separately and in either order, bounded in count and in age: the
//! KServe and Seldon adapters both use it.
//!
//! At most `max_pending` halves wait; a new one beyond that drops the oldest
//! waiting half (`Evicted`). A half that waited `max_wait` is dropped when
//! the next half arrives (`Expired`). The same half of an exchange arriving
//! twice replaces the first (a redelivery). Dropped halves are returned to
//! the caller, which counts them and releases what they hold.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Which half of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Request,
    Response,
}

/// What became of an offered half.
#[derive(Debug, PartialEq)]
pub enum Paired<T> {
    /// Waiting for its other half.
    Waiting,
    /// Replaced the same half, which is returned.
    Duplicate(T),
    /// Met its other half.
    Joined { request: T, response: T },
}

/// Why a waiting half was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Waited longer than `max_wait`.
    Expired,
    /// Pushed out by a newer half when `max_pending` were waiting.
    Evicted,
}

impl Dropped {
    /// The outcome label of `tidewatch_serving_adapter_events_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Expired => "expired",
            Dropped::Evicted => "evicted",
        }
    }
}

#[derive(Debug)]
struct Waiting<T> {
    half: Half,
    value: T,
    arrived: Instant,
}

/// Halves waiting for their other half, by exchange id.
#[derive(Debug)]
pub struct Pairing<T> {
    by_id: HashMap<String, Waiting<T>>,
    /// Arrival order (may hold ids already gone; skipped).
    order: VecDeque<(Instant, String)>,
    max_pending: usize,
    max_wait: Duration,
}

impl<T> Pairing<T> {
    /// At most `max_pending` (≥ 1) halves waiting at most `max_wait`.
    pub fn new(max_pending: usize, max_wait: Duration) -> Self {
        Self {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            max_pending: max_pending.max(1),
            max_wait,
        }
    }

    /// Halves waiting.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no half waits.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Offers `half` of exchange `id` at `now`; halves dropped on the way
    /// are passed to `dropped`.
    pub fn offer(
        &mut self,
        id: String,
        half: Half,
        value: T,
        now: Instant,
        mut dropped: impl FnMut(Dropped, T),
    ) -> Paired<T> {
        self.expire(now, &mut dropped);
        match self.by_id.remove(&id) {
            Some(other) if other.half != half => {
                let (request, response) = match half {
                    Half::Request => (value, other.value),
                    Half::Response => (other.value, value),
                };
                Paired::Joined { request, response }
            }
            Some(same) => {
                self.by_id.insert(
                    id,
                    Waiting {
                        half,
                        value,
                        arrived: same.arrived,
                    },
                );
                Paired::Duplicate(same.value)
            }
            None => {
                while self.by_id.len() >= self.max_pending {
                    let Some((_, oldest)) = self.order.pop_front() else {
                        break;
                    };
                    if let Some(waiting) = self.by_id.remove(&oldest) {
                        dropped(Dropped::Evicted, waiting.value);
                    }
                }
                self.order.push_back((now, id.clone()));
                self.by_id.insert(
                    id,
                    Waiting {
                        half,
                        value,
                        arrived: now,
                    },
                );
                Paired::Waiting
            }
        }
    }

    /// Drops the halves that waited `max_wait` by `now`.
    pub fn expire(&mut self, now: Instant, dropped: &mut impl FnMut(Dropped, T)) {
        while let Some((arrived, _)) = self.order.front() {
            if now.duration_since(*arrived) < self.max_wait {
                break;
            }
            let (_, id) = self.order.pop_front().expect("checked above");
            let stale = self
                .by_id
                .get(&id)
                .is_some_and(|waiting| now.duration_since(waiting.arrived) >= self.max_wait);
            if stale {
                let waiting = self.by_id.remove(&id).expect("checked above");
                dropped(Dropped::Expired, waiting.value);
            }
        }
        if self.order.len() > 2 * self.max_pending.max(1024) {
            let by_id = &self.by_id;
            self.order.retain(|(_, id)| by_id.contains_key(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_join_in_either_order_and_are_bounded_in_count_and_age() {
        let start = Instant::now();
        let mut pairing = Pairing::new(2, Duration::from_secs(10));
        let mut dropped = Vec::new();
        let mut note = |why, value| dropped.push((why, value));
        assert_eq!(
            pairing.offer("a".into(), Half::Response, 1, start, &mut note),
            Paired::Waiting
        );
        assert_eq!(
            pairing.offer("a".into(), Half::Request, 2, start, &mut note),
            Paired::Joined {
                request: 2,
                response: 1
            }
        );
        assert_eq!(
            pairing.offer("b".into(), Half::Request, 3, start, &mut note),
            Paired::Waiting
        );
        assert_eq!(
            pairing.offer("b".into(), Half::Request, 4, start, &mut note),
            Paired::Duplicate(3)
        );
        assert_eq!(
            pairing.offer("c".into(), Half::Request, 5, start, &mut note),
            Paired::Waiting
        );
        // Full: d pushes out b, the oldest.
        assert_eq!(
            pairing.offer("d".into(), Half::Request, 6, start, &mut note),
            Paired::Waiting
        );
        assert_eq!(pairing.len(), 2);
        // Ten seconds later c and d have expired when e arrives.
        let later = start + Duration::from_secs(10);
        assert_eq!(
            pairing.offer("e".into(), Half::Request, 7, later, &mut note),
            Paired::Waiting
        );
        assert_eq!(pairing.len(), 1);
        assert_eq!(
            dropped,
            [
                (Dropped::Evicted, 4),
                (Dropped::Expired, 5),
                (Dropped::Expired, 6)
            ]
        );
    }
}
