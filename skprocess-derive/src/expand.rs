//! The generated code.
//!
//! For a valid input the expansion is one `const _: () = { ... };` block
//! holding the `Described` impl and the registry entry, so nothing it
//! declares can clash with the user's names. Everything it uses is reached
//! by absolute path through `::skprocess::__private`. For
//! `#[process(runs = 5, timeout(run = "30s"))] struct Squarer`:
//!
//! ```text
//! const _: () = {
//!     impl ::skprocess::__private::Described for Squarer {
//!         const NAME: &'static str = concat!(module_path!(), "::", "Squarer");
//!         const ID: &'static str = concat!(module_path!(), "::", "Squarer",
//!             "@", file!(), ":", line!(), ":", column!());   // at `Squarer`
//!         fn config() -> ::skprocess::Config {
//!             ::skprocess::Config::default()
//!                 .runs(5u64)
//!                 .timeout(::skprocess::Hook::Run, Duration::from_nanos(30000000000u64))
//!         }
//!     }
//!     #[::skprocess::__private::linkme::distributed_slice(::skprocess::__private::REGISTRY)]
//!     #[linkme(crate = ::skprocess::__private::linkme)]
//!     static __SKPROCESS_ENTRY: ::skprocess::__private::Entry =
//!         ::skprocess::__private::Entry::of::<Squarer>();
//! };
//! ```
//!
//! `config()` calls one method per key given, in the order `runs`, `lives`,
//! the timeouts as written, `join_in`; durations are whole nanoseconds.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::DeriveInput;

use crate::attr::{self, Attrs};
use crate::ctxt::Ctxt;
use crate::{check, fallback};

/// The whole expansion of `#[derive(Process)]` on `input`.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    check::input(&cx, input);
    let attrs = attr::parse(&cx, &input.attrs);
    match cx.check() {
        Ok(()) => expand(input, &attrs),
        Err(errors) => {
            let errors = errors.to_compile_error();
            let stub = fallback::stub(input);
            quote! {
                #errors
                #stub
            }
        }
    }
}

fn expand(input: &DeriveInput, attrs: &Attrs) -> TokenStream {
    let ident = &input.ident;
    let name = ident.unraw().to_string();
    // `line!` and `column!` report where the macro call that produced them
    // sits; spanned at the ident, that is where the struct's name is
    // written. Two structs of one name in two functions of one module thus
    // get two ids.
    let id = quote_spanned! {ident.span()=>
        ::core::concat!(
            ::core::module_path!(), "::", #name,
            "@", ::core::file!(), ":", ::core::line!(), ":", ::core::column!()
        )
    };
    let config = config_body(attrs);
    quote! {
        const _: () = {
            impl ::skprocess::__private::Described for #ident {
                const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", #name);
                const ID: &'static str = #id;
                fn config() -> ::skprocess::Config {
                    #config
                }
            }
            #[::skprocess::__private::linkme::distributed_slice(::skprocess::__private::REGISTRY)]
            #[linkme(crate = ::skprocess::__private::linkme)]
            static __SKPROCESS_ENTRY: ::skprocess::__private::Entry =
                ::skprocess::__private::Entry::of::<#ident>();
        };
    }
}

/// `Config::default()` followed by one call per key given.
fn config_body(attrs: &Attrs) -> TokenStream {
    let mut body = quote!(::skprocess::Config::default());
    if let Some(runs) = attrs.runs {
        let runs = Literal::u64_suffixed(runs);
        body.extend(quote!(.runs(#runs)));
    }
    if let Some(lives) = attrs.lives {
        let lives = Literal::u32_suffixed(lives);
        body.extend(quote!(.lives(#lives)));
    }
    for (hook, limit) in &attrs.timeouts {
        let variant = format_ident!("{}", hook.variant());
        let limit = duration(*limit);
        body.extend(quote!(.timeout(::skprocess::Hook::#variant, #limit)));
    }
    if let Some(limit) = attrs.join_in {
        let limit = duration(limit);
        body.extend(quote!(.join_in(#limit)));
    }
    body
}

/// A `Duration` constant; `check` made sure the nanoseconds fit a `u64`.
fn duration(d: std::time::Duration) -> TokenStream {
    let nanos = u64::try_from(d.as_nanos()).expect("checked in check::duration");
    let nanos = Literal::u64_suffixed(nanos);
    quote!(::core::time::Duration::from_nanos(#nanos))
}
