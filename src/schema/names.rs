//! The ids a data directory has given names, and the layout of its
//! snapshot set: small TOML files an operator can read.

use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, OLDEST_READABLE_FORMAT};

/// The channels, markets and nodes a data directory has ever known, in id
/// order: a name's id is its place in its list. Lists only grow; a name
/// the config no longer has keeps its id (retired), so ids are never
/// reused and stored orders that name it still read right.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Names {
    /// [`FORMAT_VERSION`] of the directory that wrote this file.
    pub format_version: u32,
    /// Sales channels, by name.
    pub channels: Vec<String>,
    /// Markets, by name.
    pub markets: Vec<String>,
    /// Fulfillment nodes, by their configured id.
    pub nodes: Vec<String>,
}

/// Why a names or layout file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The file is not TOML of the expected shape.
    #[error("{0}")]
    Parse(String),
    /// A newer omniroute wrote it.
    #[error("format version {found} is newer than this build's {FORMAT_VERSION}: run the omniroute that wrote it")]
    Newer {
        /// The version the file states.
        found: u32,
    },
    /// An older omniroute wrote it, in a format this build does not read.
    #[error("format version {found} is older than this build's {FORMAT_VERSION} and cannot be upgraded in place: finish its open orders with the omniroute that wrote it, then start this one on a new data directory")]
    Older {
        /// The version the file states.
        found: u32,
    },
    /// A name appears twice in one list: ids would be ambiguous.
    #[error("{list} lists {name:?} twice")]
    Duplicate {
        /// Which list: channels, markets or nodes.
        list: &'static str,
        name: String,
    },
}

impl Names {
    /// No names yet, at this build's version.
    pub fn new() -> Names {
        Names {
            format_version: FORMAT_VERSION,
            ..Names::default()
        }
    }

    /// Reads a names file's text, checking its version and that no list
    /// names anything twice.
    pub fn parse(text: &str) -> Result<Names, NamesError> {
        let mut names: Names =
            toml::from_str(text).map_err(|e| NamesError::Parse(e.to_string()))?;
        match names.format_version {
            OLDEST_READABLE_FORMAT..=FORMAT_VERSION => {}
            found if found > FORMAT_VERSION => return Err(NamesError::Newer { found }),
            found => return Err(NamesError::Older { found }),
        }
        // Read as it is; written back in this build's format.
        names.format_version = FORMAT_VERSION;
        for (list, entries) in [
            ("channels", &names.channels),
            ("markets", &names.markets),
            ("nodes", &names.nodes),
        ] {
            let mut seen = std::collections::HashSet::new();
            if let Some(name) = entries.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(NamesError::Duplicate {
                    list,
                    name: name.clone(),
                });
            }
        }
        Ok(names)
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        let body = toml::to_string(self).expect("names always serialize");
        format!(
            "# The ids this data directory gives names: a name's id is its place in its\n\
             # list. Lists only grow; never edit them by hand.\n{body}"
        )
    }
}

/// The format version a names file's text states, whatever else it holds.
pub fn format_version_of(text: &str) -> Result<u32, NamesError> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    toml::from_str::<Version>(text)
        .map(|v| v.format_version)
        .map_err(|e| NamesError::Parse(e.to_string()))
}

/// How a snapshot set partitions the state: the shards its stock images
/// and journal records were written for, and the routers its books were.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// SKU shards.
    pub shards: u32,
    /// Router actors.
    pub routers: u32,
}

impl Layout {
    pub fn parse(text: &str) -> Result<Layout, NamesError> {
        toml::from_str(text).map_err(|e| NamesError::Parse(e.to_string()))
    }

    pub fn encode(&self) -> String {
        toml::to_string(self).expect("a layout always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_names_file_reads_back_and_a_newer_or_older_version_is_refused() {
        // Proves the names file round-trips and that a version other than
        // this build's is refused with a message that says which way.
        let mut names = Names::new();
        names.nodes = vec!["WH-1".into(), "ST-2".into()];
        names.channels = vec!["web".into()];
        assert_eq!(Names::parse(&names.encode()).unwrap(), names);
        let newer = names.encode().replace(
            &format!("format_version = {FORMAT_VERSION}"),
            &format!("format_version = {}", FORMAT_VERSION + 1),
        );
        assert!(matches!(
            Names::parse(&newer),
            Err(NamesError::Newer { .. })
        ));
        let readable = names.encode().replace(
            &format!("format_version = {FORMAT_VERSION}"),
            &format!("format_version = {OLDEST_READABLE_FORMAT}"),
        );
        assert_eq!(Names::parse(&readable).unwrap(), names, "upgraded in place");
        let older = names.encode().replace(
            &format!("format_version = {FORMAT_VERSION}"),
            &format!("format_version = {}", OLDEST_READABLE_FORMAT - 1),
        );
        assert!(matches!(
            Names::parse(&older),
            Err(NamesError::Older { .. })
        ));
        let twice = names.encode().replace("\"ST-2\"", "\"WH-1\"");
        assert!(matches!(
            Names::parse(&twice),
            Err(NamesError::Duplicate { list: "nodes", .. })
        ));
    }
}
