//! Parsing of `#[process(...)]`.
//!
//! Which keys there are, each at most once, each with the kind of literal it
//! takes. Each value is handed to `check` as soon as it is read, so errors
//! come out in the order they are written. Every problem goes to the `Ctxt`
//! and parsing carries on, so one expansion reports them all.

use std::time::Duration;

use syn::punctuated::Punctuated;
use syn::{
    Attribute, Expr, ExprLit, ExprUnary, Lit, LitStr, Meta, MetaNameValue, Path, Token, UnOp,
};

use crate::check;
use crate::ctxt::Ctxt;

/// The keys of `#[process(...)]`, as listed in error messages.
const KEYS: &[&str] = &["runs", "lives", "timeout", "join_in"];

/// A hook that `timeout(...)` can limit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Prerun,
    Run,
    Postrun,
    Onfinish,
}

impl Hook {
    const ALL: [Hook; 4] = [Hook::Prerun, Hook::Run, Hook::Postrun, Hook::Onfinish];

    /// The name written inside `timeout(...)`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Hook::Prerun => "prerun",
            Hook::Run => "run",
            Hook::Postrun => "postrun",
            Hook::Onfinish => "onfinish",
        }
    }

    /// The variant of `skprocess::Hook`.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            Hook::Prerun => "Prerun",
            Hook::Run => "Run",
            Hook::Postrun => "Postrun",
            Hook::Onfinish => "Onfinish",
        }
    }

    fn from_key(key: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|hook| hook.key() == key)
    }
}

/// What `#[process(...)]` says: what `config()` sets, in this order. A key
/// whose value was rejected is left out.
#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) runs: Option<u64>,
    pub(crate) lives: Option<u32>,
    /// In the order written.
    pub(crate) timeouts: Vec<(Hook, Duration)>,
    pub(crate) join_in: Option<Duration>,
}

/// Reads every `#[process(...)]` among `attrs`; the keys of several such
/// attributes add up as if written in one.
pub(crate) fn parse(cx: &Ctxt, attrs: &[Attribute]) -> Attrs {
    let mut out = Attrs::default();
    // Each key that was given, even with a bad value, so that a second one
    // is reported as a duplicate rather than accepted.
    let mut seen: Vec<String> = Vec::new();

    for attr in attrs.iter().filter(|attr| attr.path().is_ident("process")) {
        let list = match attr.meta.require_list() {
            Ok(list) => list,
            Err(_) => {
                cx.error_spanned_by(
                    attr,
                    "expected `#[process(...)]`, as in `#[process(runs = 5, lives = 3)]`",
                );
                continue;
            }
        };
        let items = match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(items) => items,
            Err(error) => {
                cx.syn_error(error);
                continue;
            }
        };
        for item in &items {
            let Some(key) = key_of(cx, item.path(), "key", "#[process(...)]", KEYS) else {
                continue;
            };
            if seen.contains(&key) {
                let message = if key == "timeout" {
                    "duplicate key `timeout`: give the limits of all hooks in one `timeout(...)`, \
                     as in `timeout(run = \"30s\", prerun = \"500ms\")`"
                        .to_owned()
                } else {
                    format!("duplicate key `{key}`: each key of #[process(...)] may be given once")
                };
                cx.error_spanned_by(item.path(), message);
                continue;
            }
            seen.push(key.clone());
            match key.as_str() {
                "runs" => {
                    out.runs = int_value(
                        cx,
                        item,
                        "`runs` takes an integer, as in `runs = 5`; leave `runs` out to run until stopped",
                    )
                    .and_then(|lit| check::runs(cx, &lit));
                }
                "lives" => {
                    out.lives = int_value(cx, item, "`lives` takes an integer, as in `lives = 3`")
                        .and_then(|lit| check::lives(cx, &lit));
                }
                "join_in" => {
                    out.join_in = str_value(
                        cx,
                        item,
                        "`join_in` takes a duration string, as in `join_in = \"10m\"`",
                    )
                    .and_then(|lit| check::duration(cx, &lit, "join_in"));
                }
                "timeout" => out.timeouts = parse_timeout(cx, item),
                _ => unreachable!("key_of returns listed keys only"),
            }
        }
    }
    out
}

/// Reads `timeout(run = "30s", ...)`: the limits, in the order written.
fn parse_timeout(cx: &Ctxt, item: &Meta) -> Vec<(Hook, Duration)> {
    const USAGE: &str =
        "`timeout` takes one duration per hook, as in `timeout(run = \"30s\", prerun = \"500ms\")`";
    let list = match item {
        Meta::List(list) => list,
        _ => {
            cx.error_spanned_by(item, USAGE);
            return Vec::new();
        }
    };
    let items = match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
        Ok(items) => items,
        Err(error) => {
            cx.syn_error(error);
            return Vec::new();
        }
    };
    let mut timeouts = Vec::new();
    // Each hook that was given, even with a bad value.
    let mut seen = Vec::new();
    let hooks: Vec<&str> = Hook::ALL.iter().map(|hook| hook.key()).collect();
    for item in &items {
        let Some(key) = key_of(cx, item.path(), "hook", "timeout(...)", &hooks) else {
            continue;
        };
        let hook = Hook::from_key(&key).expect("key_of returns listed hooks only");
        if seen.contains(&hook) {
            cx.error_spanned_by(
                item.path(),
                format!("duplicate hook `{key}`: each hook in timeout(...) may be given once"),
            );
            continue;
        }
        seen.push(hook);
        let usage =
            format!("`timeout({key})` takes a duration string, as in `timeout({key} = \"30s\")`");
        let limit = str_value(cx, item, &usage)
            .and_then(|lit| check::duration(cx, &lit, &format!("timeout({key})")));
        if let Some(limit) = limit {
            timeouts.push((hook, limit));
        }
    }
    timeouts
}

/// The name `path` gives, if it is one of `allowed`; else reports it as an
/// unknown `what` inside `place`.
fn key_of(cx: &Ctxt, path: &Path, what: &str, place: &str, allowed: &[&str]) -> Option<String> {
    let name = path.get_ident().map(|ident| ident.to_string());
    if let Some(name) = name.as_deref() {
        if allowed.contains(&name) {
            return Some(name.to_owned());
        }
    }
    let written = quote::quote!(#path).to_string().replace(' ', "");
    let mut message = format!(
        "unknown {what} `{written}` in {place}; expected {}",
        one_of(allowed)
    );
    if let Some(close) = name.as_deref().and_then(|name| closest(name, allowed)) {
        message.push_str(&format!(" (did you mean `{close}`?)"));
    }
    cx.error_spanned_by(path, message);
    None
}

/// "`a`, `b` or `c`".
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// The allowed name a typo most likely meant: one or two edits away.
fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, by rows.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The literal of `key = <literal>`, or reports `usage` on what is there.
fn lit_value<'a>(cx: &Ctxt, item: &'a Meta, usage: &str) -> Option<&'a Lit> {
    match item {
        Meta::NameValue(MetaNameValue {
            value: Expr::Lit(ExprLit { lit, .. }),
            ..
        }) => Some(lit),
        Meta::NameValue(MetaNameValue { value, .. }) => {
            cx.error_spanned_by(value, usage);
            None
        }
        _ => {
            cx.error_spanned_by(item, usage);
            None
        }
    }
}

/// The integer of `key = <integer>`; a negative one is handed over as
/// written, for `check` to say that it is too small.
fn int_value(cx: &Ctxt, item: &Meta, usage: &str) -> Option<check::Int> {
    if let Meta::NameValue(MetaNameValue { value, .. }) = item {
        if let Some(unary) = negative_int(value) {
            return Some(check::Int::Negative(unary.clone()));
        }
    }
    match lit_value(cx, item, usage)? {
        Lit::Int(int) => Some(check::Int::Literal(int.clone())),
        other => {
            cx.error_spanned_by(other, usage);
            None
        }
    }
}

/// `-N` for an integer literal `N`.
fn negative_int(expr: &Expr) -> Option<&ExprUnary> {
    let Expr::Unary(unary) = expr else {
        return None;
    };
    let Expr::Lit(operand) = &*unary.expr else {
        return None;
    };
    let negative = matches!(unary.op, UnOp::Neg(_)) && matches!(operand.lit, Lit::Int(_));
    negative.then_some(unary)
}

fn str_value(cx: &Ctxt, item: &Meta, usage: &str) -> Option<LitStr> {
    match lit_value(cx, item, usage)? {
        Lit::Str(lit) => Some(lit.clone()),
        other => {
            cx.error_spanned_by(other, usage);
            None
        }
    }
}

#[cfg(test)]
mod test {
    use super::{closest, edit_distance, one_of};

    #[test]
    fn distance() {
        assert_eq!(edit_distance("runs", "runs"), 0);
        assert_eq!(edit_distance("run", "runs"), 1);
        assert_eq!(edit_distance("join", "join_in"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestion() {
        let keys = ["runs", "lives", "timeout", "join_in"];
        assert_eq!(closest("run", &keys), Some("runs"));
        assert_eq!(closest("life", &keys), Some("lives"));
        assert_eq!(closest("timeouts", &keys), Some("timeout"));
        assert_eq!(closest("joinin", &keys), Some("join_in"));
        assert_eq!(closest("retries", &keys), None);
    }

    #[test]
    fn listing() {
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
