//! Small helpers with no `crate::` dependencies: the bottom layer, usable from `config/` and
//! every stage without making an import cycle.

pub mod glob;
pub mod merge;
pub mod nameservers;
pub mod settings;
#[cfg(test)]
pub(crate) mod test_dir;
