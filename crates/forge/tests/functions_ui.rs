//! The compile errors users see for `#[forge::query]` and `#[forge::mutation]`, pinned.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p forge --test functions_ui`.

#[test]
fn query_and_mutation_signatures() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/functions/pass/*.rs");
    t.compile_fail("tests/ui/functions/fail/*.rs");
}
