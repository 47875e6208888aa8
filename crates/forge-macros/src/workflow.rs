//! `#[forge::workflow]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::attr::{self, AccessOpt};
use crate::runnable::{self, Kind};
use crate::{signature, steps};

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

    // Declared steps win: they may name steps the body reaches in ways the macro cannot read.
    let steps = if opts.steps.is_empty() {
        steps::literal_step_names(&func.block)
    } else {
        opts.steps
    };
    let steps = &steps;
    let queue = &opts.queue;
    let access = opts.access.tokens();
    let options = quote! {
        __f::WorkflowOptions {
            steps: &[ #( #steps ),* ],
            queue: #queue,
            access: #access,
        }
    };
    let kind = Kind {
        noun: "workflow",
        verb: "start",
        request: quote!(::forge::WorkflowRequest),
        context: quote!(::forge::WorkflowContext),
        def: quote!(WorkflowDef),
    };
    Ok(runnable::expand(&func, &sig, kind, options))
}
