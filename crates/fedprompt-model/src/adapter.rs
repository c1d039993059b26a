//! Adapters in PEFT's layout (filled below).
