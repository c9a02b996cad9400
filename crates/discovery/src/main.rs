//! `discovery`: thin entry point; the work is in [`discovery::cli`].
fn main() -> std::process::ExitCode {
    discovery::cli::main()
}
