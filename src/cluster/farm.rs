//! The farm as the operator sees it (`poolrelay pool status`, the pool page): every node last
//! seen by its heartbeat, the IPs it sends from, and so the node each IP is on.

use serde::{Deserialize, Serialize};

use super::Cluster;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmView {
    /// This node.
    pub node: String,
    /// Whether Redis answers now (holds and suppressions are then shared at once).
    pub redis_up: bool,
    /// Every node last seen, by name.
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// Unix seconds of its last heartbeat.
    pub last_seen: u64,
    pub ips: Vec<String>,
}

impl FarmView {
    pub fn of(cluster: &Cluster) -> FarmView {
        FarmView {
            node: cluster.node().to_string(),
            redis_up: cluster.is_up(),
            nodes: cluster
                .nodes()
                .into_iter()
                .map(|n| NodeView {
                    name: n.name,
                    last_seen: n.last_seen / 1000,
                    ips: n.ips.iter().map(|ip| ip.to_string()).collect(),
                })
                .collect(),
        }
    }

    /// The nodes sending from `ip` (more than one while an IP moves), `None` if none does.
    pub fn node_of(&self, ip: &str) -> Option<String> {
        let on: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.ips.iter().any(|i| i == ip))
            .map(|n| n.name.as_str())
            .collect();
        (!on.is_empty()).then(|| on.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ip_is_on_the_nodes_that_send_from_it() {
        let node = |name: &str, ips: &[&str]| NodeView {
            name: name.into(),
            last_seen: 1,
            ips: ips.iter().map(|s| s.to_string()).collect(),
        };
        let farm = FarmView {
            node: "a".into(),
            redis_up: true,
            nodes: vec![
                node("a", &["192.0.2.1"]),
                node("b", &["192.0.2.2", "192.0.2.3"]),
                node("c", &["192.0.2.3"]),
            ],
        };
        assert_eq!(farm.node_of("192.0.2.1").as_deref(), Some("a"));
        assert_eq!(farm.node_of("192.0.2.3").as_deref(), Some("b, c"));
        assert_eq!(farm.node_of("192.0.2.9"), None);
    }
}
