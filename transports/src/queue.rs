//! The per-connection send queue: never blocks the caller. Reliable frames wait in a
//! bounded FIFO; at most one heartbeat waits (a newer one replaces it, so a stale heartbeat
//! is never sent late) and it goes out first. Reliable frames wait until the remote said
//! it uses this connection ([`SendQueue::remote_ready`]): a connection the remote dropped
//! as a duplicate never swallows one.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::SendClass;

/// What the writer takes next.
pub(crate) enum Outgoing {
    Heartbeat(Vec<u8>),
    Reliable(Vec<u8>),
}

/// Result of [`SendQueue::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The reliable FIFO is full; the queue is now closed.
    Full,
    Closed,
}

/// What a replaced connection had not sent yet (see [`SendQueue::replace`]).
pub(crate) struct Handover {
    reliable: VecDeque<Vec<u8>>,
    heartbeat: Option<Vec<u8>>,
    /// The remote had said goodbye on it before it was replaced: it delivered all it will.
    pub(crate) remote_left: bool,
}

#[derive(Default)]
struct State {
    reliable: VecDeque<Vec<u8>>,
    heartbeat: Option<Vec<u8>>,
    closed: bool,
    /// Closed because another connection replaced this one: say goodbye, then drain.
    replaced: Option<Replaced>,
    /// The remote sent `Ready` on this connection: reliable frames may go.
    remote_ready: bool,
    /// The remote said goodbye on this connection: nothing more comes on it.
    remote_left: bool,
}

/// How a connection was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replaced {
    /// By one the same side dialed: the dialer had given up on this one.
    Redialed,
    /// By one the other side dialed (both dialed at once): both ends are alive, so what
    /// this one carried is still delivered until the remote's goodbye.
    Duplicate,
}

pub(crate) struct SendQueue {
    state: Mutex<State>,
    /// Wakes the single writer. `notify_one` keeps a permit, so no wakeup is lost.
    writer: Notify,
    capacity: usize,
}

impl SendQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            writer: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a single push/pop), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn push(&self, class: SendClass, frame: Vec<u8>) -> Pushed {
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        match class {
            SendClass::Heartbeat => state.heartbeat = Some(frame),
            SendClass::Reliable => {
                if state.reliable.len() >= self.capacity {
                    state.closed = true;
                    drop(state);
                    self.wake_all();
                    return Pushed::Full;
                }
                state.reliable.push_back(frame);
            }
        }
        drop(state);
        self.writer.notify_one();
        Pushed::Queued
    }

    /// The next frame to send, or `None` once closed.
    pub(crate) async fn pop(&self) -> Option<Outgoing> {
        loop {
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if let Some(frame) = state.heartbeat.take() {
                    return Some(Outgoing::Heartbeat(frame));
                }
                if state.remote_ready
                    && let Some(frame) = state.reliable.pop_front()
                {
                    return Some(Outgoing::Reliable(frame));
                }
            }
            self.writer.notified().await;
        }
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake_all();
    }

    /// Closes the queue because a newer connection replaces this one; returns what was not
    /// yet sent so it moves to the new connection: the reliable frames in order, and the
    /// waiting heartbeat (dropping it would lose the latest one, though none newer exists).
    pub(crate) fn replace(&self, how: Replaced) -> Handover {
        let mut state = self.lock();
        state.closed = true;
        state.replaced = Some(how);
        let handover = Handover {
            reliable: std::mem::take(&mut state.reliable),
            heartbeat: state.heartbeat.take(),
            remote_left: state.remote_left,
        };
        drop(state);
        self.wake_all();
        handover
    }

    /// Takes what a replaced connection had not sent: its reliable frames ahead of anything
    /// queued here, its heartbeat unless a newer one already waits here.
    pub(crate) fn adopt(&self, handover: Handover) {
        let Handover {
            mut reliable,
            heartbeat,
            remote_left: _,
        } = handover;
        if reliable.is_empty() && heartbeat.is_none() {
            return;
        }
        let mut state = self.lock();
        reliable.append(&mut state.reliable);
        state.reliable = reliable;
        if state.heartbeat.is_none() {
            state.heartbeat = heartbeat;
        }
        drop(state);
        self.writer.notify_one();
    }

    pub(crate) fn was_replaced(&self) -> Option<Replaced> {
        self.lock().replaced
    }

    /// The remote said goodbye on this connection. Under the queue's lock, as
    /// [`SendQueue::replace`] reads it: a replacement either sees it, or was recorded
    /// before it (and [`SendQueue::was_replaced`] says so afterwards).
    pub(crate) fn remote_left(&self) {
        self.lock().remote_left = true;
    }

    /// The remote uses this connection now (it sent `Ready`): release the reliable frames.
    pub(crate) fn remote_ready(&self) {
        self.lock().remote_ready = true;
        self.writer.notify_one();
    }

    #[cfg(test)]
    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    #[cfg(test)]
    pub(crate) fn has_remote_left(&self) -> bool {
        self.lock().remote_left
    }

    fn wake_all(&self) {
        self.writer.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heartbeats_replace_and_go_first_reliable_overflow_closes() {
        let q = SendQueue::new(2);
        q.remote_ready();
        assert_eq!(q.push(SendClass::Reliable, vec![1]), Pushed::Queued);
        assert_eq!(q.push(SendClass::Heartbeat, vec![10]), Pushed::Queued);
        assert_eq!(q.push(SendClass::Heartbeat, vec![11]), Pushed::Queued);
        assert!(matches!(q.pop().await, Some(Outgoing::Heartbeat(f)) if f == [11]));
        assert!(matches!(q.pop().await, Some(Outgoing::Reliable(f)) if f == [1]));
        assert_eq!(q.push(SendClass::Reliable, vec![2]), Pushed::Queued);
        assert_eq!(q.push(SendClass::Reliable, vec![3]), Pushed::Queued);
        assert_eq!(q.push(SendClass::Reliable, vec![4]), Pushed::Full);
        assert!(q.pop().await.is_none());
        assert_eq!(q.push(SendClass::Heartbeat, vec![5]), Pushed::Closed);
        assert!(q.is_closed());
    }

    /// Regression: `replace` used to drop the waiting heartbeat, so a heartbeat sent just
    /// before a duplicate connection was replaced never went out on either connection.
    #[tokio::test]
    async fn replace_hands_over_reliable_frames_and_the_heartbeat() {
        let old = SendQueue::new(8);
        assert_eq!(old.push(SendClass::Reliable, vec![1]), Pushed::Queued);
        assert_eq!(old.push(SendClass::Heartbeat, vec![10]), Pushed::Queued);
        let new = SendQueue::new(8);
        new.remote_ready();
        assert_eq!(new.push(SendClass::Reliable, vec![2]), Pushed::Queued);
        new.adopt(old.replace(Replaced::Duplicate));
        assert_eq!(old.was_replaced(), Some(Replaced::Duplicate));
        assert!(old.pop().await.is_none());
        assert!(matches!(new.pop().await, Some(Outgoing::Heartbeat(f)) if f == [10]));
        assert!(matches!(new.pop().await, Some(Outgoing::Reliable(f)) if f == [1]));
        assert!(matches!(new.pop().await, Some(Outgoing::Reliable(f)) if f == [2]));
        // A newer heartbeat already waiting on the new connection wins.
        let old = SendQueue::new(8);
        assert_eq!(old.push(SendClass::Heartbeat, vec![11]), Pushed::Queued);
        assert_eq!(new.push(SendClass::Heartbeat, vec![12]), Pushed::Queued);
        new.adopt(old.replace(Replaced::Redialed));
        assert!(matches!(new.pop().await, Some(Outgoing::Heartbeat(f)) if f == [12]));
    }

    /// Reliable frames wait for the remote's `Ready` (a duplicate the remote dropped must
    /// not swallow them); heartbeats never wait.
    #[tokio::test]
    async fn reliable_frames_wait_for_the_remote_heartbeats_do_not() {
        let q = SendQueue::new(8);
        assert_eq!(q.push(SendClass::Reliable, vec![1]), Pushed::Queued);
        assert_eq!(q.push(SendClass::Heartbeat, vec![10]), Pushed::Queued);
        assert!(matches!(q.pop().await, Some(Outgoing::Heartbeat(f)) if f == [10]));
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), q.pop()).await;
        assert!(waiting.is_err(), "a reliable frame left before Ready");
        q.remote_ready();
        assert!(matches!(q.pop().await, Some(Outgoing::Reliable(f)) if f == [1]));
        // Held frames move with a replacement, still waiting there.
        let old = SendQueue::new(8);
        assert_eq!(old.push(SendClass::Reliable, vec![2]), Pushed::Queued);
        let new = SendQueue::new(8);
        new.adopt(old.replace(Replaced::Duplicate));
        assert!(old.pop().await.is_none());
        new.remote_ready();
        assert!(matches!(new.pop().await, Some(Outgoing::Reliable(f)) if f == [2]));
    }
}
