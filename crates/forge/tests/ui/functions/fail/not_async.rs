#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::query]
fn todos(ctx: &QueryContext) -> Result<u32> {
    Ok(1)
}

fn main() {}
