//! `dispatch completions` and `dispatch man`, against the real binary: the
//! scripts are valid for their shell (bash's own syntax check; zsh and
//! fish when installed) and complete every command; the man page names
//! every command, and `--out` writes one page per command.

mod common;

use std::process::Command;

use common::{ok, run_cli, stderr};

/// Every command of `dispatch`, as `dispatch --help` lists them.
fn commands() -> Vec<String> {
    let help = ok(&run_cli(&["--help"], &[]));
    let list: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .expect("a list of commands")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    assert!(list.len() >= 15, "{help}");
    list
}

/// Runs `shell -n` (a syntax check without running) on `script`, if the
/// shell is installed; returns whether it was.
fn syntax_check(shell: &str, script: &str) -> bool {
    if Command::new(shell).arg("-c").arg("true").output().is_err() {
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("completion");
    std::fs::write(&file, script).unwrap();
    let check = Command::new(shell).arg("-n").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "{shell} -n refuses the script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    true
}

#[test]
fn completion_scripts_are_valid_and_name_every_command() {
    let commands = commands();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&run_cli(&["completions", shell], &[]));
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell}: no {c}");
        }
        // Flags of a subcommand complete too.
        assert!(script.contains("leader-lease-ms"), "{shell}");
        let checked = syntax_check(shell, &script);
        assert!(checked || shell != "bash", "bash is always there");
    }
    let refused = run_cli(&["completions", "tcsh"], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
}

#[test]
fn the_bash_completion_completes_commands_in_bash() {
    let script = ok(&run_cli(&["completions", "bash"], &[]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatch.bash");
    std::fs::write(&file, script).unwrap();
    // What bash-completion does on `dispatch se<TAB>`.
    let probe = format!(
        "source {}; COMP_WORDS=(dispatch se); COMP_CWORD=1; COMP_LINE='dispatch se'; \
         COMP_POINT=11; _dispatch dispatch se dispatch; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        words.lines().any(|w| w == "server"),
        "completed to {words:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_man_page_names_every_command() {
    let page = ok(&run_cli(&["man"], &[]));
    assert!(page.contains(".TH dispatch 1"), "a roff page: {page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for c in commands() {
        assert!(
            page.contains(&format!("dispatch\\-{}(1)", c.replace('-', "\\-"))),
            "no {c} in the man page"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    ok(&run_cli(&["man", "--out", out.to_str().unwrap()], &[]));
    for c in commands() {
        let sub = std::fs::read_to_string(out.join(format!("dispatch-{c}.1")))
            .unwrap_or_else(|e| panic!("no page for {c}: {e}"));
        assert!(sub.contains(".TH dispatch-"), "{c}: {sub}");
    }
    let server = std::fs::read_to_string(out.join("dispatch-server.1")).unwrap();
    assert!(
        server.contains("log\\-format"),
        "the server's flags: {server}"
    );
    assert!(out.join("dispatch.1").exists());
}
