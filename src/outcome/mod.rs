//! outcome stage.
