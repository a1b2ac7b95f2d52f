//! The Ethernet frames the VIP driver sends and the ones it listens for, built and parsed
//! with `pnet_packet`.
//!
//! Sent:
//! - **gratuitous ARP**, both forms (some switches and hosts accept only one): a request and
//!   a reply, each with sender and target protocol address the VIP and sender hardware
//!   address ours, to the broadcast address;
//! - **unsolicited neighbour advertisement** (RFC 4861 §7.2.6): from the VIP to all nodes
//!   (ff02::1), override flag set, with our link-layer address as the target link-layer
//!   option, hop limit 255;
//! - **probes** for another host holding the address: an ARP probe (RFC 5227: sender
//!   protocol address 0.0.0.0) and a duplicate address detection solicitation (RFC 4862:
//!   from `::` to the address's solicited-node group). A host that holds the address
//!   answers both.
//!
//! Parsed ([`parse`]): ARP requests and replies, and neighbour advertisements: who says
//! they hold which address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_packet::Packet as _;
use pnet_packet::arp::{
    ArpHardwareTypes, ArpOperation, ArpOperations, ArpPacket, MutableArpPacket,
};
use pnet_packet::ethernet::{EtherType, EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NdpOption, NdpOptionTypes,
    NeighborAdvertFlags, NeighborAdvertPacket,
};
use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};

pub use pnet_datalink::MacAddr;

const ETHERNET_HEADER: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER: usize = 40;
/// An NA or NS body without options.
const ND_BODY: usize = 24;
/// One link-layer address option.
const LL_OPTION: usize = 8;

/// What one received frame says about who holds an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// What kind of frame.
    pub kind: SeenKind,
    /// The frame's Ethernet source.
    pub from: MacAddr,
    /// The link-layer address it claims for [`Seen::address`].
    pub claims: MacAddr,
    /// ARP: the sender protocol address (unspecified in a probe). NA: the target address.
    pub address: IpAddr,
    /// ARP: the target protocol address. NA: the same as `address`.
    pub target: IpAddr,
}

/// The kinds of frame [`parse`] understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeenKind {
    /// An ARP request (a gratuitous one has `address == target`).
    ArpRequest,
    /// An ARP reply.
    ArpReply,
    /// A neighbour advertisement, with its flags.
    NeighborAdvert {
        /// The override flag.
        overrides: bool,
        /// The solicited flag (an answer rather than an announcement).
        solicited: bool,
    },
}

impl Seen {
    /// Whether this frame says a host other than `ours` holds `address`.
    pub fn claims_for_other(&self, address: IpAddr, ours: MacAddr) -> bool {
        self.address == address && self.claims != ours && self.from != ours
    }
}

fn ethernet(dst: MacAddr, src: MacAddr, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET_HEADER + payload.len()];
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("sized for the header");
    eth.set_destination(dst);
    eth.set_source(src);
    eth.set_ethertype(ethertype);
    eth.set_payload(payload);
    buf
}

fn arp(
    op: ArpOperation,
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut body = [0u8; ARP_LEN];
    let mut a = MutableArpPacket::new(&mut body).expect("sized for ARP");
    a.set_hardware_type(ArpHardwareTypes::Ethernet);
    a.set_protocol_type(EtherTypes::Ipv4);
    a.set_hw_addr_len(6);
    a.set_proto_addr_len(4);
    a.set_operation(op);
    a.set_sender_hw_addr(sender_mac);
    a.set_sender_proto_addr(sender_ip);
    a.set_target_hw_addr(target_mac);
    a.set_target_proto_addr(target_ip);
    ethernet(MacAddr::broadcast(), sender_mac, EtherTypes::Arp, &body)
}

/// The two gratuitous ARP frames for `address`: the request, then the reply.
pub fn gratuitous_arp(mac: MacAddr, address: Ipv4Addr) -> [Vec<u8>; 2] {
    [
        arp(
            ArpOperations::Request,
            mac,
            address,
            MacAddr::zero(),
            address,
        ),
        arp(ArpOperations::Reply, mac, address, mac, address),
    ]
}

/// An ARP probe for `address` (RFC 5227 §2.1.1): whoever holds it answers.
pub fn arp_probe(mac: MacAddr, address: Ipv4Addr) -> Vec<u8> {
    arp(
        ArpOperations::Request,
        mac,
        Ipv4Addr::UNSPECIFIED,
        MacAddr::zero(),
        address,
    )
}

fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr::new(0x33, 0x33, o[12], o[13], o[14], o[15])
}

fn solicited_node(address: Ipv6Addr) -> Ipv6Addr {
    let o = address.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn ipv6_frame(src_mac: MacAddr, src: Ipv6Addr, dst: Ipv6Addr, icmp: &mut [u8]) -> Vec<u8> {
    let checksum = pnet_packet::icmpv6::checksum(
        &Icmpv6Packet::new(icmp).expect("an ICMPv6 body"),
        &src,
        &dst,
    );
    // The checksum field is bytes 2..4 of every ICMPv6 message.
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut packet = vec![0u8; IPV6_HEADER + icmp.len()];
    let mut ip = MutableIpv6Packet::new(&mut packet).expect("sized for IPv6");
    ip.set_version(6);
    ip.set_payload_length(u16::try_from(icmp.len()).expect("small"));
    ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
    // Neighbour discovery is only accepted with hop limit 255 (never routed).
    ip.set_hop_limit(255);
    ip.set_source(src);
    ip.set_destination(dst);
    ip.set_payload(icmp);
    ethernet(multicast_mac(dst), src_mac, EtherTypes::Ipv6, &packet)
}

/// An unsolicited neighbour advertisement for `address` with the override flag.
pub fn unsolicited_na(mac: MacAddr, address: Ipv6Addr) -> Vec<u8> {
    let mut body = [0u8; ND_BODY + LL_OPTION];
    {
        let mut na = MutableNeighborAdvertPacket::new(&mut body).expect("sized for an NA");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        na.set_flags(NeighborAdvertFlags::Override);
        na.set_target_addr(address);
        na.set_options(&[NdpOption {
            option_type: NdpOptionTypes::TargetLLAddr,
            length: 1,
            data: mac.octets().to_vec(),
        }]);
    }
    ipv6_frame(
        mac,
        address,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        &mut body,
    )
}

/// A duplicate address detection solicitation for `address` (from `::`, to its
/// solicited-node group): whoever holds it answers with an advertisement to all nodes.
pub fn dad_probe(mac: MacAddr, address: Ipv6Addr) -> Vec<u8> {
    let mut body = [0u8; ND_BODY];
    {
        let mut ns = MutableNeighborSolicitPacket::new(&mut body).expect("sized for an NS");
        ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
        ns.set_icmpv6_code(Icmpv6Code(0));
        ns.set_target_addr(address);
    }
    ipv6_frame(
        mac,
        Ipv6Addr::UNSPECIFIED,
        solicited_node(address),
        &mut body,
    )
}

/// The announcement frames for `address`: both gratuitous ARP forms, or one NA.
pub fn announcements(mac: MacAddr, address: IpAddr) -> Vec<Vec<u8>> {
    match address {
        IpAddr::V4(v4) => gratuitous_arp(mac, v4).into(),
        IpAddr::V6(v6) => vec![unsolicited_na(mac, v6)],
    }
}

/// The probe for `address`.
pub fn probe(mac: MacAddr, address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(v4) => arp_probe(mac, v4),
        IpAddr::V6(v6) => dad_probe(mac, v6),
    }
}

/// What `frame` (a whole Ethernet frame) says about who holds an address: ARP requests and
/// replies, and neighbour advertisements with a valid checksum; `None` for anything else
/// or anything malformed.
pub fn parse(frame: &[u8]) -> Option<Seen> {
    let eth = EthernetPacket::new(frame)?;
    let from = eth.get_source();
    match eth.get_ethertype() {
        EtherTypes::Arp => {
            let a = ArpPacket::new(eth.payload())?;
            if a.get_hardware_type() != ArpHardwareTypes::Ethernet
                || a.get_protocol_type() != EtherTypes::Ipv4
                || a.get_hw_addr_len() != 6
                || a.get_proto_addr_len() != 4
            {
                return None;
            }
            let kind = match a.get_operation() {
                ArpOperations::Request => SeenKind::ArpRequest,
                ArpOperations::Reply => SeenKind::ArpReply,
                _ => return None,
            };
            Some(Seen {
                kind,
                from,
                claims: a.get_sender_hw_addr(),
                address: a.get_sender_proto_addr().into(),
                target: a.get_target_proto_addr().into(),
            })
        }
        EtherTypes::Ipv6 => {
            let ip = Ipv6Packet::new(eth.payload())?;
            if ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 || ip.get_hop_limit() != 255 {
                return None;
            }
            let len = usize::from(ip.get_payload_length());
            let body = eth.payload().get(IPV6_HEADER..IPV6_HEADER + len)?;
            let icmp = Icmpv6Packet::new(body)?;
            if icmp.get_icmpv6_type() != Icmpv6Types::NeighborAdvert
                || icmp.get_checksum()
                    != pnet_packet::icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination())
            {
                return None;
            }
            let na = NeighborAdvertPacket::new(body)?;
            if body.len() < ND_BODY {
                return None;
            }
            let claims = na
                .get_options_iter()
                .find(|o| o.get_option_type() == NdpOptionTypes::TargetLLAddr)
                .and_then(|o| {
                    let d = o.payload();
                    (d.len() >= 6).then(|| MacAddr::new(d[0], d[1], d[2], d[3], d[4], d[5]))
                })
                .unwrap_or(from);
            let flags = na.get_flags();
            let target = IpAddr::V6(na.get_target_addr());
            Some(Seen {
                kind: SeenKind::NeighborAdvert {
                    overrides: flags & NeighborAdvertFlags::Override != 0,
                    solicited: flags & NeighborAdvertFlags::Solicited != 0,
                },
                from,
                claims,
                address: target,
                target,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr(2, 0, 0, 0, 0, 1);
    const THEIRS: MacAddr = MacAddr(2, 0, 0, 0, 0, 9);

    #[test]
    fn gratuitous_arp_comes_in_both_forms_from_the_vip_to_everyone() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let [request, reply] = gratuitous_arp(OURS, vip);
        for (frame, kind) in [
            (&request, SeenKind::ArpRequest),
            (&reply, SeenKind::ArpReply),
        ] {
            assert_eq!(&frame[0..6], &[0xff; 6], "to the broadcast address");
            let seen = parse(frame).expect("parses");
            assert_eq!(seen.kind, kind);
            assert_eq!((seen.from, seen.claims), (OURS, OURS));
            assert_eq!(seen.address, IpAddr::V4(vip));
            assert_eq!(seen.target, IpAddr::V4(vip));
            assert!(!seen.claims_for_other(IpAddr::V4(vip), OURS), "our own");
            assert!(seen.claims_for_other(IpAddr::V4(vip), THEIRS));
        }
    }

    #[test]
    fn the_neighbour_advertisement_overrides_and_carries_our_link_address() {
        let vip: Ipv6Addr = "fd00::100".parse().expect("ip");
        let frame = unsolicited_na(OURS, vip);
        assert_eq!(&frame[0..6], &[0x33, 0x33, 0, 0, 0, 1], "to all nodes");
        let seen = parse(&frame).expect("parses with a valid checksum");
        assert_eq!(
            seen.kind,
            SeenKind::NeighborAdvert {
                overrides: true,
                solicited: false
            }
        );
        assert_eq!(seen.claims, OURS);
        assert_eq!(seen.address, IpAddr::V6(vip));
        // A flipped bit in the body fails the checksum.
        let mut bad = frame.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(parse(&bad), None);
    }

    #[test]
    fn probes_ask_without_claiming() {
        let v4 = Ipv4Addr::new(198, 18, 0, 100);
        let seen = parse(&arp_probe(OURS, v4)).expect("parses");
        assert_eq!(seen.address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(seen.target, IpAddr::V4(v4));
        assert!(!seen.claims_for_other(IpAddr::V4(v4), THEIRS));
        let v6: Ipv6Addr = "fd00::1:2345".parse().expect("ip");
        let ns = dad_probe(OURS, v6);
        assert_eq!(
            &ns[0..6],
            &[0x33, 0x33, 0xff, 0x01, 0x23, 0x45],
            "solicited-node group"
        );
        assert_eq!(parse(&ns), None, "a solicitation claims nothing");
    }

    #[test]
    fn garbage_and_cut_frames_parse_to_nothing() {
        let frame = unsolicited_na(OURS, "fd00::100".parse().expect("ip"));
        for cut in 0..frame.len() {
            let _ = parse(&frame[..cut]);
        }
        let arp = arp_probe(OURS, Ipv4Addr::new(198, 18, 0, 1));
        for cut in 0..ETHERNET_HEADER + ARP_LEN {
            assert_eq!(parse(&arp[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse(&[0u8; 64]), None);
    }
}
