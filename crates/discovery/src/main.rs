//! `discovery`: thin entry point; the work is in [`discovery::cli`].

discovery_kit::global_allocator!();
fn main() -> std::process::ExitCode {
    discovery::cli::main()
}
