//! docs/services.md against the operator binary: each `payflow-operator`
//! subcommand has a section, and its environment-variable table lists exactly
//! the variables (and flags) its `--help` prints. Same convention and parsing
//! as services/payflow/tests/docs_env.rs, which checks the `payflow` sections;
//! kept as a separate target so the binary under test is always this build's.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_payflow-operator");
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/services.md");
const PREFIX: &str = "payflow-operator ";

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").output().expect("run payflow-operator --help");
    assert!(out.status.success(), "payflow-operator {args:?} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Subcommand names from the `Commands:` list of `payflow-operator --help`.
fn subcommands() -> Vec<String> {
    help(&[])
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// `NAME → --flag` of every option whose help shows `[env: NAME=...]` or `[env: NAME]`.
fn env_of_help(text: &str) -> BTreeMap<String, String> {
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

fn code_cell(cell: &str) -> Option<&str> {
    let c = cell.trim();
    c.strip_prefix('`').and_then(|c| c.strip_suffix('`')).filter(|c| !c.contains('`'))
}

/// Variable-table rows `NAME → --flag` per section (first code span of a `## ` heading).
fn doc_sections(doc: &str) -> BTreeMap<String, BTreeMap<String, String>> {
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

#[test]
fn every_operator_subcommand_has_a_section_whose_table_matches_its_help() {
    let doc = std::fs::read_to_string(DOC).expect("read docs/services.md");
    let sections = doc_sections(&doc);
    let commands = subcommands();
    assert!(commands.iter().any(|c| c == "run"), "parsed no `run` from payflow-operator --help: {commands:?}");

    let mut problems = Vec::new();
    for sub in &commands {
        let title = format!("{PREFIX}{sub}");
        let from_help = env_of_help(&help(&[sub]));
        let Some(from_doc) = sections.get(&title) else {
            problems.push(format!("no section headed `{title}` (its --help lists {:?})", from_help.keys()));
            continue;
        };
        for (name, flag) in &from_help {
            match from_doc.get(name) {
                None => problems.push(format!("{title}: missing {name} ({flag}) from its table")),
                Some(f) if f != flag => {
                    problems.push(format!("{title}: {name} has flag {f:?} in the doc, {flag:?} in --help"))
                }
                Some(_) => {}
            }
        }
        for name in from_doc.keys().filter(|n| !from_help.contains_key(*n)) {
            problems.push(format!("{title}: stale {name}: --help does not show it"));
        }
    }
    let known: BTreeSet<String> = commands.iter().map(|c| format!("{PREFIX}{c}")).collect();
    for title in sections.keys().filter(|t| t.starts_with(PREFIX) && !known.contains(*t)) {
        problems.push(format!("section `{title}` names no subcommand of payflow-operator"));
    }
    assert!(problems.is_empty(), "docs/services.md disagrees with the binary:\n  {}", problems.join("\n  "));
}
