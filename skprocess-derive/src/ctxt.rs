//! A place to collect errors, so that one expansion reports all of them.
//!
//! Parsing and validation push every problem they find here and carry on
//! with what is left; `expand` then asks for them once, in one combined
//! `syn::Error`. Forgetting to ask is a bug in this crate, caught by a
//! panic on drop.

use std::cell::RefCell;
use std::fmt::Display;

use quote::ToTokens;

/// The errors found so far in one expansion.
pub(crate) struct Ctxt {
    /// `None` once `check` has taken the errors.
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records `message`, pointing at `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.syn_error(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error that already carries its span.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.errors
            .borrow_mut()
            .as_mut()
            .expect("ctxt: error recorded after check")
            .push(error);
    }

    /// Takes the errors: `Ok` if there were none, else all of them in one.
    pub(crate) fn check(self) -> syn::Result<()> {
        let errors = self
            .errors
            .borrow_mut()
            .take()
            .expect("ctxt: checked twice");
        let mut iter = errors.into_iter();
        let Some(mut combined) = iter.next() else {
            return Ok(());
        };
        for error in iter {
            combined.combine(error);
        }
        Err(combined)
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if self.errors.borrow().is_some() && !std::thread::panicking() {
            panic!("ctxt: dropped without check");
        }
    }
}
