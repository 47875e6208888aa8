//! `account_verification`: a durable workflow that validates an account, "sends" a
//! verification email (into the `outbox` table), waits for the `email_confirmed` event, and
//! activates the account. `fail_at` makes a chosen step fail, to watch compensation.

use std::time::Duration;

use forge::prelude::*;
use forge::workflow::send_event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How long the workflow waits for the confirmation.
const CONFIRM_WITHIN: Duration = Duration::from_secs(15 * 60);
/// The wait when the failure switch is on `email_confirmed`: a timeout is how a wait fails.
const CONFIRM_WITHIN_WHEN_FAILING: Duration = Duration::from_secs(3);

/// A step of `account_verification` the page can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FailAt {
    ValidateUser,
    SendVerificationEmail,
    EmailConfirmed,
    ActivateAccount,
}

/// What `validate_user` stored: enough to undo it.
#[derive(Debug, Serialize, Deserialize)]
struct Validated {
    email: String,
    previous_status: String,
}

/// What the page sends with the event (nothing is needed beyond the fact).
#[derive(Debug, Serialize, Deserialize)]
struct Confirmation {}

/// Verifies the caller's account `user_id`.
#[forge::workflow(steps = [
    "validate_user",
    "send_verification_email",
    "email_confirmed",
    "activate_account"
])]
pub(crate) async fn account_verification(
    ctx: &WorkflowContext,
    user_id: Uuid,
    fail_at: Option<FailAt>,
) -> Result<()> {
    let owner = ctx.owner().unwrap_or_default().to_string();
    let pool = ctx.db().clone();

    let undo_pool = pool.clone();
    let validated: Validated = ctx
        .step("validate_user", || async {
            failure_switch(fail_at, FailAt::ValidateUser)?;
            // Only one's own account, and it moves to `verifying` while this runs.
            let row: Option<(String, String)> = sqlx::query_as(
                "UPDATE accounts a SET status = 'verifying' \
                 FROM (SELECT id, status FROM accounts WHERE id = $1 FOR UPDATE) old \
                 WHERE a.id = old.id AND a.username = $2 \
                 RETURNING a.email, old.status",
            )
            .bind(user_id)
            .bind(&owner)
            .fetch_optional(&pool)
            .await?;
            let (email, previous_status) =
                row.ok_or_else(|| Error::fatal("no such account among yours"))?;
            Ok(Validated {
                email,
                previous_status,
            })
        })
        .compensate(move |v: Validated| {
            let pool = undo_pool.clone();
            async move {
                sqlx::query("UPDATE accounts SET status = $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(&v.previous_status)
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await?;

    let undo_pool = pool.clone();
    let workflow_id = ctx.workflow_id();
    let _email_id: Uuid = ctx
        .step("send_verification_email", || async {
            failure_switch(fail_at, FailAt::SendVerificationEmail)?;
            // One email per workflow, however often the step runs.
            let id = sqlx::query_scalar(
                "INSERT INTO outbox (id, workflow_id, owner, recipient, subject) \
                 VALUES ($1, $2, $3, $4, 'Confirm your email address') \
                 ON CONFLICT (workflow_id) DO UPDATE SET recipient = EXCLUDED.recipient \
                 RETURNING id",
            )
            .bind(Uuid::new_v4())
            .bind(workflow_id)
            .bind(&owner)
            .bind(&validated.email)
            .fetch_one(&pool)
            .await?;
            Ok(id)
        })
        .compensate(move |email_id: Uuid| {
            let pool = undo_pool.clone();
            async move {
                sqlx::query("UPDATE outbox SET recalled_at = now() WHERE id = $1")
                    .bind(email_id)
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await?;

    let within = if fail_at == Some(FailAt::EmailConfirmed) {
        CONFIRM_WITHIN_WHEN_FAILING
    } else {
        CONFIRM_WITHIN
    };
    let _: Confirmation = ctx.wait_for_event("email_confirmed", within).await?;

    ctx.step("activate_account", || async {
        failure_switch(fail_at, FailAt::ActivateAccount)?;
        sqlx::query("UPDATE accounts SET status = 'active' WHERE id = $1")
            .bind(user_id)
            .execute(&pool)
            .await?;
        Ok(())
    })
    .await
}

fn failure_switch(fail_at: Option<FailAt>, step: FailAt) -> Result<()> {
    if fail_at == Some(step) {
        // Fatal: retrying a switched-off step would only fail again.
        return Err(Error::fatal(
            "failed on purpose: the failure switch is on for this step",
        ));
    }
    Ok(())
}

/// What clicking the link in the verification email does: sends `email_confirmed` to the
/// workflow that sent it. Only the owner of the email can confirm it.
#[forge::mutation]
pub(crate) async fn confirm_email(ctx: &MutationContext, workflow_id: Uuid) -> Result<()> {
    let user = ctx.user().expect("not public, so signed in");
    let mut db = ctx.db().await?;
    let email: Option<Uuid> = sqlx::query_scalar(
        "UPDATE outbox SET confirmed_at = COALESCE(confirmed_at, now()) \
         WHERE workflow_id = $1 AND owner = $2 AND recalled_at IS NULL RETURNING id",
    )
    .bind(workflow_id)
    .bind(&user.id)
    .fetch_optional(&mut *db)
    .await?;
    if email.is_none() {
        return Err(Error::conflict(
            "no verification email of yours is waiting for this workflow",
        ));
    }
    match send_event(
        &mut *db,
        workflow_id,
        "email_confirmed",
        serde_json::json!({}),
    )
    .await
    {
        Ok(()) => Ok(()),
        Err(forge::error::EventError::AlreadyFinished(status)) => Err(Error::conflict(format!(
            "the verification already ended ({status})"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// A verification email, as the page's inbox shows it.
#[derive(Debug, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Email {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub recipient: String,
    pub subject: String,
    pub sent_at: chrono::DateTime<chrono::Utc>,
    pub confirmed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Set when a failed verification took the email back (its compensation).
    pub recalled_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The caller's latest verification emails, newest first.
#[forge::query]
pub(crate) async fn my_inbox(ctx: &QueryContext) -> Result<Vec<Email>> {
    let user = ctx.user().expect("not public, so signed in");
    let mut db = ctx.db().await?;
    Ok(sqlx::query_as::<_, Email>(
        "SELECT id, workflow_id, recipient, subject, sent_at, confirmed_at, recalled_at \
         FROM outbox WHERE owner = $1 ORDER BY sent_at DESC LIMIT 5",
    )
    .bind(&user.id)
    .fetch_all(&mut *db)
    .await?)
}
