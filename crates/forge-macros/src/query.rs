//! `#[forge::query]` and `#[forge::mutation]`: the functions clients call through the
//! gateway. They differ only in their context and registry entry.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, ItemFn, PathArguments, Type};

use crate::attr::{self, AccessOpt};
use crate::signature::{self, type_string};

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Query,
    Mutation,
}

impl Kind {
    fn attr_name(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Mutation => "mutation",
        }
    }

    fn context(self) -> &'static str {
        match self {
            Kind::Query => "QueryContext",
            Kind::Mutation => "MutationContext",
        }
    }
}

struct Options {
    timeout_ms: Option<u64>,
    access: AccessOpt,
}

fn options(attr: TokenStream) -> syn::Result<Options> {
    let mut o = Options {
        timeout_ms: None,
        access: AccessOpt::default(),
    };
    attr::parse_options(attr, |meta| {
        if meta.path().is_ident("timeout") {
            o.timeout_ms = Some(attr::duration_ms(meta)?);
            Ok(true)
        } else {
            o.access.parse(meta)
        }
    })?;
    Ok(o)
}

pub(crate) fn expand(kind: Kind, attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let opts = options(attr)?;
    let mut func: ItemFn = syn::parse2(item)?;
    let sig = signature::parse(&func, kind.attr_name(), kind.context())?;
    if let Kind::Query = kind {
        elide_context_lifetime(&mut func);
    }

    let name = &func.sig.ident;
    let name_str = name.to_string();
    let arg_idents: Vec<_> = sig.args.iter().map(|a| &a.ident).collect();
    let output = &sig.output;
    let output_str = type_string(output);
    let fn_doc = signature::doc_string(&func.attrs);
    let wire_checks = signature::wire_assertions(&sig);
    let args_struct = signature::args_struct_ident();
    let args_struct_def = signature::args_struct(&sig);
    let arg_defs = signature::arg_defs(&sig);
    let timeout = match opts.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let access = opts.access.tokens();

    let (run_sig, def) = match kind {
        Kind::Query => (
            quote! {
                fn __run<'a, 'c>(
                    ctx: &'a ::forge::QueryContext<'c>,
                    args: __f::serde_json::Value,
                ) -> ::core::result::Result<
                    __f::BoxFuture<'a, ::forge::Result<__f::serde_json::Value>>,
                    __f::ArgsError,
                >
            },
            quote!(__f::QueryDef),
        ),
        Kind::Mutation => (
            quote! {
                fn __run<'a>(
                    ctx: &'a ::forge::MutationContext,
                    args: __f::serde_json::Value,
                ) -> ::core::result::Result<
                    __f::BoxFuture<'a, ::forge::Result<__f::serde_json::Value>>,
                    __f::ArgsError,
                >
            },
            quote!(__f::MutationDef),
        ),
    };

    Ok(quote! {
        #func

        const _: () = {
            use ::forge::__private as __f;

            #wire_checks

            #args_struct_def

            // Arguments are decoded before the future exists, so that bad ones are refused
            // before anything runs (no transaction is opened for them).
            #run_sig {
                let #args_struct { #( #arg_idents ),* } = __f::decode_args::<#args_struct>(args)?;
                ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                    let output = #name(ctx, #( #arg_idents ),*).await?;
                    __f::serde_json::to_value(&output).map_err(::forge::Error::fatal)
                }))
            }

            __f::inventory::submit! {
                #def {
                    name: #name_str,
                    args: #arg_defs,
                    doc: #fn_doc,
                    output_type: #output_str,
                    options: __f::FunctionOptions {
                        timeout: #timeout,
                        access: #access,
                    },
                    parse_args: __f::parse_args::<#args_struct>,
                    run: __run,
                    args_schema: <#args_struct as __f::schemars::JsonSchema>::json_schema,
                    output_schema: __f::schema_for::<#output>,
                }
            }
        };
    })
}

/// `QueryContext` borrows the connection it runs on (`QueryContext<'c>`), and an `async fn`
/// must name that lifetime. Users write `ctx: &QueryContext` like every other context; this
/// adds the `<'_>`.
fn elide_context_lifetime(func: &mut ItemFn) {
    let Some(FnArg::Typed(pt)) = func.sig.inputs.first_mut() else {
        return;
    };
    let Type::Reference(r) = &mut *pt.ty else {
        return;
    };
    let Type::Path(p) = &mut *r.elem else { return };
    if let Some(last) = p.path.segments.last_mut() {
        if let PathArguments::None = last.arguments {
            last.arguments = PathArguments::AngleBracketed(syn::parse_quote!(<'_>));
        }
    }
}
