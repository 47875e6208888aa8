//! Demo sign-in: pick one of the seeded accounts and get a token for it. There are no
//! passwords; the point is that jobs belong to whoever started them, and the page shows it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use forge::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::settings;

/// How long a demo token lasts. The page signs in again when it has expired.
const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A demo account, as the page shows it.
#[derive(Debug, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Account {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub email: String,
    /// `unverified`, `verifying` or `active`.
    pub status: String,
}

/// The role the gateway treats as the admin role (`GatewayConfig::admin_role`): it sees and
/// acts on every user's runs, and opens the dashboard.
pub(crate) const ADMIN_ROLE: &str = "admin";

/// The accounts that sign in with [`ADMIN_ROLE`].
const OPERATORS: &[&str] = &["ops"];

/// What signing in gives the page.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Session {
    /// The bearer token (HS256 JWT, `sub` = the username, `roles`).
    pub token: String,
    /// The token's roles: `["admin"]` for the operator, else none.
    pub roles: Vec<String>,
    /// When the token expires, in seconds since 1970.
    pub expires_at: u32,
    pub account: Account,
}

/// The accounts one can sign in as.
#[forge::query(public)]
pub(crate) async fn demo_accounts(ctx: &QueryContext) -> Result<Vec<Account>> {
    let mut db = ctx.db().await?;
    Ok(sqlx::query_as::<_, Account>(
        "SELECT id, username, name, email, status FROM accounts ORDER BY username",
    )
    .fetch_all(&mut *db)
    .await?)
}

/// The signed-in caller's account (its status changes as verification goes on).
#[forge::query]
pub(crate) async fn my_account(ctx: &QueryContext) -> Result<Account> {
    let user = ctx.user().expect("not public, so signed in");
    let mut db = ctx.db().await?;
    sqlx::query_as::<_, Account>(
        "SELECT id, username, name, email, status FROM accounts WHERE username = $1",
    )
    .bind(&user.id)
    .fetch_optional(&mut *db)
    .await?
    .ok_or_else(|| Error::not_found("no account for this token: sign in again"))
}

/// Signs in as `username` (one of [`demo_accounts`]).
#[forge::mutation(public)]
pub(crate) async fn sign_in(ctx: &MutationContext, username: String) -> Result<Session> {
    let account = {
        let mut db = ctx.db().await?;
        sqlx::query_as::<_, Account>(
            "SELECT id, username, name, email, status FROM accounts WHERE username = $1",
        )
        .bind(&username)
        .fetch_optional(&mut *db)
        .await?
    };
    let account =
        account.ok_or_else(|| Error::invalid_arg("username", "no demo account has this name"))?;
    let expires_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(Error::msg)?
        .saturating_add(TOKEN_LIFETIME)
        .as_secs();
    let expires_at = u32::try_from(expires_at).map_err(Error::msg)?;
    let roles: Vec<String> = if OPERATORS.contains(&account.username.as_str()) {
        vec![ADMIN_ROLE.to_owned()]
    } else {
        Vec::new()
    };
    let token = issue_token(&account.username, &roles, expires_at)?;
    Ok(Session {
        token,
        roles,
        expires_at,
        account,
    })
}

fn issue_token(username: &str, roles: &[String], expires_at: u32) -> Result<String> {
    let claims = serde_json::json!({ "sub": username, "roles": roles, "exp": expires_at });
    let key = jsonwebtoken::EncodingKey::from_secret(settings::get().jwt_secret.as_bytes())
        .map_err(Error::msg)?;
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).map_err(Error::msg)
}
