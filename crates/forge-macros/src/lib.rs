//! Forge's attribute macros. Each entry point is one line: it hands a `syn::Result` to the
//! expander of its kind, and errors become `compile_error!`s pointing at the offending code.

mod attr;
mod job;
mod signature;

use proc_macro::TokenStream;

/// Registers an async function as a background job. See the `forge` crate docs.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    job::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
