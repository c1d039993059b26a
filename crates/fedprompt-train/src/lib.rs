//! fedprompt-train
