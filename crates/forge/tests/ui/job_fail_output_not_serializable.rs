use forge::prelude::*;

pub struct Report {
    pub rows: u32,
}

#[forge::job]
async fn export(_ctx: &JobContext) -> Result<Report> {
    Ok(Report { rows: 1 })
}

fn main() {}
