#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::job]
async fn borrowed(ctx: &JobContext, name: &str) -> Result<u32> {
    Ok(1)
}

#[forge::job]
async fn no_result(ctx: &JobContext) -> u32 {
    1
}

#[forge::job]
async fn generic<T>(ctx: &JobContext, value: T) -> Result<u32> {
    Ok(1)
}

#[forge::job]
async fn pattern(ctx: &JobContext, (a, b): (u32, u32)) -> Result<u32> {
    Ok(a + b)
}

fn main() {}
