//! The compile errors users see for `#[forge::workflow]`, pinned, and a workflow using the
//! whole step API that must keep compiling. Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p forge --test workflows_ui`.

#[test]
fn workflow_signatures() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/workflows/pass/*.rs");
    t.compile_fail("tests/ui/workflows/fail/*.rs");
}
