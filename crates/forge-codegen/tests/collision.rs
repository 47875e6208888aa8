//! Two different Rust types with one name, used by two functions: refused, naming both.

use forge::prelude::*;

mod billing {
    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    pub(crate) struct Filter {
        pub(crate) min_amount: i32,
    }
}

mod users {
    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    pub(crate) struct Filter {
        pub(crate) name_prefix: String,
    }
}

#[forge::query]
async fn invoices(_ctx: &QueryContext, filter: billing::Filter) -> Result<Vec<String>> {
    let _ = filter.min_amount;
    Ok(Vec::new())
}

#[forge::query]
async fn users(_ctx: &QueryContext, filter: users::Filter) -> Result<Vec<String>> {
    let _ = filter.name_prefix;
    Ok(Vec::new())
}

#[test]
fn two_types_with_one_name_are_refused() {
    let err = forge_codegen::generate(&forge_codegen::Options::new("app", "out")).unwrap_err();
    assert!(
        matches!(
            &err,
            forge_codegen::CodegenError::TypeNameCollision { name, first, second }
                if name == "Filter" && first == "query invoices" && second == "query users"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("#[schemars(rename"), "{err}");
}
