//! The example plans under examples/notify/ load with this crate's kinds, so
//! they cannot rot.

mod support;

#[test]
fn example_plans_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/notify");
    let registry = support::Fixture::registry();
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let plan = rollback_core::Plan::load(&path, &registry, &Default::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                !plan.notify.is_empty(),
                "{} announces nothing",
                path.display()
            );
            loaded += 1;
        }
    }
    assert_eq!(loaded, 2);
}
