//! Callsites made at run time for a child's events and spans.
//!
//! `tracing` events need a callsite: static metadata (level, target,
//! location, field names) registered with `tracing-core`, so that
//! subscribers can decide once whether they care. A child's events are only
//! known at run time, so callsites are made then: one per shape of event,
//! leaked (they must be `'static`), registered, and cached in a global map.
//! The child is this binary, so shapes are bounded by the binary's own
//! callsites; a peer sending endless new shapes is bounded by
//! [`MAX_CALLSITES`], past which no callsite is made (unless forced: the
//! few fixed shapes that the forwarder folds the others into).

use super::level_code;
use super::parent::lock;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use tracing_core::callsite::{Callsite, Identifier};
use tracing_core::field::FieldSet;
use tracing_core::metadata::Kind;
use tracing_core::subscriber::Interest;
use tracing_core::{Dispatch, Level, Metadata};

/// Most callsites made for children's events, over the life of the program.
pub(crate) const MAX_CALLSITES: usize = 4096;
/// Longest target, module path or file a callsite of its own is made for.
pub(super) const MAX_TARGET: usize = 256;
/// Longest field or span name a callsite of its own is made for.
pub(super) const MAX_NAME: usize = 128;
/// Most fields of a shape a callsite of its own is made for.
pub(super) const MAX_FIELDS: usize = 64;

/// The fields every callsite has after the shape's own.
const EXTRA: &[&str] = &["process", "pid"];

// The interest the dispatchers declared in a callsite, as it stores it.
const NEVER: u8 = 0;
const SOMETIMES: u8 = 1;
const ALWAYS: u8 = 2;

/// A callsite for one shape of child event.
pub(super) struct DynCallsite {
    meta: OnceLock<Metadata<'static>>,
    interest: AtomicU8,
}

impl DynCallsite {
    pub(super) fn meta(&'static self) -> &'static Metadata<'static> {
        self.meta
            .get()
            .expect("the metadata is set before the callsite is shared")
    }

    /// Whether `dispatch` takes what comes from it.
    pub(super) fn enabled_in(&'static self, dispatch: &Dispatch) -> bool {
        match self.interest.load(Ordering::Relaxed) {
            NEVER => false,
            ALWAYS => true,
            _ => dispatch.enabled(self.meta()),
        }
    }
}

impl Callsite for DynCallsite {
    fn set_interest(&self, interest: Interest) {
        let v = if interest.is_never() {
            NEVER
        } else if interest.is_always() {
            ALWAYS
        } else {
            SOMETIMES
        };
        self.interest.store(v, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.meta
            .get()
            .expect("the metadata is set before the callsite is registered")
    }
}

/// What tells two callsites apart.
pub(super) struct Shape<'a> {
    pub(super) level: Level,
    pub(super) target: &'a str,
    pub(super) module_path: Option<&'a str>,
    pub(super) file: Option<&'a str>,
    pub(super) line: Option<u32>,
    pub(super) names: &'a [String],
    /// A span's callsite: its name.
    pub(super) span_name: Option<&'a str>,
}

impl Shape<'_> {
    fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.names
            .iter()
            .map(String::as_str)
            .chain(EXTRA.iter().copied())
    }

    fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        level_code(&self.level).hash(&mut h);
        self.target.hash(&mut h);
        self.module_path.hash(&mut h);
        self.file.hash(&mut h);
        self.line.hash(&mut h);
        self.span_name.hash(&mut h);
        for n in self.names() {
            n.hash(&mut h);
        }
        h.finish()
    }

    fn matches(&self, m: &Metadata<'_>) -> bool {
        *m.level() == self.level
            && m.target() == self.target
            && m.module_path() == self.module_path
            && m.file() == self.file
            && m.line() == self.line
            && m.is_span() == self.span_name.is_some()
            && self.span_name.is_none_or(|n| m.name() == n)
            && m.fields().len() == self.names.len() + EXTRA.len()
            && m.fields().iter().map(|f| f.name()).eq(self.names())
    }

    fn reasonable(&self) -> bool {
        self.target.len() <= MAX_TARGET
            && self.module_path.is_none_or(|m| m.len() <= MAX_TARGET)
            && self.file.is_none_or(|f| f.len() <= MAX_TARGET)
            && self.names.len() <= MAX_FIELDS
            && self.names.iter().all(|n| n.len() <= MAX_NAME)
            && self.span_name.is_none_or(|n| n.len() <= MAX_NAME)
    }
}

#[derive(Default)]
struct Cache {
    by_key: HashMap<u64, Vec<&'static DynCallsite>>,
    count: usize,
    strings: HashSet<&'static str>,
}

impl Cache {
    fn intern(&mut self, s: &str) -> &'static str {
        if let Some(&k) = self.strings.get(s) {
            return k;
        }
        let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
        self.strings.insert(k);
        k
    }
}

static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();

/// The callsite of `shape`, made and registered on first use. `None` if
/// the shape is unreasonable or the cache is full, unless `force`.
pub(super) fn callsite(shape: &Shape<'_>, force: bool) -> Option<&'static DynCallsite> {
    let key = shape.key();
    let mut cache = lock(CACHE.get_or_init(Default::default));
    if let Some(found) = cache
        .by_key
        .get(&key)
        .and_then(|v| v.iter().find(|cs| shape.matches(cs.meta())))
    {
        return Some(found);
    }
    if !force && (cache.count >= MAX_CALLSITES || !shape.reasonable()) {
        return None;
    }
    let names: Vec<&'static str> = shape.names().map(|n| cache.intern(n)).collect();
    let names: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    let target = cache.intern(shape.target);
    let module_path = shape.module_path.map(|m| cache.intern(m));
    let file = shape.file.map(|f| cache.intern(f));
    let (name, kind) = match (shape.span_name, file, shape.line) {
        (Some(n), _, _) => (cache.intern(n), Kind::SPAN),
        (None, Some(f), Some(l)) => (cache.intern(&format!("event {f}:{l}")), Kind::EVENT),
        _ => ("event from a child process", Kind::EVENT),
    };
    let cs: &'static DynCallsite = Box::leak(Box::new(DynCallsite {
        meta: OnceLock::new(),
        interest: AtomicU8::new(SOMETIMES),
    }));
    let fields = FieldSet::new(names, Identifier(cs));
    let meta = Metadata::new(
        name,
        target,
        shape.level,
        file,
        shape.line,
        module_path,
        fields,
        kind,
    );
    let _ = cs.meta.set(meta);
    tracing_core::callsite::register(cs);
    cache.by_key.entry(key).or_default().push(cs);
    cache.count += 1;
    Some(cs)
}

/// Whether a callsite was made with this target (for tests).
#[cfg(test)]
pub(crate) fn has_callsite_for(target: &str) -> bool {
    CACHE.get().is_some_and(|c| {
        lock(c)
            .by_key
            .values()
            .flatten()
            .any(|cs| cs.meta().target() == target)
    })
}
