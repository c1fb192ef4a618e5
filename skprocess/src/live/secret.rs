//! `Secret<T>`: a value that travels to the child but never shows.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use zeroize::Zeroize;

/// A value that travels inside a process (a password, a token) but never
/// shows: `Debug` and `Display` print `***`, and the value is overwritten
/// with zeros when the `Secret` is dropped. [`expose`](Secret::expose)
/// reads it.
///
/// A `Secret` is encoded with the rest of its process and reaches the child
/// over the private control channel, like every field: never through the
/// command line or the environment, so `/proc/<pid>/cmdline` and
/// `/proc/<pid>/environ` of the child do not hold it. The encoded bytes of
/// a process (which its handle keeps in this process's memory, to start
/// later lives from) are a copy that the `Secret` does not wipe.
///
/// # Examples
///
/// ```
/// use skprocess::live::Secret;
///
/// let pw = Secret::new(String::from("hunter2"));
/// assert_eq!(format!("{pw} {pw:?}"), "*** ***");
/// assert_eq!(pw.expose(), "hunter2");
/// ```
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The value itself. Keep what you do with it out of logs.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize + Clone> Clone for Secret<T> {
    fn clone(&self) -> Secret<T> {
        Secret(self.0.clone())
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Secret<T> {
        Secret(value)
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T: Zeroize + Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Zeroize + Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret<T>, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn prints_stars_and_round_trips() {
        let s = Secret::new(String::from("pa55word"));
        assert_eq!(format!("{s}|{s:?}|{:?}", Some(&s)), "***|***|Some(***)");
        let bytes = crate::wire::encode(&s).unwrap().bytes;
        let back: Secret<String> = crate::wire::decode(&bytes, Vec::new()).unwrap();
        assert_eq!(back.expose(), "pa55word");
        assert_eq!(s.clone().expose(), "pa55word");
    }

    /// Records that it was wiped.
    struct Probe(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Zeroize for Probe {
        fn zeroize(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn drop_wipes_the_value() {
        let wiped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = Secret::new(Probe(wiped.clone()));
        assert!(!wiped.load(std::sync::atomic::Ordering::SeqCst));
        drop(s);
        assert!(wiped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
