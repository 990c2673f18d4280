//! The deployment: container images (`mosquitto/`, `serve/`: their Containerfiles and entry
//! points), the clients of the CELINE integration guide (`clients/`) and the stack test
//! (`tests/stack.rs`) that runs the repository's `compose.yaml` with them. This crate has no
//! code of its own; `cargo xtask image` builds the images, `cargo xtask stack` tests them.
