//! `#[forge::cron("expr", ...)]`: a schedule for the `#[forge::job]` it is stacked on.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{ItemFn, LitStr, Token};

use crate::attr;

/// Every option `#[forge::cron(...)]` takes after its expression.
const OPTIONS: &str = "timezone, missed, backfill, overlap, args";

/// Mirrors `forge::schedule::MAX_BACKFILL`.
const MAX_BACKFILL: i64 = 1000;

struct Head {
    expr: LitStr,
    rest: TokenStream,
}

impl Parse for Head {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let expr: LitStr = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "#[forge::cron] starts with its cron expression: #[forge::cron(\"0 9 * * MON-FRI\")]",
            )
        })?;
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
        Ok(Head {
            expr,
            rest: input.parse()?,
        })
    }
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let head: Head = syn::parse2(attr)?;
    let func: ItemFn = syn::parse2(item)?;
    let expr = head.expr.value();
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(&expr)
        .map_err(|e| syn::Error::new_spanned(&head.expr, format!("not a cron expression: {e}")))?;

    let mut timezone = "UTC".to_string();
    let mut missed = "skip".to_string();
    let mut backfill: Option<(i64, TokenStream)> = None;
    let mut overlap = "allow".to_string();
    let mut args: Option<String> = None;
    let mut missed_at: Option<TokenStream> = None;
    attr::parse_options(head.rest, |meta| {
        let p = meta.path();
        let at = || quote::ToTokens::to_token_stream(meta);
        if p.is_ident("timezone") {
            timezone = attr::string(meta)?;
            if timezone.parse::<chrono_tz::Tz>().is_err() {
                return Err(syn::Error::new_spanned(
                    meta,
                    "`timezone` must be an IANA time zone name, such as \"Europe/Berlin\"",
                ));
            }
        } else if p.is_ident("missed") {
            missed = attr::string(meta)?;
            if !["skip", "latest", "backfill"].contains(&missed.as_str()) {
                return Err(syn::Error::new_spanned(
                    meta,
                    "`missed` is \"skip\", \"latest\" or \"backfill\" (with `backfill = N`)",
                ));
            }
            missed_at = Some(at());
        } else if p.is_ident("backfill") {
            let n = attr::int(meta)?;
            if !(1..=MAX_BACKFILL).contains(&n) {
                return Err(syn::Error::new_spanned(
                    meta,
                    format!("`backfill` must be from 1 to {MAX_BACKFILL}"),
                ));
            }
            backfill = Some((n, at()));
        } else if p.is_ident("overlap") {
            overlap = attr::string(meta)?;
            if !["allow", "skip"].contains(&overlap.as_str()) {
                return Err(syn::Error::new_spanned(
                    meta,
                    "`overlap` is \"allow\" or \"skip\"",
                ));
            }
        } else if p.is_ident("args") {
            let json = attr::string(meta)?;
            match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(v) if v.is_object() => args = Some(json),
                Ok(_) => {
                    return Err(syn::Error::new_spanned(
                        meta,
                        "`args` must be a JSON object: r#\"{\"days\": 30}\"#",
                    ))
                }
                Err(e) => {
                    return Err(syn::Error::new_spanned(
                        meta,
                        format!("`args` is not JSON: {e}"),
                    ))
                }
            }
        } else {
            return Err(syn::Error::new_spanned(
                meta,
                format!(
                    "unknown option `{}`; #[forge::cron] takes {OPTIONS}",
                    attr::name(meta)
                ),
            ));
        }
        Ok(true)
    })?;
    let missed = match (missed.as_str(), backfill) {
        ("backfill", Some((n, _))) => {
            let n = n as u32;
            quote!(__f::Missed::Backfill(#n))
        }
        ("backfill", None) => {
            return Err(syn::Error::new_spanned(
                missed_at,
                "`missed = \"backfill\"` needs its bound: `backfill = N`",
            ))
        }
        (_, Some((_, at))) => {
            return Err(syn::Error::new_spanned(
                at,
                "`backfill` goes with `missed = \"backfill\"`",
            ))
        }
        ("latest", None) => quote!(__f::Missed::Latest),
        _ => quote!(__f::Missed::Skip),
    };
    let overlap = if overlap == "skip" {
        quote!(__f::Overlap::Skip)
    } else {
        quote!(__f::Overlap::Allow)
    };
    // A tick has no caller to give arguments: a job that takes any must have them here.
    if args.is_none() && func.sig.inputs.len() > 1 {
        return Err(syn::Error::new_spanned(
            &func.sig.inputs,
            "a scheduled job that takes arguments needs them in the attribute: `args = r#\"{...}\"#`",
        ));
    }
    let args = args.unwrap_or_else(|| "{}".into());
    let name = &func.sig.ident;
    let name_str = name.to_string();
    Ok(quote! {
        #func

        const _: () = {
            use ::forge::__private as __f;

            // Only a `#[forge::job]` has this typed handle: a schedule enqueues that job.
            #[allow(dead_code)]
            fn __forge_cron_needs_a_job() {
                let _ = #name::request;
            }

            __f::inventory::submit! {
                __f::CronDef {
                    function: #name_str,
                    cron: #expr,
                    timezone: #timezone,
                    missed: #missed,
                    overlap: #overlap,
                    args: #args,
                }
            }
        };
    })
}
