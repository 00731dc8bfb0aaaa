//! Integration tests of pod-events, built as one binary.

mod tests {
    pub(crate) mod endpoint;
    pub(crate) mod model;
    pub(crate) mod sockets;
}
