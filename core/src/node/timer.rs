//! Every deadline of a [`Node`](super::Node), named, as quinn-proto's `connection/timer.rs`
//! names a connection's. [`Node::poll_timeout`](super::Node::poll_timeout) is the earliest
//! armed one, and [`Node::handle_timeout`](super::Node::handle_timeout) walks the fired ones
//! in [`Timer::ORDER`]. A new deadline is one variant here, one arm in `Node::deadline`
//! (when it is due) and one in `Node::on_timer` (what it does).

/// One deadline of the role machine. A leader arms `Handoff` (while handing over),
/// `CheckQuorum`, `Heartbeat` and `LeaseExpiry` (while master); any other role arms
/// `PreVoteRetry` (a pre-candidate, after a refusal for stickiness) and `Election`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Leader, demoted for a hand-over: hand leadership over (the last lease given out has
    /// run out plus the stop budget, or the drivers confirmed their stop sooner).
    Handoff,
    /// Leader: a majority has been silent for `ET_min` since the send time of the latest
    /// round it acknowledged; step down (check-quorum).
    CheckQuorum,
    /// Leader: send the next heartbeat round (and, with it, note which followers stopped
    /// answering and start a health hand-over if one is due).
    Heartbeat,
    /// Pre-candidate, refused only because a voter heard from a leader recently: ask again
    /// when that voter said it would grant.
    PreVoteRetry,
    /// Follower, pre-candidate or candidate: the election timeout (start a pre-vote, or
    /// wait again while this node may not campaign).
    Election,
    /// Leader and master: the lease runs out. The node is woken for it; the demotion is
    /// done by the `refresh_master` that ends every input, after the other timers' effects.
    LeaseExpiry,
}

impl Timer {
    /// Every timer, in the order [`Node::handle_timeout`](super::Node::handle_timeout)
    /// handles the ones that fired by the same call:
    ///
    /// 1. `Handoff`, `CheckQuorum`, `Heartbeat`: only the first of these three that fired
    ///    is handled in a call. A hand-over or a check-quorum ends (a hand-over may also
    ///    re-arm or cancel itself) the leadership the later ones would act on, so they wait
    ///    for the next call; a heartbeat is sent only when neither fired. So a hand-over
    ///    due when the majority has gone quiet too hands over (`TimeoutNow` to the
    ///    successor) rather than stepping down for `QuorumLost`.
    /// 2. `PreVoteRetry`, then `Election`. A leader arms neither, and a node that these
    ///    make leader (a single voter) has its leader timers looked at in the next call
    ///    only: the walk never goes back.
    /// 3. `LeaseExpiry`, last even when the walk stopped early: the demotion comes after
    ///    every other effect of the call, so one that another timer made at the same
    ///    instant keeps its own reason (`QuorumLost`, `Unhealthy`), and a heartbeat due at
    ///    the lease end is sent before the node demotes.
    pub(super) const ORDER: [Self; 6] = [
        Self::Handoff,
        Self::CheckQuorum,
        Self::Heartbeat,
        Self::PreVoteRetry,
        Self::Election,
        Self::LeaseExpiry,
    ];
}
