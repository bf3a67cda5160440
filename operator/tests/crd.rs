//! `crds/` holds exactly what the Rust types generate.

#[test]
fn the_committed_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/payflow.io_payflows.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/payflow.io_payflows.yaml");
    let generated = payflow_operator::crd::crd_yaml().expect("crd yaml");
    assert!(
        committed == generated,
        "crds/payflow.io_payflows.yaml is stale: run `cargo run -p payflow-operator -- crd > crds/payflow.io_payflows.yaml`"
    );
}

#[test]
fn the_crd_has_status_printer_columns_and_cel_rules() {
    let yaml = payflow_operator::crd::crd_yaml().expect("crd yaml");
    for needle in [
        "status: {}",
        "name: Ready",
        "name: Phase",
        "name: Version",
        "name: Workers",
        "name: Queue",
        "name: Age",
        "self.minReplicas <= self.maxReplicas",
        "storageClass is immutable",
        "external mode needs secretRef",
        "must be a cron schedule",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?} in the CRD");
    }
}
