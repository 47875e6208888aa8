#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::query(public, role = "admin")]
async fn both(ctx: &QueryContext) -> Result<u32> {
    Ok(1)
}

#[forge::mutation(max_attempts = 3)]
async fn job_option(ctx: &MutationContext) -> Result<u32> {
    Ok(1)
}

#[forge::query(timeout = "soon")]
async fn bad_timeout(ctx: &QueryContext) -> Result<u32> {
    Ok(1)
}

fn main() {}
