//! [`Share<T>`]: one value shared by every process that holds a clone of the
//! handle, read and changed under a cross-process lock. The guarantees
//! (what survives a crash, growth, limits) are documented on [`Share`],
//! where users see them; the memory layout and the crash-safety argument are
//! in `sys::shm`.

use crate::error::{Error, Result};
use crate::sys::shm::{self, Held, Segment};
use crate::wire;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// What this process keeps beside its mapping of a share.
struct Cache<T> {
    /// The last value decoded or written here, with its generation.
    value: Option<(u64, T)>,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl<T> Cache<T> {
    fn empty() -> Self {
        Cache {
            value: None,
            scratch: Vec::new(),
        }
    }
}

/// A value shared by every process that holds a clone of this handle.
///
/// `T` is any `Serialize + DeserializeOwned + Send + 'static` type. Changes
/// made through [`lock`](Share::lock), [`update`](Share::update) or
/// [`set`](Share::set) are atomic across processes: a read-modify-write under
/// one guard never interleaves with another process's. The handle is cheap
/// to clone and is `Serialize + Deserialize`, so it can be a field of a
/// process or a message.
///
/// # How it works
///
/// A share is an anonymous shared-memory file (a memfd) holding a small
/// header — a robust, process-shared mutex, a generation counter, the file's
/// size — and two slots for the postcard-encoded value. The handle is the
/// file's descriptor: it travels to a child as a field of a process, a
/// message or a pool item, and each process maps the file once, however many
/// clones it holds and however many times the handle arrives.
///
/// [`lock`](Share::lock) takes the mutex and decodes the value only if
/// another process wrote it since this process last decoded it; otherwise
/// it reuses its own decoded copy, so a lock with no change in between costs
/// a mutex and a compare. Dropping a guard that was written through
/// ([`DerefMut`]) encodes the value into the inactive slot, then flips the
/// active slot with one store; a guard that was only read writes nothing.
///
/// # What survives a crash
///
/// - **A process killed while it holds the lock** (`SIGKILL`, a hook
///   timeout, `abort`) loses only its own unfinished update. The value stays
///   the last one written back, and the next [`lock`](Share::lock) anywhere
///   succeeds at once: the kernel hands the lock over (`EOWNERDEAD`) and it
///   is marked consistent.
/// - **A process killed in the middle of writing back** never tears the
///   value: it was writing the inactive slot, and the switch to it is a
///   single store made only once the bytes are complete.
/// - **A thread that panics while holding a guard** discards its changes
///   too, the same rule as a killed process (a retried process must not
///   apply its update twice).
/// - **The memory itself** belongs to no file system: nothing ever appears
///   in `/dev/shm`, and the kernel frees it when the last process holding a
///   handle ends, however it ends.
///
/// What is not protected: a change made through a guard that is then leaked
/// with [`std::mem::forget`] is lost and the lock stays held until the
/// thread ends; and a value that fails to encode when a guard drops is not
/// written (the error is logged; use [`ShareGuard::commit`] to get it).
///
/// # Growth
///
/// The value may grow far beyond its first size, from any process: the
/// writer extends the same file and every other process remaps it the next
/// time it takes the lock, so no handle ever goes stale.
///
/// # Limits
///
/// - The value is encoded with postcard: a type postcard cannot describe
///   (`#[serde(flatten)]`, `#[serde(untagged)]`) is refused by
///   [`Share::new`] with an error naming [`Json`](crate::Json), the escape
///   hatch.
/// - A shared value cannot itself hold a `Share` or a pipe endpoint.
/// - A guard is not `Send`: the lock belongs to the thread that took it.
/// - Locking a share again from the thread that holds its guard is an
///   `Err`, not a deadlock.
/// - A holder that is alive but stuck (in an endless loop, or stopped)
///   keeps every other process waiting in [`lock`](Share::lock); use
///   [`lock_timeout`](Share::lock_timeout) where a wait must be bounded.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::Share;
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Stats { counter: u64, log: Vec<String> }
///
/// # fn main() -> skprocess::Result<()> {
/// let share = Share::new(Stats::default())?;
/// share.lock()?.counter += 1;
/// {
///     let mut s = share.lock()?;
///     s.counter += 1;
///     let n = s.counter;
///     s.log.push(n.to_string());
/// } // written back here
/// let n = share.update(|s| { s.counter += 1; s.counter })?;
/// assert_eq!(n, 3);
/// assert_eq!(share.get()?.log, ["2"]);
/// # Ok(())
/// # }
/// ```
pub struct Share<T> {
    seg: Arc<Segment<Cache<T>>>,
}

/// A fingerprint of `T`'s name, so a handle cannot be attached as another
/// type (every process runs the same binary, so names agree).
pub(crate) fn tag<T>() -> u64 {
    // FNV-1a.
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Turns an error from the shared-memory layer (`sys::shm`) about a
/// `Share<T>` into the crate's error: a segment that does not hold a valid
/// `T` (corrupt, or made for another type) cannot be decoded as `T`; a value
/// too large for its memory cannot be encoded into it; locking twice from
/// one thread is a misuse; anything else is the system's error.
fn sys_error<T>(e: io::Error) -> Error {
    crate::error::shared_memory_error(e, std::any::type_name::<T>(), "Share")
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Share<T> {
    /// Puts `value` in a new shared-memory segment.
    ///
    /// # Errors
    ///
    /// If `T` cannot be encoded and decoded back with postcard (the error
    /// names the type and points to [`Json`](crate::Json)), or the memory
    /// cannot be allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let share = skprocess::Share::new(vec![1u32, 2, 3])?;
    /// assert_eq!(share.get()?, [1, 2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(value: T) -> Result<Self> {
        let bytes = wire::encode_plain(&value, Vec::new(), "a Share")?;
        // Decode once now, so a type postcard cannot read back fails here
        // rather than in the first process that locks it.
        let value: T = wire::decode(&bytes, Vec::new())?;
        let capacity = bytes.len().saturating_add(bytes.len() / 2);
        let cache = Cache {
            value: Some((0, value)),
            scratch: Vec::new(),
        };
        let seg = Segment::create(c"skprocess-share", tag::<T>(), &bytes, capacity, cache)
            .map_err(sys_error::<T>)?;
        let seg = Arc::new(seg);
        remember(&seg).map_err(sys_error::<T>)?;
        Ok(Share { seg })
    }

    /// Locks the value, waiting as long as it takes, and returns a guard
    /// that reads and writes it. Another process's `lock` waits until the
    /// guard drops; the value is written back then, if it was changed.
    ///
    /// # Errors
    ///
    /// If this thread already holds a guard of this share, or the shared
    /// value cannot be decoded.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let share = skprocess::Share::new(0u64)?;
    /// *share.lock()? += 5;
    /// assert_eq!(*share.lock()?, 5);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock(&self) -> Result<ShareGuard<'_, T>> {
        ShareGuard::new(self.held()?)
    }

    fn held(&self) -> Result<Held<'_, Cache<T>>> {
        // Without a deadline the lock is taken or fails; it never times out.
        self.seg
            .lock(None)
            .map_err(sys_error::<T>)?
            .ok_or_else(|| Error::usage("a lock without deadline timed out"))
    }

    /// Like [`lock`](Share::lock), giving up after `timeout`: `Ok(None)` if
    /// the value stayed locked by another holder all that time.
    ///
    /// # Errors
    ///
    /// As [`lock`](Share::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # fn main() -> skprocess::Result<()> {
    /// let share = skprocess::Share::new(0u64)?;
    /// let guard = share.lock_timeout(Duration::from_millis(100))?;
    /// assert!(guard.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<ShareGuard<'_, T>>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.lock_deadline(deadline),
            None => self.lock().map(Some),
        }
    }

    /// Like [`lock`](Share::lock), giving up at `deadline`: `Ok(None)` if the
    /// value stayed locked by another holder until then.
    ///
    /// # Errors
    ///
    /// As [`lock`](Share::lock).
    pub fn lock_deadline(&self, deadline: Instant) -> Result<Option<ShareGuard<'_, T>>> {
        match self.seg.lock(Some(deadline)).map_err(sys_error::<T>)? {
            Some(held) => ShareGuard::new(held).map(Some),
            None => Ok(None),
        }
    }

    /// Locks the value only if no one holds it now: `Ok(None)` otherwise.
    ///
    /// # Errors
    ///
    /// As [`lock`](Share::lock).
    pub fn try_lock(&self) -> Result<Option<ShareGuard<'_, T>>> {
        self.lock_deadline(Instant::now())
    }

    /// A copy of the current value.
    ///
    /// # Errors
    ///
    /// As [`lock`](Share::lock).
    pub fn get(&self) -> Result<T> {
        let mut held = self.held()?;
        let (bytes, _) = held.read().map_err(sys_error::<T>)?;
        wire::decode(bytes, Vec::new())
    }

    /// Replaces the value.
    ///
    /// # Errors
    ///
    /// If `value` cannot be encoded (the shared value is then unchanged), or
    /// as [`lock`](Share::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let share = skprocess::Share::new(String::from("a"))?;
    /// share.set("b".into())?;
    /// assert_eq!(share.get()?, "b");
    /// # Ok(())
    /// # }
    /// ```
    pub fn set(&self, value: T) -> Result<()> {
        let mut held = self.held()?;
        write_back(&mut held, value)
    }

    /// Runs `f` on the value under the lock, writes the value back and
    /// returns what `f` returned.
    ///
    /// # Errors
    ///
    /// If the changed value cannot be encoded (the shared value is then
    /// unchanged), or as [`lock`](Share::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let share = skprocess::Share::new(vec![1u8])?;
    /// let len = share.update(|v| { v.push(2); v.len() })?;
    /// assert_eq!(len, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let mut guard = self.lock()?;
        let r = f(&mut *guard);
        guard.commit()?;
        Ok(r)
    }
}

/// Encodes `value`, publishes it and caches it; on failure the cache is
/// dropped (the shared value is unchanged).
fn write_back<T: Serialize>(held: &mut Held<'_, Cache<T>>, value: T) -> Result<()> {
    let scratch = std::mem::take(&mut held.local().scratch);
    let bytes = match wire::encode_plain(&value, scratch, "a Share") {
        Ok(b) => b,
        Err(e) => {
            held.local().value = None;
            return Err(e);
        }
    };
    let r = held.publish(&bytes);
    let cache = held.local();
    // Keep the buffer for next time, unless a one-off large value left it
    // much bigger than what is usually written.
    cache.scratch = bytes;
    if cache.scratch.capacity() > (1 << 20) && cache.scratch.capacity() > 4 * cache.scratch.len() {
        cache.scratch = Vec::new();
    }
    match r {
        Ok(generation) => {
            cache.value = Some((generation, value));
            Ok(())
        }
        Err(e) => {
            cache.value = None;
            Err(sys_error::<T>(e))
        }
    }
}

impl<T> Clone for Share<T> {
    /// Another handle to the same shared value (the mapping is shared too).
    fn clone(&self) -> Self {
        Share {
            seg: Arc::clone(&self.seg),
        }
    }
}

impl<T> fmt::Debug for Share<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(&format!("Share<{}>", std::any::type_name::<T>()))
            .field("version", &self.seg.generation())
            .field("encoded_len", &self.seg.len())
            .field("segment_size", &self.seg.size())
            .finish()
    }
}

/// How a share is written inside skprocess's encoding: the index of its
/// descriptor among those travelling with the value.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Share")]
struct FdIndex(u32);

impl<T> Serialize for Share<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let index = wire::push_fd(self.seg.fd(), std::any::type_name::<Self>())
            .map_err(serde::ser::Error::custom)?;
        FdIndex(index).serialize(s)
    }
}

impl<'de, T: Send + 'static> Deserialize<'de> for Share<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let FdIndex(index) = FdIndex::deserialize(d)?;
        let fd = wire::take_fd(index).map_err(serde::de::Error::custom)?;
        let seg = attach(fd).map_err(|e| {
            serde::de::Error::custom(wire::refuse(format!(
                "cannot attach to Share<{}>: {e}",
                std::any::type_name::<T>()
            )))
        })?;
        Ok(Share { seg })
    }
}

/// The segments this process has mapped, by file identity, so a share that
/// arrives again (back from a child, in every pool item, in several
/// messages) reuses the mapping and the decoded copy it already has instead
/// of mapping the file once more.
#[derive(Default)]
struct Attached {
    by_file: HashMap<(u64, u64), Weak<dyn Any + Send + Sync>>,
    prune_at: usize,
}

fn attached() -> MutexGuard<'static, Attached> {
    static ATTACHED: OnceLock<Mutex<Attached>> = OnceLock::new();
    ATTACHED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Remembers `seg` as this process's mapping of its file.
fn remember<T: Send + 'static>(seg: &Arc<Segment<Cache<T>>>) -> io::Result<()> {
    let id = shm::file_id(seg.fd())?;
    let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(seg) as Weak<dyn Any + Send + Sync>;
    let mut map = attached();
    map.by_file.insert(id, weak);
    if map.by_file.len() > map.prune_at {
        map.by_file.retain(|_, w| w.strong_count() > 0);
        map.prune_at = (2 * map.by_file.len()).max(64);
    }
    Ok(())
}

/// This process's mapping of the share file `fd`, made now if there is none.
fn attach<T: Send + 'static>(fd: OwnedFd) -> io::Result<Arc<Segment<Cache<T>>>> {
    let id = shm::file_id(fd.as_fd())?;
    let known = attached().by_file.get(&id).and_then(Weak::upgrade);
    if let Some(any) = known {
        if let Ok(seg) = any.downcast::<Segment<Cache<T>>>() {
            // `fd` closes here; the mapping's own descriptor stays.
            return Ok(seg);
        }
    }
    let seg = Arc::new(Segment::open(fd, tag::<T>(), Cache::empty())?);
    remember(&seg)?;
    Ok(seg)
}

/// The locked value of a [`Share`]: dereferences to `T`. The lock is held
/// until the guard drops; the value is written back then if it was changed
/// through [`DerefMut`].
///
/// A guard is not `Send`: the lock belongs to the thread that took it.
///
/// ```compile_fail
/// fn needs_send<S: Send>(_: S) {}
/// let share = skprocess::Share::new(0u64).unwrap();
/// needs_send(share.lock().unwrap());
/// ```
pub struct ShareGuard<'a, T: Serialize + DeserializeOwned + Send + 'static> {
    held: Held<'a, Cache<T>>,
    /// Always `Some` until the guard finishes.
    value: Option<T>,
    generation: u64,
    changed: bool,
}

impl<'a, T: Serialize + DeserializeOwned + Send + 'static> ShareGuard<'a, T> {
    fn new(mut held: Held<'a, Cache<T>>) -> Result<Self> {
        let generation = held.generation();
        let value = match held.local().value.take() {
            Some((g, v)) if g == generation => v,
            _ => {
                let (bytes, _) = held.read().map_err(sys_error::<T>)?;
                wire::decode(bytes, Vec::new())?
            }
        };
        Ok(ShareGuard {
            held,
            value: Some(value),
            generation,
            changed: false,
        })
    }

    /// Whether the previous holder of the lock died holding it (its
    /// unfinished change was discarded).
    pub fn recovered(&self) -> bool {
        self.held.recovered()
    }

    /// Writes the value back if it was changed, and unlocks, returning any
    /// error that dropping the guard would only log.
    ///
    /// # Errors
    ///
    /// If the changed value cannot be encoded or its memory cannot grow; the
    /// shared value is then unchanged.
    pub fn commit(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(value) = self.value.take() else {
            return Ok(());
        };
        if !self.changed {
            self.held.local().value = Some((self.generation, value));
            return Ok(());
        }
        if std::thread::panicking() {
            // A half-done change is discarded, as if the process had died.
            self.held.local().value = None;
            return Ok(());
        }
        write_back(&mut self.held, value)
    }

    fn value(&self) -> &T {
        match &self.value {
            Some(v) => v,
            None => unreachable!("a share guard's value is present until it drops"),
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Deref for ShareGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value()
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> DerefMut for ShareGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changed = true;
        match &mut self.value {
            Some(v) => v,
            None => unreachable!("a share guard's value is present until it drops"),
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Drop for ShareGuard<'_, T> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!(
                "a change to Share<{}> was not written back: {e}; use ShareGuard::commit to handle this error",
                std::any::type_name::<T>()
            );
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static + fmt::Debug> fmt::Debug
    for ShareGuard<'_, T>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareGuard")
            .field("value", self.value())
            .field("version", &self.generation)
            .field("changed", &self.changed)
            .finish()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_share_attached_as_another_type_is_a_decode_error_naming_it() {
        let share = Share::new(7u64).unwrap();
        let fd = share.seg.fd().try_clone_to_owned().unwrap();
        let e = attach::<String>(fd)
            .map_err(sys_error::<String>)
            .unwrap_err();
        match e {
            Error::Decode { type_name, reason } => {
                assert_eq!(type_name, std::any::type_name::<String>());
                assert!(reason.contains("another type"), "{reason}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn each_kind_of_segment_error_has_its_own_variant() {
        let corrupt = io::Error::new(io::ErrorKind::InvalidData, "segment is corrupt");
        assert!(matches!(
            sys_error::<u64>(corrupt),
            Error::Decode {
                type_name: "u64",
                ..
            }
        ));
        let big = io::Error::new(io::ErrorKind::FileTooLarge, "too large");
        assert!(matches!(
            sys_error::<u64>(big),
            Error::Encode {
                type_name: "u64",
                ..
            }
        ));
        let again = io::Error::new(io::ErrorKind::Deadlock, "already holds");
        assert!(matches!(sys_error::<u64>(again), Error::Usage(_)));
        let io = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(matches!(sys_error::<u64>(io), Error::Io(_)));
    }

    #[test]
    fn relocking_from_one_thread_is_a_usage_error() {
        let share = Share::new(1u64).unwrap();
        let g = share.lock().unwrap();
        let e = share.get().unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e:?}");
        drop(g);
    }
}
