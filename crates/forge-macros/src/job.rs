//! `#[forge::job]`.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::ItemFn;

use crate::attr::{self, AccessOpt};
use crate::runnable::{self, Kind};
use crate::signature;

struct Options {
    max_attempts: u32,
    timeout_ms: Option<u64>,
    priority: i32,
    queue: String,
    backoff_ms: u64,
    max_backoff_ms: u64,
    access: AccessOpt,
}

/// Every option `#[forge::job(...)]` takes, for the message about one it does not.
const OPTIONS: &str = "max_attempts, timeout, priority, queue, backoff, max_backoff, public, role";

fn options(attr: TokenStream) -> syn::Result<Options> {
    let mut o = Options {
        max_attempts: 3,
        timeout_ms: None,
        priority: 0,
        queue: "default".into(),
        backoff_ms: 1_000,
        max_backoff_ms: 600_000,
        access: AccessOpt::default(),
    };
    // Where each backoff option was written, to point at it if the two do not fit together.
    let mut backoff_at: Option<TokenStream> = None;
    let mut max_backoff_at: Option<TokenStream> = None;
    attr::parse_options(attr, |meta| {
        let p = meta.path();
        if p.is_ident("max_attempts") {
            let n = attr::int(meta)?;
            if !(1..=i32::MAX as i64).contains(&n) {
                return Err(syn::Error::new_spanned(
                    meta,
                    "`max_attempts` must be at least 1",
                ));
            }
            o.max_attempts = n as u32;
        } else if p.is_ident("timeout") {
            o.timeout_ms = Some(attr::duration_ms(meta)?);
        } else if p.is_ident("priority") {
            let n = attr::int(meta)?;
            o.priority = i32::try_from(n)
                .map_err(|_| syn::Error::new_spanned(meta, "`priority` must fit in an i32"))?;
        } else if p.is_ident("queue") {
            o.queue = attr::string(meta)?;
            if o.queue.is_empty() {
                return Err(syn::Error::new_spanned(meta, "`queue` cannot be empty"));
            }
        } else if p.is_ident("backoff") {
            o.backoff_ms = attr::duration_ms(meta)?;
            backoff_at = Some(meta.to_token_stream());
        } else if p.is_ident("max_backoff") {
            o.max_backoff_ms = attr::duration_ms(meta)?;
            max_backoff_at = Some(meta.to_token_stream());
        } else if !o.access.parse(meta)? {
            return Err(syn::Error::new_spanned(
                meta,
                format!(
                    "unknown option `{}`; #[forge::job] takes {OPTIONS}",
                    attr::name(meta)
                ),
            ));
        }
        Ok(true)
    })?;
    if o.backoff_ms > o.max_backoff_ms {
        // Every delay would be cut to `max_backoff`: the backoff would not grow at all.
        let (at, msg) = match (max_backoff_at, backoff_at) {
            (Some(at), _) => (at, "`max_backoff` must not be shorter than `backoff`"),
            (None, Some(at)) => (
                at,
                "`backoff` is longer than the default `max_backoff` (10m): set `max_backoff` too",
            ),
            (None, None) => unreachable!("the defaults fit together"),
        };
        return Err(syn::Error::new_spanned(at, msg));
    }
    Ok(o)
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let opts = options(attr)?;
    let func: ItemFn = syn::parse2(item)?;
    let sig = signature::parse(&func, "job", "JobContext")?;

    let max_attempts = opts.max_attempts;
    let timeout = match opts.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let priority = opts.priority;
    let queue = &opts.queue;
    let backoff_ms = opts.backoff_ms;
    let max_backoff_ms = opts.max_backoff_ms;
    let access = opts.access.tokens();
    let options = quote! {
        __f::JobOptions {
            max_attempts: #max_attempts,
            timeout: #timeout,
            priority: #priority,
            queue: #queue,
            backoff: __f::Backoff {
                base: ::core::time::Duration::from_millis(#backoff_ms),
                max: ::core::time::Duration::from_millis(#max_backoff_ms),
            },
            access: #access,
        }
    };
    let kind = Kind {
        noun: "job",
        verb: "enqueue",
        request: quote!(::forge::JobRequest),
        context: quote!(::forge::JobContext),
        def: quote!(JobDef),
    };
    Ok(runnable::expand(&func, &sig, kind, options))
}
