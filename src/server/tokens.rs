//! The token table: which token has which role. Read by every `Hello` and
//! every admin request, replaced whole by a reload, so that a token added
//! to the config lets its holder in at once and a removed one no longer
//! does (connections already authenticated keep the role they were given).

use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;

use super::Role;

pub struct Tokens {
    /// Replaced whole, never edited in place; a reader clones the Arc and
    /// lets go of the lock at once.
    table: RwLock<Arc<Vec<(String, Role)>>>,
}

impl Tokens {
    pub fn new(table: Vec<(String, Role)>) -> Tokens {
        Tokens {
            table: RwLock::new(Arc::new(table)),
        }
    }

    /// The role of `token`. Every entry is compared in constant time, so
    /// the answer's timing says nothing about how close a guess was.
    pub fn role(&self, token: &str) -> Option<Role> {
        let table = self.table();
        let mut found = None;
        for (known, role) in table.iter() {
            if bool::from(known.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(role.clone());
            }
        }
        found
    }

    pub fn is_admin(&self, token: &str) -> bool {
        self.role(token) == Some(Role::Admin)
    }

    /// The table as it is now.
    pub fn table(&self) -> Arc<Vec<(String, Role)>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `table` in force.
    pub fn replace(&self, table: Vec<(String, Role)>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

/// Never the tokens themselves: settings are logged and printed.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.table().len())
    }
}
