//! Files the distribution packages ship, generated from the command-line
//! definition itself so they cannot drift from it: one man page per
//! command (`execgo-runtime.1`, `execgo-runtime-serve.1`, ...) and the
//! bash, zsh and fish completions. Reached through a hidden subcommand that
//! `packaging/build.sh` runs; nothing here is used by `serve`.

use std::path::Path;

use anyhow::Context;
use clap_complete::Shell;

/// Writes `<out>/man/*.1` and `<out>/completions/{execgo-runtime.bash,
/// _execgo-runtime, execgo-runtime.fish}`.
pub fn generate(mut cmd: clap::Command, out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    cmd.build();
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    write_man_pages(&cmd, &source, &man)?;
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let file = match shell {
            Shell::Bash => format!("{name}.bash"),
            Shell::Zsh => format!("_{name}"),
            _ => format!("{name}.fish"),
        };
        let path = completions.join(file);
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut buf);
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The command's page, then one per visible subcommand (clap's own `help`
/// is no page of its own), named `<parent>-<sub>.1` as git and cargo name
/// theirs. `source` (the footer: name and version) is the top command's.
fn write_man_pages(cmd: &clap::Command, source: &str, dir: &Path) -> anyhow::Result<()> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .source(source)
        .manual("execgo-runtime")
        .render(&mut buf)
        .with_context(|| format!("rendering {}", path.display()))?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let sub = sub
            .clone()
            .display_name(format!("{name}-{}", sub.get_name()))
            .bin_name(format!("{name} {}", sub.get_name()));
        write_man_pages(&sub, source, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    #[test]
    fn writes_pages_and_completions() {
        let cmd = Command::new("tool")
            .about("a tool")
            .version("1.0")
            .subcommand(
                Command::new("run")
                    .about("runs")
                    .arg(Arg::new("x").long("x")),
            )
            .subcommand(Command::new("secret").hide(true));
        let tmp = tempfile::tempdir().unwrap();
        generate(cmd, tmp.path()).unwrap();
        let mut man: Vec<_> = std::fs::read_dir(tmp.path().join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        man.sort();
        assert_eq!(man, ["tool-run.1", "tool.1"]);
        let page = std::fs::read_to_string(tmp.path().join("man/tool-run.1")).unwrap();
        assert!(page.contains(".TH TOOL-RUN 1"), "{page}");
        assert!(
            page.contains("\"tool 1.0\""),
            "the footer names the top command: {page}"
        );
        assert!(page.contains("\\-\\-x"), "{page}");
        for f in ["tool.bash", "_tool", "tool.fish"] {
            let text = std::fs::read_to_string(tmp.path().join("completions").join(f)).unwrap();
            assert!(text.contains("run"), "{f}");
        }
    }
}
