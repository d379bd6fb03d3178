//! The SPC-4/SBC-3 engine.
