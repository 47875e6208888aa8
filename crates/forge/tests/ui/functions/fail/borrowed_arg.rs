#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::query]
async fn find(ctx: &QueryContext, name: &str) -> Result<u32> {
    Ok(1)
}

fn main() {}
