//! Reference material generated from the command-line definitions: shell
//! completion scripts and manual pages.

use std::path::Path;

use clap::CommandFactory;

use super::{Cli, CliError};

/// Prints the completion script for `shell` on stdout.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<i32, CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "vfolderfs", &mut std::io::stdout());
    Ok(0)
}

/// Prints `vfolderfs.1`, or writes it and one page per subcommand
/// (`vfolderfs-create.1`, ...) into `dir`.
pub(super) fn man(dir: Option<&Path>) -> Result<i32, CliError> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .map_err(|err| CliError::Io {
                what: "writing the manual page".into(),
                err,
            })?;
        return Ok(0);
    };
    std::fs::create_dir_all(dir).map_err(|err| CliError::Io {
        what: dir.display().to_string(),
        err,
    })?;
    clap_mangen::generate_to(cmd, dir).map_err(|err| CliError::Io {
        what: dir.display().to_string(),
        err,
    })?;
    Ok(0)
}
