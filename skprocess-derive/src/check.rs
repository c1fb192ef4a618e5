//! Validation: what the derive accepts, and what the attribute's values mean.
//!
//! The input must be a struct with no generic parameters. Integers must be
//! at least 1 and fit their type; durations are parsed here, with
//! humantime, so a malformed one is an error on its literal at compile time
//! rather than a surprise in a child.

use std::time::Duration;

use quote::{quote, ToTokens};
use syn::{Data, DeriveInput, ExprUnary, LitInt, LitStr};

use crate::ctxt::Ctxt;

/// Checks that the input is a struct with no generic parameters.
pub(crate) fn input(cx: &Ctxt, input: &DeriveInput) {
    let ident = &input.ident;
    let keyword = match &input.data {
        Data::Struct(_) => None,
        Data::Enum(data) => Some(("enum", data.enum_token.to_token_stream())),
        Data::Union(data) => Some(("union", data.union_token.to_token_stream())),
    };
    if let Some((kind, keyword)) = keyword {
        cx.error_spanned_by(
            quote!(#keyword #ident),
            format!(
                "#[derive(Process)] works on structs only; \
                 make the {kind} a field of a struct and derive Process on the struct"
            ),
        );
    }
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "generic processes are not supported: the child rebuilds the type from a registry \
             and needs one concrete type; use a concrete wrapper struct",
        );
    }
}

/// An integer as written in the attribute.
pub(crate) enum Int {
    Literal(LitInt),
    /// `-` and an integer literal.
    Negative(ExprUnary),
}

/// The value of `runs = N`.
pub(crate) fn runs(cx: &Ctxt, int: &Int) -> Option<u64> {
    count(
        cx,
        int,
        "runs",
        u64::MAX,
        "`runs` must be at least 1; leave `runs` out to run until stopped",
    )
}

/// The value of `lives = N`.
pub(crate) fn lives(cx: &Ctxt, int: &Int) -> Option<u32> {
    let n = count(
        cx,
        int,
        "lives",
        u64::from(u32::MAX),
        "`lives` must be at least 1: it counts every attempt, the first one included",
    )?;
    u32::try_from(n).ok()
}

/// An integer from 1 to `max` for `key`; `too_small` is the error for 0
/// and below.
fn count(cx: &Ctxt, int: &Int, key: &str, max: u64, too_small: &str) -> Option<u64> {
    let lit = match int {
        Int::Literal(lit) => lit,
        Int::Negative(expr) => {
            cx.error_spanned_by(expr, too_small);
            return None;
        }
    };
    match lit.base10_parse::<u64>() {
        Ok(0) => {
            cx.error_spanned_by(lit, too_small);
            None
        }
        Ok(n) if n <= max => Some(n),
        _ => {
            cx.error_spanned_by(
                lit,
                format!("`{key}` is too large: the most allowed is {max}"),
            );
            None
        }
    }
}

/// A humantime duration for `key`, longer than zero and at most `u64::MAX`
/// nanoseconds (what `Duration::from_nanos` takes).
pub(crate) fn duration(cx: &Ctxt, lit: &LitStr, key: &str) -> Option<Duration> {
    let text = lit.value();
    match humantime::parse_duration(&text) {
        Ok(d) if d.is_zero() => {
            cx.error_spanned_by(lit, format!("`{key}` must be longer than zero"));
            None
        }
        Ok(d) if u64::try_from(d.as_nanos()).is_err() => {
            cx.error_spanned_by(
                lit,
                format!("`{key}` is too long: the most allowed is about 584 years"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(error) => {
            cx.error_spanned_by(
                lit,
                format!(
                    "invalid duration {text:?} for `{key}`: {error}; \
                     write a humantime duration such as \"30s\", \"1m 30s\" or \"250ms\""
                ),
            );
            None
        }
    }
}
