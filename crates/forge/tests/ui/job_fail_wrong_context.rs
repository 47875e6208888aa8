#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::job]
async fn export(ctx: &QueryContext, format: String) -> Result<u32> {
    Ok(1)
}

fn main() {}
