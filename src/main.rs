fn main() -> std::process::ExitCode {
    fanout::cli::main()
}
