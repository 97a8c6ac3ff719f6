//! Events waiting for Redis: a bounded queue that drops the oldest (and counts them) when Redis
//! has been unreachable for longer than it can hold.

use std::collections::VecDeque;

/// One event ready to publish: its channel and JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub channel: String,
    pub payload: String,
}

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Outgoing>,
    capacity: usize,
    dropped: u64,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Queues `item`; when full, the oldest queued event is dropped and counted.
    pub fn push(&mut self, item: Outgoing) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(item);
    }

    /// Counts events lost before they could be queued (the bus overran this subscriber).
    pub fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Up to `n` of the oldest events, left queued until [`Outbox::commit`].
    pub fn peek(&self, n: usize) -> Vec<Outgoing> {
        self.queue.iter().take(n).cloned().collect()
    }

    /// Removes the `n` oldest events (they were published).
    pub fn commit(&mut self, n: usize) {
        let n = n.min(self.queue.len());
        self.queue.drain(..n);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: usize) -> Outgoing {
        Outgoing {
            channel: "c".into(),
            payload: i.to_string(),
        }
    }

    #[test]
    fn keeps_the_newest_up_to_capacity_and_counts_the_rest() {
        let mut outbox = Outbox::new(3);
        for i in 0..5 {
            outbox.push(item(i));
        }
        assert_eq!(outbox.len(), 3);
        assert_eq!(outbox.dropped(), 2);
        let batch = outbox.peek(2);
        assert_eq!(batch, vec![item(2), item(3)]);
        // A failed publish commits nothing: the events stay queued in order.
        assert_eq!(outbox.peek(1), vec![item(2)]);
        outbox.commit(2);
        assert_eq!(outbox.peek(5), vec![item(4)]);
        outbox.count_dropped(4);
        assert_eq!(outbox.dropped(), 6);
    }
}
