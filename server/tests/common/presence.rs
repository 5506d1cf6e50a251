//! A room's member set as a client keeps it: the `joined` list, then every `presence` and
//! `presence_batch` frame applied as a set (README, Protocol v1).

use std::collections::BTreeSet;

use serde_json::Value;

/// The changes a presence frame carries, `(name, joined)`; `None` for any other frame.
pub fn changes(v: &Value) -> Option<Vec<(String, bool)>> {
    let names = |field: &str| -> Vec<String> {
        v[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field} of {v}"))
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    };
    match v["type"].as_str() {
        Some("presence") => Some(vec![(
            v["name"].as_str().unwrap().to_owned(),
            v["event"] == "joined",
        )]),
        Some("presence_batch") => {
            let mut out: Vec<(String, bool)> =
                names("joined").into_iter().map(|n| (n, true)).collect();
            out.extend(names("left").into_iter().map(|n| (n, false)));
            Some(out)
        }
        _ => None,
    }
}

/// A member's view of a room.
#[derive(Debug, Clone)]
pub struct Members {
    pub names: BTreeSet<String>,
    pub count: u64,
    /// Presence frames applied.
    pub frames: usize,
}

impl Members {
    pub fn of(joined: &Value) -> Self {
        Members {
            names: joined["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect(),
            count: joined["member_count"].as_u64().unwrap(),
            frames: 0,
        }
    }

    /// Applies `v` if it is a presence frame (true then).
    pub fn apply(&mut self, v: &Value) -> bool {
        let Some(changes) = changes(v) else {
            return false;
        };
        self.frames += 1;
        for (name, joined) in changes {
            if joined {
                self.names.insert(name);
            } else {
                self.names.remove(&name);
            }
        }
        self.count = v["member_count"]
            .as_u64()
            .unwrap_or(self.names.len() as u64);
        true
    }

    pub fn sorted(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }
}

/// Reads `c` until a presence frame (single or batch) about `name`; true when it joined.
pub async fn next_change_of(c: &mut super::Client, name: &str) -> bool {
    loop {
        let v = c.recv().await;
        if let Some(changes) = changes(&v) {
            if let Some((_, joined)) = changes.into_iter().find(|(n, _)| n == name) {
                return joined;
            }
        }
    }
}
