//! Shared by services/payflow/tests/docs_env.rs and operator/tests/docs_env.rs: docs/services.md
//! against a binary's `--help`. For every subcommand of `program`, the environment-variable table
//! of its section must list exactly the variables (and their flags) that `<program> <sub> --help`
//! prints, so the docs can neither miss a setting nor keep one that is gone.
//!
//! Convention (stated at the top of docs/services.md): a section starts at a `## ` heading whose
//! first code span is the command (`` `payflow gateway` ``) and ends at the next `## ` heading;
//! its variables are the rows of tables whose header's first cell is `variable`, first cell
//! `` `NAME` ``, second cell `` `--flag` ``.

#![allow(dead_code)] // each test target uses a part

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// docs/services.md of the workspace (found above the crate that includes this file).
fn doc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("docs/services.md"))
        .find(|p| p.exists())
        .expect("docs/services.md above the crate")
}

fn help(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).arg("--help").output().expect("run --help");
    assert!(out.status.success(), "{bin} {args:?} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Subcommand names from the `Commands:` list of `<bin> --help`.
fn subcommands(bin: &str) -> Vec<String> {
    let text = help(bin, &[]);
    text.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// `NAME → --flag` of every option whose help shows `[env: NAME=...]` or,
/// with hidden values, `[env: NAME]`.
pub fn env_of_help(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut flag = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        // An option's block starts with its switches; the description follows.
        if trimmed.starts_with('-') {
            flag = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(['=', '<']).to_string())
                .unwrap_or_default();
        }
        let mut rest = line;
        while let Some(at) = rest.find("[env: ") {
            rest = &rest[at + "[env: ".len()..];
            let end = rest.find(['=', ']']).expect("`[env: NAME` is closed on its line");
            out.insert(rest[..end].to_string(), flag.clone());
            rest = &rest[end..];
        }
    }
    out
}

/// The text of a markdown table cell without its code-span backticks.
fn code_cell(cell: &str) -> Option<&str> {
    let c = cell.trim();
    c.strip_prefix('`').and_then(|c| c.strip_suffix('`')).filter(|c| !c.contains('`'))
}

/// Sections of the doc by command (the first code span of a `## ` heading),
/// each with its variable-table rows `NAME → --flag`.
pub fn doc_sections(doc: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_table = false;
    for (n, line) in doc.lines().enumerate() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = heading.split('`').nth(1).map(str::to_string);
            if let Some(c) = &current {
                assert!(
                    sections.insert(c.clone(), BTreeMap::new()).is_none(),
                    "docs/services.md: two sections for `{c}`"
                );
            }
            in_table = false;
            continue;
        }
        let Some(section) = &current else { continue };
        let cells: Vec<&str> = match line.trim().strip_prefix('|').and_then(|l| l.strip_suffix('|')) {
            Some(inner) => inner.split('|').collect(),
            None => {
                in_table = false;
                continue;
            }
        };
        if cells[0].trim().eq_ignore_ascii_case("variable") {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].trim().starts_with("---") {
            continue;
        }
        let row = || format!("docs/services.md line {}: {line}", n + 1);
        let name = code_cell(cells[0]).unwrap_or_else(|| panic!("{}: first cell must be `NAME`", row()));
        let flag = cells.get(1).and_then(|c| code_cell(c)).unwrap_or("");
        let entries = sections.get_mut(section).expect("section exists");
        assert!(entries.insert(name.to_string(), flag.to_string()).is_none(), "{}: listed twice", row());
    }
    sections
}

/// Lines saying what is missing, stale or different; empty when they agree.
pub fn diff(section: &str, help: &BTreeMap<String, String>, doc: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, flag) in help {
        match doc.get(name) {
            None => problems.push(format!("{section}: missing {name} ({flag}) from its table")),
            Some(f) if f != flag => {
                problems.push(format!("{section}: {name} has flag {f:?} in the doc, {flag:?} in --help"))
            }
            Some(_) => {}
        }
    }
    for name in doc.keys().filter(|n| !help.contains_key(*n)) {
        problems.push(format!("{section}: stale {name}: --help does not show it"));
    }
    problems
}

/// Everything docs/services.md gets wrong about `program` (the binary at `bin`): missing,
/// stale or different variables, subcommands without a section, sections without a subcommand.
pub fn problems(bin: &str, program: &str, min_commands: usize) -> Vec<String> {
    let doc = std::fs::read_to_string(doc_path()).expect("read docs/services.md");
    let sections = doc_sections(&doc);
    let commands = subcommands(bin);
    assert!(commands.len() >= min_commands, "parsed too few subcommands from {program} --help: {commands:?}");
    let mut problems = Vec::new();
    for sub in &commands {
        let title = format!("{program} {sub}");
        let from_help = env_of_help(&help(bin, &[sub]));
        match sections.get(&title) {
            Some(from_doc) => problems.extend(diff(&title, &from_help, from_doc)),
            None => problems.push(format!("no section headed `{title}` (its --help lists {:?})", from_help.keys())),
        }
    }
    let known: BTreeSet<String> = commands.iter().map(|c| format!("{program} {c}")).collect();
    let prefix = format!("{program} ");
    for title in sections.keys().filter(|t| t.starts_with(&prefix) && !known.contains(*t)) {
        problems.push(format!("section `{title}` names no subcommand of {program}"));
    }
    problems
}
