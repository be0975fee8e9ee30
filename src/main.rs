//! The qforge command line.

fn main() -> std::process::ExitCode {
    qforge::cli::main()
}
