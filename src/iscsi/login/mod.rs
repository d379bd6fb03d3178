//! Login phase: security and operational negotiation.
