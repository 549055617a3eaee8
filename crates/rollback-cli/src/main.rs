//! The `rollback` command.

fn main() {
    std::process::exit(rollback_cli::main());
}
