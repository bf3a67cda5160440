//! docs/services.md against the `payflow-operator` binary, with the rules of
//! services/payflow/tests/support/docs_check.rs. A test target of its own so the binary under
//! test is always this build's.

#[path = "../../services/payflow/tests/support/docs_check.rs"]
mod docs_check;

#[test]
fn every_operator_subcommand_has_a_section_whose_table_matches_its_help() {
    let problems = docs_check::problems(env!("CARGO_BIN_EXE_payflow-operator"), "payflow-operator", 2);
    assert!(problems.is_empty(), "docs/services.md disagrees with the binary:\n  {}", problems.join("\n  "));
}
