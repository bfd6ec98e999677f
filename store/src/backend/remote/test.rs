//! Unit tests of the remote protocol.
