//! The shared memory's layout: a header, a control block per ring, then the
//! rings themselves; and [`Ring`], one direction's view of it.

use crate::error::Error;
use crate::sys::region::Region;
use std::sync::atomic::{AtomicU32, AtomicU64};

pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"skpipe03");
/// Bytes before the first ring: the header and the control blocks.
pub(super) const HEADER_BYTES: usize = 4096;
/// Header words.
pub(super) const H_MAGIC: usize = 0;
pub(super) const H_RINGS: usize = 8;
pub(super) const H_CAPACITY: usize = 16;
/// Control block of ring `i`: at `CTL_BASE + i * CTL_SIZE`. It has four
/// parts, 128 bytes apart (two cache lines, which processors may fetch in
/// pairs), so that what one side writes for every message never shares a
/// line with what the other side writes, and the rarely written `waiting`
/// flags, which the other side reads for every message, stay in its cache.
const CTL_BASE: usize = 512;
const CTL_SIZE: usize = 512;
/// Written by the producer: `head`, the end of the frame being written (a
/// producer that finds `head` short of it knows its predecessor died
/// mid-frame), `1 +` the position at which a frame was cut short (0: none),
/// the futex word the consumer sleeps on, and the claim of the end that
/// writes (see `claim`).
const C_HEAD: usize = 0;
const C_TX_FRAME_END: usize = 8;
const C_CUT: usize = 16;
const C_DATA_SEQ: usize = 24;
const C_WRITER: usize = 32;
/// Written by the consumer: `tail`, the end of the frame being read (for a
/// consumer taking over mid-frame), the futex word the producer sleeps on,
/// the last cut mark the consumer has reached, and the claim of the end
/// that reads.
const C_TAIL: usize = 128;
const C_RX_FRAME_END: usize = 136;
const C_SPACE_SEQ: usize = 144;
const C_CUT_SEEN: usize = 152;
const C_READER: usize = 160;
/// Raised by the consumer while it sleeps.
const C_CONSUMER_WAITING: usize = 256;
/// Raised by the producer while it sleeps.
const C_PRODUCER_WAITING: usize = 384;

/// Bytes in each ring.
pub(crate) const CAPACITY: usize = 1 << 20;
/// The smallest and largest capacity a ring may have.
pub(crate) const MIN_CAPACITY: usize = 4096;
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// One direction of the shared memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ring<'a> {
    region: &'a Region,
    ctl: usize,
    data: usize,
    cap: usize,
}

impl<'a> Ring<'a> {
    pub(super) fn new(region: &'a Region, cap: usize, index: usize) -> Ring<'a> {
        Ring {
            region,
            ctl: CTL_BASE + index * CTL_SIZE,
            data: HEADER_BYTES + index * cap,
            cap,
        }
    }
    pub(super) fn head(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_HEAD)
    }
    pub(super) fn tail(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_TAIL)
    }
    pub(super) fn data_seq(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_DATA_SEQ)
    }
    pub(super) fn space_seq(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_SPACE_SEQ)
    }
    pub(super) fn producer_waiting(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_PRODUCER_WAITING)
    }
    pub(super) fn consumer_waiting(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_CONSUMER_WAITING)
    }
    pub(super) fn tx_frame_end(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_TX_FRAME_END)
    }
    pub(super) fn cut(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_CUT)
    }
    pub(super) fn cut_seen(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_CUT_SEEN)
    }
    pub(super) fn rx_frame_end(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_RX_FRAME_END)
    }
    pub(super) fn writer(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_WRITER)
    }
    pub(super) fn reader(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_READER)
    }

    /// Copies `src` in at stream position `pos`, wrapping.
    pub(super) fn put(&self, pos: u64, src: &[u8]) {
        let off = (pos % self.cap as u64) as usize;
        let first = src.len().min(self.cap - off);
        self.region.copy_in(self.data + off, &src[..first]);
        if first < src.len() {
            self.region.copy_in(self.data, &src[first..]);
        }
    }

    /// Copies out into `dst` from stream position `pos`, wrapping.
    pub(super) fn get(&self, pos: u64, dst: &mut [u8]) {
        let off = (pos % self.cap as u64) as usize;
        let first = dst.len().min(self.cap - off);
        self.region.copy_out(self.data + off, &mut dst[..first]);
        if first < dst.len() {
            let rest = &mut dst[first..];
            self.region.copy_out(self.data, rest);
        }
    }

    /// Appends `len` bytes from stream position `pos` to `dst`, wrapping.
    pub(super) fn append(&self, pos: u64, len: usize, dst: &mut Vec<u8>) {
        let off = (pos % self.cap as u64) as usize;
        let first = len.min(self.cap - off);
        self.region.append_to(self.data + off, first, dst);
        if first < len {
            self.region.append_to(self.data, len - first, dst);
        }
    }
}

/// The error for shared memory that breaks the protocol.
pub(super) fn corrupt(what: &str) -> Error {
    Error::Wire(format!(
        "the shared memory of a pipe is corrupt ({what}); the peer is misbehaving"
    ))
}
