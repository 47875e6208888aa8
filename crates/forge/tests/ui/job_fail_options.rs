#![allow(unused_imports)] // the macro replaces the function with its error

use forge::prelude::*;

#[forge::job(retries = 3)]
async fn unknown(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(max_attempts = 0)]
async fn zero_attempts(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(max_attempts = "five")]
async fn attempts_not_a_number(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(timeout = "soon")]
async fn bad_timeout(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(backoff = 5)]
async fn backoff_not_a_string(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(backoff = "10s", max_backoff = "1s")]
async fn backoff_above_its_cap(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(queue = "")]
async fn empty_queue(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(priority = 9999999999)]
async fn huge_priority(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(max_attempts)]
async fn missing_value(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(timeout = "1s", timeout = "2s")]
async fn repeated(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(backoff = "2h")]
async fn backoff_above_the_default_cap(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(public, role = "admin")]
async fn public_with_role(ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(queue = default)]
async fn queue_not_a_string(ctx: &JobContext) -> Result<()> {
    Ok(())
}

fn main() {}
