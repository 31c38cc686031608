//! The `vfolderfs` command.

fn main() {
    std::process::exit(vfolderfs::cli::main());
}
