//! `forge-bench faults`: every fault scenario of issue 14 in its full size (see
//! `forge_test_support::fault::scenarios`), against a private PostgreSQL cluster and three
//! `fault-node` processes; prints one table, then how job starts were answered during each
//! fault and the invariants each scenario broke. "slowest call" is the longest a job start
//! through the faulted node waited for its answer while the fault lasted.
//!
//! The node binary is `fault-node` next to this one (build both with the same profile:
//! `cargo build --release -p forge-bench -p fault-node`), or the one `FORGE_FAULT_NODE` names.
//! `--short` runs the test-sized versions instead.

use std::path::PathBuf;

use forge_test_support::fault::report::Report;
use forge_test_support::fault::scenarios::{run, Scenario, Size};

type BoxError = Box<dyn std::error::Error>;

fn node_bin() -> Result<PathBuf, BoxError> {
    if let Some(path) = std::env::var_os("FORGE_FAULT_NODE") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("fault-node");
    if !bin.is_file() {
        return Err(format!(
            "no {}: build it with the same profile as forge-bench \
             (`cargo build --release -p fault-node`) or set FORGE_FAULT_NODE",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

pub(crate) async fn faults(mut args: impl Iterator<Item = String>) -> Result<(), BoxError> {
    let size = match args.next().as_deref() {
        None => Size::full(),
        Some("--short") => Size::short(),
        Some(other) => return Err(format!("faults: unknown option {other} (--short)").into()),
    };
    let bin = node_bin()?;
    println!(
        "forge-bench faults: {} nodes, {} jobs of {:.1} s and {} workflows per scenario, \
         lease {:.0} s, outage/partition {:.0} s",
        size.nodes,
        size.jobs,
        f64::from(size.steps) * size.step_ms as f64 / 1000.0,
        size.workflows,
        size.lease.as_secs_f64(),
        size.outage.as_secs_f64()
    );
    println!("{}", Report::header());
    let mut broken = Vec::new();
    let mut answers = Vec::new();
    for scenario in Scenario::ALL {
        // On Ctrl-C the scenario is dropped, and with it its nodes and database.
        let outcome = tokio::select! {
            r = run(scenario, &bin, &size) => r,
            _ = tokio::signal::ctrl_c() => {
                println!("interrupted");
                return Ok(());
            }
        };
        match outcome {
            Ok(report) => {
                println!("{report}");
                answers.push(format!(
                    "{}: {:?}",
                    report.scenario, report.answers_during_fault
                ));
                let v = report.violations();
                if !v.is_empty() {
                    broken.push(format!("{}: {}", report.scenario, v.join("; ")));
                }
            }
            Err(e) => {
                println!("{:<28} could not run: {e}", scenario.name());
            }
        }
    }
    println!("\njob starts through the faulted node during the fault, by answer:");
    for a in answers {
        println!("- {a}");
    }
    if !broken.is_empty() {
        println!("\nbroken invariants:");
        for b in broken {
            println!("- {b}");
        }
    }
    Ok(())
}
