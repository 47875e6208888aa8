//! `forge migrate`: the runtime's own migration run (the one `Forge::connect` makes), on its
//! own, so a deploy can migrate before any node starts.

use forge_runtime::store::MIGRATIONS;
use serde_json::json;

use crate::db::Context;
use crate::error::CliError;
use crate::output;

pub(crate) async fn run(ctx: &Context) -> Result<u8, CliError> {
    let store = ctx.store().await?;
    // Which versions were missing is the runtime's to know (its table is not read here);
    // whether any was is enough to say what this run did.
    let was_current = store.is_ready().await;
    store
        .migrate()
        .await
        .map_err(|e| CliError::fail(e.to_string()))?;
    let (version, name) = MIGRATIONS.last().map_or((0, ""), |m| (m.0, m.1));
    if ctx.json {
        output::print_json(&json!({
            "applied": !was_current,
            "version": version,
            "name": name,
        }))?;
    } else if was_current {
        output::print(format!(
            "the database is up to date (migration {version}, {name})"
        ))?;
    } else {
        output::print(format!(
            "migrated the database to migration {version} ({name})"
        ))?;
    }
    Ok(0)
}
