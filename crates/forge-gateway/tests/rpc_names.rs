//! Functions called through the gateway share one namespace: a gateway refuses to start when
//! two of them share a name. (Its own file: one registry per test binary.)

use forge::prelude::*;
use forge_gateway::{DuplicateName, Gateway, GatewayConfig, GatewayError};
use forge_test_support::TestDb;

#[forge::query]
async fn twice(_ctx: &QueryContext) -> Result<()> {
    Ok(())
}

mod jobs {
    use forge::prelude::*;

    #[forge::job]
    pub(crate) async fn twice(_ctx: &JobContext) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn two_functions_with_one_name_stop_the_gateway_naming_both() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    let err = Gateway::new(
        &forge,
        GatewayConfig::new("a-secret-a-secret-a-secret-a-secret"),
    )
    .await
    .unwrap_err();
    let GatewayError::DuplicateName(DuplicateName {
        name,
        first,
        second,
    }) = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*name, "twice");
    assert_eq!([*first, *second], ["query", "job"]);
    assert!(
        err.to_string()
            .contains("the query `twice` and the job `twice`"),
        "{err}"
    );
}
