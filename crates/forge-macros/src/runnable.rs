//! The expansion `#[forge::job]` and `#[forge::workflow]` share: the typed handle and its
//! `request(..)`, the run function the runtime calls with the stored arguments, and the
//! registry entry. Only the names and the options differ.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::signature::{self, type_string, Signature};

/// What differs between a job and a workflow.
pub(crate) struct Kind {
    /// "job" or "workflow", as the docs and messages of the generated code say it.
    pub(crate) noun: &'static str,
    /// What a request is for: "enqueue" or "start".
    pub(crate) verb: &'static str,
    /// `::forge::JobRequest` or `::forge::WorkflowRequest`.
    pub(crate) request: TokenStream,
    /// The context the function takes: `::forge::JobContext` or `::forge::WorkflowContext`.
    pub(crate) context: TokenStream,
    /// The registry entry's type, under `__f`: `JobDef` or `WorkflowDef`.
    pub(crate) def: TokenStream,
}

/// The item, its handle and its registry entry with `options` (an expression of the kind's
/// options type, which may use `__f`).
pub(crate) fn expand(
    func: &ItemFn,
    sig: &Signature,
    kind: Kind,
    options: TokenStream,
) -> TokenStream {
    let vis = &func.vis;
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let arg_idents: Vec<_> = sig.args.iter().map(|a| &a.ident).collect();
    let arg_types: Vec<_> = sig.args.iter().map(|a| &a.ty).collect();
    let output = &sig.output;
    let output_str = type_string(output);
    let fn_doc = signature::doc_string(&func.attrs);
    let wire_checks = signature::wire_assertions(sig);
    let args_struct = signature::args_struct_ident();
    let args_struct_def = signature::args_struct(sig);
    let arg_defs = signature::arg_defs(sig);
    let Kind {
        noun,
        verb,
        request,
        context,
        def,
    } = kind;
    let doc = format!(
        "Typed handle of the `{name_str}` {noun}: `{name_str}::request(..)` builds a request to {verb} it."
    );
    let request_doc = format!("A request to {verb} this {noun} with these arguments.");
    let serialize_msg = format!("the arguments of a forge {noun} serialize to JSON");

    quote! {
        #func

        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        const _: () = {
            use ::forge::__private as __f;

            #wire_checks

            #args_struct_def

            impl #name {
                #[doc = #request_doc]
                #[allow(clippy::too_many_arguments)]
                #vis fn request(#( #arg_idents: #arg_types ),*) -> #request<#output> {
                    let args = #args_struct { #( #arg_idents ),* };
                    let args = __f::serde_json::to_value(&args).expect(#serialize_msg);
                    #request::new(#name_str, args)
                }
            }

            fn __run(
                ctx: #context,
                args: __f::serde_json::Value,
            ) -> __f::BoxFuture<'static, ::forge::Result<__f::serde_json::Value>> {
                ::std::boxed::Box::pin(async move {
                    // Arguments were checked when the request was made; failing here means
                    // the stored row no longer fits the code (changed since), which retrying
                    // won't fix.
                    let #args_struct { #( #arg_idents ),* } =
                        __f::decode_args::<#args_struct>(args).map_err(::forge::Error::fatal)?;
                    let output = #name(&ctx, #( #arg_idents ),*).await?;
                    __f::serde_json::to_value(&output).map_err(::forge::Error::fatal)
                })
            }

            __f::inventory::submit! {
                __f::#def {
                    name: #name_str,
                    args: #arg_defs,
                    doc: #fn_doc,
                    output_type: #output_str,
                    options: #options,
                    parse_args: __f::parse_args::<#args_struct>,
                    run: __run,
                    args_schema: <#args_struct as __f::schemars::JsonSchema>::json_schema,
                    output_schema: __f::schema_for::<#output>,
                }
            }
        };
    }
}
