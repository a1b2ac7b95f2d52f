//! One raw AF_PACKET socket per interface: it sends the frames of [`super::frames`] and
//! hands every ARP frame and neighbour advertisement it receives to a callback, from a
//! thread of its own.
//!
//! The socket is opened with protocol 0 (it hears nothing), gets a classic BPF filter that
//! passes only ARP and ICMPv6 neighbour advertisements, and only then is bound to the
//! interface for all protocols (`pnet_datalink` binds it). So the kernel drops every other
//! frame before it is queued: a busy interface costs the driver nothing. Not promiscuous.

use std::io;
use std::os::fd::IntoRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pnet_datalink::{Channel, Config, DataLinkSender, NetworkInterface};
use socket2::{Domain, SockFilter, Socket, Type};

use super::frames::{self, MacAddr, Seen};
use super::netlink::Link;

/// How often the receiving thread checks whether it should stop.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

// Classic BPF (linux/filter.h).
const BPF_LD_H_ABS: u16 = 0x28;
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

/// ARP, or IPv6 with next header ICMPv6 (58) and ICMPv6 type 136 (neighbour advertisement).
/// Offsets are from the Ethernet header: ethertype at 12, IPv6 next header at 14 + 6,
/// ICMPv6 type at 14 + 40.
fn receive_filter() -> [SockFilter; 9] {
    [
        SockFilter::new(BPF_LD_H_ABS, 0, 0, 12),
        SockFilter::new(BPF_JEQ_K, 5, 0, 0x0806), // ARP: accept
        SockFilter::new(BPF_JEQ_K, 0, 5, 0x86dd), // not IPv6: drop
        SockFilter::new(BPF_LD_B_ABS, 0, 0, 20),
        SockFilter::new(BPF_JEQ_K, 0, 3, 58), // not ICMPv6: drop
        SockFilter::new(BPF_LD_B_ABS, 0, 0, 54),
        SockFilter::new(BPF_JEQ_K, 0, 1, 136), // not an NA: drop
        SockFilter::new(BPF_RET_K, 0, 0, 0x0004_0000),
        SockFilter::new(BPF_RET_K, 0, 0, 0),
    ]
}

/// A raw socket on one interface.
pub(super) struct Port {
    /// The interface's name.
    pub(super) name: String,
    /// Its hardware address: the one the frames carry.
    pub(super) mac: MacAddr,
    tx: std::sync::Mutex<Box<dyn DataLinkSender>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("name", &self.name)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Port {
    /// Opens the socket on `link` and starts its receiving thread, which calls `heard` for
    /// every ARP frame and neighbour advertisement. Needs CAP_NET_RAW.
    pub(super) fn open(link: &Link, heard: impl Fn(Seen) + Send + 'static) -> io::Result<Self> {
        let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
        socket.attach_filter(&receive_filter())?;
        let interface = NetworkInterface {
            name: link.name.clone(),
            description: String::new(),
            index: link.index,
            mac: Some(link.mac),
            ips: Vec::new(),
            flags: 0,
        };
        let config = Config {
            read_timeout: Some(READ_TIMEOUT),
            write_timeout: Some(Duration::from_millis(100)),
            promiscuous: false,
            // pnet owns the descriptor from here (and closes it).
            socket_fd: Some(socket.into_raw_fd()),
            ..Config::default()
        };
        let (tx, mut rx) = match pnet_datalink::channel(&interface, config)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => return Err(io::Error::other("not an Ethernet channel")),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let name = link.name.clone();
        std::thread::Builder::new()
            .name(format!("vip-rx-{name}"))
            .spawn(move || {
                let mut failures = 0u32;
                while !stopped.load(Ordering::Relaxed) {
                    match rx.next() {
                        Ok(frame) => {
                            failures = 0;
                            if let Some(seen) = frames::parse(frame) {
                                heard(seen);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                        Err(e) => {
                            failures += 1;
                            if failures == 1 || failures.is_multiple_of(100) {
                                tracing::warn!(interface = %name, "receiving on the raw socket failed ({failures} times in a row): {e}; conflicts may go unnoticed");
                            }
                            std::thread::sleep(READ_TIMEOUT);
                        }
                    }
                }
            })?;
        Ok(Self {
            name: link.name.clone(),
            mac: link.mac,
            tx: std::sync::Mutex::new(tx),
            stop,
        })
    }

    /// Sends one whole Ethernet frame.
    pub(super) fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tx.send_to(frame, None)
            .unwrap_or_else(|| Err(io::Error::other("frame larger than the send buffer")))
    }
}
