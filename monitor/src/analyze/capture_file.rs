//! Packets out of a pcap or pcapng file (pcap-file), with unix-ns timestamps and the link
//! type each needs for decoding.

use std::io::Read;

use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::PcapNgReader;
use pcap_file::pcapng::blocks::Block;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;

/// Why a capture file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    #[error("not a pcap or pcapng file (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed capture file: {0}")]
    Malformed(#[from] pcap_file::PcapError),
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub ts_ns: u64,
    pub link: DataLink,
    /// Borrowed from the reader's buffer until the next frame is read.
    pub data: std::borrow::Cow<'a, [u8]>,
}

enum Inner<R: Read> {
    Pcap(PcapReader<R>),
    PcapNg {
        reader: PcapNgReader<R>,
        /// Per interface: link type and nanoseconds per timestamp tick.
        interfaces: Vec<(DataLink, u64)>,
    },
}

/// The file again, after its magic was read to pick the format.
pub type Rejoined<R> = std::io::Chain<std::io::Cursor<[u8; 4]>, R>;

/// Reads frames one by one; a truncated last record ends the file with an error.
pub struct CaptureFile<R: Read> {
    inner: Inner<R>,
}

const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0x4d, 0x3c, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

impl<R: Read> CaptureFile<R> {
    /// Opens a capture from its first bytes (`magic`, already read) and the rest.
    pub fn open(magic: [u8; 4], rest: R) -> Result<CaptureFile<Rejoined<R>>, CaptureFileError> {
        let reader = std::io::Cursor::new(magic).chain(rest);
        let inner = if PCAP_MAGICS.contains(&magic) {
            Inner::Pcap(PcapReader::new(reader)?)
        } else if magic == PCAPNG_MAGIC {
            Inner::PcapNg {
                reader: PcapNgReader::new(reader)?,
                interfaces: Vec::new(),
            }
        } else {
            return Err(CaptureFileError::UnknownFormat(magic.to_vec()));
        };
        Ok(CaptureFile { inner })
    }
}

impl<R: Read> CaptureFile<R> {
    /// The next frame, `None` at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, CaptureFileError>> {
        match &mut self.inner {
            Inner::Pcap(reader) => {
                let link = reader.header().datalink;
                Some(reader.next_packet()?.map_err(Into::into).map(|p| Frame {
                    ts_ns: u64::try_from(p.timestamp.as_nanos()).unwrap_or(u64::MAX),
                    link,
                    data: p.data,
                }))
            }
            Inner::PcapNg { reader, interfaces } => loop {
                let block = match reader.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e.into())),
                };
                match block {
                    Block::SectionHeader(_) => interfaces.clear(),
                    Block::InterfaceDescription(idb) => {
                        let tick_ns = idb
                            .options
                            .iter()
                            .find_map(|o| match o {
                                InterfaceDescriptionOption::IfTsResol(r) => Some(tick_ns(*r)),
                                _ => None,
                            })
                            .unwrap_or(1_000); // pcapng default: microseconds
                        interfaces.push((idb.linktype, tick_ns));
                    }
                    Block::EnhancedPacket(p) => {
                        let Some(&(link, tick)) = interfaces.get(p.interface_id as usize) else {
                            continue;
                        };
                        // pcap-file stores the raw tick count in `timestamp` as nanoseconds.
                        let ticks = u64::try_from(p.timestamp.as_nanos()).unwrap_or(u64::MAX);
                        return Some(Ok(Frame {
                            ts_ns: ticks.saturating_mul(tick),
                            link,
                            // Owned: a borrow across loop turns is beyond today's borrow checker.
                            data: p.data.into_owned().into(),
                        }));
                    }
                    Block::SimplePacket(p) => {
                        let Some(&(link, _)) = interfaces.first() else {
                            continue;
                        };
                        return Some(Ok(Frame {
                            ts_ns: 0,
                            link,
                            data: p.data.into_owned().into(),
                        }));
                    }
                    _ => {}
                }
            },
        }
    }
}

/// if_tsresol: high bit clear = 10^-n s, set = 2^-n s (pcapng §4.2).
fn tick_ns(resol: u8) -> u64 {
    let n = u32::from(resol & 0x7f);
    if resol & 0x80 == 0 {
        10u64.checked_pow(9u32.saturating_sub(n)).unwrap_or(1)
    } else {
        (1_000_000_000u64 >> n.min(63)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_resolutions() {
        assert_eq!(tick_ns(6), 1_000);
        assert_eq!(tick_ns(9), 1);
        assert_eq!(tick_ns(0x80 | 10), 976_562);
    }

    #[test]
    fn unknown_and_truncated_files_are_errors_not_panics() {
        let err = CaptureFile::open(*b"GET ", &b"/ HTTP/1.1"[..]).err();
        assert!(matches!(err, Some(CaptureFileError::UnknownFormat(_))));
        // A pcap header is 24 bytes: anything shorter is refused.
        let rest = [2u8, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0];
        for n in 0..rest.len() {
            let r = CaptureFile::open([0xd4, 0xc3, 0xb2, 0xa1], &rest[..n]);
            assert!(r.is_err(), "{n} header bytes accepted");
        }
        assert!(CaptureFile::open([0xd4, 0xc3, 0xb2, 0xa1], &rest[..]).is_ok());
    }
}
