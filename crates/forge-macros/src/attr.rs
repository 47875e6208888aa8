//! Options in `#[forge::job(max_attempts = 5, timeout = "30s", public)]`.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, Meta, Token};

/// Parses `key = value` and bare-flag options; `f` gets each and says whether it knew it.
/// An option given twice is an error: which one should win would be a guess.
pub(crate) fn parse_options(
    attr: TokenStream,
    mut f: impl FnMut(&Meta) -> syn::Result<bool>,
) -> syn::Result<()> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut seen = Vec::new();
    for meta in &metas {
        let name = name(meta);
        if seen.contains(&name) {
            return Err(syn::Error::new_spanned(
                meta,
                format!("option `{name}` is given more than once"),
            ));
        }
        if !f(meta)? {
            return Err(syn::Error::new_spanned(
                meta,
                format!("unknown option `{name}`"),
            ));
        }
        seen.push(name);
    }
    Ok(())
}

/// The option's name as written (`max_attempts` in `max_attempts = 3`).
pub(crate) fn name(meta: &Meta) -> String {
    meta.path()
        .get_ident()
        .map(|i| i.to_string())
        .unwrap_or_else(|| meta.path().to_token_stream().to_string().replace(' ', ""))
}

fn value(meta: &Meta) -> syn::Result<&Expr> {
    match meta {
        Meta::NameValue(nv) => Ok(&nv.value),
        _ => {
            let name = name(meta);
            Err(syn::Error::new_spanned(
                meta,
                format!("option `{name}` needs a value: `{name} = ...`"),
            ))
        }
    }
}

pub(crate) fn int(meta: &Meta) -> syn::Result<i64> {
    let expr = value(meta)?;
    let (neg, lit) = match expr {
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => (true, &*u.expr),
        e => (false, e),
    };
    match lit {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => {
            let v: i64 = i.base10_parse()?;
            Ok(if neg { -v } else { v })
        }
        _ => Err(syn::Error::new_spanned(
            expr,
            format!("`{}` must be a whole number, without quotes", name(meta)),
        )),
    }
}

pub(crate) fn string(meta: &Meta) -> syn::Result<String> {
    match value(meta)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        e => Err(syn::Error::new_spanned(
            e,
            format!("`{}` must be a string in quotes", name(meta)),
        )),
    }
}

/// `["a", "b"]` → the strings.
pub(crate) fn string_list(meta: &Meta) -> syn::Result<Vec<String>> {
    match value(meta)? {
        Expr::Array(array) => array
            .elems
            .iter()
            .map(|e| match e {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Ok(s.value()),
                e => Err(syn::Error::new_spanned(e, "expected a string")),
            })
            .collect(),
        e => Err(syn::Error::new_spanned(
            e,
            "expected a list of strings: `[\"a\", \"b\"]`",
        )),
    }
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"` → milliseconds.
pub(crate) fn duration_ms(meta: &Meta) -> syn::Result<u64> {
    let s = match value(meta)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => s.value(),
        e => {
            return Err(syn::Error::new_spanned(
                e,
                format!(
                    "`{}` must be a duration in quotes, like \"30s\" (units: ms, s, m, h)",
                    name(meta)
                ),
            ))
        }
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad_duration(meta, &s))?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n * 1_000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(bad_duration(meta, &s)),
    };
    if ms == 0 {
        return Err(syn::Error::new_spanned(
            meta,
            "the duration must be greater than zero",
        ));
    }
    Ok(ms)
}

fn bad_duration(meta: &Meta, s: &str) -> syn::Error {
    syn::Error::new_spanned(
        meta,
        format!(
            "invalid duration \"{s}\": write a whole number and a unit: ms, s, m or h (\"30s\")"
        ),
    )
}

/// `public` / `role = "..."`; the default is any authenticated user.
#[derive(Default)]
pub(crate) struct AccessOpt {
    public: bool,
    role: Option<String>,
}

impl AccessOpt {
    /// Handles the access options; false for any other.
    pub(crate) fn parse(&mut self, meta: &Meta) -> syn::Result<bool> {
        if meta.path().is_ident("public") {
            if !matches!(meta, Meta::Path(_)) {
                return Err(syn::Error::new_spanned(meta, "`public` takes no value"));
            }
            self.public = true;
        } else if meta.path().is_ident("role") {
            self.role = Some(string(meta)?);
        } else {
            return Ok(false);
        }
        if self.public && self.role.is_some() {
            return Err(syn::Error::new_spanned(
                meta,
                "a function cannot be both `public` and need a `role`",
            ));
        }
        Ok(true)
    }

    pub(crate) fn tokens(&self) -> TokenStream {
        match (&self.role, self.public) {
            (Some(r), _) => quote!(::forge::__private::Access::Role(#r)),
            (None, true) => quote!(::forge::__private::Access::Public),
            (None, false) => quote!(::forge::__private::Access::Authenticated),
        }
    }
}
