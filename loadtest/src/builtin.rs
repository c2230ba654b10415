//! The scenarios shipped with the tool, built in by name, so that
//! `--scenario flash-sale` works from any directory; a path to a file of
//! one's own works as well.

use std::path::Path;

use omniroute_loadtest::Scenario;

/// Name and text of each built-in scenario.
pub(crate) const SCENARIOS: &[(&str, &str)] = &[
    ("flash-sale", include_str!("../scenarios/flash-sale.toml")),
    (
        "omnichannel-mix",
        include_str!("../scenarios/omnichannel-mix.toml"),
    ),
    (
        "restock-storm",
        include_str!("../scenarios/restock-storm.toml"),
    ),
    ("node-outage", include_str!("../scenarios/node-outage.toml")),
    ("soak", include_str!("../scenarios/soak.toml")),
];

/// The scenario `given` names: a built-in one by its name, else the file
/// at that path.
pub(crate) fn read_scenario(given: &str) -> Result<Scenario, String> {
    if let Some((_, text)) = SCENARIOS.iter().find(|(name, _)| *name == given) {
        return Scenario::parse(text).map_err(|e| format!("built-in scenario {given}: {e}"));
    }
    let path = Path::new(given);
    let text = std::fs::read_to_string(path).map_err(|e| {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        format!(
            "{given}: {e}; give a scenario file or one of the built-in scenarios: {}",
            names.join(", ")
        )
    })?;
    Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_built_in_scenario_parses_and_names_itself() {
        // Proves each scenario built into the binary parses, under the name it is asked by.
        for (name, _) in super::SCENARIOS {
            let scenario = super::read_scenario(name).unwrap();
            assert_eq!(scenario.name, *name);
        }
        let error = super::read_scenario("flash-sael").unwrap_err();
        assert!(error.contains("flash-sale, omnichannel-mix"), "{error}");
    }
}
