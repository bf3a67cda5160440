//! docs/services.md against the `payflow` binary (see support/docs_check.rs for the rules and
//! the section convention). The operator's sections are checked by operator/tests/docs_env.rs.

#[path = "support/docs_check.rs"]
mod docs_check;

use std::collections::BTreeMap;

#[test]
fn every_subcommand_has_a_section_whose_table_matches_its_help() {
    let problems = docs_check::problems(env!("CARGO_BIN_EXE_payflow"), "payflow", 10);
    assert!(problems.is_empty(), "docs/services.md disagrees with the binary:\n  {}", problems.join("\n  "));
}

#[test]
fn help_parsing_finds_hidden_and_shown_values() {
    let text = "Options:\n      --redis-url <REDIS_URL>\n          Redis URL [env: PAYFLOW_REDIS_URL] [default: x]\n      \
                --bind <BIND>\n          Address [env: PAYFLOW_BIND=] [default: 0.0.0.0]\n  -h, --help\n          Print help\n";
    let found = docs_check::env_of_help(text);
    assert_eq!(found.get("PAYFLOW_REDIS_URL").map(String::as_str), Some("--redis-url"));
    assert_eq!(found.get("PAYFLOW_BIND").map(String::as_str), Some("--bind"));
    assert_eq!(found.len(), 2);
}

#[test]
fn doc_parsing_reads_only_variable_tables_of_each_section() {
    let doc = "# x\n## `payflow a`: first\n| endpoint | what |\n|---|---|\n| `GET /x` | y |\n\n\
               | variable | flag | default | meaning |\n|---|---|---|---|\n| `PAYFLOW_A` | `--a` | 1 | a |\n\
               ## `payflow b`\nno variables\n";
    let s = docs_check::doc_sections(doc);
    assert_eq!(s["payflow a"], BTreeMap::from([("PAYFLOW_A".to_string(), "--a".to_string())]));
    assert!(s["payflow b"].is_empty());
    let problems =
        docs_check::diff("payflow a", &BTreeMap::from([("PAYFLOW_B".into(), "--b".into())]), &s["payflow a"]);
    assert_eq!(problems.len(), 2, "{problems:?}");
}
