use forge::prelude::*;

/// Neither serializable nor describable by a JSON Schema.
pub struct Report {
    pub rows: u32,
}

#[forge::job]
async fn export(_ctx: &JobContext, report: Report) -> Result<u32> {
    Ok(report.rows)
}

fn main() {}
