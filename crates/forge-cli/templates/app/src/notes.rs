//! Notes: one query and one mutation over a table of the app's own (`schema.sql`). Each user
//! sees only their own notes.

use chrono::{DateTime, Utc};
use forge::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One note, as the page shows it.
#[derive(Debug, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Note {
    pub id: Uuid,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// The longest note accepted, in characters.
const MAX_LEN: usize = 500;

/// The caller's notes, newest first. The page reads them with `liveNotes()`, which runs this
/// again whenever the table it read changes: nothing here says what to watch.
#[forge::query]
pub(crate) async fn notes(ctx: &QueryContext) -> Result<Vec<Note>> {
    let user = ctx.user().expect("not public, so signed in");
    let mut db = ctx.db().await?;
    Ok(sqlx::query_as::<_, Note>(
        "SELECT id, text, created_at FROM notes WHERE owner = $1 \
         ORDER BY created_at DESC LIMIT 50",
    )
    .bind(&user.id)
    .fetch_all(&mut *db)
    .await?)
}

/// Adds a note for the caller. A mutation is one transaction: it commits only if this returns
/// `Ok`.
#[forge::mutation]
pub(crate) async fn add_note(ctx: &MutationContext, text: String) -> Result<Note> {
    let text = text.trim();
    if text.is_empty() {
        // A refusal: the page gets this message (and the field) as it is, with a 400.
        return Err(Error::invalid_arg("text", "must not be empty"));
    }
    if text.chars().count() > MAX_LEN {
        return Err(Error::invalid_arg(
            "text",
            format!("must be at most {MAX_LEN} characters"),
        ));
    }
    let user = ctx.user().expect("not public, so signed in");
    let mut db = ctx.db().await?;
    Ok(sqlx::query_as::<_, Note>(
        "INSERT INTO notes (id, owner, text) VALUES ($1, $2, $3) \
         RETURNING id, text, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(&user.id)
    .bind(text)
    .fetch_one(&mut *db)
    .await?)
}
