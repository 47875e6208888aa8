use forge::prelude::*;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Todo {
    title: String,
}

#[forge::query(public, timeout = "2s")]
async fn todos(ctx: &QueryContext, owner: Option<String>) -> Result<Vec<Todo>> {
    let mut db = ctx.db().await?;
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM todos WHERE owner = $1")
        .bind(owner)
        .fetch_all(&mut *db)
        .await?;
    Ok(titles.into_iter().map(|title| Todo { title }).collect())
}

#[forge::mutation(role = "editor")]
async fn add_todo(ctx: &MutationContext, title: String) -> forge::Result<()> {
    if title.is_empty() {
        return Err(Error::invalid_arg("title", "must not be empty"));
    }
    let _user = ctx.user();
    Ok(())
}

fn main() {
    assert!(forge_runtime::registry::query("todos").is_some());
    assert!(forge_runtime::registry::mutation("add_todo").is_some());
}
