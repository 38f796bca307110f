//! pool stage.
