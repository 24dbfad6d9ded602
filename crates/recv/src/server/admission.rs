//! Admission of connections that have not authenticated yet (before their hello, and pairing
//! sessions without a client certificate), so that they can never starve authenticated peers.
//!
//! They are limited in all and per source; they never hold a slot of `max-connections`. The
//! accept loop asks [`Admission::admit`] and never waits: a connection is admitted at once or
//! refused at once.
//!
//! When the total is reached, a newcomer from a source that holds fewer connections than the
//! source holding the most may still come in: the oldest connection of that heaviest source is
//! *displaced* (its task is told through its [`Ticket`] and closes it). A newcomer from a source
//! with no pending connection always comes in that way. So an attacker who fills the total from
//! a few addresses cannot keep out an honest sender from another one, whose hello takes
//! milliseconds; only one with more addresses than the total could, and then every newcomer
//! still displaces the oldest pending connection.
//!
//! [`RefusalLog`] keeps refusals from flooding the log: a few lines one by one per window, then
//! a summary.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The limits for unauthenticated connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// At most this many in all.
    pub(crate) total: usize,
    /// At most this many from one [`Source`].
    pub(crate) per_source: usize,
}

/// Where a connection comes from, for the per-source limit: an IPv4 address, or an IPv6 /64
/// (a subscriber usually gets a whole /64, so counting single IPv6 addresses would be trivial
/// to dodge). An IPv4-mapped IPv6 address counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source already holds `per_source` unauthenticated connections.
    PerSource,
    /// The total is reached and its source already holds its fair share.
    Total,
}

/// The bookkeeping of unauthenticated connections; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    limits: Limits,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Set at shutdown: everyone was displaced, nobody else comes in.
    closed: bool,
    next_id: u64,
    total: usize,
    /// Per source, its pending connections, oldest first (ids grow with admission).
    sources: HashMap<Source, VecDeque<Pending>>,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    displace: oneshot::Sender<()>,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Arc::default(),
        }
    }

    /// Admits a connection from `ip` at once, displacing another if the total is reached (see
    /// the module documentation), or refuses it.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Ticket, Refused> {
        let source = Source::of(ip);
        let mut state = lock(&self.state);
        if state.closed {
            return Err(Refused::Total);
        }
        let held = state.sources.get(&source).map_or(0, VecDeque::len);
        if held >= self.limits.per_source {
            return Err(Refused::PerSource);
        }
        if state.total >= self.limits.total {
            // The heaviest source; among equals the one with the oldest pending connection.
            let (victim, heaviest) = state
                .sources
                .iter()
                .filter_map(|(s, q)| Some((*s, q.len(), q.front()?.id)))
                .max_by_key(|&(_, len, oldest)| (len, std::cmp::Reverse(oldest)))
                .map(|(s, len, _)| (s, len))
                .ok_or(Refused::Total)?;
            // Move a connection only where that makes the shares more even (or gives a source
            // its first one), so sources at their fair share do not displace each other.
            if !(held == 0 || held + 1 < heaviest) {
                return Err(Refused::Total);
            }
            state.remove_oldest(victim);
        }
        let id = state.next_id;
        state.next_id += 1;
        let (displace, displaced) = oneshot::channel();
        state
            .sources
            .entry(source)
            .or_default()
            .push_back(Pending { id, displace });
        state.total += 1;
        Ok(Ticket {
            state: self.state.clone(),
            source,
            id,
            displaced,
        })
    }

    /// At shutdown: tells every admitted connection to close (as if displaced) and admits no
    /// more, so unauthenticated connections do not delay the exit.
    pub(crate) fn close_all(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.total = 0;
        for (_, queue) in state.sources.drain() {
            for pending in queue {
                let _ = pending.displace.send(());
            }
        }
    }

    /// Whether [`close_all`](Self::close_all) was called.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// How many unauthenticated connections are admitted now.
    #[cfg(test)]
    fn pending(&self) -> usize {
        lock(&self.state).total
    }

    /// How many of them come from `ip`'s source.
    #[cfg(test)]
    fn pending_from(&self, ip: IpAddr) -> usize {
        lock(&self.state)
            .sources
            .get(&Source::of(ip))
            .map_or(0, VecDeque::len)
    }
}

impl State {
    fn remove_oldest(&mut self, source: Source) {
        if let Some(queue) = self.sources.get_mut(&source)
            && let Some(pending) = queue.pop_front()
        {
            if queue.is_empty() {
                self.sources.remove(&source);
            }
            self.total -= 1;
            // The task may be gone already (its ticket then removed itself): nothing to tell.
            let _ = pending.displace.send(());
        }
    }

    fn remove(&mut self, source: Source, id: u64) {
        let Some(queue) = self.sources.get_mut(&source) else {
            return;
        };
        if let Some(index) = queue.iter().position(|p| p.id == id) {
            queue.remove(index);
            self.total -= 1;
        }
        if queue.is_empty() {
            self.sources.remove(&source);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent at every await-free step; a panic elsewhere cannot tear it.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// One admitted unauthenticated connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Ticket {
    state: Arc<Mutex<State>>,
    source: Source,
    id: u64,
    displaced: oneshot::Receiver<()>,
}

impl Ticket {
    /// Finishes when a newer connection took this one's place: close the connection then.
    pub(crate) async fn displaced(&mut self) {
        if (&mut self.displaced).await.is_err() {
            // Not displaced, and the sender is gone: only `remove` drops it, with the ticket.
            std::future::pending::<()>().await;
        }
    }

    /// Whether a newer connection took this one's place.
    #[cfg(test)]
    fn is_displaced(&mut self) -> bool {
        self.displaced.try_recv().is_ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.state).remove(self.source, self.id);
    }
}

/// What became of an unauthenticated connection that was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Refused at accept: too many from its address.
    PerSource,
    /// Refused at accept: the total is reached.
    Total,
    /// Closed for a newer connection from a less represented address.
    Displaced,
    /// No hello within handshake-timeout (or a pairing session that took too long).
    TimedOut,
    /// The TLS handshake or the hello failed.
    Failed,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::PerSource,
        Refusal::Total,
        Refusal::Displaced,
        Refusal::TimedOut,
        Refusal::Failed,
    ];

    fn what(self) -> &'static str {
        match self {
            Refusal::PerSource => "over the per-address limit",
            Refusal::Total => "over the total limit",
            Refusal::Displaced => "displaced by newer ones",
            Refusal::TimedOut => "timed out before authenticating",
            Refusal::Failed => "failed the TLS handshake or hello",
        }
    }
}

/// At most this many refusals per window are logged one by one; the rest only in the summary.
pub(crate) const LINES_PER_WINDOW: u64 = 10;

/// Counts refusals per window (the caller ends windows with [`RefusalLog::take_summary`]).
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    counts: [u64; Refusal::ALL.len()],
    logged: u64,
}

impl RefusalLog {
    /// Counts a refusal; `true` if the caller should log it on a line of its own.
    pub(crate) fn note(&self, refusal: Refusal) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.counts[refusal as usize] += 1;
        if state.logged < LINES_PER_WINDOW {
            state.logged += 1;
            true
        } else {
            false
        }
    }

    /// Ends the window: its summary if some refusals were not logged one by one.
    pub(crate) fn take_summary(&self) -> Option<Summary> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = std::mem::take(&mut *state);
        let total: u64 = state.counts.iter().sum();
        (total > state.logged).then_some(Summary {
            counts: state.counts,
            logged: state.logged,
        })
    }
}

/// The refusals of one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    counts: [u64; Refusal::ALL.len()],
    logged: u64,
}

impl Summary {
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    #[cfg(test)]
    fn count(&self, refusal: Refusal) -> u64 {
        self.counts[refusal as usize]
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused {} unauthenticated connections (", self.total())?;
        let mut first = true;
        for refusal in Refusal::ALL {
            let n = self.counts[refusal as usize];
            if n > 0 {
                let sep = if first { "" } else { ", " };
                write!(f, "{sep}{n} {}", refusal.what())?;
                first = false;
            }
        }
        write!(f, "); the first {} were logged one by one", self.logged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn admission(total: usize, per_source: usize) -> Admission {
        Admission::new(Limits { total, per_source })
    }

    #[test]
    fn counts_and_releases_on_drop() {
        let gate = admission(10, 3);
        let a = gate.admit(ip("10.0.0.1")).unwrap();
        let b = gate.admit(ip("10.0.0.1")).unwrap();
        let c = gate.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.pending(), 3);
        assert_eq!(gate.pending_from(ip("10.0.0.1")), 2);
        drop(b);
        assert_eq!(gate.pending(), 2);
        assert_eq!(gate.pending_from(ip("10.0.0.1")), 1);
        drop(a);
        drop(c);
        assert_eq!(gate.pending(), 0);
        assert!(
            lock(&gate.state).sources.is_empty(),
            "no empty entries left"
        );
    }

    #[test]
    fn per_source_limit() {
        let gate = admission(100, 2);
        let held: Vec<_> = (0..2)
            .map(|_| gate.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(gate.admit(ip("10.0.0.1")).unwrap_err(), Refused::PerSource);
        // Other sources are not affected; a freed place can be taken again.
        let other = gate.admit(ip("10.0.0.2")).unwrap();
        drop(held);
        let again = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(gate.pending(), 2);
        drop((other, again));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let gate = admission(100, 2);
        let _a = gate.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = gate.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            gate.admit(ip("2001:db8:1:2:abcd::1")).unwrap_err(),
            Refused::PerSource
        );
        let _c = gate.admit(ip("2001:db8:1:3::1")).unwrap();
        let _d = gate.admit(ip("192.0.2.7")).unwrap();
        let _e = gate.admit(ip("::ffff:192.0.2.7")).unwrap();
        assert_eq!(gate.admit(ip("192.0.2.7")).unwrap_err(), Refused::PerSource);
        assert_eq!(
            Source::of(ip("2001:db8:1:2:abcd::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn full_total_displaces_the_oldest_of_the_heaviest_source() {
        let gate = admission(4, 4);
        let mut a: Vec<_> = (0..3)
            .map(|_| gate.admit(ip("10.0.0.1")).unwrap())
            .collect();
        let mut b = gate.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.pending(), 4);
        // A new source always gets in: the heaviest (10.0.0.1) loses its oldest.
        let mut c = gate.admit(ip("10.0.0.3")).unwrap();
        assert!(a[0].is_displaced());
        assert!(!a[1].is_displaced() && !a[2].is_displaced() && !b.is_displaced());
        assert_eq!(gate.pending(), 4);
        assert_eq!(gate.pending_from(ip("10.0.0.1")), 2);
        // 10.0.0.2 holds 1 and the heaviest 2: one more would not make the shares more even.
        assert_eq!(gate.admit(ip("10.0.0.2")).unwrap_err(), Refused::Total);
        assert_eq!(gate.admit(ip("10.0.0.1")).unwrap_err(), Refused::Total);
        // A fourth source: 10.0.0.1 is the heaviest again and gives up its (now) oldest.
        let _d = gate.admit(ip("10.0.0.4")).unwrap();
        assert!(a[1].is_displaced() && !a[2].is_displaced());
        assert!(!b.is_displaced() && !c.is_displaced());
        // Among equally heavy sources the oldest connection goes first: a[2], then b, then c.
        let _e = gate.admit(ip("10.0.0.5")).unwrap();
        assert!(a[2].is_displaced());
        assert!(!b.is_displaced() && !c.is_displaced());
        let _f = gate.admit(ip("10.0.0.6")).unwrap();
        assert!(b.is_displaced() && !c.is_displaced());
        // A displaced ticket's drop does not free anyone else's place.
        let before = gate.pending();
        a.truncate(1);
        drop(b);
        assert_eq!(gate.pending(), before);
        drop(a);
        assert_eq!(gate.pending(), before);
    }

    #[test]
    fn a_source_at_its_fair_share_is_refused_not_churned() {
        let gate = admission(4, 10);
        let _held: Vec<_> = ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"]
            .iter()
            .map(|a| gate.admit(ip(a)).unwrap())
            .collect();
        assert_eq!(gate.admit(ip("10.0.0.1")).unwrap_err(), Refused::Total);
        assert_eq!(gate.admit(ip("10.0.0.2")).unwrap_err(), Refused::Total);
        assert_eq!(gate.pending(), 4);
    }

    #[test]
    fn close_all_displaces_everyone_and_admits_nobody() {
        let gate = admission(10, 10);
        let mut a = gate.admit(ip("10.0.0.1")).unwrap();
        let mut b = gate.admit(ip("10.0.0.2")).unwrap();
        gate.close_all();
        assert!(gate.is_closed());
        assert!(a.is_displaced() && b.is_displaced());
        assert_eq!(gate.pending(), 0);
        assert_eq!(gate.admit(ip("10.0.0.3")).unwrap_err(), Refused::Total);
        drop((a, b));
        assert_eq!(gate.pending(), 0);
    }

    #[tokio::test]
    async fn displaced_wakes_the_task() {
        let gate = admission(1, 1);
        let mut old = gate.admit(ip("10.0.0.1")).unwrap();
        let _new = gate.admit(ip("10.0.0.2")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), old.displaced())
            .await
            .expect("displacement is signalled");
    }

    #[test]
    fn refusal_log_lines_then_summary() {
        let log = RefusalLog::default();
        // A quiet window: every refusal gets its line, no summary.
        assert!(log.note(Refusal::TimedOut));
        assert_eq!(log.take_summary(), None);
        let lines = (0..25)
            .map(|i| {
                let refusal = if i % 5 == 0 {
                    Refusal::TimedOut
                } else {
                    Refusal::PerSource
                };
                log.note(refusal)
            })
            .filter(|&line| line)
            .count();
        assert_eq!(lines as u64, LINES_PER_WINDOW);
        let summary = log.take_summary().unwrap();
        assert_eq!(summary.total(), 25);
        assert_eq!(summary.count(Refusal::PerSource), 20);
        assert_eq!(summary.count(Refusal::TimedOut), 5);
        assert_eq!(
            summary.to_string(),
            "refused 25 unauthenticated connections (20 over the per-address limit, 5 timed out before authenticating); the first 10 were logged one by one"
        );
        // The next window starts afresh.
        assert!(log.note(Refusal::Displaced));
        assert_eq!(log.take_summary(), None);
    }
}
