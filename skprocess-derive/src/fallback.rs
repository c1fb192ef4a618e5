//! The stub impl emitted beside compile errors.
//!
//! Without it, every use of the type as a process (`impl Process for T`,
//! `T::config()`, `start()`) would add an error of its own after the ones
//! that matter. The stub satisfies those uses; the errors emitted with it
//! keep the build from ever producing a program that runs it.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

/// A `Described` impl with empty names and the default config, and no
/// registry entry.
///
/// It is emitted for any input, enums and generic types included: the
/// trait has no supertraits, so the impl holds for every instance, and
/// `impl Process for Wrapper<T>` finds it instead of failing a second time.
pub(crate) fn stub(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        const _: () = {
            impl #impl_generics ::skprocess::__private::Described for #ident #ty_generics #where_clause {
                const NAME: &'static str = "";
                const ID: &'static str = "";
                fn config() -> ::skprocess::Config {
                    ::skprocess::Config::default()
                }
            }
        };
    }
}
