#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::mutation]
async fn add(ctx: &QueryContext) -> Result<u32> {
    Ok(1)
}

fn main() {}
