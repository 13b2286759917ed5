//! TCP segments out of captured frames (etherparse): addresses, sequence number, flags,
//! payload. Anything else (ARP, UDP, fragments, truncated frames) is skipped.

use std::net::{IpAddr, SocketAddr};

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;

use super::capture_file::Frame;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

/// Decodes a frame; `None` when it is not a whole TCP segment over IPv4/IPv6.
pub fn tcp_segment<'a>(frame: &'a Frame<'_>) -> Option<Segment<'a>> {
    let data: &[u8] = &frame.data;
    let packet = match frame.link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok()?,
        // SLL2: 2-byte protocol type, then 18 more header bytes.
        DataLink::LINUX_SLL2 => {
            let proto = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
            SlicedPacket::from_ether_type(EtherType(proto), data.get(20..)?).ok()?
        }
        // BSD loopback: a 4-byte address family in host order, then the IP packet.
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        _ => return None,
    };
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match packet.net? {
        NetSlice::Ipv4(ip) => {
            if ip.is_payload_fragmented() {
                return None;
            }
            (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            )
        }
        NetSlice::Ipv6(ip) => {
            if ip.is_payload_fragmented() {
                return None;
            }
            (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            )
        }
        NetSlice::Arp(_) => return None,
    };
    let TransportSlice::Tcp(tcp) = packet.transport? else {
        return None;
    };
    Some(Segment {
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ethernet_tcp(payload: &[u8]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 2], 64)
            .tcp(40000, 443, 1000, 65535)
            .psh()
            .ack(7);
        let mut out = Vec::new();
        builder.write(&mut out, payload).expect("write to a Vec");
        out
    }

    #[test]
    fn ethernet_ipv4_tcp_is_decoded() {
        let frame = Frame {
            ts_ns: 1,
            link: DataLink::ETHERNET,
            data: ethernet_tcp(b"\x16\x03\x01").into(),
        };
        let seg = tcp_segment(&frame).expect("tcp segment");
        assert_eq!(seg.src, "127.0.0.1:40000".parse().expect("addr"));
        assert_eq!(seg.dst.port(), 443);
        assert_eq!((seg.seq, seg.syn, seg.ack), (1000, false, true));
        assert_eq!(seg.payload, b"\x16\x03\x01");
    }

    #[test]
    fn every_truncation_of_a_frame_is_skipped_or_decoded_without_panic() {
        let data = ethernet_tcp(b"hello");
        for n in 0..data.len() {
            let frame = Frame {
                ts_ns: 0,
                link: DataLink::ETHERNET,
                data: data[..n].into(),
            };
            assert!(tcp_segment(&frame).is_none(), "truncated at {n} decoded");
        }
    }
}
