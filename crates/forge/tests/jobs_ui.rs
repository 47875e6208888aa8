//! The compile errors users see for `#[forge::job]`, pinned, and a job using every option that
//! must keep compiling. Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p forge --test jobs_ui`.

#[test]
fn job_signatures() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/job_pass.rs");
    t.compile_fail("tests/ui/job_fail_*.rs");
}
