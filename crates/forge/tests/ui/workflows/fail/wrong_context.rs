#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::workflow]
async fn verify(ctx: &JobContext, user_id: uuid::Uuid) -> Result<()> {
    Ok(())
}

fn main() {}
