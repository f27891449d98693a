//! embedded xenstored: the xenstore wire protocol daemon, and an in-memory store for tests
