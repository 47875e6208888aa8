//! Forge's attribute macros. Each entry point is one line: it hands a `syn::Result` to the
//! expander of its kind, and errors become `compile_error!`s pointing at the offending code.

mod attr;
mod cron;
mod job;
mod query;
mod runnable;
mod signature;
mod steps;
mod workflow;

use proc_macro::TokenStream;

/// Registers an async function as a background job. See the `forge` crate docs.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    job::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Registers an async function as a query: read-only, callable by clients through the gateway.
/// See the `forge` crate docs.
#[proc_macro_attribute]
pub fn query(attr: TokenStream, item: TokenStream) -> TokenStream {
    query::expand(query::Kind::Query, attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Registers an async function as a mutation: it writes in one transaction that commits only
/// if it returns `Ok`. See the `forge` crate docs.
#[proc_macro_attribute]
pub fn mutation(attr: TokenStream, item: TokenStream) -> TokenStream {
    query::expand(query::Kind::Mutation, attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Registers an async function as a durable workflow made of steps. See the `forge` crate
/// docs.
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    workflow::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Runs the `#[forge::job]` it is stacked on at each tick of a cron expression:
/// `#[forge::cron("0 9 * * MON-FRI", timezone = "Europe/Berlin")]`. See `docs/schedules.md`.
#[proc_macro_attribute]
pub fn cron(attr: TokenStream, item: TokenStream) -> TokenStream {
    cron::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
