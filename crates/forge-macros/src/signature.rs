//! Reading the signature of a Forge function: its context parameter, its arguments, its
//! output type.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, ExprLit, FnArg, GenericArgument, Ident, ItemFn, Lit, Meta, MetaNameValue, Pat,
    PathArguments, ReturnType, Type,
};

pub(crate) struct Arg {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

pub(crate) struct Signature {
    pub(crate) args: Vec<Arg>,
    pub(crate) output: Type,
}

/// Checks `async fn name(ctx: &<context>, args..) -> Result<T>` and takes it apart.
pub(crate) fn parse(item: &ItemFn, attr_name: &str, context: &str) -> syn::Result<Signature> {
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            format!("#[forge::{attr_name}] functions must be `async`"),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!("#[forge::{attr_name}] functions cannot be generic"),
        ));
    }
    let ctx_msg = format!(
        "the first parameter of a #[forge::{attr_name}] function must be `ctx: &{context}`"
    );
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        None => return Err(syn::Error::new(sig.paren_token.span.join(), ctx_msg)),
        Some(FnArg::Receiver(r)) => return Err(syn::Error::new_spanned(r, ctx_msg)),
        Some(FnArg::Typed(pt)) => {
            let ok = match &*pt.ty {
                Type::Reference(r) if r.mutability.is_none() => match &*r.elem {
                    Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == context),
                    _ => false,
                },
                _ => false,
            };
            if !ok {
                return Err(syn::Error::new_spanned(&pt.ty, ctx_msg));
            }
        }
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(pt) = input else {
            return Err(syn::Error::new_spanned(input, "unexpected `self`"));
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return Err(syn::Error::new_spanned(
                &pt.pat,
                "arguments of a forge function must be plain names (`user_id: Uuid`): the name is part of the API",
            ));
        };
        if let Type::Reference(_) = &*pt.ty {
            return Err(syn::Error::new_spanned(
                &pt.ty,
                "arguments of a forge function must be owned types (`String`, not `&str`): they are deserialized from JSON",
            ));
        }
        args.push(Arg {
            ident: pi.ident.clone(),
            ty: (*pt.ty).clone(),
        });
    }
    let output = result_ok_type(&sig.output).ok_or_else(|| {
        let span = match &sig.output {
            ReturnType::Default => sig.paren_token.span.join(),
            ReturnType::Type(_, t) => t.span(),
        };
        syn::Error::new(
            span,
            format!("#[forge::{attr_name}] functions must return `forge::Result<T>`"),
        )
    })?;
    Ok(Signature { args, output })
}

fn result_ok_type(ret: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = ret else {
        return None;
    };
    let Type::Path(p) = &**ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

/// The name serde gives a field under `rename_all = "camelCase"`.
pub(crate) fn camel_case(ident: &Ident) -> String {
    let raw = ident.to_string();
    let name = raw.strip_prefix("r#").unwrap_or(&raw);
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for ch in name.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    if let Some(first) = out.chars().next() {
        let rest = out[first.len_utf8()..].to_string();
        out = first.to_lowercase().chain(rest.chars()).collect();
    }
    out
}

/// Compile-time checks that every argument and the output can cross the wire, with errors
/// pointing at the offending type.
pub(crate) fn wire_assertions(sig: &Signature) -> TokenStream {
    let types = sig
        .args
        .iter()
        .map(|a| &a.ty)
        .chain(std::iter::once(&sig.output));
    let checks = types.map(
        |ty| quote_spanned!(ty.span()=> const _: () = ::forge::__private::assert_wire::<#ty>();),
    );
    quote!(#(#checks)*)
}

/// The item's doc comment as text: its `///` lines (`#[doc = "..."]` attributes) joined, with
/// the one space after `///` dropped, for the registry.
pub(crate) fn doc_string(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(MetaNameValue {
                value:
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }),
                ..
            }) => Some(s.value()),
            _ => None,
        })
        .map(|line| {
            line.strip_prefix(' ')
                .unwrap_or(&line)
                .trim_end()
                .to_string()
        })
        .collect();
    lines.join("\n").trim().to_string()
}

/// `Type` as written, for the registry.
pub(crate) fn type_string(ty: &Type) -> String {
    ty.to_token_stream().to_string().replace(' ', "")
}

/// The name of the struct the arguments of a function are deserialized into.
pub(crate) fn args_struct_ident() -> Ident {
    format_ident!("__ForgeArgs")
}

/// The arguments of a function as one struct: the JSON object clients send (camelCase
/// fields, unknown fields refused), and its JSON Schema.
pub(crate) fn args_struct(sig: &Signature) -> TokenStream {
    let name = args_struct_ident();
    let idents = sig.args.iter().map(|a| &a.ident);
    let types = sig.args.iter().map(|a| &a.ty);
    quote! {
        #[derive(__f::serde::Serialize, __f::serde::Deserialize, __f::schemars::JsonSchema)]
        #[serde(crate = "::forge::__private::serde", rename_all = "camelCase", deny_unknown_fields)]
        #[schemars(crate = "::forge::__private::schemars")]
        struct #name {
            #( #idents: #types, )*
        }
    }
}

/// The `&[ArgDef]` of the registry entry.
pub(crate) fn arg_defs(sig: &Signature) -> TokenStream {
    let defs = sig.args.iter().map(|a| {
        let wire = camel_case(&a.ident);
        let rust = a.ident.to_string();
        let ty = type_string(&a.ty);
        quote!(__f::ArgDef { name: #wire, rust_name: #rust, rust_type: #ty })
    });
    quote!(&[ #( #defs ),* ])
}
