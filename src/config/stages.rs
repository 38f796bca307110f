//! Each stage's settings, cut from the whole file: start and every reload build them here, so
//! a stage sees only what it reads and never the `Config`.

use super::Config;

impl Config {
    /// What the inbound stage reads from the config; start and every reload build it.
    pub fn inbound_settings(&self) -> crate::inbound::Settings {
        crate::inbound::Settings {
            hostname: self.hostname.clone(),
            listen: self.listen.clone(),
            tls: self.tls.clone(),
            access: self.access.clone(),
            limits: self.limits.clone(),
            feedback: self.feedback.clone(),
        }
    }

    /// What the delivery stage reads from the config; start and every reload build it.
    pub fn delivery_settings(&self) -> crate::delivery::settings::Settings {
        crate::delivery::settings::Settings {
            hostname: self.hostname.clone(),
            delivery: self.delivery.clone(),
            dns: self.dns.clone(),
            route: self.route.clone(),
        }
    }

    /// What the doctor reads from the config (`serve`'s background checks, `poolrelay doctor`).
    pub fn doctor_inputs(&self) -> crate::doctor::Inputs {
        use crate::doctor::inputs::{DkimKey, Pool, PoolRule};
        crate::doctor::Inputs {
            hostname: self.hostname.clone(),
            helo: self.delivery.helo.clone(),
            settings: self.doctor.clone(),
            pools: self
                .pool
                .iter()
                .map(|p| Pool {
                    name: p.name.clone(),
                    ips: p
                        .ip
                        .iter()
                        .map(|ip| (ip.address, ip.helo.clone()))
                        .collect(),
                })
                .collect(),
            rules: self
                .pool_rule
                .iter()
                .map(|r| PoolRule {
                    pool: r.pool.clone(),
                    user: r.user.clone(),
                    sender_domain: r.sender_domain.clone(),
                    sender: r.sender.clone(),
                })
                .collect(),
            dkim: self
                .dkim
                .iter()
                .map(|k| DkimKey {
                    domain: k.domain.clone(),
                    selector: k.selector.clone(),
                    private_key: k.private_key.clone(),
                })
                .collect(),
            feeds: self.feeds.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}
