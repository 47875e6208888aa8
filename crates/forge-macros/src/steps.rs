//! The step names a workflow's body asks for, read from its code, so that `steps` lists every
//! step from the start without `steps = [...]`.
//!
//! Found: `.step("name", ...)`, `.wait_for_event("name", ...)`, and `.named("name")` on a
//! sleep or an event wait, whose name is a string literal, in source order, also inside closures, blocks and the arguments of macros whose
//! arguments are expressions (`tokio::join!(...)`, `vec![...]`). Not found, so shown only once
//! they start: a name that is not a literal (a variable, `format!`), unnamed sleeps, and steps in
//! helper functions the body calls. A name found twice (a loop, two branches) is listed once.

use syn::punctuated::Punctuated;
use syn::visit::Visit;
use syn::{Expr, ExprLit, ExprMethodCall, Lit, Macro, Token};

/// The literal step names in `body`, first occurrence first.
pub(crate) fn literal_step_names(body: &syn::Block) -> Vec<String> {
    let mut found = StepNames(Vec::new());
    found.visit_block(body);
    found.0
}

struct StepNames(Vec<String>);

impl StepNames {
    fn push(&mut self, name: Option<&Expr>) {
        if let Some(Expr::Lit(ExprLit {
            lit: Lit::Str(name),
            ..
        })) = name
        {
            let name = name.value();
            if !name.is_empty() && !self.0.contains(&name) {
                self.0.push(name);
            }
        }
    }

    /// The calls inside `call` (its receiver first, then its arguments), without `call` itself.
    fn visit_parts(&mut self, call: &ExprMethodCall) {
        self.visit_expr(&call.receiver);
        for arg in &call.args {
            self.visit_expr(arg);
        }
    }
}

impl<'ast> Visit<'ast> for StepNames {
    fn visit_expr_method_call(&mut self, call: &'ast ExprMethodCall) {
        match (call.method.to_string().as_str(), &*call.receiver) {
            // `ctx.sleep(d).named("nap")`, `ctx.wait_for_event("e", d).named("wait_e")`: the
            // step is named by `named`, not by the event. A sleep without `named` is named
            // when it starts.
            ("named", Expr::MethodCall(inner))
                if call.args.len() == 1
                    && (inner.method == "sleep" || inner.method == "wait_for_event") =>
            {
                // The receiver first: in chains the earlier calls are inside it.
                self.visit_parts(inner);
                self.push(call.args.first());
            }
            ("step" | "wait_for_event", _) if call.args.len() == 2 => {
                self.visit_expr(&call.receiver);
                self.push(call.args.first());
                for arg in &call.args {
                    self.visit_expr(arg);
                }
            }
            _ => self.visit_parts(call),
        }
    }

    fn visit_macro(&mut self, mac: &'ast Macro) {
        // A macro's tokens are not parsed; those that are a list of expressions are read.
        let parser = Punctuated::<Expr, Token![,]>::parse_terminated;
        if let Ok(exprs) = mac.parse_body_with(parser) {
            for e in &exprs {
                self.visit_expr(e);
            }
        }
    }

    // A nested `fn` is not the body: its calls run only if the body calls it, in its order.
    fn visit_item_fn(&mut self, _: &'ast syn::ItemFn) {}
}

#[cfg(test)]
mod tests {
    use super::literal_step_names;

    fn names(body: &str) -> Vec<String> {
        literal_step_names(&syn::parse_str(body).unwrap())
    }

    #[test]
    fn literal_names_in_source_order_once_each() {
        let found = names(
            r#"{
                let a: u32 = ctx.step("validate", || async { Ok(1) }).retries(3).await?;
                let b: u32 = ctx
                    .step("send", || async { Ok(2) })
                    .compensate(|_: u32| async { Ok(()) })
                    .await?;
                let _: Confirm = ctx.wait_for_event("confirmed", Duration::from_secs(60)).await?;
                ctx.sleep(Duration::from_secs(1)).named("nap").await;
                let _: Shipped = ctx.wait_for_event("shipped", d).named("wait_shipped").await?;
                for i in 0..3 { ctx.step("in_loop", || async { Ok(()) }).await?; }
                if a > b { ctx.step("branch", || async { Ok(()) }).await?; }
                else { ctx.step("in_loop", || async { Ok(()) }).await?; }
                let (x, y) = tokio::join!(
                    ctx.step("left", || async { Ok(1) }),
                    ctx.step("right", || async { Ok(2) }),
                );
                ctx.step("activate", || async { Ok(()) }).await
            }"#,
        );
        assert_eq!(
            found,
            [
                "validate",
                "send",
                "confirmed",
                "nap",
                "wait_shipped",
                "in_loop",
                "branch",
                "left",
                "right",
                "activate"
            ]
        );
    }

    #[test]
    fn names_that_are_not_literals_are_left_out() {
        let found = names(
            r#"{
                let name = "dynamic";
                ctx.step(name, || async { Ok(()) }).await?;
                ctx.step(&format!("part_{}", 1), || async { Ok(()) }).await?;
                ctx.sleep(Duration::from_secs(1)).await?;
                fn helper(ctx: &WorkflowContext) { ctx.step("in_helper", || async { Ok(()) }); }
                ctx.step("", || async { Ok(()) }).await?;
                ctx.step("last", || async { Ok(()) }).await
            }"#,
        );
        assert_eq!(found, ["last"]);
    }
}
