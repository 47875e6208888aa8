use forge::prelude::*;

#[forge::workflow]
async fn mismatched(ctx: &WorkflowContext) -> Result<()> {
    ctx.step("count", || async { Ok(3u32) })
        .compensate(|name: String| async move { Ok(()) })
        .await?;
    Ok(())
}

fn main() {}
