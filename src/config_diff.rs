//! Which keys of a config file changed, and what a reload can do about
//! each: a reload applies some live and must name every other one, never
//! accept a change in silence.

use toml::{Table, Value};

/// What a reload does with a changed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Put in force by the reload.
    Live,
    /// Takes effect at the next start.
    Restart,
    /// Read only when a data directory is created (its first stock).
    NewDirectoryOnly,
}

/// The scope of a dotted key such as `engine.shards`.
pub fn scope(key: &str) -> Scope {
    let top = key.split('.').next().unwrap_or(key);
    match top {
        "channels" => Scope::Live,
        "server" if key == "server.tokens" => Scope::Live,
        "stock" | "sample_stock" => Scope::NewDirectoryOnly,
        _ => Scope::Restart,
    }
}

/// The elements of an array value; none for anything else.
fn array(value: Option<&Value>) -> &[Value] {
    match value {
        Some(Value::Array(values)) => values,
        _ => &[],
    }
}

/// Whether the `nodes` array `new` is `old` with nodes added: every node
/// of `old` is in `new` unchanged (in any order). Only that a reload
/// applies live; a node changed or removed waits for a restart.
pub fn nodes_only_added(old: Option<&Value>, new: Option<&Value>) -> bool {
    let (old, new) = (array(old), array(new));
    new.len() > old.len() && old.iter().all(|node| new.contains(node))
}

/// The dotted keys whose values differ between `old` and `new`, in order.
/// Tables are compared key by key; an array (the node list, the tokens)
/// is one key, changed as a whole. A changed channel is named once, as
/// `channels.NAME`.
pub fn changed_keys(old: &Table, new: &Table) -> Vec<String> {
    let mut changed = Vec::new();
    walk("", old, new, &mut changed);
    changed
}

fn walk(prefix: &str, old: &Table, new: &Table, changed: &mut Vec<String>) {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (old.get(key), new.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => match (as_table(prefix, a), as_table(prefix, b)) {
                (Some(a), Some(b)) => walk(&path, &a, &b, changed),
                _ => changed.push(path),
            },
        }
    }
}

/// A value to walk into: a table, or an absent one (so that a table new
/// or gone names its leaves). Not inside `channels`: a channel is one
/// policy, named once rather than by each of its settings.
fn as_table<'a>(prefix: &str, value: Option<&'a Value>) -> Option<std::borrow::Cow<'a, Table>> {
    match value {
        _ if prefix == "channels" => None,
        Some(Value::Table(table)) => Some(std::borrow::Cow::Borrowed(table)),
        Some(_) => None,
        None => Some(std::borrow::Cow::Owned(Table::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        text.parse().unwrap()
    }

    #[test]
    fn names_each_changed_leaf_and_each_changed_channel_once() {
        // Proves nested keys are named by their full path, arrays as one key, and a channel
        // with several changed settings once.
        let old = table(
            "[engine]\nshards = 4\nrouters = 2\n[channels.web]\nrules = [\"a\"]\nhold_ttl_ms = 1\n[[nodes]]\nid = \"A\"\n",
        );
        let new = table(
            "[engine]\nshards = 8\nrouters = 2\n[channels.web]\nrules = [\"b\"]\nhold_ttl_ms = 2\n[channels.app]\nrules = []\n[[nodes]]\nid = \"B\"\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            ["channels.app", "channels.web", "engine.shards", "nodes"]
        );
        assert!(changed_keys(&old, &old).is_empty());
        // A table that is new or gone names its leaves.
        assert_eq!(
            changed_keys(
                &table("[log]\nlevel = \"info\"\n"),
                &table("[engine]\nshards = 8\n")
            ),
            ["engine.shards", "log.level"]
        );
    }

    #[test]
    fn sorts_keys_by_what_a_reload_can_do() {
        // Proves policies and tokens are live, stock seeds only new directories, the rest
        // waits for a restart.
        assert_eq!(scope("channels.web"), Scope::Live);
        assert_eq!(scope("server.tokens"), Scope::Live);
        assert_eq!(scope("server.listen"), Scope::Restart);
        assert_eq!(scope("engine.shards"), Scope::Restart);
        assert_eq!(scope("log.level"), Scope::Restart);
        assert_eq!(scope("stock"), Scope::NewDirectoryOnly);
    }

    #[test]
    fn a_node_list_with_nodes_only_added_is_told_from_one_changed() {
        // Proves nodes added (in any place) count as additions, and a node changed or
        // removed does not.
        let old = table("[[nodes]]\nid = \"A\"\n[[nodes]]\nid = \"B\"\n");
        let added = table("[[nodes]]\nid = \"C\"\n[[nodes]]\nid = \"B\"\n[[nodes]]\nid = \"A\"\n");
        let changed =
            table("[[nodes]]\nid = \"A\"\nx = 1\n[[nodes]]\nid = \"B\"\n[[nodes]]\nid = \"C\"\n");
        let removed = table("[[nodes]]\nid = \"A\"\n[[nodes]]\nid = \"C\"\n");
        let nodes_only_added =
            |old: &Table, new: &Table| nodes_only_added(old.get("nodes"), new.get("nodes"));
        assert!(nodes_only_added(&old, &added));
        assert!(!nodes_only_added(&old, &changed));
        assert!(!nodes_only_added(&old, &removed));
        assert!(!nodes_only_added(&old, &old));
    }
}
