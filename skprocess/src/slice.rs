//! Shared slices of plain data: [`SharedSlice<T>`], read-only and read in
//! place by every process, and [`SharedSliceMut<T>`], changed in place
//! under a cross-process lock. The read-only storage is `sys::frozen`, the
//! locked one `sys::locked`.

use crate::error::{shared_memory_error, Error, Result};
use crate::share::tag;
use crate::sys::frozen::Frozen;
use crate::sys::locked::{LockedGuard, LockedRegion};
use crate::wire;
use bytemuck::Pod;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `b"SKSLICE1"`: what a read-only slice's memory starts with.
const MAGIC: u64 = u64::from_le_bytes(*b"SKSLICE1");

/// `b"SKSLICEM"`: what a mutable slice's memory holds.
const MAGIC_MUT: u64 = u64::from_le_bytes(*b"SKSLICEM");

/// Bytes before a read-only slice's elements: magic, tag, element size,
/// element count, then padding. Elements aligned to at most this much fit.
const HEADER: usize = 64;

// Control words of a mutable slice.
const W_SIZE: usize = 0;
const W_LEN: usize = 1;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Checks that `T` can be laid out in shared memory whose elements start
/// `max_align`-aligned.
fn check_type<T>(max_align: usize) -> Result<()> {
    let name = std::any::type_name::<T>();
    if std::mem::size_of::<T>() == 0 {
        return Err(Error::usage(format!(
            "a shared slice of {name} holds nothing: the type has no size"
        )));
    }
    if std::mem::align_of::<T>() > max_align {
        return Err(Error::usage(format!(
            "a shared slice of {name} cannot be made: its alignment is above {max_align} bytes"
        )));
    }
    Ok(())
}

/// A read-only slice of `T` in shared memory, read in place by every
/// process that holds a clone: the data is copied once, by
/// [`from_slice`](SharedSlice::from_slice), and never again.
///
/// The handle [dereferences](Deref) to `&[T]`. It is cheap to clone and is
/// `Serialize + Deserialize`: as a field of a process, a message or a pool
/// item it travels as a descriptor, not as bytes, so sending a 1 GiB slice
/// costs what sending a 1 KiB one does, and every process maps the same
/// physical memory.
///
/// The memory is an anonymous memfd (never a file in `/dev/shm`) sealed
/// against writes and size changes before anyone else sees it: no process
/// can change the data, and a descriptor without those seals is refused
/// when it arrives. It is freed when the last process holding a handle
/// drops it or ends.
///
/// `T` is any [`bytemuck::Pod`] type: numbers, arrays of them, or your own
/// `#[repr(C)]` structs deriving `Pod` and `Zeroable` (with bytemuck's
/// `derive` feature; or with skprocess's, through the re-export
/// [`skprocess::bytemuck`](crate::bytemuck) and
/// `#[bytemuck(crate = "skprocess::bytemuck")]`).
///
/// # Examples
///
/// ```
/// # fn main() -> skprocess::Result<()> {
/// let data = skprocess::SharedSlice::from_slice(&[1.5f64, 2.5, 3.0])?;
/// let s: &[f64] = &data;
/// assert_eq!(s.iter().sum::<f64>(), 7.0);
/// # Ok(())
/// # }
/// ```
pub struct SharedSlice<T> {
    frozen: Arc<Frozen>,
    _elements: PhantomData<T>,
}

impl<T: Pod> SharedSlice<T> {
    /// Copies `data` into new, sealed shared memory.
    ///
    /// # Errors
    ///
    /// If `T` has no size or an alignment above 64 bytes, or the memory
    /// cannot be allocated.
    pub fn from_slice(data: &[T]) -> Result<Self> {
        check_type::<T>(HEADER)?;
        let mut header = [0u8; HEADER];
        let words = [
            MAGIC,
            tag::<T>(),
            std::mem::size_of::<T>() as u64,
            data.len() as u64,
        ];
        for (i, w) in words.iter().enumerate() {
            header[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        let frozen = Frozen::new(
            c"skprocess-slice",
            &[&header, bytemuck::cast_slice::<T, u8>(data)],
        )
        .map_err(sys_error::<T>)?;
        attach_frozen(frozen).map_err(sys_error::<T>)
    }
}

impl<T> SharedSlice<T> {
    fn elements(&self) -> &[u8] {
        &self.frozen.bytes()[HEADER..]
    }
}

/// Checks what a read-only slice's memory says about itself against `T`.
fn attach_frozen<T: Pod>(frozen: Frozen) -> io::Result<SharedSlice<T>> {
    let bytes = frozen.bytes();
    if bytes.len() < HEADER {
        return Err(invalid("the shared slice's memory is too small".into()));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[8 * i..8 * i + 8]);
        u64::from_le_bytes(w)
    };
    if word(0) != MAGIC {
        return Err(invalid("the memory is not a shared slice".into()));
    }
    if word(1) != tag::<T>() || word(2) != std::mem::size_of::<T>() as u64 {
        return Err(invalid("the shared slice was made for another type".into()));
    }
    let want = word(3).checked_mul(word(2));
    if want != Some((bytes.len() - HEADER) as u64) {
        return Err(invalid(
            "the shared slice's length does not match its memory".into(),
        ));
    }
    if bytemuck::try_cast_slice::<u8, T>(&bytes[HEADER..]).is_err() {
        return Err(invalid("the shared slice's memory is misaligned".into()));
    }
    Ok(SharedSlice {
        frozen: Arc::new(frozen),
        _elements: PhantomData,
    })
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // Size and alignment were checked when the handle was made.
        bytemuck::cast_slice(self.elements())
    }
}

impl<T: Pod> AsRef<[T]> for SharedSlice<T> {
    fn as_ref(&self) -> &[T] {
        self
    }
}

impl<T> Clone for SharedSlice<T> {
    /// Another handle to the same memory.
    fn clone(&self) -> Self {
        SharedSlice {
            frozen: Arc::clone(&self.frozen),
            _elements: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = std::mem::size_of::<T>().max(1);
        f.debug_struct(&format!("SharedSlice<{}>", std::any::type_name::<T>()))
            .field("len", &(self.elements().len() / size))
            .finish()
    }
}

impl<T> Serialize for SharedSlice<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        wire::serialize_fd(self.frozen.fd().as_fd(), std::any::type_name::<Self>(), s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        attach_slice(fd).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "cannot attach to SharedSlice<{}>: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

fn attach_slice<T: Pod>(fd: OwnedFd) -> io::Result<SharedSlice<T>> {
    attach_frozen(Frozen::from_fd(fd)?)
}

/// A slice of `T` in shared memory that every process holding a clone
/// changes in place, under a cross-process lock.
///
/// [`lock`](SharedSliceMut::lock) returns a guard that dereferences to
/// `[T]` (mutably): while it lives no other thread or process can lock the
/// slice, so a read-modify-write through one guard is atomic across
/// processes. The lock is fair (waiters are served in turn) and robust: if a
/// holder dies, the next locker gets the lock at once, and its guard says
/// so with [`recovered`](SharedSliceGuard::recovered). Changes are made in
/// place, so what the dead holder had already written stays.
///
/// Like [`SharedSlice`], the handle is `Clone + Serialize + Deserialize` and
/// travels as a descriptor; the memory is an anonymous memfd, freed with the
/// last handle.
///
/// # Examples
///
/// ```
/// # fn main() -> skprocess::Result<()> {
/// let out = skprocess::SharedSliceMut::<u64>::zeroed(16)?;
/// out.lock()?[7] = 1;
/// {
///     let mut g = out.lock()?;
///     g[7] += 1;
///     g[0] = 5;
/// }
/// let v: Vec<u64> = out.to_vec()?;
/// assert_eq!((v[0], v[7], v.len()), (5, 2, 16));
/// # Ok(())
/// # }
/// ```
pub struct SharedSliceMut<T> {
    region: Arc<LockedRegion>,
    _elements: PhantomData<T>,
}

impl<T: Pod> SharedSliceMut<T> {
    /// A new slice of `len` elements, all zero bytes.
    ///
    /// # Errors
    ///
    /// If `T` has no size or an alignment above 4096 bytes, or the memory
    /// cannot be allocated.
    pub fn zeroed(len: usize) -> Result<Self> {
        check_type::<T>(crate::sys::locked::HEADER)?;
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            Error::usage(format!(
                "a shared slice of {len} {} is too large",
                std::any::type_name::<T>()
            ))
        })?;
        let region =
            LockedRegion::create(c"skprocess-slice-mut", MAGIC_MUT, tag::<T>(), bytes, |r| {
                r.word(W_SIZE)
                    .store(std::mem::size_of::<T>() as u64, Ordering::Relaxed);
                r.word(W_LEN).store(len as u64, Ordering::Relaxed);
            })
            .map_err(sys_error::<T>)?;
        Ok(SharedSliceMut {
            region: Arc::new(region),
            _elements: PhantomData,
        })
    }

    /// Locks the slice, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// If this thread holds a guard of this slice already.
    pub fn lock(&self) -> Result<SharedSliceGuard<'_, T>> {
        match self.lock_deadline(None)? {
            Some(g) => Ok(g),
            None => Err(Error::usage("a lock without deadline timed out")),
        }
    }

    /// Locks the slice, waiting up to `timeout`: `Ok(None)` if another
    /// holder kept it all that time.
    ///
    /// # Errors
    ///
    /// As [`lock`](SharedSliceMut::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<SharedSliceGuard<'_, T>>> {
        self.lock_deadline(Instant::now().checked_add(timeout))
    }

    fn lock_deadline(&self, deadline: Option<Instant>) -> Result<Option<SharedSliceGuard<'_, T>>> {
        Ok(self
            .region
            .lock(deadline)
            .map_err(sys_error::<T>)?
            .map(|guard| SharedSliceGuard {
                guard,
                _elements: PhantomData,
            }))
    }

    /// A copy of the elements, taken under the lock.
    ///
    /// # Errors
    ///
    /// As [`lock`](SharedSliceMut::lock).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }
}

impl<T> SharedSliceMut<T> {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.region.data_len() / std::mem::size_of::<T>().max(1)
    }

    /// Whether the slice has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Maps a mutable slice received from another process.
fn attach_mut<T: Pod>(fd: OwnedFd) -> io::Result<SharedSliceMut<T>> {
    let region = LockedRegion::open(fd, MAGIC_MUT, tag::<T>())?;
    let size = region.word(W_SIZE).load(Ordering::Relaxed);
    let len = region.word(W_LEN).load(Ordering::Relaxed);
    if size != std::mem::size_of::<T>() as u64 {
        return Err(invalid("the shared slice was made for another type".into()));
    }
    if len.checked_mul(size) != Some(region.data_len() as u64) {
        return Err(invalid(
            "the shared slice's length does not match its memory".into(),
        ));
    }
    Ok(SharedSliceMut {
        region: Arc::new(region),
        _elements: PhantomData,
    })
}

impl<T> Clone for SharedSliceMut<T> {
    /// Another handle to the same memory.
    fn clone(&self) -> Self {
        SharedSliceMut {
            region: Arc::clone(&self.region),
            _elements: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SharedSliceMut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(&format!("SharedSliceMut<{}>", std::any::type_name::<T>()))
            .field("len", &self.len())
            .finish()
    }
}

impl<T> Serialize for SharedSliceMut<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        wire::serialize_fd(self.region.fd().as_fd(), std::any::type_name::<Self>(), s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSliceMut<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        attach_mut(fd).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "cannot attach to SharedSliceMut<{}>: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// The locked elements of a [`SharedSliceMut`]: dereferences to `[T]`,
/// mutably. The lock is held until the guard drops. Not `Send`: the lock
/// belongs to the thread that took it.
pub struct SharedSliceGuard<'a, T> {
    guard: LockedGuard<'a>,
    _elements: PhantomData<&'a mut [T]>,
}

impl<T> SharedSliceGuard<'_, T> {
    /// Whether the previous holder died holding the lock (what it wrote
    /// before it died stays).
    pub fn recovered(&self) -> bool {
        self.guard.recovered()
    }
}

impl<T: Pod> Deref for SharedSliceGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // The data starts page-aligned and its length is a whole number of
        // elements (checked when the handle was made).
        bytemuck::cast_slice(self.guard.bytes())
    }
}

impl<T: Pod> DerefMut for SharedSliceGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(self.guard.bytes_mut())
    }
}

impl<T> fmt::Debug for SharedSliceGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSliceGuard")
            .field(
                "len",
                &(self.guard.bytes().len() / std::mem::size_of::<T>().max(1)),
            )
            .field("recovered", &self.recovered())
            .finish()
    }
}

/// The crate's error for a failure of a shared slice's memory.
fn sys_error<T>(e: io::Error) -> Error {
    shared_memory_error(e, std::any::type_name::<T>(), "SharedSliceMut")
}

/// Maps the memory `fd` as a `SharedSlice<T>`, with the checks a slice
/// arriving from another process gets.
#[cfg(feature = "bench-internals")]
pub(crate) fn attach_slice_fd<T: Pod>(fd: OwnedFd) -> Result<SharedSlice<T>> {
    attach_slice(fd).map_err(sys_error::<T>)
}

/// Maps the memory `fd` as a `SharedSliceMut<T>`, with the checks a slice
/// arriving from another process gets.
#[cfg(feature = "bench-internals")]
pub(crate) fn attach_slice_mut_fd<T: Pod>(fd: OwnedFd) -> Result<SharedSliceMut<T>> {
    attach_mut(fd).map_err(sys_error::<T>)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_slice_reads_back_in_place_and_refuses_other_types() {
        let s = SharedSlice::from_slice(&[1u32, 2, 3]).unwrap();
        assert_eq!(&*s, &[1, 2, 3]);
        let fd = || s.frozen.fd().try_clone().unwrap();
        assert_eq!(&*attach_slice::<u32>(fd()).unwrap(), &[1, 2, 3]);
        assert!(attach_slice::<i32>(fd()).is_err());
        assert!(attach_slice::<u64>(fd()).is_err());
        assert!(attach_mut::<u32>(fd()).is_err());
        let empty = SharedSlice::<u8>::from_slice(&[]).unwrap();
        assert!(empty.is_empty());
        // A sealed memfd that is too short for its header, or whose header
        // claims more elements than it holds.
        let short = Frozen::new(c"s", &[b"SKSLICE1"]).unwrap();
        assert!(attach_frozen::<u32>(short).is_err());
        let mut header = s.frozen.bytes()[..HEADER].to_vec();
        header[24..32].copy_from_slice(&1000u64.to_le_bytes());
        let lying = Frozen::new(c"s", &[&header, &[0u8; 12]]).unwrap();
        assert!(attach_frozen::<u32>(lying).is_err());
        // Writable memory is refused, whatever it holds.
        let m = SharedSliceMut::<u32>::zeroed(3).unwrap();
        assert!(attach_slice::<u32>(m.region.fd().try_clone().unwrap()).is_err());
    }

    #[test]
    fn a_mutable_slice_is_shared_between_mappings() {
        let m = SharedSliceMut::<u64>::zeroed(4).unwrap();
        let other = attach_mut::<u64>(m.region.fd().try_clone().unwrap()).unwrap();
        m.lock().unwrap()[2] = 9;
        assert_eq!(other.to_vec().unwrap(), [0, 0, 9, 0]);
        assert!(attach_mut::<u32>(m.region.fd().try_clone().unwrap()).is_err());
        let g = m.lock().unwrap();
        assert!(matches!(m.lock(), Err(Error::Usage(_))));
        drop(g);
        assert!(SharedSliceMut::<()>::zeroed(3).is_err());
    }
}
