#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::workflow(steps = "validate")]
async fn not_a_list(ctx: &WorkflowContext) -> Result<()> {
    Ok(())
}

#[forge::workflow(steps = ["validate", ""])]
async fn empty_step(ctx: &WorkflowContext) -> Result<()> {
    Ok(())
}

#[forge::workflow(max_attempts = 3)]
async fn job_option(ctx: &WorkflowContext) -> Result<()> {
    Ok(())
}

fn main() {}
