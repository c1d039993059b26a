//! Runs an experiment file (the CLI's `fedprompt experiment` does the same with more options):
//! `cargo run --release -p fedprompt-sim --example run_experiment -- experiments/demo.toml`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: run_experiment FILE.toml")?;
    let cfg = fedprompt_sim::ExperimentConfig::from_file(std::path::Path::new(&path))?;
    let (r, out) = fedprompt_sim::run_experiment(
        &cfg,
        &fedprompt_sim::RunOptions {
            progress: true,
            ..Default::default()
        },
    )?;
    println!("{}", fedprompt_report::render_summary(&r));
    println!("results in {}", out.display());
    Ok(())
}
