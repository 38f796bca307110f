//! inbound stage.

pub mod users;

use std::sync::Arc;

use crate::config::Config;
use crate::signing::Signer;
use crate::spool::Spool;
use crate::state::State;

/// Binds every listener (an error if one cannot be bound) and spawns their accept loops.
pub async fn start(
    _config: Arc<Config>,
    _spool: Arc<Spool>,
    _state: Arc<State>,
    _signer: Arc<Signer>,
) -> Result<(), String> {
    Ok(())
}
