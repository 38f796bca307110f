//! delivery stage.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::spool::{Envelope, Spool};
use crate::state::State;

pub async fn start(
    _config: Arc<Config>,
    _spool: Arc<Spool>,
    _state: Arc<State>,
    _committed: mpsc::UnboundedReceiver<Envelope>,
    _recovered: Vec<Envelope>,
) -> Result<(), String> {
    Ok(())
}
