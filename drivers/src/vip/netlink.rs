//! Interfaces and addresses over rtnetlink: no `ip` commands.
//!
//! Addresses the driver adds carry a mark, the address protocol [`ADDRESS_PROTOCOL`]
//! (`IFA_PROTO`, Linux 6.3+), so that at start-up it can tell an address it left behind
//! (a crash, a `kill -9`: removed) from one configured statically on the interface (an
//! error: two owners for one address).

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use super::frames::MacAddr;

/// The address protocol the driver marks its addresses with (`ip -d addr` shows
/// `proto 193`): 0xC1, for clustd.
pub const ADDRESS_PROTOCOL: u8 = 0xC1;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its hardware address (all zeros when it has none).
    pub mac: MacAddr,
    /// Whether it is administratively up.
    pub up: bool,
}

/// One address found on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Added by this driver (marked with [`ADDRESS_PROTOCOL`]).
    pub ours: bool,
    /// IPv6 duplicate address detection has not finished, or failed: not usable.
    pub tentative: bool,
    message: AddressMessage,
}

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetlinkError(pub String, pub Option<i32>);

impl NetlinkError {
    fn from_rtnetlink(what: &str, e: rtnetlink::Error) -> Self {
        let code = match &e {
            rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
            _ => None,
        };
        let detail = match code {
            Some(c) => std::io::Error::from_raw_os_error(c).to_string(),
            None => e.to_string(),
        };
        Self(format!("{what}: {detail}"), code)
    }

    /// The errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        self.1
    }

    /// The kernel refused for lack of permission (CAP_NET_ADMIN).
    pub fn is_permission(&self) -> bool {
        self.1 == Some(1) || self.1 == Some(13)
    }
}

/// A route netlink connection.
pub struct Netlink {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: MacAddr::zero(),
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) if b.len() == 6 => {
                link.mac = MacAddr::new(b[0], b[1], b[2], b[3], b[4], b[5]);
            }
            _ => {}
        }
    }
    link
}

impl Netlink {
    /// Opens a connection (on a tokio runtime).
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        Ok(Self {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// Every interface, by index.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::from_rtnetlink("listing interfaces", e))?;
        let mut links: Vec<Link> = messages.iter().map(link_of).collect();
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// The addresses on interface `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Found>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::from_rtnetlink("listing addresses", e))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let mut address = None;
                let mut ours = false;
                let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
                for a in &m.attributes {
                    match a {
                        // IPv4 names the host's address in IFA_LOCAL (IFA_ADDRESS is the
                        // peer's on point-to-point links); IPv6 only sends IFA_ADDRESS.
                        AddressAttribute::Local(ip) => address = Some(*ip),
                        AddressAttribute::Address(ip) if address.is_none() => address = Some(*ip),
                        AddressAttribute::Protocol(p) => {
                            ours = u8::from(*p) == ADDRESS_PROTOCOL;
                        }
                        AddressAttribute::Flags(f) => flags = *f,
                        _ => {}
                    }
                }
                Some(Found {
                    address: address?,
                    prefix: m.header.prefix_len,
                    ours,
                    tentative: flags.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed),
                    message: m,
                })
            })
            .collect())
    }

    /// Adds `address/prefix` to interface `index`, marked as ours; IPv6 without duplicate
    /// address detection, so it is usable at once. `Ok(false)`: it was already there.
    pub async fn add(&self, index: u32, address: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
        let mut request = self.handle.address().add(index, address, prefix);
        let message = request.message_mut();
        if address.is_ipv6() {
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        message
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                ADDRESS_PROTOCOL,
            )));
        match request.execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = NetlinkError::from_rtnetlink(&format!("adding {address}/{prefix}"), e);
                // EEXIST: there already.
                if e.errno() == Some(17) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Removes an address found by [`Netlink::addresses`]. `Ok(false)`: it was gone already.
    pub async fn remove(&self, found: &Found) -> Result<bool, NetlinkError> {
        match self
            .handle
            .address()
            .del(found.message.clone())
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = NetlinkError::from_rtnetlink(
                    &format!("removing {}/{}", found.address, found.prefix),
                    e,
                );
                // EADDRNOTAVAIL (IPv4, IPv6) or ENODEV: not there.
                if matches!(e.errno(), Some(99) | Some(19)) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}
