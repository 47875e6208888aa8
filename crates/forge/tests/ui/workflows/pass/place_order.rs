use std::time::Duration;

use forge::error::WaitError;
use forge::prelude::*;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Receipt {
    id: String,
}

#[forge::workflow(steps = ["reserve", "charge", "wait_shipped"], queue = "orders", role = "shop")]
async fn place_order(ctx: &WorkflowContext, order_id: uuid::Uuid, amount: u64) -> Result<Receipt> {
    let db = ctx.db().clone();
    let hold: u64 = ctx
        .step("reserve", || async {
            // Any error converts with `?`.
            let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(ctx.db()).await?;
            Ok(n as u64 + amount)
        })
        .compensate(move |hold: u64| {
            let db = db.clone();
            async move {
                sqlx::query("SELECT $1").bind(hold as i64).execute(&db).await?;
                Ok(())
            }
        })
        .retries(5)
        .backoff(Duration::from_millis(500))
        .timeout(Duration::from_secs(30))
        .await?;
    let receipt = ctx
        .step("charge", || async {
            Ok(Receipt {
                id: format!("{order_id}-{hold}"),
            })
        })
        .await?;
    ctx.sleep(Duration::from_secs(1)).named("cool_down").await;
    match ctx
        .wait_for_event::<serde_json::Value>("shipped", Duration::from_secs(60))
        .named("wait_shipped")
        .await
    {
        Ok(_) | Err(WaitError::TimedOut { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(receipt)
}

fn main() {
    let def = forge_runtime::registry::workflow("place_order").unwrap();
    assert_eq!(def.options.steps, ["reserve", "charge", "wait_shipped"]);
    assert_eq!(def.options.queue, "orders");
    let _req: WorkflowRequest<Receipt> = place_order::request(uuid::Uuid::nil(), 5);
}
