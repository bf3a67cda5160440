//! `payflow-operator`: reconciles PayFlow resources; `crd` prints the CRD.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "payflow-operator", version, about = "The PayFlow Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the PayFlow CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Crd => match payflow_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("payflow-operator: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
