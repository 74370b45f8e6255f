//! How fast arrow alone decodes files, as `tidewatch analyze` reads them
//! (the same reader, batches of 65,536 rows, one thread per file, nothing
//! computed): the floor under `analyze`'s time on row formats.
//!
//! ```sh
//! cargo run --release -p tidewatch --example read_files -- reference.csv current.csv
//! ```

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let paths: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    anyhow::ensure!(!paths.is_empty(), "usage: read_files FILE...");
    let started = Instant::now();
    let mut rows = 0;
    for path in &paths {
        let (_, batches) = tidewatch::training::batches(path, None)?;
        for batch in batches {
            rows += batch?.num_rows();
        }
    }
    println!(
        "decoded {rows} rows of {} file(s) in {:.2} s",
        paths.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
