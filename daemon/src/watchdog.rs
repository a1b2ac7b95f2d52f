//! `[fence] watchdog`: the last layer, for a machine whose daemon and drivers are frozen
//! together (a VM pause, a wedged kernel) while its master is cut off: nobody there can stop
//! the service or run the fence, so a hardware (or `softdog`) watchdog resets the machine.
//!
//! The daemon opens the device (which arms it) when it becomes master, and writes to it
//! ("feeds" it) only while it is master with a lease long enough that the watchdog, if
//! never fed again, fires by lease end plus the stop budget — before a new master may start
//! anywhere — and while no driver is unresponsive. It disarms (the magic close: `V`, then
//! close) only once the service surely stopped here: not master, and every driver told
//! "master" confirmed its stop (or the fence succeeded for them). On a graceful stop it
//! disarms under the same rule; otherwise it leaves the watchdog to fire, and says so.
//!
//! The device path is configurable, so tests use a FIFO whose writes they record; a runtime
//! that models the machine itself (the simulation) supplies its own [`WatchdogDevice`]
//! ([`crate::runtime::Control::with_watchdog_device`]).
//! The device's own timeout must be set to `watchdog_timeout_ms` by the operator (e.g.
//! `modprobe softdog soft_margin=2`): setting it takes an ioctl, which this crate does not do.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clustd_core::Instant;

/// `[fence] watchdog` and `watchdog_timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogSettings {
    /// The device, e.g. `/dev/watchdog`.
    pub device: PathBuf,
    /// The device's timeout: it resets the machine this long after the last feed.
    pub timeout: Duration,
}

/// Whether feeding at `now` is safe: if never fed again, the watchdog fires at
/// `now + timeout`, which must not be later than `lease_until + stop_budget` (the earliest a
/// new master may start, on this node's clock).
pub(crate) fn may_feed(
    now: Instant,
    lease_until: Option<Instant>,
    timeout: Duration,
    stop_budget: Duration,
) -> bool {
    lease_until.is_some_and(|until| now + timeout <= until + stop_budget)
}

/// A watchdog device: `/dev/watchdog` ([`FileDevice`]) or, for a runtime that models the
/// machine itself (the simulation), its own. Opening arms it; every write feeds it;
/// writing `V` and closing disarms it (the magic close); closing without it leaves it to fire.
pub trait WatchdogDevice: Send + 'static {
    /// Opens (arms) the device.
    fn open(&mut self) -> std::io::Result<()>;
    /// Feeds the open device.
    fn feed(&mut self) -> std::io::Result<()>;
    /// The magic close: disarms and closes the open device.
    fn disarm(&mut self) -> std::io::Result<()>;
    /// Closes the open device without disarming it: it fires at its timeout.
    fn abandon(&mut self);
}

/// A watchdog device file (`/dev/watchdog`, or a FIFO in tests).
#[derive(Debug)]
pub struct FileDevice {
    path: PathBuf,
    file: Option<File>,
}

impl FileDevice {
    /// The device at `path` (not opened yet).
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    fn write(&mut self, what: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(what).and_then(|()| f.flush()),
            None => Err(std::io::Error::other("not open")),
        }
    }
}

impl WatchdogDevice for FileDevice {
    fn open(&mut self) -> std::io::Result<()> {
        self.file = Some(std::fs::OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
    }

    fn feed(&mut self) -> std::io::Result<()> {
        self.write(b"1")
    }

    fn disarm(&mut self) -> std::io::Result<()> {
        let result = self.write(b"V");
        self.file = None;
        result
    }

    fn abandon(&mut self) {
        self.file = None;
    }
}

/// The watchdog as the runtime tends it: armed or not, when last fed.
pub(crate) struct Watchdog {
    settings: WatchdogSettings,
    device: Box<dyn WatchdogDevice>,
    armed: bool,
    last_feed: Option<Instant>,
    /// Why the last open or write failed, logged once per streak.
    failing: Option<String>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("settings", &self.settings)
            .field("armed", &self.armed)
            .field("last_feed", &self.last_feed)
            .finish_non_exhaustive()
    }
}

impl Watchdog {
    /// The watchdog of `settings`, on `device` (the device file when `None`).
    pub(crate) fn new(settings: WatchdogSettings, device: Option<Box<dyn WatchdogDevice>>) -> Self {
        let device =
            device.unwrap_or_else(|| Box::new(FileDevice::new(settings.device.clone())) as _);
        Self {
            settings,
            device,
            armed: false,
            last_feed: None,
            failing: None,
        }
    }

    /// Whether the device is open (armed).
    pub(crate) fn armed(&self) -> bool {
        self.armed
    }

    /// The device's timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Feeds the watchdog (arming it first) when `feed`, at most every tenth of its timeout;
    /// disarms it when `stopped` (the service surely is not running here) and not `feed`.
    pub(crate) fn update(&mut self, now: Instant, feed: bool, stopped: bool) {
        if feed {
            let interval = (self.settings.timeout / 10).max(Duration::from_millis(10));
            if self
                .last_feed
                .is_some_and(|t| self.armed && now < t + interval)
            {
                return;
            }
            if !self.armed {
                match self.device.open() {
                    Ok(()) => {
                        tracing::info!(device = %self.settings.device.display(), timeout_ms = self.settings.timeout.as_millis() as u64, "watchdog armed (master)");
                        self.armed = true;
                    }
                    Err(e) => {
                        self.fail(format!("cannot open it: {e}"));
                        return;
                    }
                }
            }
            match self.device.feed() {
                Ok(()) => {
                    self.last_feed = Some(now);
                    if self.failing.take().is_some() {
                        tracing::info!(device = %self.settings.device.display(), "watchdog fed again");
                    }
                }
                Err(e) => self.fail(format!("cannot write to it: {e}")),
            }
        } else if stopped && self.armed {
            self.disarm();
        }
    }

    /// Graceful stop: disarms if `stopped`, else leaves it armed to fire (ERROR).
    pub(crate) fn close(&mut self, stopped: bool) {
        if !self.armed {
            return;
        }
        if stopped {
            self.disarm();
        } else {
            tracing::error!(device = %self.settings.device.display(), "leaving the watchdog ARMED at exit: a driver may still run the service here, so the watchdog will reset this machine");
            // Closing without the magic character leaves a real watchdog running.
            self.device.abandon();
            self.armed = false;
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
        match self.device.disarm() {
            Ok(()) => {
                tracing::info!(device = %self.settings.device.display(), "watchdog disarmed (magic close): the service stopped here")
            }
            Err(e) => {
                tracing::error!(device = %self.settings.device.display(), "watchdog magic close failed ({e}): it may reset this machine")
            }
        }
        self.last_feed = None;
    }

    fn fail(&mut self, why: String) {
        if self.failing.as_deref() != Some(why.as_str()) {
            tracing::error!(device = %self.settings.device.display(), "watchdog: {why}; without it a frozen machine is not reset");
        }
        self.failing = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeding_is_safe_only_if_the_watchdog_fires_by_lease_end_plus_the_stop_budget() {
        let ms = Duration::from_millis;
        let t = Instant::from_millis;
        let (timeout, budget) = (ms(2000), ms(200));
        // Lease ends at 10 000: the last safe feed is at 8 200.
        assert!(may_feed(t(8200), Some(t(10_000)), timeout, budget));
        assert!(!may_feed(t(8201), Some(t(10_000)), timeout, budget));
        assert!(!may_feed(t(0), None, timeout, budget), "no lease, no feed");
    }

    #[test]
    fn a_fake_device_is_armed_fed_and_disarmed_with_the_magic_character() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("watchdog");
        std::fs::write(&path, "").expect("file");
        let mut w = Watchdog::new(
            WatchdogSettings {
                device: path.clone(),
                timeout: Duration::from_millis(1000),
            },
            None,
        );
        let t = Instant::from_millis;
        w.update(t(0), false, true);
        assert!(!w.armed(), "never armed before a feed");
        w.update(t(0), true, false);
        w.update(t(50), true, false); // within a tenth of the timeout: no write
        w.update(t(100), true, false);
        assert!(w.armed());
        w.update(t(150), false, false);
        assert!(w.armed(), "not fed, not stopped: left to fire");
        w.update(t(200), false, true);
        assert!(!w.armed());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "11V");
    }
}
