//! `#[forge::workflow]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::attr::{self, AccessOpt};
use crate::signature::{self, type_string};

struct Options {
    steps: Vec<String>,
    queue: String,
    access: AccessOpt,
}

fn options(attr: TokenStream) -> syn::Result<Options> {
    let mut o = Options {
        steps: Vec::new(),
        queue: "default".into(),
        access: AccessOpt::default(),
    };
    attr::parse_options(attr, |meta| {
        let p = meta.path();
        if p.is_ident("steps") {
            o.steps = attr::string_list(meta)?;
            if o.steps.iter().any(String::is_empty) {
                return Err(syn::Error::new_spanned(meta, "step names cannot be empty"));
            }
        } else if p.is_ident("queue") {
            o.queue = attr::string(meta)?;
            if o.queue.is_empty() {
                return Err(syn::Error::new_spanned(meta, "`queue` cannot be empty"));
            }
        } else {
            return o.access.parse(meta);
        }
        Ok(true)
    })?;
    Ok(o)
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let opts = options(attr)?;
    let func: ItemFn = syn::parse2(item)?;
    let sig = signature::parse(&func, "workflow", "WorkflowContext")?;

    let vis = &func.vis;
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let arg_idents: Vec<_> = sig.args.iter().map(|a| &a.ident).collect();
    let arg_types: Vec<_> = sig.args.iter().map(|a| &a.ty).collect();
    let output = &sig.output;
    let output_str = type_string(output);
    let fn_doc = signature::doc_string(&func.attrs);
    let wire_checks = signature::wire_assertions(&sig);

    let steps = &opts.steps;
    let queue = &opts.queue;
    let access = opts.access.tokens();
    let doc = format!("Typed handle of the `{name_str}` workflow: `{name_str}::request(..)` builds a request to start it.");
    let args_struct = signature::args_struct_ident();
    let args_struct_def = signature::args_struct(&sig);
    let arg_defs = signature::arg_defs(&sig);

    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        const _: () = {
            use ::forge::__private as __f;

            #wire_checks

            #args_struct_def

            impl #name {
                /// A request to start this workflow with these arguments.
                #[allow(clippy::too_many_arguments)]
                #vis fn request(#( #arg_idents: #arg_types ),*) -> ::forge::WorkflowRequest<#output> {
                    let args = #args_struct { #( #arg_idents ),* };
                    let args = __f::serde_json::to_value(&args)
                        .expect("the arguments of a forge workflow serialize to JSON");
                    ::forge::WorkflowRequest::new(#name_str, args)
                }
            }

            fn __run(
                ctx: ::forge::WorkflowContext,
                args: __f::serde_json::Value,
            ) -> __f::BoxFuture<'static, ::forge::Result<__f::serde_json::Value>> {
                ::std::boxed::Box::pin(async move {
                    // Arguments were checked at start; failing here means the stored row no
                    // longer fits the code (changed since).
                    let #args_struct { #( #arg_idents ),* } =
                        __f::decode_args::<#args_struct>(args).map_err(::forge::Error::fatal)?;
                    let output = #name(&ctx, #( #arg_idents ),*).await?;
                    __f::serde_json::to_value(&output).map_err(::forge::Error::fatal)
                })
            }

            __f::inventory::submit! {
                __f::WorkflowDef {
                    name: #name_str,
                    args: #arg_defs,
                    doc: #fn_doc,
                    output_type: #output_str,
                    options: __f::WorkflowOptions {
                        steps: &[ #( #steps ),* ],
                        queue: #queue,
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
